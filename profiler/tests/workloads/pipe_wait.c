/* Blocks in the kernel reading a pipe: a writer thread sends one byte every 20 ms, and the
 * main thread waits for each in wait_for_byte(), a raw read(2) that sleeps in pipe_read().
 * (A raw `syscall`, not libc's read(), for the reason sleeps.c gives.) */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "common.h"

static int fds[2];
static int bytes = 25;

static void *writer(void *unused)
{
	struct timespec t = {0, 20 * 1000000L};
	(void)unused;
	for (int i = 0; i < bytes; i++) {
		nanosleep(&t, NULL);
		if (write(fds[1], "x", 1) != 1)
			exit(1);
	}
	return NULL;
}

__attribute__((noinline)) void wait_for_byte(void)
{
	char byte;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(0 /* __NR_read */), "D"(fds[0]), "S"(&byte), "d"(1)
			 : "rcx", "r11", "memory");
	if (ret != 1)
		exit(1);
	keep(byte);
}

int main(int argc, char **argv)
{
	pthread_t thread;
	if (argc > 1)
		bytes = atoi(argv[1]);
	if (pipe(fds) || pthread_create(&thread, NULL, writer, NULL))
		return 1;
	for (int i = 0; i < bytes; i++)
		wait_for_byte();
	return pthread_join(thread, NULL);
}
