/* Built with frame pointers; calls a library built without them (walk_lib.c), which calls
 * back into `on_item` here. Runs for argv[1] seconds (2 by default). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "common.h"

long lib_walk(long (*callback)(long), long rounds);

__attribute__((noinline)) long on_item(long x)
{
	uint64_t h = (uint64_t)x;
	for (int i = 0; i < 200; i++)
		h = h * 6364136223846793005ULL + 1442695040888963407ULL;
	keep(h);
	return (long)(h >> 60);
}

__attribute__((noinline)) long drive(double seconds)
{
	struct timespec start, now;
	long total = 0;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		total += lib_walk(on_item, 100);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
	return total;
}

int main(int argc, char **argv)
{
	printf("%ld\n", drive(argc > 1 ? atof(argv[1]) : 2.0));
	return 0;
}
