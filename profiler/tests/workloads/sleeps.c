/* Blocks, off CPU, 3 ms in sleep_three() for each 1 ms in sleep_one(): nanosleep in rounds of
 * 30 ms and 10 ms, interleaved, so that timer slack and wake-up latency (tens of
 * microseconds) stay small against each block.
 *
 * The sleep is a raw `syscall` inside each function rather than a call to libc's nanosleep():
 * Debian's libc has no frame pointers, so unwinding from inside it would skip the function
 * that called it. Each function also calls keep(), so that it is not a leaf (common.h). */
#include <stdlib.h>
#include <time.h>
#include "common.h"

static inline __attribute__((always_inline)) void raw_nanosleep(long ns)
{
	struct timespec t = {ns / 1000000000L, ns % 1000000000L};
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(35 /* __NR_nanosleep */), "D"(&t), "S"(0)
			 : "rcx", "r11", "memory");
	keep(ret);
}

__attribute__((noinline)) void sleep_three(long ms) { raw_nanosleep(3 * ms * 1000000L); }
__attribute__((noinline)) void sleep_one(long ms) { raw_nanosleep(ms * 1000000L); }

int main(int argc, char **argv)
{
	int rounds = argc > 1 ? atoi(argv[1]) : 25;
	long ms = argc > 2 ? atol(argv[2]) : 10;
	for (int r = 0; r < rounds; r++) {
		sleep_three(ms);
		sleep_one(ms);
	}
	return 0;
}
