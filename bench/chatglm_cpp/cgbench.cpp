// Timing driver for chatglm.cpp 0.4.2, mirroring `chatglm bench` of ChatGLM.rs:
//   cgbench MODEL.bin PROMPT_LEN GEN_LEN [REPEAT]
// Each repeat: one forward over a PROMPT_LEN-token prompt ([gMASK] sop + fixed pseudo-random ids), then GEN_LEN
// greedy decode steps, EOS ignored (always the full length). Each step is one generate_next_token call (graph
// build + compute + argmax over the logits), as in chatglm.cpp's own generate loop. A short warm-up (8-token prompt,
// 2 steps) runs first, as in `chatglm bench`. Prints one JSON line.
// Threads: chatglm.cpp takes them from std::thread::hardware_concurrency() (see threads_shim.c).
#include "chatglm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <vector>

static double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.bin PROMPT_LEN GEN_LEN [REPEAT]\n", argv[0]);
        return 2;
    }
    const std::string path = argv[1];
    const int prompt_len = std::max(2, atoi(argv[2]));
    const int gen_len = std::max(0, atoi(argv[3]));
    const int repeat = argc > 4 ? std::max(1, atoi(argv[4])) : 1;

    double t0 = now_s();
    chatglm::Pipeline pipe(path, prompt_len + gen_len + 8);
    const double load_s = now_s() - t0;

    chatglm::GenerationConfig cfg;
    cfg.max_length = prompt_len + gen_len + 8;
    cfg.do_sample = false; // greedy
    cfg.repetition_penalty = 1.f;

    std::vector<int> prompt = {64790, 64792}; // [gMASK] sop
    uint32_t x = 12345;
    while ((int)prompt.size() < prompt_len) {
        x = x * 1664525u + 1013904223u;
        prompt.push_back(100 + (int)((x >> 8) % 60000u));
    }

    { // warm-up, as `chatglm bench` does: first touch of weights and compute buffers (8-token prompt + 2 steps)
        std::vector<int> ids(prompt.begin(), prompt.begin() + std::min(8, prompt_len));
        const int n_ctx = (int)ids.size();
        int n_past = 0;
        for (int i = 0; i < 3; i++) {
            int next = pipe.model->generate_next_token(ids, std::nullopt, cfg, n_past, n_ctx);
            n_past = (int)ids.size();
            ids.push_back(next);
        }
    }

    std::vector<double> prefill_tps, decode_ms, step_ms_all;
    int eos_seen = 0;
    for (int r = 0; r < repeat; r++) {
        std::vector<int> ids = prompt;
        const int n_ctx = (int)ids.size();
        double a = now_s();
        int next = pipe.model->generate_next_token(ids, std::nullopt, cfg, 0, n_ctx);
        double b = now_s();
        prefill_tps.push_back(prompt_len / (b - a));
        int n_past = (int)ids.size();
        ids.push_back(next);
        double d0 = now_s();
        for (int i = 0; i < gen_len; i++) {
            double s = now_s();
            next = pipe.model->generate_next_token(ids, std::nullopt, cfg, n_past, n_ctx);
            step_ms_all.push_back(1e3 * (now_s() - s));
            if (next == pipe.model->config.eos_token_id) eos_seen++;
            n_past = (int)ids.size();
            ids.push_back(next);
        }
        if (gen_len > 0) decode_ms.push_back(1e3 * (now_s() - d0) / gen_len);
        fprintf(stderr, "repeat %d: prefill %d tokens %.3f s (%.3f tok/s); decode %d tokens %.1f ms/token\n", r + 1,
                prompt_len, b - a, prompt_len / (b - a), gen_len, gen_len ? decode_ms.back() : 0.0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"engine\":\"chatglm.cpp 0.4.2\",\"model\":\"%s\",\"threads\":%u,\"prompt_len\":%d,\"gen_len\":%d,"
           "\"repeat\":%d,\"load_s\":%.3f,\"prefill_tokens_per_s_best\":%.4f,\"prefill_tokens_per_s_median\":%.4f,"
           "\"decode_ms_per_token_best\":%.3f,\"decode_ms_per_token_median\":%.3f,\"decode_step_ms_median\":%.3f,"
           "\"eos_ignored\":%d,\"peak_rss_bytes\":%lld}\n",
           path.c_str(), std::thread::hardware_concurrency(), prompt_len, gen_len, repeat, load_s,
           *std::max_element(prefill_tps.begin(), prefill_tps.end()), median(prefill_tps),
           decode_ms.empty() ? 0.0 : *std::min_element(decode_ms.begin(), decode_ms.end()), median(decode_ms),
           median(step_ms_all), eos_seen, (long long)ru.ru_maxrss * 1024);
    return 0;
}
