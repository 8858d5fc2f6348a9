//! `chatglm quantize`: write a model as one GGUF file at a chosen precision,
//! or (`--report`) measure what each precision costs in quality.
//!
//! Writing streams tensor by tensor: the GGUF header is written first, then
//! each tensor is converted in row batches (in parallel) and appended, and
//! the source pages just read are dropped from the resident set, so peak
//! memory stays near one batch, not the model. The file is written to a
//! temporary name beside the target and renamed when complete.

use crate::args::{init_threads, DEFAULT_MODEL};
use crate::bench::peak_rss_bytes;
use anyhow::{bail, Context, Result};
use chatglm_engine::gguf_vocab::tokenizer_metadata;
use chatglm_model::{
    Config, CpuBackend, ForwardState, KvDType, LoadOptions, LogitsWanted, Model, SequenceInput, TensorSource,
    WeightFormat,
};
use chatglm_tokenizer::ChatGlmTokenizer;
use chatglm_weights::gguf::{
    convert_rows, gguf_file_size, row_count, GgufModel, GgufTensorSpec, GgufValue, GgufWriter, QuantizePlan, TensorPlan,
};
use chatglm_weights::lora::LoraAdapter;
use chatglm_weights::{Checkpoint, DType};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Source model: a checkpoint folder, a hub id or a .gguf file.
    #[arg(short = 'm', long = "model", default_value = DEFAULT_MODEL, env = "CHATGLM_MODEL")]
    pub model: String,
    /// Format of the layer matrices (QKV, attention output, MLP):
    /// f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1.
    #[arg(long, default_value = "q4_0")]
    pub dtype: String,
    /// Format of the output layer (default: q8_0 when --dtype is 4/5-bit, else --dtype).
    #[arg(long)]
    pub output_dtype: Option<String>,
    /// Format of the embedding table (default: --dtype).
    #[arg(long)]
    pub embedding_dtype: Option<String>,
    /// The .gguf file to write.
    #[arg(short = 'o', long, required_unless_present = "report")]
    pub output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    pub force: bool,
    /// Instead of writing a file, compare each of --formats against --reference:
    /// KL divergence and top-1 agreement of the logits at every position of --text.
    #[arg(long)]
    pub report: bool,
    /// Report: the text to score (default: a built-in mixed Chinese/English paragraph).
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Report: formats to compare (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "f16,bf16,q8_0,q5_1,q5_0,q4_1,q4_0")]
    pub formats: Vec<String>,
    /// Report: the reference precision (f32; use f16 when f32 does not fit in memory).
    #[arg(long, default_value = "f32")]
    pub reference: String,
    /// Report: score at most this many tokens of the text.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Report: tokens per forward pass (teacher forcing, all logits of each chunk).
    #[arg(long, default_value_t = 128)]
    pub chunk: usize,
    /// Report: print JSON instead of a Markdown table.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: physical cores).
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// A LoRA adapter folder as PEFT saves it, merged into the weights (in
    /// f32) before they are quantized, so the file holds the fine-tuned
    /// model: DIR or DIR:SCALE. Repeatable; adapters merge in order. With
    /// --report, every format and the reference are the merged model.
    #[arg(long = "lora", value_name = "DIR[:SCALE]")]
    pub lora: Vec<String>,
}

/// The built-in report text: prose, dialogue and code, in both languages.
const DEFAULT_TEXT: &str = "ChatGLM2-6B 是开源中英双语对话模型 ChatGLM-6B 的第二代版本，在保留了初代模型对话流畅、\
部署门槛较低等众多优秀特性的基础之上，引入了更强大的性能、更长的上下文和更高效的推理。\n\
Quantization stores each block of 32 weights as small integers and one scale, trading a little \
accuracy for a model that is three to four times smaller and faster to stream from memory.\n\
[Round 1]\n\n问：你好\n\n答：你好👋！我是人工智能助手 ChatGLM2-6B，很高兴见到你，欢迎问我任何问题。\n\
fn main() { let xs: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", xs); }\n\
The quick brown fox jumps over the lazy dog; 敏捷的棕色狐狸跳过了那只懒狗。1234567890.";

