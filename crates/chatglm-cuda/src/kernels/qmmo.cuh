// The qmmo module (compile.rs): the output layer's products of 17–32 tokens
// over f16 activations (batched decode) with the step's greedy choice folded
// in — qmma_group.cu's qmmh_{format}_4_0 (the same stages and copies as the
// qmma module's) whose group-writing blocks also keep each token's best of
// their rows (qmmg_body's BEST), merged by qmmo_greedy_merge (qmmo.cu) from
// ~8 KB a token instead of an argmax over the written logits (8.3 MB at 32
// ChatGLM2 tokens). A module of its own, looked up after every other, so
// that no other kernel's code moves (compile.rs: batch-1 decode's speed
// follows the code placement of the modules before).
#define QMMG_O_MODULE 1
// QMMO_WIDE=1 (measurements): the output product on the SwiGLU products'
// wide groups (16 row tiles of one warp each, two stages), so each chunk's
// activations are staged once for twice the rows — the narrow groups read
// 18 KB of activations from L2 for every 32 KB of q8_0 weights. The host reads
// the same define (greedy_fold::fold_shape).
#ifdef QMMO_WIDE
#define QMMG_O_WIDE QMMO_WIDE
#endif
