/* LD_PRELOAD shim: chatglm.cpp 0.4.2 has no thread option; it sizes its ggml thread pool from
 * std::thread::hardware_concurrency() (all cores when <= 4). This overrides that libstdc++ function
 * with the value of CGBENCH_THREADS (unset or invalid: the real CPU count).
 * Build: gcc -O2 -shared -fPIC -o libthreads_shim.so threads_shim.c */
#include <stdlib.h>
#include <unistd.h>

unsigned int _ZNSt6thread20hardware_concurrencyEv(void) {
    const char *s = getenv("CGBENCH_THREADS");
    long n = s ? strtol(s, NULL, 10) : 0;
    if (n <= 0) n = sysconf(_SC_NPROCESSORS_ONLN);
    return (unsigned int)(n > 0 ? n : 1);
}
