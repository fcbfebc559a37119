/* Runs lutc kernel objects outside Python (under qemu-aarch64 in the tests).

   Usage: harness PLAN

   PLAN is a text file written by emulate.py:
     lutc-plan 1
     buffer <nbytes> <input file or ->        (repeated; buffers are numbered from 0)
     launch <kernel> <ntasks> <nslots> <slot>...
                                              (slot: "b<i>" = address of buffer i,
                                               anything else = a u64 value; the first
                                               three slots are the grid)
     output <buffer> <file>
     end
   Buffers without an input are filled with 0xCD so reads of unwritten memory show up as
   wrong results. Every buffer sits between 64-byte guards that must be intact after all
   launches, so an out-of-bounds write is reported (exit 3) instead of passing silently.

   The kernels call lutc_pool_run(task, ctx, ntasks, nthreads); here it runs the tasks
   serially. Kernel names come from -DLUTC_KERNELS="X(name) ...", default build_tables
   and lut_gemm; each is linked as <name>_launch. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef LUTC_KERNELS
#define LUTC_KERNELS X(build_tables) X(lut_gemm)
#endif

typedef void (*launch_fn)(uint64_t *ctx, int64_t ntasks, int64_t nthreads);
typedef void (*task_fn)(void *ctx, int64_t pid);

#define X(name) void name##_launch(uint64_t *, int64_t, int64_t);
LUTC_KERNELS
#undef X

static const struct { const char *name; launch_fn fn; } KERNELS[] = {
#define X(name) {#name, name##_launch},
    LUTC_KERNELS
#undef X
};

void lutc_pool_run(task_fn task, void *ctx, int64_t ntasks, int64_t nthreads) {
    (void)nthreads;
    for (int64_t t = 0; t < ntasks; t++) task(ctx, t);
}

#define GUARD 64
#define MAX_BUFFERS 64
#define MAX_SLOTS 64

static unsigned char *bufs[MAX_BUFFERS];
static uint64_t sizes[MAX_BUFFERS];
static int nbufs;

static void die(int code, const char *msg, const char *arg) {
    fprintf(stderr, "harness: %s%s%s\n", msg, arg ? " " : "", arg ? arg : "");
    exit(code);
}

static void read_file(const char *path, unsigned char *dst, uint64_t n) {
    FILE *f = fopen(path, "rb");
    if (!f) die(2, "cannot open input", path);
    if (fread(dst, 1, n, f) != n) die(2, "short input file", path);
    fclose(f);
}

static void add_buffer(uint64_t n, const char *input) {
    if (nbufs == MAX_BUFFERS) die(2, "too many buffers", NULL);
    unsigned char *raw = aligned_alloc(GUARD, (n + 2 * GUARD + GUARD - 1) / GUARD * GUARD);
    if (!raw) die(2, "out of memory", NULL);
    memset(raw, 0xA5, GUARD);
    memset(raw + GUARD, 0xCD, n);
    memset(raw + GUARD + n, 0xA5, GUARD);
    if (strcmp(input, "-") != 0) read_file(input, raw + GUARD, n);
    bufs[nbufs] = raw + GUARD;
    sizes[nbufs++] = n;
}

static void check_guards(void) {
    for (int i = 0; i < nbufs; i++)
        for (int j = 0; j < GUARD; j++)
            if (bufs[i][-1 - j] != 0xA5 || bufs[i][sizes[i] + j] != 0xA5) {
                fprintf(stderr, "harness: out-of-bounds write around buffer %d\n", i);
                exit(3);
            }
}

static void launch(FILE *plan) {
    char name[128], tok[64];
    long long ntasks;
    int nslots;
    uint64_t ctx[MAX_SLOTS];
    if (fscanf(plan, "%127s %lld %d", name, &ntasks, &nslots) != 3 || nslots > MAX_SLOTS || nslots < 3)
        die(2, "bad launch line", NULL);
    for (int i = 0; i < nslots; i++) {
        if (fscanf(plan, "%63s", tok) != 1) die(2, "missing slot", name);
        if (tok[0] == 'b') {
            int b = atoi(tok + 1);
            if (b < 0 || b >= nbufs) die(2, "bad buffer reference", tok);
            ctx[i] = (uint64_t)(uintptr_t)bufs[b];
        } else {
            ctx[i] = strtoull(tok, NULL, 10);
        }
    }
    for (size_t k = 0; k < sizeof KERNELS / sizeof KERNELS[0]; k++)
        if (strcmp(KERNELS[k].name, name) == 0) {
            KERNELS[k].fn(ctx, ntasks, 1);
            return;
        }
    die(2, "unknown kernel", name);
}

int main(int argc, char **argv) {
    if (argc != 2) die(2, "usage: harness PLAN", NULL);
    FILE *plan = fopen(argv[1], "r");
    if (!plan) die(2, "cannot open plan", argv[1]);
    char word[64], path[4096];
    int version;
    if (fscanf(plan, "%63s %d", word, &version) != 2 || strcmp(word, "lutc-plan") || version != 1)
        die(2, "not a lutc-plan v1 file", argv[1]);
    while (fscanf(plan, "%63s", word) == 1) {
        if (!strcmp(word, "end")) {
            check_guards();
            return 0;
        } else if (!strcmp(word, "buffer")) {
            unsigned long long n;
            if (fscanf(plan, "%llu %4095s", &n, path) != 2) die(2, "bad buffer line", NULL);
            add_buffer(n, path);
        } else if (!strcmp(word, "launch")) {
            launch(plan);
        } else if (!strcmp(word, "output")) {
            int b;
            if (fscanf(plan, "%d %4095s", &b, path) != 2 || b < 0 || b >= nbufs) die(2, "bad output line", NULL);
            check_guards();
            FILE *f = fopen(path, "wb");
            if (!f || fwrite(bufs[b], 1, sizes[b], f) != sizes[b]) die(2, "cannot write", path);
            fclose(f);
        } else {
            die(2, "unknown plan directive", word);
        }
    }
    die(2, "plan has no 'end'", NULL);
    return 2;
}
