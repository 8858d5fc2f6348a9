//! LoRA adapters in the layout PEFT saves (`adapter_config.json` +
//! `adapter_model.safetensors` or `adapter_model.bin`), merged into the
//! weights at load: `W + (lora_alpha / r) · scale · B·A` for each target
//! matrix, computed in f32 before any conversion or quantization. Targets
//! are named as the ChatGLM fine-tuning projects name them
//! (`query_key_value`, `dense`, `dense_h_to_4h`, `dense_4h_to_h`); an
//! adapter whose tensors do not fit the model is refused with the reason.

use crate::{load_pytorch_bin, load_safetensors, DType, ModelConfig, Tensor, TensorData, WeightsError};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
struct AdapterConfig {
    #[serde(default)]
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f32,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_rslora: bool,
}

/// One adapter: per official weight name, its `A` (r × in) and `B` (out × r).
#[derive(Debug)]
pub struct LoraAdapter {
    pub path: PathBuf,
    /// `lora_alpha / r` (or `/ sqrt(r)` with rsLoRA) times the user's scale.
    pub scaling: f32,
    pairs: HashMap<String, (Tensor, Tensor)>,
}

/// `base_model.model.X.lora_A[.default].weight` → (`X.weight`, is A).
fn official_name(key: &str) -> Option<(String, bool)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (suffix, is_a) in [
        (".lora_A.weight", true),
        (".lora_B.weight", false),
        (".lora_A.default.weight", true),
        (".lora_B.default.weight", false),
    ] {
        if let Some(stem) = key.strip_suffix(suffix) {
            return Some((format!("{stem}.weight"), is_a));
        }
    }
    None
}

impl LoraAdapter {
    /// Reads the PEFT folder `dir`; `scale` multiplies the adapter's own
    /// scaling (1 = as trained).
    pub fn open(dir: &Path, scale: f32) -> Result<Self, WeightsError> {
        let bad = |message: String| WeightsError::BadTensor {
            path: dir.to_path_buf(),
            tensor: "<LoRA adapter>".into(),
            message,
        };
        let cfg_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| WeightsError::io(&cfg_path, e))?;
        let cfg: AdapterConfig = serde_json::from_str(&text)
            .map_err(|e| WeightsError::Config { path: cfg_path.clone(), message: e.to_string() })?;
        if cfg.peft_type.as_deref().is_some_and(|t| t != "LORA") {
            return Err(bad(format!("peft_type is {:?}; only LORA adapters are supported", cfg.peft_type)));
        }
        if cfg.r == 0 || !(cfg.lora_alpha.is_finite()) || !scale.is_finite() {
            return Err(bad(format!("r = {}, lora_alpha = {}, scale = {scale}", cfg.r, cfg.lora_alpha)));
        }
        let tensors = if dir.join("adapter_model.safetensors").is_file() {
            load_safetensors(&dir.join("adapter_model.safetensors"))?
        } else if dir.join("adapter_model.bin").is_file() {
            load_pytorch_bin(&dir.join("adapter_model.bin"))?
        } else {
            return Err(bad("neither adapter_model.safetensors nor adapter_model.bin is there".into()));
        };
        let mut a: HashMap<String, Tensor> = HashMap::new();
        let mut b: HashMap<String, Tensor> = HashMap::new();
        for t in tensors {
            let Some((name, is_a)) = official_name(&t.name) else {
                return Err(bad(format!("tensor `{}` is not a LoRA A or B matrix", t.name)));
            };
            let t = if cfg.fan_in_fan_out { transpose(&t)? } else { t };
            if is_a {
                a.insert(name, t)
            } else {
                b.insert(name, t)
            };
        }
        let mut pairs = HashMap::new();
        for (name, ta) in a {
            let tb = b.remove(&name).ok_or_else(|| bad(format!("`{name}` has lora_A but no lora_B")))?;
            pairs.insert(name, (ta, tb));
        }
        if let Some(name) = b.keys().next() {
            return Err(bad(format!("`{name}` has lora_B but no lora_A")));
        }
        if pairs.is_empty() {
            return Err(bad("the adapter holds no LoRA matrices".into()));
        }
        let base = if cfg.use_rslora { (cfg.r as f32).sqrt() } else { cfg.r as f32 };
        Ok(Self { path: dir.to_path_buf(), scaling: cfg.lora_alpha / base * scale, pairs })
    }

    /// Checks every pair against the model: the weight exists, and `B·A` has
    /// its shape. `shape_of(name)` gives a weight's shape, `None` if absent.
    pub fn check(&self, shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<(), WeightsError> {
        for (name, (a, b)) in &self.pairs {
            let bad =
                |message: String| WeightsError::BadTensor { path: self.path.clone(), tensor: name.clone(), message };
            if name == crate::names::WORD_EMBEDDINGS {
                // The table is gathered, never multiplied: no loader merges it.
                return Err(bad("an adapter of the embedding table is not supported".into()));
            }
            let Some(shape) = shape_of(name) else {
                return Err(bad("the model has no such weight; the adapter was trained for another model".into()));
            };
            let (&[r_a, cols], &[rows, r_b]) = (&a.shape[..], &b.shape[..]) else {
                return Err(bad(format!("A is {:?} and B {:?}; both must be matrices", a.shape, b.shape)));
            };
            if r_a != r_b || shape != [rows, cols] {
                return Err(bad(format!(
                    "B·A is {rows}×{cols} (rank {r_a}/{r_b}), the model's weight is {shape:?}: a mismatching adapter"
                )));
            }
        }
        Ok(())
    }

    /// Names of the weights this adapter changes.
    pub fn targets(&self) -> impl Iterator<Item = &str> {
        self.pairs.keys().map(String::as_str)
    }

    /// Adds this adapter's `scaling · B·A` to `w` (rows × cols f32), if it
    /// changes weight `name`.
    pub fn add_to(&self, name: &str, w: &mut [f32], cols: usize) -> Result<bool, WeightsError> {
        let Some((a, b)) = self.pairs.get(name) else { return Ok(false) };
        let (a, b) = (a.to_f32()?, b.to_f32()?);
        let r = a.len() / cols.max(1);
        let rows = w.len() / cols.max(1);
        if cols == 0 || a.len() != r * cols || b.len() != rows * r {
            return Err(WeightsError::BadTensor {
                path: self.path.clone(),
                tensor: name.into(),
                message: format!("A ({} values) and B ({}) do not fit a {rows}×{cols} weight", a.len(), b.len()),
            });
        }
        for (o, row) in w.chunks_exact_mut(cols).enumerate() {
            let bo = &b[o * r..(o + 1) * r];
            for (k, &bk) in bo.iter().enumerate() {
                let s = self.scaling * bk;
                if s != 0.0 {
                    for (x, &ak) in row.iter_mut().zip(&a[k * cols..(k + 1) * cols]) {
                        *x += s * ak;
                    }
                }
            }
        }
        Ok(true)
    }
}

