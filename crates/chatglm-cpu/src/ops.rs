//! Element-wise and row-wise operations of the ChatGLM layer.
//!
//! These touch O(hidden) values per token, next to O(hidden²) for the matrix
//! products, so they are written for clarity and left to auto-vectorisation,
//! except for the exponentials (SwiGLU here, softmax in attention), which go
//! through the vectorised [`crate::vmath`] table.

/// RMSNorm over each `weight.len()`-wide row: `y = x / sqrt(mean(x²) + eps) * weight`.
/// The mean of squares is accumulated in f64 so it matches PyTorch's f32
/// reduction within rounding at any width.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, y: &mut [f32]) {
    let n = weight.len();
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        let ms = xr.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / n as f64;
        let inv = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for ((o, &v), &w) in yr.iter_mut().zip(xr).zip(weight) {
            *o = w * (v * inv);
        }
    }
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Adds `bias` to every `bias.len()`-wide row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for row in x.chunks_exact_mut(bias.len()) {
        add_inplace(row, bias);
    }
}

/// SwiGLU over rows of width `2 * ffn`: `out = silu(a) * b` where `[a | b]` is the row.
pub fn swiglu(kernels: &crate::Kernels, x: &[f32], ffn: usize, out: &mut [f32]) {
    for (xr, or) in x.chunks_exact(2 * ffn).zip(out.chunks_exact_mut(ffn)) {
        let (a, b) = xr.split_at(ffn);
        (kernels.vmath.swiglu)(a, b, or);
    }
}

/// The rotary table: `(cos, sin)` of `position · θ_i`, `θ_i = base^(-2i / rot_dim)`
/// for `i < rot_dim / 2`, where `rot_dim = head_dim / 2` (ChatGLM rotates only
/// the first half of each head).
#[derive(Debug, Clone)]
pub struct RopeTable {
    inv_freq: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, base: f32) -> Self {
        Self::with_position_scale(head_dim, base, 1.0)
    }

    /// As [`RopeTable::new`] with positions multiplied by `position_scale`
    /// (position interpolation, e.g. 1/16 for ChatGLM2-6B-32K), folded into
    /// the frequencies: exact for the power-of-two ratios the releases use.
    pub fn with_position_scale(head_dim: usize, base: f32, position_scale: f32) -> Self {
        let rot_dim = head_dim / 2;
        let inv_freq =
            (0..rot_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / rot_dim as f32) * position_scale).collect();
        Self { inv_freq }
    }

    /// `θ_i` of each rotated pair (a GPU builds its angles from the same values).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// Number of rotated pairs per head.
    pub fn n_pairs(&self) -> usize {
        self.inv_freq.len()
    }

    /// Rotates interleaved pairs `(v[2i], v[2i+1])` of the first half of every
    /// `head_dim`-wide head in `heads` for the given position.
    pub fn apply(&self, heads: &mut [f32], head_dim: usize, position: usize) {
        let pos = position as f32;
        for head in heads.chunks_exact_mut(head_dim) {
            for (i, &f) in self.inv_freq.iter().enumerate() {
                // f32 product then cos/sin, as the official table is built.
                let angle = pos * f;
                let (sin, cos) = angle.sin_cos();
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * cos - x1 * sin;
                head[2 * i + 1] = x1 * cos + x0 * sin;
            }
        }
    }
}

/// Numerically stable softmax in place.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}
