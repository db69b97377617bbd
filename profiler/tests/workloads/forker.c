/* Without arguments: forks a child that does the work in child_hot(); the parent only
 * waits.
 * With N: forks N children one after another, each of which execs /bin/true, and waits for
 * each. Nearly all the CPU time is then spent by processes that exec'd while recorded. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

__attribute__((noinline)) void child_hot(long n) { BURN(n); }

static int spawn_true(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		execl("/bin/true", "true", (char *)NULL);
		_exit(127);
	}
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		long n = atol(argv[1]);
		for (long i = 0; i < n; i++)
			if (spawn_true() != 0)
				return 1;
		return 0;
	}
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		child_hot(900000000L);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
