// A kernel timeline for machines without Nsight Systems: loaded into any CUDA
// program through CUDA_INJECTION64_PATH, it records every kernel's start and
// end on the GPU (CUPTI activity records; kernels inside CUDA graphs come one
// by one) and writes them at exit as CSV to $KTRACE_OUT:
//   start_ns,end_ns,grid,block,registers,name
// Build (CUPTI headers and library from the CUDA toolkit or the
// nvidia-cuda-cupti wheel):
//   gcc -O2 -shared -fPIC -I$CUPTI/include tests/gpu/kernel_trace.c -L$CUPTI/lib -l:libcupti.so.13 -o kernel_trace.so
// Used by tests/gpu/profile_quant.sh.
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUF_BYTES (8u << 20)

static FILE *out;

static void CUPTIAPI buffer_requested(uint8_t **buffer, size_t *size, size_t *max_records) {
    *buffer = (uint8_t *)aligned_alloc(8, BUF_BYTES);
    *size = BUF_BYTES;
    *max_records = 0;
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t *buffer, size_t size, size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *record = NULL;
    while (out && cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && record->kind != CUPTI_ACTIVITY_KIND_KERNEL)
            continue;
        const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)record;
        fprintf(out, "%llu,%llu,%d,%d,%u,%s\n", (unsigned long long)k->start, (unsigned long long)k->end,
                k->gridX * k->gridY * k->gridZ, k->blockX * k->blockY * k->blockZ, (unsigned)k->registersPerThread,
                k->name ? k->name : "?");
    }
    free(buffer);
}

static void flush_at_exit(void) {
    cuptiActivityFlushAll(1);
    if (out) fclose(out);
    out = NULL;
}

int InitializeInjection(void) {
    const char *path = getenv("KTRACE_OUT");
    out = fopen(path ? path : "ktrace.csv", "w");
    if (!out) return 0;
    fprintf(out, "start_ns,end_ns,grid,block,registers,name\n");
    cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    atexit(flush_at_exit);
    return 1;
}
