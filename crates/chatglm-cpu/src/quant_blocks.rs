//! Re-export of the quantized block layouts (defined once in `chatglm-weights`).
pub use chatglm_weights::quant::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, QK4_0, QK8_0};