/// A model source with its tokenizer.
struct Source {
    /// The model's name (the last component of what `-m` named).
    name: String,
    tensors: Box<dyn TensorSource>,
    tokenizer: ChatGlmTokenizer,
}

impl Source {
    fn open(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        let name = path.file_stem().map_or_else(|| spec.to_string(), |n| n.to_string_lossy().into_owned());
        if path.is_file() {
            let model = GgufModel::open(path)?;
            let tokenizer = chatglm_engine::gguf_vocab::tokenizer_from_gguf(&model.file)?;
            return Ok(Self { name, tensors: Box::new(model), tokenizer });
        }
        let dir = chatglm_weights::hub::resolve(spec).with_context(|| format!("cannot find model `{spec}`"))?;
        let ckpt = Checkpoint::open(&dir)?;
        ckpt.validate_shapes()?;
        let tok = ckpt.tokenizer_path.clone().with_context(|| format!("no tokenizer.model in {}", dir.display()))?;
        let tokenizer = ChatGlmTokenizer::from_file(&tok)?;
        Ok(Self { name, tensors: Box::new(ckpt), tokenizer })
    }

    fn config(&self) -> &Config {
        self.tensors.config()
    }
}

fn parse_format(s: &str) -> Result<WeightFormat> {
    Ok(s.parse::<WeightFormat>()?)
}

fn dtype_of(f: WeightFormat) -> Result<DType> {
    Ok(match f {
        WeightFormat::F32 => DType::F32,
        WeightFormat::F16 => DType::F16,
        WeightFormat::BF16 => DType::BF16,
        WeightFormat::Q8_0 => DType::Q8_0,
        WeightFormat::Q4_0 => DType::Q4_0,
        WeightFormat::Q4_1 => DType::Q4_1,
        WeightFormat::Q5_0 => DType::Q5_0,
        WeightFormat::Q5_1 => DType::Q5_1,
        WeightFormat::Auto => bail!("quantize needs an explicit format (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1)"),
    })
}

impl QuantizeArgs {
    fn plan(&self, format: WeightFormat) -> Result<QuantizePlan> {
        let opt = |s: &Option<String>| s.as_deref().map(|s| parse_format(s).and_then(dtype_of)).transpose();
        Ok(QuantizePlan {
            format: dtype_of(format)?,
            output: opt(&self.output_dtype)?,
            embedding: opt(&self.embedding_dtype)?,
        })
    }

    /// The `--lora` adapters, opened and checked against the source model.
    fn adapters(&self, cfg: &Config) -> Result<Vec<LoraAdapter>> {
        let shapes = chatglm_weights::lora::expected_shapes(cfg);
        let mut adapters = Vec::with_capacity(self.lora.len());
        for spec in &self.lora {
            let (dir, scale) = crate::args::parse_lora(spec)?;
            let adapter = LoraAdapter::open(&dir, scale)?;
            adapter.check(|name| shapes.get(name).cloned())?;
            adapters.push(adapter);
        }
        Ok(adapters)
    }

    fn load_options(&self, format: WeightFormat) -> Result<LoadOptions> {
        let opt = |s: &Option<String>| s.as_deref().map(parse_format).transpose();
        Ok(LoadOptions {
            format,
            output_format: opt(&self.output_dtype)?,
            embedding_format: opt(&self.embedding_dtype)?,
            // The report runs a few forward passes: no reason to copy the reference weights.
            mmap: true,
        })
    }
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    init_threads(args.threads)?;
    if args.report {
        return report(&args);
    }
    let output = args.output.clone().context("--output is required")?;
    let plan = args.plan(parse_format(&args.dtype)?)?;
    if output.exists() && !args.force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    let source = Source::open(&args.model)?;
    let adapters = args.adapters(source.config())?;
    let start = Instant::now();
    let size = write_gguf(&source, &plan, &adapters, &output)?;
    let rss = peak_rss_bytes();
    eprintln!(
        "wrote {} ({:.2} GiB, layers {}, output {}, embedding {}) in {:.1} s, peak RSS {:.2} GiB",
        output.display(),
        size as f64 / GIB,
        plan.format,
        plan.output_dtype(),
        plan.embedding_dtype(),
        start.elapsed().as_secs_f64(),
        rss as f64 / GIB
    );
    Ok(())
}

