/* Spins in forever_hot() until killed, or for at most the given seconds (default 30), so a
 * failed test never leaves it running for long. */
#include <stdlib.h>
#include <time.h>
#include "common.h"

__attribute__((noinline)) void forever_hot(int seconds)
{
	time_t end = time(NULL) + seconds;
	while (time(NULL) < end)
		BURN(2000000L);
}

int main(int argc, char **argv)
{
	forever_hot(argc > 1 ? atoi(argv[1]) : 30);
	return 0;
}
