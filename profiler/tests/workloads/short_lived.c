/* Runs for about 0.3 s, all in one function, then exits. */
#include <stdlib.h>
#include <time.h>
#include "common.h"

__attribute__((noinline)) void short_lived_hot(void)
{
	struct timespec start, now;
	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		BURN(200000L);
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) < 300000000L);
}

int main(void)
{
	short_lived_hot();
	return 0;
}
