/* Built at -O2 without frame pointers, as a user's C program is: a comparison callback that
 * runs under libc's qsort (itself without frame pointers). Runs for argv[1] seconds (2 by
 * default). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile long sink;

__attribute__((noinline)) static int compare_keys(const void *a, const void *b)
{
	long x = *(const long *)a, y = *(const long *)b;
	for (int i = 0; i < 16; i++)
		sink += i;
	return (x > y) - (x < y);
}

__attribute__((noinline)) static void sort_batch(long *keys, int n)
{
	qsort(keys, n, sizeof(long), compare_keys);
	sink += keys[0];
}

__attribute__((noinline)) static void sort_for(double seconds)
{
	static long keys[4096];
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		for (int i = 0; i < 4096; i++)
			keys[i] = rand();
		sort_batch(keys, 4096);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9 < seconds);
}

int main(int argc, char **argv)
{
	sort_for(argc > 1 ? atof(argv[1]) : 2.0);
	printf("%ld\n", sink);
	return 0;
}
