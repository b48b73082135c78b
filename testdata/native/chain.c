/* Target for the native unwinder tests (tests/native_gdb.rs): a known call chain
 * main -> a -> b -> c -> (inlined) inl -> leaf, with a variable-size frame in b (so
 * -fomit-frame-pointer builds still use a register-based CFA there), a signal handler
 * path (leaf raises SIGUSR1 when argc > 2) and a call through the PLT (puts).
 * gdb stops at `leaf`, `handler_leaf` or `puts@plt` and snapshots registers and stack. */
#include <alloca.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

volatile int sink;

__attribute__((noinline)) int handler_leaf(int x) {
    sink = x;
    return x + 5;
}

__attribute__((noinline)) void handler(int sig) {
    sink = handler_leaf(sig) + 1;
}

__attribute__((noinline)) int leaf(int x) {
    sink = x;
    if (x > 4)
        raise(SIGUSR1);
    return x * 3;
}

static inline __attribute__((always_inline)) int inl(int x) {
    int r = leaf(x + 1);
    return r + 7;
}

__attribute__((noinline)) int c(int x) {
    int r = inl(x);
    sink = r;
    return r + 1;
}

__attribute__((noinline)) int b(int x) {
    char *buf = alloca(16 + (x & 7) * 16);
    memset(buf, x, 16);
    sink = buf[3];
    int r = c(x) * 2 + 1;
    sink = buf[5];
    return r;
}

__attribute__((noinline)) int a(int x) {
    int r = b(x + 1) - 1;
    sink = r;
    return r;
}

int main(int argc, char **argv) {
    (void)argv;
    signal(SIGUSR1, handler);
    puts("chain");
    return a(argc) & 1;
}
