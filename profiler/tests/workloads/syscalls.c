/* Spends its time in the kernel: reads /dev/zero in large blocks.
 *
 * The read is a raw `syscall` instruction inside read_zeroes() rather than a call to libc's
 * read(): Debian's libc has no frame pointers, so unwinding from inside it would skip
 * read_zeroes() itself. */
#include <fcntl.h>
#include <stdlib.h>
#include "common.h"

static char buffer[1 << 16];

static inline __attribute__((always_inline)) long raw_read(int fd, void *buf, unsigned long n)
{
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(0 /* __NR_read */), "D"(fd), "S"(buf), "d"(n)
			 : "rcx", "r11", "memory");
	return ret;
}

__attribute__((noinline)) void read_zeroes(int fd, long blocks)
{
	for (long i = 0; i < blocks; i++) {
		if (raw_read(fd, buffer, sizeof(buffer)) != sizeof(buffer))
			exit(1);
	}
	keep((uint64_t)buffer[7]);
}

int main(int argc, char **argv)
{
	long blocks = argc > 1 ? atol(argv[1]) : 800000;
	int fd = open("/dev/zero", O_RDONLY);
	if (fd < 0)
		return 1;
	read_zeroes(fd, blocks);
	return 0;
}
