/* The kernel-cost workload: one thread per CPU, each recursing `depth` frames deep and then,
 * until `seconds` have passed, burning CPU in user code and (in `mixed` mode) also reading
 * /dev/zero (kernel time, so kernel stacks), touching fresh pages (page faults) and sleeping
 * a microsecond (context switches).
 *
 * usage: stacks DEPTH user|mixed SECONDS
 *
 * Every frame of the recursion does work after its call, so the compiler cannot turn it into
 * a loop, and the burner calls keep() so it is not a leaf (see the tests' common.h). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static volatile uint64_t sink;
static int depth, mixed;
static double seconds;

__attribute__((noinline)) void keep(uint64_t x) { sink = x; }

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) void burn(long iterations)
{
	uint64_t x = 1;
	for (long i = 0; i < iterations; i++) {
		x = x * 6364136223846793005ULL + 1442695040888963407ULL;
		if ((i & 0xfff) == 0)
			keep(x);
	}
	keep(x);
}

__attribute__((noinline)) void kernel_work(int zero, char *buf, long round)
{
	/* 64 KiB from /dev/zero: a few microseconds in the kernel. */
	if (read(zero, buf, 65536) < 0)
		abort();
	/* Four fresh pages: four page faults. */
	char *pages = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pages == MAP_FAILED)
		abort();
	for (int i = 0; i < 4; i++)
		pages[i * 4096] = 1;
	munmap(pages, 4 * 4096);
	/* Now and then, a context switch to idle and back. */
	if (round % 16 == 0) {
		struct timespec ts = { 0, 1000 };
		nanosleep(&ts, NULL);
	}
}

__attribute__((noinline)) void bottom(void)
{
	int zero = open("/dev/zero", O_RDONLY);
	char *buf = malloc(65536);
	double end = now() + seconds;
	if (zero < 0 || !buf)
		abort();
	for (long round = 0; now() < end; round++) {
		burn(100000);
		if (mixed)
			kernel_work(zero, buf, round);
	}
	close(zero);
	free(buf);
}

__attribute__((noinline)) uint64_t recurse(int level)
{
	if (level <= 1) {
		bottom();
		return 1;
	}
	uint64_t r = recurse(level - 1);
	keep(r);
	return r + 1;
}

static void *thread(void *arg)
{
	(void)arg;
	keep(recurse(depth));
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc != 4 || (strcmp(argv[2], "user") && strcmp(argv[2], "mixed"))) {
		fprintf(stderr, "usage: stacks DEPTH user|mixed SECONDS\n");
		return 2;
	}
	depth = atoi(argv[1]);
	mixed = !strcmp(argv[2], "mixed");
	seconds = atof(argv[3]);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	pthread_t threads[256];
	for (long i = 0; i < cpus && i < 256; i++)
		pthread_create(&threads[i], NULL, thread, NULL);
	for (long i = 0; i < cpus && i < 256; i++)
		pthread_join(threads[i], NULL);
	return 0;
}
