/* Shared by the test workloads: a deterministic CPU burner that is not a leaf function.
 *
 * GCC drops the frame pointer of leaf functions even with -fno-omit-frame-pointer, and a
 * frame-pointer unwinder then skips the leaf's caller. So the hot
 * loops below call `keep()` now and then: they are not leaves, and their callers stay in the
 * stack. Each iteration does the same work, so time is proportional to iterations. */
#include <stdint.h>

static volatile uint64_t sink;

__attribute__((noinline)) void keep(uint64_t x) { sink = x; }

#define BURN(iterations)                                                     \
	do {                                                                 \
		uint64_t x_ = 1;                                             \
		for (long i_ = 0; i_ < (iterations); i_++) {                 \
			x_ = x_ * 6364136223846793005ULL + 1442695040888963407ULL; \
			if ((i_ & 0xfffff) == 0)                             \
				keep(x_);                                    \
		}                                                            \
		keep(x_);                                                    \
	} while (0)
