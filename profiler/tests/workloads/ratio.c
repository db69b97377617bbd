/* Two hot functions doing identical work per iteration, called in a 3:1 ratio and
 * interleaved in rounds, so a change of CPU speed hits both alike. */
#include <stdlib.h>
#include "common.h"

__attribute__((noinline)) void hot_three(long n) { BURN(n); }
__attribute__((noinline)) void hot_one(long n) { BURN(n); }

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 120;
	for (int r = 0; r < rounds; r++) {
		hot_three(3 * 4000000L);
		hot_one(4000000L);
	}
	return 0;
}
