/* Forks a child that does the work in child_hot(); the parent only waits. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common.h"

__attribute__((noinline)) void child_hot(long n) { BURN(n); }

int main(void)
{
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
