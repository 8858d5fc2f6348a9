//! `chatglm`: chat with ChatGLM2-6B, generate, serve, quantize, benchmark,
//! tokenize and inspect. Each subcommand lives in its own module and only
//! parses arguments, calls the library crates and prints.

#![forbid(unsafe_code)]
mod args;
mod bench;
mod chat;
mod generate;
mod inspect;
mod quantize;
mod serve;
mod tokenize;

use clap::{Parser, Subcommand};

/// ChatGLM2-6B inference in Rust: CPU, quantized, OpenAI-compatible server.
#[derive(Parser)]
#[command(name = "chatglm", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Interactive chat (the CLI demo). Reads one query per line when stdin is not a terminal.
    Chat(chat::ChatArgs),
    /// One chat round (or raw continuation with --raw), streamed or as JSON.
    Generate(generate::GenerateArgs),
    /// Text to token ids (JSON Lines on stdin → JSON arrays on stdout), or back with --decode.
    Tokenize(tokenize::TokenizeArgs),
    /// Measure load time, prefill and decode speed, bandwidth and peak memory.
    Bench(bench::BenchArgs),
    /// OpenAI-compatible HTTP server with continuous batching (and the official api.py route, a web chat page, /metrics).
    Serve(serve::ServeArgs),
    /// Describe a model: config, tensors, dtypes, parameters, memory at each format.
    Inspect(inspect::InspectArgs),
    /// Write a model as one .gguf file (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1),
    /// or --report the quality (KL divergence, top-1 agreement) of each format.
    Quantize(quantize::QuantizeArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHATGLM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,chatglm_server=info,chatglm_engine=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Chat(a) => chat::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Quantize(a) => quantize::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
