/* A shared library whose hot function's name is given at build time (-DHOT=alpha_spin or
 * -DHOT=gamma_spin): two builds of equal layout that name the same addresses differently,
 * so a test can tell which copy a profile was symbolized from. */
#include <time.h>
#include "common.h"

__attribute__((noinline)) void HOT(void)
{
	BURN(2000000L);
}

void spin_for(int seconds)
{
	time_t end = time(NULL) + seconds;
	while (time(NULL) < end)
		HOT();
}
