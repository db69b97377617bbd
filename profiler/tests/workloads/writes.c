/* Makes exactly N write(2) calls of one byte to /dev/null from write_bytes(), as raw
 * `syscall`s (see sleeps.c), and no other write: the count a tracepoint on sys_enter_write
 * must find. */
#include <fcntl.h>
#include <stdlib.h>
#include "common.h"

__attribute__((noinline)) void write_bytes(int fd, long n)
{
	for (long i = 0; i < n; i++) {
		long ret;
		__asm__ volatile("syscall"
				 : "=a"(ret)
				 : "a"(1 /* __NR_write */), "D"(fd), "S"("x"), "d"(1)
				 : "rcx", "r11", "memory");
		if (ret != 1)
			exit(1);
	}
	keep(n);
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 5000;
	int fd = open("/dev/null", O_WRONLY);
	if (fd < 0)
		return 1;
	write_bytes(fd, n);
	return 0;
}
