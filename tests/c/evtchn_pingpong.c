/*
 * Baseline for the event-channel benchmark: two processes bounce a notification
 * through a pair of eventfds (blocking read, write), the least any eventfd-based
 * event channel can cost. Prints the round-trip percentiles in nanoseconds:
 *
 *     rounds=N p50_ns=X p99_ns=Y
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WARMUP 1000

static void transfer(int from, int to)
{
	uint64_t value = 1;

	if (read(from, &value, sizeof(value)) != sizeof(value) ||
	    write(to, &value, sizeof(value)) != sizeof(value))
		_exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
	long rounds = argc > 1 ? atol(argv[1]) : 20000;
	int ping = eventfd(0, EFD_CLOEXEC), pong = eventfd(0, EFD_CLOEXEC);
	uint64_t one = 1, *samples;
	pid_t child;
	int status;

	if (rounds < 1 || ping < 0 || pong < 0)
		return 2;
	samples = calloc((size_t)rounds, sizeof(*samples));
	if (!samples)
		return 2;
	child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		for (long i = 0; i < rounds + WARMUP; i++)
			transfer(ping, pong);
		_exit(0);
	}
	for (long i = 0; i < rounds + WARMUP; i++) {
		uint64_t start = now_ns();

		if (write(ping, &one, sizeof(one)) != sizeof(one) ||
		    read(pong, &one, sizeof(one)) != sizeof(one))
			return 3;
		if (i >= WARMUP)
			samples[i - WARMUP] = now_ns() - start;
	}
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
		return 4;
	qsort(samples, (size_t)rounds, sizeof(*samples), by_value);
	printf("rounds=%ld p50_ns=%llu p99_ns=%llu\n", rounds,
	       (unsigned long long)samples[rounds / 2],
	       (unsigned long long)samples[(rounds * 99) / 100]);
	free(samples);
	return 0;
}
