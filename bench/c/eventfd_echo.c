/*
 * Baseline for the display bench's wake-up floor: answer each kick on one eventfd with
 * two writes to another, as the display backend answers a page flip with a response and
 * an event. Blocking reads, nothing else: what a wake-up costs in C on this machine.
 *
 *     eventfd_echo KICK_FD ANSWER_FD
 */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uint64_t value;
	int kick, answer;

	if (argc != 3)
		return 2;
	kick = atoi(argv[1]);
	answer = atoi(argv[2]);
	for (;;) {
		value = 1;
		if (read(kick, &value, sizeof(value)) != sizeof(value))
			return 1;
		value = 1;
		if (write(answer, &value, sizeof(value)) != sizeof(value) ||
		    write(answer, &value, sizeof(value)) != sizeof(value))
			return 1;
	}
}
