/* A small library that bench/churn.py loads, runs in and unloads again and again: each copy
 * is a new module for a native profiler to map, index and symbolize, and then to forget. */
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

__attribute__((noinline)) static unsigned long churn_step(unsigned long x) {
    for (int i = 0; i < 1000; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

/* Busy in this library for `seconds`. */
unsigned long churn_spin(double seconds) {
    double end = now() + seconds;
    unsigned long x = 1;
    while (now() < end)
        x = churn_step(x);
    return x;
}
