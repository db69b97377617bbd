/* Spins in libspin.so's hot function for the given seconds (default 30); linked against
 * libspin.so, so the copy the dynamic loader finds at its path is the one that runs. */
#include <stdlib.h>

void spin_for(int seconds);

int main(int argc, char **argv)
{
	spin_for(argc > 1 ? atoi(argv[1]) : 30);
	return 0;
}
