/* Built at -O2 without frame pointers, as a user's C program is: blocks 3 ms in nap_long()
 * for each 1 ms in nap_short(), through libc's nanosleep (itself without frame pointers), so
 * that only the unwind tables find the function that slept. It first runs for 300 ms without
 * blocking, for the tables to be in place before the first nap. */
#include <stdlib.h>
#include <time.h>

static volatile long sink;

__attribute__((noinline)) static void nap(long ms)
{
	struct timespec t = {0, ms * 1000000L};
	nanosleep(&t, NULL);
	sink += ms;
}

__attribute__((noinline)) static void nap_long(long ms) { nap(3 * ms); sink++; }
__attribute__((noinline)) static void nap_short(long ms) { nap(ms); sink++; }

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 20;
	struct timespec start, now;

	clock_gettime(CLOCK_MONOTONIC, &start);
	do {
		sink++;
		clock_gettime(CLOCK_MONOTONIC, &now);
	} while ((now.tv_sec - start.tv_sec) * 1000000000L + (now.tv_nsec - start.tv_nsec) <
		 300000000L);
	for (int r = 0; r < rounds; r++) {
		nap_long(10);
		nap_short(10);
	}
	return 0;
}
