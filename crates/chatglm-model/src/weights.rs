//! The model's data in one place. Shapes are given for ChatGLM2-6B
//! (hidden 4096, 32 heads × 128, 2 KV groups, ffn 13696, vocab 65024).

use crate::Backend;

/// One transformer layer.
pub struct LayerWeights<B: Backend> {
    pub input_norm: B::Vector,  // (4096) = (hidden): RMSNorm before attention
    pub qkv: B::Matrix,         // (4608, 4096) = (32*128 + 2*2*128, hidden): [q heads | k groups | v groups]
    pub qkv_bias: B::Vector,    // (4608)
    pub dense: B::Matrix,       // (4096, 4096) = (hidden, heads*head_dim): attention output
    pub post_norm: B::Vector,   // (4096) = (hidden): RMSNorm before the MLP
    pub h_to_4h: B::Matrix,     // (27392, 4096) = (2*ffn, hidden): [gate | up]
    pub four_h_to_h: B::Matrix, // (4096, 13696) = (hidden, ffn)
}

/// All weights of the model.
pub struct Weights<B: Backend> {
    pub embedding: B::Matrix, // (65024, 4096) = (padded_vocab, hidden): rows gathered per token
    pub layers: Vec<LayerWeights<B>>, // 28
    pub final_norm: B::Vector, // (4096)
    pub output: B::Matrix,    // (65024, 4096) = (padded_vocab, hidden): untied
}
