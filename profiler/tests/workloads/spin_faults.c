/* Spins in one function and touches fresh pages in another: cpu-clock samples land mostly in
 * spin(), page-fault samples in touch_pages(). */
#include <stdlib.h>
#include <sys/mman.h>
#include "common.h"

#define PAGE 4096
#define TOUCH_BYTES (16L << 20)

__attribute__((noinline)) void spin(long n) { BURN(n); }

__attribute__((noinline)) void touch_pages(void)
{
	char *p = mmap(NULL, TOUCH_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		exit(1);
	for (long off = 0; off < TOUCH_BYTES; off += PAGE)
		p[off] = 1; /* each store faults in a fresh page */
	keep((uint64_t)p[PAGE]);
	munmap(p, TOUCH_BYTES);
}

/* argv[1]: rounds (10); argv[2]: spin iterations per round (60M). */
int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 10;
	long spins = argc > 2 ? atol(argv[2]) : 60000000L;
	for (int r = 0; r < rounds; r++) {
		spin(spins);
		touch_pages();
	}
	return 0;
}
