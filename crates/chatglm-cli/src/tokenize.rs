//! `chatglm tokenize`: the stable JSON Lines contract for token ids.

use anyhow::{bail, Context, Result};
use chatglm_tokenizer::ChatGlmTokenizer;
use clap::Args;
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    /// A tokenizer.model file, a model folder holding one, or a hub id.
    #[arg(short = 'm', long = "model", default_value = crate::args::DEFAULT_MODEL, env = "CHATGLM_MODEL")]
    pub model: String,
    /// Encode without the `[gMASK] sop` prefix.
    #[arg(long)]
    pub no_special: bool,
    /// Read JSON arrays of ids and write JSON strings instead.
    #[arg(long)]
    pub decode: bool,
}

/// Finds and loads the tokenizer for a model argument.
pub fn load_tokenizer(spec: &str) -> Result<ChatGlmTokenizer> {
    let path = Path::new(spec);
    let file = if path.is_file() {
        path.to_path_buf()
    } else {
        let dir = chatglm_weights::hub::resolve(spec).with_context(|| format!("cannot find model `{spec}`"))?;
        dir.join("tokenizer.model")
    };
    ChatGlmTokenizer::from_file(&file).with_context(|| format!("cannot load tokenizer from {}", file.display()))
}

pub fn run(args: TokenizeArgs) -> Result<()> {
    let tok = load_tokenizer(&args.model)?;
    let stdin = std::io::stdin();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in stdin.lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        if args.decode {
            let ids: Vec<u32> =
                serde_json::from_str(&line).with_context(|| format!("line {n}: expected a JSON array of token ids"))?;
            serde_json::to_writer(&mut out, &tok.decode(&ids))?;
        } else {
            let text: String = match serde_json::from_str(&line) {
                Ok(t) => t,
                Err(e) => bail!("line {n}: expected a JSON string: {e}"),
            };
            let ids = if args.no_special { tok.encode_no_special(&text) } else { tok.encode(&text) };
            serde_json::to_writer(&mut out, &ids)?;
        }
        out.write_all(b"\n")?;
        out.flush()?;
    }
    Ok(())
}