/// `base` with every adapter that targets `name` merged in (f32), or `None`
/// when none does.
pub fn merge_adapters(adapters: &[LoraAdapter], name: &str, base: &Tensor) -> Result<Option<Tensor>, WeightsError> {
    if !adapters.iter().any(|a| a.pairs.contains_key(name)) {
        return Ok(None);
    }
    let cols = base.shape.last().copied().unwrap_or(0);
    let n = base.n_elements();
    // The merged matrix is built in the bytes the tensor keeps, viewed as
    // little-endian f32 where the allocation is aligned for it (it is, from
    // the system allocator): one copy of a 6B MLP matrix (0.45 GB) instead of two.
    let mut bytes = vec![0u8; n * 4];
    let view =
        if cfg!(target_endian = "little") { bytemuck::try_cast_slice_mut::<u8, f32>(&mut bytes).ok() } else { None };
    if let Some(w) = view {
        base.to_f32_into(w)?;
        for a in adapters {
            a.add_to(name, w, cols)?;
        }
    } else {
        let mut w = base.to_f32()?;
        for a in adapters {
            a.add_to(name, &mut w, cols)?;
        }
        for (out, v) in bytes.chunks_exact_mut(4).zip(&w) {
            out.copy_from_slice(&v.to_le_bytes());
        }
    }
    let data = TensorData::from_vec(bytes);
    Ok(Some(Tensor { name: base.name.clone(), dtype: DType::F32, shape: base.shape.clone(), data }))
}

fn transpose(t: &Tensor) -> Result<Tensor, WeightsError> {
    let &[rows, cols] = &t.shape[..] else { return Ok(t.clone()) };
    let v = t.to_f32()?;
    let mut out = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            out[j * rows + i] = v[i * cols + j];
        }
    }
    let data = TensorData::from_vec(out.iter().flat_map(|x| x.to_le_bytes()).collect());
    Ok(Tensor { name: t.name.clone(), dtype: DType::F32, shape: vec![cols, rows], data })
}

/// Shapes of a config's weights by official name (for [`LoraAdapter::check`]).
pub fn expected_shapes(cfg: &ModelConfig) -> HashMap<String, Vec<usize>> {
    crate::names::expected_tensors(cfg).into_iter().collect()
}