const GIB: f64 = (1u64 << 30) as f64;

/// Source rows converted per batch: big enough to keep every core busy,
/// small enough that a batch (source pages + output) is a few tens of MB.
const BATCH_SOURCE_BYTES: usize = 32 << 20;

/// Removes a temporary file unless it was renamed into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn file_metadata(source: &Source, plan: &QuantizePlan) -> Vec<(String, GgufValue)> {
    let cfg = source.config();
    let mut metadata = plan.metadata(cfg);
    metadata.push(("general.name".into(), GgufValue::String(source.name.clone())));
    metadata.push((
        "general.quantized_by".into(),
        GgufValue::String(format!("chatglm-rs {} quantize", env!("CARGO_PKG_VERSION"))),
    ));
    metadata.extend(tokenizer_metadata(&source.tokenizer, cfg.padded_vocab_size));
    metadata
}

/// Writes `source` as GGUF under `plan` to `output` (via a temporary file
/// renamed at the end). Returns the file size.
fn write_gguf(source: &Source, plan: &QuantizePlan, adapters: &[LoraAdapter], output: &Path) -> Result<u64> {
    let cfg = source.config();
    let tensors = plan.tensors(cfg)?;
    warn_fallbacks(&tensors);
    let metadata = file_metadata(source, plan);
    let specs: Vec<GgufTensorSpec> = tensors.iter().map(|t| t.spec.clone()).collect();

    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = output.file_name().context("--output must name a file")?.to_string_lossy();
    let temp = TempFile { path: dir.join(format!(".{name}.tmp-{}", std::process::id())), keep: false };
    let file = std::fs::File::create(&temp.path).with_context(|| format!("cannot create {}", temp.path.display()))?;
    let mut writer = GgufWriter::new(BufWriter::with_capacity(8 << 20, file), &temp.path, &metadata, specs)?;

    let total: u64 = tensors.iter().map(|t| source.tensors.tensor(&t.source).map_or(0, |s| s.n_bytes() as u64)).sum();
    let bar = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("{msg:32} [{bar:30}] {bytes}/{total_bytes} ({elapsed}, eta {eta})")
            .expect("invariant: static template")
            .progress_chars("=> "),
    );
    for t in &tensors {
        let stored = source.tensors.tensor(&t.source)?;
        if stored.shape != t.spec.shape {
            bail!("tensor {}: shape {:?} in the source, the config implies {:?}", t.source, stored.shape, t.spec.shape);
        }
        bar.set_message(format!("{} → {}", t.spec.name, t.spec.dtype));
        // An adapter's matrix is merged whole in f32 first; the bar still
        // counts the stored bytes.
        let merged = chatglm_weights::lora::merge_adapters(adapters, &t.source, stored)?;
        if merged.is_some() && stored.dtype.is_quantized() {
            bar.suspend(|| {
                eprintln!(
                    "warning: {} is stored as {}: the adapter merges into its dequantized values, which are then \
                     quantized again (merge into the float checkpoint for the exact fine-tune)",
                    t.source, stored.dtype
                )
            });
        }
        let src = merged.as_ref().unwrap_or(stored);
        let rows = row_count(src);
        let src_row_bytes = src.n_bytes() / rows.max(1);
        let stored_row_bytes = stored.n_bytes() / rows.max(1);
        let batch_rows = (BATCH_SOURCE_BYTES / src_row_bytes.max(1)).clamp(1, rows.max(1));
        let threads = rayon::current_num_threads().max(1);
        for batch in (0..rows).step_by(batch_rows) {
            let end = (batch + batch_rows).min(rows);
            let per_task = (end - batch).div_ceil(threads * 4).max(1);
            let pieces: Vec<Vec<u8>> = (batch..end)
                .step_by(per_task)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|r| {
                    let (mut scratch, mut out) = (Vec::new(), Vec::new());
                    convert_rows(src, t.spec.dtype, r..(r + per_task).min(end), &mut scratch, &mut out)?;
                    Ok(out)
                })
                .collect::<Result<_, chatglm_weights::WeightsError>>()?;
            for piece in &pieces {
                writer.write_data(piece)?;
            }
            src.data.release_pages(batch * src_row_bytes..end * src_row_bytes);
            bar.inc(((end - batch) * stored_row_bytes) as u64);
        }
        if merged.is_some() {
            // The merge read the whole stored matrix.
            stored.data.release_pages(0..stored.n_bytes());
        }
        if rows == 0 {
            writer.write_tensor(&t.spec.name, &[])?;
        }
    }
    bar.finish_and_clear();
    let file = writer.finish()?.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("cannot sync {}", temp.path.display()))?;
    let size = file.metadata()?.len();
    drop(file);
    let mut temp = temp;
    std::fs::rename(&temp.path, output)
        .with_context(|| format!("cannot rename {} to {}", temp.path.display(), output.display()))?;
    temp.keep = true;
    Ok(size)
}

