/* The least CPU a sampler at a fixed rate can use on this machine: per tick, sleep until an
 * absolute deadline, then (optionally) copy LEN bytes of the target with one
 * process_vm_readv, and nothing else. bench/run.py (measurement 7) compiles and runs it
 * next to prof, so that prof's per-tick cost on a one-thread target can be read against it.
 *
 *   floor PID ADDR LEN RATE TICKS     (LEN 0: sleep only)
 *
 * Prints the CPU time (user + system) per tick in microseconds. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/resource.h>
#include <sys/uio.h>

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: floor PID ADDR LEN RATE TICKS\n");
        return 2;
    }
    int pid = atoi(argv[1]);
    unsigned long addr = strtoul(argv[2], NULL, 16);
    size_t len = strtoul(argv[3], NULL, 10);
    long period_ns = (long)(1e9 / atof(argv[4]));
    long ticks = atol(argv[5]);
    char *buf = malloc(len ? len : 1);
    struct timespec due;
    clock_gettime(CLOCK_MONOTONIC, &due);
    double start = cpu_us();
    for (long i = 0; i < ticks; i++) {
        due.tv_nsec += period_ns;
        while (due.tv_nsec >= 1000000000L) {
            due.tv_nsec -= 1000000000L;
            due.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
        if (len) {
            struct iovec local = {buf, len}, remote = {(void *)addr, len};
            if (process_vm_readv(pid, &local, 1, &remote, 1, 0) != (ssize_t)len) {
                perror("floor: process_vm_readv");
                return 1;
            }
        }
    }
    printf("%.3f\n", (cpu_us() - start) / ticks);
    return 0;
}
