//! `chatglm inspect`: what a checkpoint holds and what it needs in memory.

use anyhow::{Context, Result};
use chatglm_weights::{Checkpoint, DType};
use clap::Args;
use std::collections::BTreeMap;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model folder, .gguf file or hub id.
    #[arg(short = 'm', long = "model", default_value = crate::args::DEFAULT_MODEL, env = "CHATGLM_MODEL")]
    pub model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Bytes per weight of each format, including block scales.
const FORMATS: [(&str, f64); 5] =
    [("f32", 4.0), ("f16", 2.0), ("bf16", 2.0), ("q8_0", 34.0 / 32.0), ("q4_0", 18.0 / 32.0)];

/// What `inspect` needs from a checkpoint folder or a GGUF file.
struct Summary {
    path: std::path::PathBuf,
    format: String,
    config: chatglm_weights::ModelConfig,
    tensors: Vec<chatglm_weights::Tensor>,
    bytes: u64,
    shapes: Result<(), chatglm_weights::WeightsError>,
}

fn summarize(spec: &str) -> Result<Summary> {
    let path = std::path::Path::new(spec);
    if path.is_file() {
        let model = chatglm_weights::gguf::GgufModel::open(path)?;
        let tensors: Vec<_> = model.tensors().cloned().collect();
        let bytes = tensors.iter().map(|t| t.n_bytes() as u64).sum();
        return Ok(Summary {
            path: path.to_path_buf(),
            format: "GGUF".into(),
            config: model.config.clone(),
            tensors,
            bytes,
            // GgufModel::open has checked every shape against the config.
            shapes: Ok(()),
        });
    }
    let dir = chatglm_weights::hub::resolve(spec).with_context(|| format!("cannot find model `{spec}`"))?;
    let ckpt = Checkpoint::open(&dir)?;
    Ok(Summary {
        path: dir,
        format: format!("{:?}", ckpt.format),
        config: ckpt.config.clone(),
        tensors: ckpt.tensors().cloned().collect(),
        bytes: ckpt.total_bytes(),
        shapes: ckpt.validate_shapes(),
    })
}

pub fn run(args: InspectArgs) -> Result<()> {
    let summary = summarize(&args.model)?;
    let dir = &summary.path;
    let shapes = &summary.shapes;
    let cfg = &summary.config;
    let mut dtypes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut params: u64 = 0;
    let mut matrix_params: u64 = 0;
    for t in &summary.tensors {
        *dtypes.entry(dtype_name(t.dtype)).or_default() += 1;
        params += t.n_elements() as u64;
        if t.shape.len() == 2 {
            matrix_params += t.n_elements() as u64;
        }
    }
    let other = params - matrix_params;
    let estimates: Vec<(&str, u64)> =
        FORMATS.iter().map(|(name, bpw)| (*name, (matrix_params as f64 * bpw) as u64 + other * 4)).collect();
    let kv_per_token = cfg.num_layers * 2 * cfg.multi_query_group_num * cfg.kv_channels * 2;
    if args.json {
        let v = serde_json::json!({
            "path": dir,
            "format": summary.format,
            "config": {
                "num_layers": cfg.num_layers, "hidden_size": cfg.hidden_size,
                "num_attention_heads": cfg.num_attention_heads, "kv_channels": cfg.kv_channels,
                "multi_query_group_num": cfg.multi_query_group_num, "ffn_hidden_size": cfg.ffn_hidden_size,
                "padded_vocab_size": cfg.padded_vocab_size, "seq_length": cfg.seq_length,
                "layernorm_epsilon": cfg.layernorm_epsilon, "rope_ratio": cfg.rope_ratio,
                "rope_scaling": cfg.rope_scaling.name(),
            },
            "tensors": summary.tensors.len(),
            "dtypes": dtypes,
            "parameters": params,
            "bytes": summary.bytes,
            "shapes_ok": shapes.is_ok(),
            "shape_error": shapes.as_ref().err().map(|e| e.to_string()),
            "estimated_bytes": estimates.iter().map(|(n, b)| (n.to_string(), *b)).collect::<BTreeMap<_, _>>(),
            "kv_cache_bytes_per_token_f16": kv_per_token,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("model      {}", dir.display());
    println!("format     {}", summary.format);
    println!(
        "config     {} layers, hidden {}, {} heads x {}, {} KV groups, ffn {}, vocab {}, context {}, eps {}, rope_ratio {} ({})",
        cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.kv_channels, cfg.multi_query_group_num,
        cfg.ffn_hidden_size, cfg.padded_vocab_size, cfg.seq_length, cfg.layernorm_epsilon, cfg.rope_ratio,
        if cfg.rope_ratio == 1.0 { "unscaled" } else { cfg.rope_scaling.name() }
    );
    println!(
        "tensors    {} ({})",
        summary.tensors.len(),
        dtypes.iter().map(|(k, v)| format!("{v} {k}")).collect::<Vec<_>>().join(", ")
    );
    println!("parameters {} ({:.2} B)", params, params as f64 / 1e9);
    println!("bytes      {} ({})", summary.bytes, human(summary.bytes));
    match shapes {
        Ok(()) => println!("shapes     all match config.json"),
        Err(e) => println!("shapes     MISMATCH: {e}"),
    }
    println!("weights in memory by format (norms and biases kept in f32):");
    for (name, bytes) in &estimates {
        println!("  {name:<5} {:>10}", human(*bytes));
    }
    println!(
        "KV cache   {} per token in f16 ({} for 8K tokens, {} for the full {}-token context)",
        human(kv_per_token as u64),
        human(kv_per_token as u64 * 8192),
        human(kv_per_token as u64 * cfg.seq_length as u64),
        cfg.seq_length
    );
    Ok(())
}

fn dtype_name(d: DType) -> &'static str {
    d.name()
}

/// Bytes as GiB/MiB/KiB with two decimals.
pub fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.2} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.2} KiB", b / 1024.0)
    } else {
        format!("{bytes} B")
    }
}