/// Names the matrices written as f16 because the format's blocks do not
/// tile their rows.
fn warn_fallbacks(tensors: &[TensorPlan]) {
    let fell_back: Vec<&TensorPlan> = tensors.iter().filter(|t| t.fallback_from.is_some()).collect();
    if fell_back.is_empty() {
        return;
    }
    eprintln!(
        "warning: {} of {} tensors are written as f16: their rows are not whole 32-weight blocks of the format asked for",
        fell_back.len(),
        tensors.len()
    );
    for t in fell_back {
        let asked = t.fallback_from.map(|d| d.to_string()).unwrap_or_default();
        eprintln!("  {} ({:?}, {asked} → f16)", t.source, t.spec.shape);
    }
}

/// Quality of one format against the reference.
#[derive(Debug, Clone, serde::Serialize)]
struct FormatQuality {
    format: String,
    /// KL(reference ‖ format) in nats, mean over positions.
    kl_mean: f64,
    /// The largest per-position KL.
    kl_max: f64,
    /// Fraction of positions whose argmax equals the reference's.
    top1_agreement: f64,
    /// Bytes of the matrices a decode step streams (layers + output layer).
    weight_bytes: usize,
    /// Size of the GGUF file `chatglm quantize` writes at this format.
    file_bytes: u64,
}

/// Logits of every position of `ids`, teacher-forced in chunks of `chunk` tokens.
fn all_logits(model: &Model<CpuBackend>, ids: &[u32], chunk: usize) -> Result<Vec<f32>> {
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    let mut out = Vec::with_capacity(ids.len() * model.config.padded_vocab_size);
    for c in ids.chunks(chunk.max(1)) {
        let mut batch = [SequenceInput { tokens: c, cache: &mut cache, logits: LogitsWanted::All }];
        out.extend_from_slice(model.forward(&mut state, &mut batch)?);
    }
    Ok(out)
}

/// log-softmax in f64.
fn log_softmax(logits: &[f32], out: &mut Vec<f64>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_z = max + sum.ln();
    out.clear();
    out.extend(logits.iter().map(|&v| v as f64 - log_z));
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| if x > bv { (i, x) } else { (bi, bv) }).0
}

