/* A call tree of 3000 functions, the workload of big recordings: function i calls functions
 * 2i+1 and 2i+2 (through a table, so the compiler keeps every call), 12 levels deep.
 *
 *   call_tree burn SECONDS   walk the tree again and again for SECONDS, each function
 *                            burning CPU in a body of its own (64 multiply-adds), so that
 *                            almost every sample at a high frequency is a stack never seen
 *                            before: its own leaf address under its own path
 *   call_tree calls N [US]   walk the tree once; each function calls getppid() N times from
 *                            its own body, then sleeps US microseconds (default 200): exactly
 *                            3000 * N hits of syscalls:sys_enter_getppid, from 3000 distinct
 *                            stacks, at a pace a recording can drain
 *
 * Built with frame pointers (-O1 -fno-omit-frame-pointer). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FUNCTIONS 3000

static volatile uint64_t sink;
static long calls_per_function;
static long pause_us;
static int burning;

static uint64_t visit(int index, uint64_t x);

/* 64 dependent multiply-adds: a body long enough that samples land on many addresses. */
#define MA(k) x = x * (0x9e3779b97f4a7c15ULL + 2 * (k) + seed) + (k)
#define MA8(k) MA(k); MA(k + 1); MA(k + 2); MA(k + 3); MA(k + 4); MA(k + 5); MA(k + 6); MA(k + 7)
#define BODY(seed_) do { \
		const uint64_t seed = (seed_); \
		if (burning) { \
			for (int r_ = 0; r_ < 4; r_++) { \
				MA8(0); MA8(8); MA8(16); MA8(24); MA8(32); MA8(40); MA8(48); MA8(56); \
			} \
		} else { \
			for (long c_ = 0; c_ < calls_per_function; c_++) \
				x += (uint64_t)getppid(); \
			if (pause_us > 0) \
				usleep((useconds_t)pause_us); \
		} \
	} while (0)

/* Function n (1000..3999) is node n - 1000 of the tree. */
#define FN(n) \
	__attribute__((noinline)) static uint64_t f##n(uint64_t x) \
	{ \
		BODY(n); \
		x = visit(n - 1000, x); \
		sink = x; \
		return x; \
	}
#define FN10(a) FN(a##0) FN(a##1) FN(a##2) FN(a##3) FN(a##4) FN(a##5) FN(a##6) FN(a##7) FN(a##8) FN(a##9)
#define FN100(a) FN10(a##0) FN10(a##1) FN10(a##2) FN10(a##3) FN10(a##4) FN10(a##5) FN10(a##6) FN10(a##7) FN10(a##8) FN10(a##9)
#define FN1000(a) FN100(a##0) FN100(a##1) FN100(a##2) FN100(a##3) FN100(a##4) FN100(a##5) FN100(a##6) FN100(a##7) FN100(a##8) FN100(a##9)
FN1000(1)
FN1000(2)
FN1000(3)

#define E(n) f##n,
#define E10(a) E(a##0) E(a##1) E(a##2) E(a##3) E(a##4) E(a##5) E(a##6) E(a##7) E(a##8) E(a##9)
#define E100(a) E10(a##0) E10(a##1) E10(a##2) E10(a##3) E10(a##4) E10(a##5) E10(a##6) E10(a##7) E10(a##8) E10(a##9)
#define E1000(a) E100(a##0) E100(a##1) E100(a##2) E100(a##3) E100(a##4) E100(a##5) E100(a##6) E100(a##7) E100(a##8) E100(a##9)
static uint64_t (*const table[FUNCTIONS])(uint64_t) = { E1000(1) E1000(2) E1000(3) };

static uint64_t visit(int index, uint64_t x)
{
	for (int child = 2 * index + 1; child <= 2 * index + 2 && child < FUNCTIONS; child++)
		x = table[child](x);
	return x;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc >= 3 && strcmp(argv[1], "burn") == 0) {
		double until = now() + atof(argv[2]);
		burning = 1;
		uint64_t x = 1;
		do
			x = table[0](x);
		while (now() < until);
		sink = x;
		return 0;
	}
	if (argc >= 3 && strcmp(argv[1], "calls") == 0) {
		calls_per_function = atol(argv[2]);
		pause_us = argc >= 4 ? atol(argv[3]) : 200;
		sink = table[0](1);
		return 0;
	}
	fprintf(stderr, "usage: call_tree burn SECONDS | call_tree calls N [PAUSE_US]\n");
	return 2;
}
