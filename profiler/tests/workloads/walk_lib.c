/* A shared library built with -fomit-frame-pointer at -O2 that calls back into the program
 * that loaded it (callback_main.c, built with frame pointers). */
__attribute__((noinline)) static long lib_step(long (*callback)(long), long x)
{
	long total = 0;
	for (int i = 0; i < 64; i++)
		total += callback(x + i);
	return total;
}

__attribute__((noinline)) long lib_walk(long (*callback)(long), long rounds)
{
	long total = 0;
	for (long r = 0; r < rounds; r++)
		total += lib_step(callback, r) & 0xff;
	return total;
}