/// (mean KL, max KL, top-1 agreement) of `test` against `reference`, rows of `vocab`.
fn compare(reference: &[f32], test: &[f32], vocab: usize) -> (f64, f64, f64) {
    let (mut p, mut q) = (Vec::new(), Vec::new());
    let (mut sum, mut max, mut agree, mut n) = (0.0f64, 0.0f64, 0usize, 0usize);
    for (r, t) in reference.chunks_exact(vocab).zip(test.chunks_exact(vocab)) {
        log_softmax(r, &mut p);
        log_softmax(t, &mut q);
        let kl: f64 = p.iter().zip(&q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum::<f64>().max(0.0);
        sum += kl;
        max = max.max(kl);
        agree += usize::from(argmax(r) == argmax(t));
        n += 1;
    }
    let n = n.max(1) as f64;
    (sum / n, max, agree as f64 / n)
}

fn report(args: &QuantizeArgs) -> Result<()> {
    let source = Source::open(&args.model)?;
    let cfg = source.config().clone();
    let text = match &args.text {
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("cannot read --text {}", p.display()))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let mut ids = source.tokenizer.encode(&text);
    ids.truncate(args.max_tokens.min(cfg.seq_length));
    if ids.is_empty() {
        bail!("the text has no tokens");
    }
    let vocab = cfg.padded_vocab_size;
    let adapters = args.adapters(&cfg)?;
    let reference_format = parse_format(&args.reference)?;
    eprintln!("reference {}: {} tokens of {} ...", reference_format.name(), ids.len(), args.model);
    let t0 = Instant::now();
    let reference = {
        let model = Model::load_with_adapters(
            CpuBackend::for_config(&cfg),
            source.tensors.as_ref(),
            LoadOptions::new(reference_format),
            &adapters,
            &mut |_, _| {},
        )?;
        all_logits(&model, &ids, args.chunk)?
    };
    eprintln!("  {:.1} s", t0.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    for f in &args.formats {
        let format = parse_format(f)?;
        let t0 = Instant::now();
        let model = Model::load_with_adapters(
            CpuBackend::for_config(&cfg),
            source.tensors.as_ref(),
            args.load_options(format)?,
            &adapters,
            &mut |_, _| {},
        )?;
        let logits = all_logits(&model, &ids, args.chunk)?;
        let (kl_mean, kl_max, top1) = compare(&reference, &logits, vocab);
        let plan = args.plan(format)?;
        let specs: Vec<GgufTensorSpec> = plan.tensors(&cfg)?.into_iter().map(|t| t.spec).collect();
        let file_bytes = gguf_file_size(&file_metadata(&source, &plan), &specs)?;
        let q = FormatQuality {
            format: format.name().to_string(),
            kl_mean,
            kl_max,
            top1_agreement: top1,
            weight_bytes: model.weight_bytes(),
            file_bytes,
        };
        eprintln!(
            "  {:5} KL mean {:.3e}, top-1 {:.1}% ({:.1} s)",
            q.format,
            kl_mean,
            top1 * 100.0,
            t0.elapsed().as_secs_f64()
        );
        rows.push(q);
    }

    if args.json {
        let doc = serde_json::json!({
            "model": args.model,
            "reference": reference_format.name(),
            "tokens": ids.len(),
            "formats": rows,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "model `{}`, reference {}, {} tokens (teacher forcing, chunks of {}), f32 KV cache\n",
        args.model,
        reference_format.name(),
        ids.len(),
        args.chunk
    );
    println!("| format | KL mean (nats) | KL max | top-1 agreement | weights streamed | file size |");
    println!("|---|---|---|---|---|---|");
    for q in &rows {
        println!(
            "| {} | {:.2e} | {:.2e} | {:.1}% | {} | {} |",
            q.format,
            q.kl_mean,
            q.kl_max,
            q.top1_agreement * 100.0,
            human_bytes(q.weight_bytes as u64),
            human_bytes(q.file_bytes)
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.2} GiB", n as f64 / GIB)
    } else if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_identical_logits_is_zero_and_grows_with_noise() {
        let r: Vec<f32> = (0..64).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let (kl, max, top1) = compare(&r, &r, 16);
        assert!(kl.abs() < 1e-12 && max.abs() < 1e-12 && top1 == 1.0);
        let t: Vec<f32> = r.iter().enumerate().map(|(i, v)| v + if i % 3 == 0 { 0.5 } else { 0.0 }).collect();
        let (kl, max, _) = compare(&r, &t, 16);
        assert!(kl > 0.0 && max >= kl);
    }
}
