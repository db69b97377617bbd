/* The slowdown workload: a fixed amount of CPU-bound work split over one process per CPU.
 * It prints how long the work took, in seconds, measured from just before the workers start
 * to when the last one is done, so a profiler's start-up and teardown are not counted.
 *
 * usage: fixed_work ITERATIONS_PER_CPU [PROCESSES]   (one per online CPU by default)
 *
 * The work walks a small call tree (a dozen frames) so profilers have real stacks to take. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;

__attribute__((noinline)) void keep(uint64_t x) { sink = x; }

__attribute__((noinline)) uint64_t mix(uint64_t x, long n)
{
	for (long i = 0; i < n; i++)
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
	keep(x);
	return x;
}

__attribute__((noinline)) uint64_t branch(int level, uint64_t x)
{
	if (level == 0)
		return mix(x, 2000);
	/* Two callees per level: 2^levels distinct paths, like a real call tree. */
	x = branch(level - 1, x ^ (uint64_t)level);
	if ((x >> 17) & 1)
		x = branch(level - 1, x + 1);
	keep(x);
	return x;
}

__attribute__((noinline)) void worker(long iterations)
{
	uint64_t x = 1;
	for (long i = 0; i < iterations; i++)
		x = branch(10, x + (uint64_t)i);
	keep(x);
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: fixed_work ITERATIONS_PER_CPU [PROCESSES]\n");
		return 2;
	}
	long iterations = atol(argv[1]);
	long cpus = argc == 3 ? atol(argv[2]) : sysconf(_SC_NPROCESSORS_ONLN);
	struct timespec start, end;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (long i = 0; i < cpus; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			worker(iterations);
			_exit(0);
		}
	}
	int status, failed = 0;
	while (wait(&status) > 0)
		failed |= !WIFEXITED(status) || WEXITSTATUS(status);
	clock_gettime(CLOCK_MONOTONIC, &end);
	printf("%.6f\n", (end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9);
	return failed;
}
