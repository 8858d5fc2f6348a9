/* Memory read bandwidth probe: sum a 1 GiB buffer of 64-bit words with N threads, best of 5, the buffer on
 * huge pages (MADV_HUGEPAGE, as ChatGLM.rs keeps its weights) and each pass run both plainly and with a software
 * prefetch 8 KiB ahead (as ChatGLM.rs's kernels do), keeping the faster: the ceiling a streaming kernel can reach.
 *   membw [THREADS...]   (default 1 2) -> one line per thread count: "threads=N best_gb_s=X"
 * Build: gcc -O2 -mavx2 -pthread -o membw membw.c */
#include <immintrin.h>
#include <sys/mman.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BYTES (1ull << 30)
static uint64_t *buf;
struct job { size_t lo, hi; uint64_t sum; int prefetch; };

static void *worker(void *p) {
    struct job *j = p;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = j->lo; i < j->hi; i += 16) {
        if (j->prefetch) {
            _mm_prefetch((const char *)(buf + i) + 8192, _MM_HINT_T0);
            _mm_prefetch((const char *)(buf + i) + 8192 + 64, _MM_HINT_T0);
        }
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(buf + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(buf + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(buf + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(buf + i + 12)));
    }
    uint64_t t[4];
    _mm256_storeu_si256((__m256i *)t, _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)));
    j->sum = t[0] + t[1] + t[2] + t[3];
    return NULL;
}

static double now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }

int main(int argc, char **argv) {
    size_t n = BYTES / 8;
    if (posix_memalign((void **)&buf, 2 << 20, BYTES)) return 1;
    madvise(buf, BYTES, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++) buf[i] = i;
    int nt_list[8] = {1, 2}, nnt = 2;
    if (argc > 1) { nnt = 0; for (int a = 1; a < argc && nnt < 8; a++) nt_list[nnt++] = atoi(argv[a]); }
    for (int k = 0; k < nnt; k++) {
        int nt = nt_list[k] > 0 ? nt_list[k] : 1;
        double best = 0; uint64_t check = 0;
        for (int rep = 0; rep < 10; rep++) {
            pthread_t th[64]; struct job jobs[64];
            size_t chunk = (n / nt) & ~(size_t)15;
            double t0 = now();
            for (int t = 0; t < nt; t++) {
                jobs[t].prefetch = rep & 1;
                jobs[t].lo = t * chunk; jobs[t].hi = t == nt - 1 ? n : (t + 1) * chunk;
                pthread_create(&th[t], NULL, worker, &jobs[t]);
            }
            check = 0;
            for (int t = 0; t < nt; t++) { pthread_join(th[t], NULL); check += jobs[t].sum; }
            double gbs = BYTES / (now() - t0) / 1e9;
            if (gbs > best) best = gbs;
        }
        printf("threads=%d best_gb_s=%.2f check=%llu\n", nt, best, (unsigned long long)check);
    }
    free(buf);
    return 0;
}
