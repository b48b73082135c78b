/* The least CPU a sampler at a fixed rate can use on this machine: per tick, sleep until an
 * absolute deadline, then make the given process_vm_readv calls, and nothing else.
 * bench/run.py (measurement 7) compiles and runs it next to prof, so that prof's per-tick
 * cost on a one-thread target can be read against it.
 *
 *   floor PID RATE TICKS [READ ...]     (no READ: sleep only)
 *
 * Each READ is one process_vm_readv per tick, written LOCAL/REMOTE: LOCAL the lengths of
 * the local iovecs (comma-separated; they lie end to end in one buffer), REMOTE the remote
 * iovecs as ADDR+LEN in hex+decimal, comma-separated, e.g.
 *
 *   floor 1234 1000 5000 16384/7f00aa000000+16384              (one 16 KiB copy)
 *   floor 1234 1000 5000 24,256,8/7f00aa000000+24,7f00ab000000+264   (two iovecs each side)
 *
 * An argument touch:KIB also touches KIB KiB of floor.c's own memory each tick, after the
 * reads: every 64-byte line once, in a random order fixed at the start, each line's address
 * read from the line before (a pointer chase, as a walk of structures is, which the
 * hardware's prefetchers cannot run ahead of). A working set of that size, to tell what a
 * tick's own memory costs where the core's caches went cold between ticks (e.g. a vCPU that
 * halted) from what it costs where they stayed warm.
 *
 * Prints the CPU time (user + system) per tick in microseconds; on stderr, how many ticks
 * woke a whole period or more after their due instant (those a sampler that keeps to its
 * clock, as prof does, drops). The timer slack is set as prof's sampling thread sets its
 * own: a twentieth of the period, at most the kernel's default 50 us. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/uio.h>

#define MAX_IOV 64
#define MAX_READS 8

struct read {
    struct iovec local[MAX_IOV], remote[MAX_IOV];
    int nlocal, nremote;
    size_t total;
};

static double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/* Parse one LOCAL/REMOTE argument; exits with a one-line message on bad input. */
static void parse(char *arg, struct read *r) {
    char *slash = strchr(arg, '/');
    if (!slash) {
        fprintf(stderr, "floor: bad READ (no '/'): %s\n", arg);
        exit(2);
    }
    *slash = 0;
    size_t local_total = 0, remote_total = 0;
    for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
        if (r->nlocal == MAX_IOV) {
            fprintf(stderr, "floor: more than %d local iovecs\n", MAX_IOV);
            exit(2);
        }
        r->local[r->nlocal++].iov_len = strtoul(tok, NULL, 10);
        local_total += r->local[r->nlocal - 1].iov_len;
    }
    for (char *tok = strtok(slash + 1, ","); tok; tok = strtok(NULL, ",")) {
        char *plus = strchr(tok, '+');
        if (!plus || r->nremote == MAX_IOV) {
            fprintf(stderr, "floor: bad remote iovec (ADDR+LEN, at most %d): %s\n", MAX_IOV, tok);
            exit(2);
        }
        r->remote[r->nremote].iov_base = (void *)strtoul(tok, NULL, 16);
        r->remote[r->nremote++].iov_len = strtoul(plus + 1, NULL, 10);
        remote_total += r->remote[r->nremote - 1].iov_len;
    }
    if (local_total != remote_total || local_total == 0) {
        fprintf(stderr, "floor: local (%zu) and remote (%zu) bytes differ\n", local_total, remote_total);
        exit(2);
    }
    char *buf = malloc(local_total);
    for (int i = 0; i < r->nlocal; i++) {
        r->local[i].iov_base = buf;
        buf += r->local[i].iov_len;
    }
    r->total = local_total;
}

int main(int argc, char **argv) {
    if (argc < 4 || argc > 4 + MAX_READS) {
        fprintf(stderr, "usage: floor PID RATE TICKS [LOCAL/REMOTE ...] [touch:KIB] (at most %d reads)\n", MAX_READS);
        return 2;
    }
    int pid = atoi(argv[1]);
    long period_ns = (long)(1e9 / atof(argv[2]));
    long ticks = atol(argv[3]);
    int nreads = 0;
    static struct read reads[MAX_READS];
    size_t touch = 0;
    for (int i = 4; i < argc; i++) {
        if (strncmp(argv[i], "touch:", 6) == 0) {
            char *end;
            touch = strtoul(argv[i] + 6, &end, 10) << 10;
            if (end == argv[i] + 6 || *end) {
                fprintf(stderr, "floor: bad touch:KIB (a number of KiB): %s\n", argv[i]);
                return 2;
            }
        } else
            parse(argv[i], &reads[nreads++]);
    }
    /* One cycle through all lines in a random order, laid out (and faulted in) before the
     * clock starts: only the ticks' touches are timed. */
    size_t lines = touch / 64;
    void **mine = lines ? aligned_alloc(64, lines * 64) : NULL;
    size_t *order = lines ? malloc(lines * sizeof *order) : NULL;
    if (lines && (!mine || !order)) {
        fprintf(stderr, "floor: cannot allocate %zu bytes to touch\n", touch);
        return 2;
    }
    for (size_t k = 0; k < lines; k++)
        order[k] = k;
    srand(1);
    for (size_t k = lines; k > 1; k--) {
        size_t j = (size_t)rand() % k, x = order[k - 1];
        order[k - 1] = order[j];
        order[j] = x;
    }
    const size_t per_line = 64 / sizeof(void *);
    for (size_t k = 0; k < lines; k++)
        mine[order[k] * per_line] = &mine[order[(k + 1) % lines] * per_line];
    free(order);
    void **at = mine;
    long slack = period_ns / 20 < 50000 ? period_ns / 20 : 50000;
    prctl(PR_SET_TIMERSLACK, slack > 0 ? slack : 1, 0, 0, 0);
    struct timespec due, woke;
    clock_gettime(CLOCK_MONOTONIC, &due);
    long late = 0;
    double start = cpu_us();
    for (long i = 0; i < ticks; i++) {
        due.tv_nsec += period_ns;
        while (due.tv_nsec >= 1000000000L) {
            due.tv_nsec -= 1000000000L;
            due.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
        clock_gettime(CLOCK_MONOTONIC, &woke);
        if ((woke.tv_sec - due.tv_sec) * 1000000000L + (woke.tv_nsec - due.tv_nsec) >= period_ns)
            late++;
        for (int k = 0; k < nreads; k++) {
            struct read *r = &reads[k];
            if (process_vm_readv(pid, r->local, r->nlocal, r->remote, r->nremote, 0) != (ssize_t)r->total) {
                perror("floor: process_vm_readv");
                return 1;
            }
        }
        for (size_t k = 0; k < lines; k++)
            at = (void **)*at;
    }
    printf("%.3f\n", (cpu_us() - start) / ticks);
    fprintf(stderr, "late: %ld of %ld ticks a period or more after their due instant\n", late, ticks);
    if (at == (void **)1) /* never: keeps the chase from being optimized away */
        puts("");
    return 0;
}
