//! `chatglm generate` and `chatglm tokenize` against the official golden data, through the binary.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn testdata() -> PathBuf {
    chatglm_testdata::dir()
}

fn dev_model() -> String {
    testdata().join("dev/model/safetensors-f32").to_string_lossy().into_owned()
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata().join("dev/golden").join(name)).unwrap()).unwrap()
}

fn chatglm(args: &[&str], stdin: &str) -> (String, String, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap(), out.status.success())
}

#[test]
fn generate_reproduces_official_chat_cases() {
    let dir = tempfile::tempdir().unwrap();
    for (i, case) in golden("generate.json")["chat"].as_array().unwrap().iter().enumerate() {
        let history = dir.path().join(format!("h{i}.json"));
        std::fs::write(&history, case["history"].to_string()).unwrap();
        let max_length = case["max_length"].to_string();
        let args = [
            "generate",
            "-m",
            &dev_model(),
            "-p",
            case["query"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-length",
            &max_length,
            "--history",
            history.to_str().unwrap(),
            "--json",
        ];
        let (stdout, stderr, ok) = chatglm(&args, "");
        assert!(ok, "{stderr}");
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["prompt_ids"], case["prompt_ids"]);
        assert_eq!(v["generated_ids"], case["generated_ids"]);
        assert_eq!(v["text"], case["response"]);
        assert_eq!(v["finish_reason"], "length");
    }
}

#[test]
fn generate_reproduces_official_raw_cases() {
    for case in golden("generate.json")["generate"].as_array().unwrap() {
        let args = [
            "generate",
            "-m",
            &dev_model(),
            "--raw",
            "-p",
            case["text"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-new-tokens",
            "32",
            "--json",
        ];
        let (stdout, stderr, ok) = chatglm(&args, "");
        assert!(ok, "{stderr}");
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["prompt_ids"], case["input_ids"]);
        assert_eq!(v["generated_ids"], case["new_ids"]);
    }
}

#[test]
fn generate_streams_the_same_text_it_reports() {
    let case = &golden("generate.json")["chat"][0];
    let q = case["query"].as_str().unwrap();
    let (stdout, stderr, ok) =
        chatglm(&["generate", "-m", &dev_model(), "-p", q, "--temperature", "0", "--max-length", "42"], "");
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), case["response"].as_str().unwrap());
}

#[test]
fn bad_input_gives_clear_errors() {
    let m = dev_model();
    let (_, err, ok) = chatglm(&["generate", "-m", &m, "-p", "x", "--top-p", "0"], "");
    assert!(!ok && err.contains("top_p"), "{err}");
    let (_, err, ok) = chatglm(&["generate", "-m", &m, "-p", "x", "--dtype", "q3_k"], "");
    assert!(!ok && err.contains("q3_k"), "{err}");
    let (_, err, ok) = chatglm(&["generate", "-m", "/nonexistent/model", "-p", "x"], "");
    assert!(!ok && err.contains("/nonexistent/model"), "{err}");
    let (_, err, ok) = chatglm(&["generate", "-m", &m, "-p", "x", "--history", "/nonexistent.json"], "");
    assert!(!ok && err.contains("history"), "{err}");
    let (_, err, ok) = chatglm(&["generate", "-m", &m, "-p", &"你好".repeat(600)], "");
    assert!(!ok && err.contains("seq_length"), "{err}");
}

#[test]
fn tokenize_contract_matches_the_real_tokenizer() {
    let tok = testdata().join("chatglm2-tokenizer/tokenizer.model");
    let tok = tok.to_str().unwrap();
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(testdata().join("chatglm2-tokenizer/tokenizer.json")).unwrap())
            .unwrap();
    let cases = g["cases"].as_array().unwrap();
    let input: String = cases.iter().map(|c| format!("{}\n", c["text"])).collect();
    let (out, err, ok) = chatglm(&["tokenize", "-m", tok], &input);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    // Blank strings are skipped by neither side: every non-empty JSON line gets an answer.
    assert_eq!(lines.len(), cases.len());
    for (line, case) in lines.iter().zip(cases) {
        assert_eq!(serde_json::from_str::<Value>(line).unwrap(), case["input_ids"], "{}", case["text"]);
    }
    let (out, _, ok) = chatglm(&["tokenize", "-m", tok, "--no-special"], &input);
    assert!(ok);
    for (line, case) in out.lines().zip(cases) {
        assert_eq!(serde_json::from_str::<Value>(line).unwrap(), case["ids_no_special"]);
    }
    let ids: String = cases.iter().map(|c| format!("{}\n", c["input_ids"])).collect();
    let (out, _, ok) = chatglm(&["tokenize", "-m", tok, "--decode"], &ids);
    assert!(ok);
    for (line, case) in out.lines().zip(cases) {
        assert_eq!(serde_json::from_str::<Value>(line).unwrap(), case["decode_input_ids"]);
    }
    let (_, err, ok) = chatglm(&["tokenize", "-m", tok], "not json\n");
    assert!(!ok && err.contains("line 1"), "{err}");

    // Without -m, $CHATGLM_MODEL names the model, as for the other commands.
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .arg("tokenize")
        .env("CHATGLM_MODEL", tok)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n", cases[0]["text"]).as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(serde_json::from_str::<Value>(line.trim()).unwrap(), cases[0]["input_ids"]);
}

#[test]
fn inspect_reports_the_checkpoint() {
    let (out, err, ok) = chatglm(&["inspect", "-m", &dev_model(), "--json"], "");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["tensors"], 18); // 2 layers × 7 + embedding, final norm, output, rotary inv_freq
    assert_eq!(v["config"]["num_layers"], 2);
    assert_eq!(v["shapes_ok"], true);

    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("dev-q8_0.gguf");
    let gguf = gguf.to_str().unwrap();
    let (_, err, ok) = chatglm(&["quantize", "-m", &dev_model(), "--dtype", "q8_0", "-o", gguf], "");
    assert!(ok, "{err}");
    let (out, err, ok) = chatglm(&["inspect", "-m", gguf, "--json"], "");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["format"], "GGUF");
    assert_eq!(v["config"]["hidden_size"], 64);
}

#[test]
fn bench_runs_on_a_synthetic_model() {
    let (out, err, ok) = chatglm(
        &["bench", "--synthetic", "dev", "--dtype", "q4_0", "--prompt-len", "16", "--gen-len", "4", "--json"],
        "",
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["decode_tokens_per_s_best"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn bench_times_batched_decoding() {
    let args = ["bench", "--synthetic", "dev", "--prompt-len", "8", "--gen-len", "3", "--concurrency", "1,5", "--json"];
    let (out, err, ok) = chatglm(&args, "");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let batched = v["batched_decode"].as_array().unwrap();
    assert_eq!(batched.len(), 2);
    assert_eq!(batched[1]["sequences"], 5);
    assert!(batched[1]["tokens_per_s"].as_f64().unwrap() > 0.0);
    let (_, err, ok) = chatglm(&["bench", "--synthetic", "dev", "--concurrency", "0"], "");
    assert!(!ok && err.contains("--concurrency"), "{err}");
}

#[test]
fn bench_pairs_decode_with_reads_of_the_same_weights() {
    let args = ["bench", "--synthetic", "dev", "--device", "cpu", "--prompt-len", "0", "--gen-len", "2"];
    let (out, err, ok) = chatglm(&[&args[..], &["--read-probe", "3", "--json"]].concat(), "");
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let probe = &v["read_probe"];
    assert_eq!(probe["rounds"], 3);
    // Every byte a decode step streams, no more.
    assert_eq!(probe["read_bytes"].as_f64(), v["weight_bytes_per_token"].as_f64());
    assert!(probe["read_gb_per_s_median"].as_f64().unwrap() > 0.0);
    assert!(probe["decode_share_of_read_median"].as_f64().unwrap() > 0.0);
    // Without a count: 8 rounds, reported in the text output.
    let (out, err, ok) = chatglm(&[&args[..], &["--read-probe"]].concat(), "");
    assert!(ok && out.contains("read probe   8 rounds"), "{out}{err}");
    let (_, err, ok) = chatglm(&[&args[..], &["--read-probe", "0"]].concat(), "");
    assert!(!ok && err.contains("--read-probe"), "{err}");
}

/// `--mmap` (weights used in place from the mapped file) and a capped kernel
/// set (`CHATGLM_CPU_KERNELS`) change how the weights are held and which
/// kernels run, not the answer.
#[test]
fn mmap_and_kernel_cap_give_the_official_answer() {
    let case = &golden("generate.json")["chat"][0];
    assert_eq!(case["history"].as_array().map(Vec::len), Some(0), "the first golden case has no history");
    let max_length = case["max_length"].to_string();
    let model = dev_model();
    for (flag, cap) in [("--mmap", ""), ("--mmap", "scalar"), ("--temperature", "avx2"), ("--temperature", "avx2-vnni")]
    {
        let mut args = vec!["generate", "-m", &model, "-p", case["query"].as_str().unwrap()];
        args.extend(["--temperature", "0", "--max-length", &max_length, "--json"]);
        if flag == "--mmap" {
            args.push(flag);
        }
        let out =
            Command::new(env!("CARGO_BIN_EXE_chatglm")).args(&args).env("CHATGLM_CPU_KERNELS", cap).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag} {cap}: {stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["generated_ids"], case["generated_ids"], "{flag} CHATGLM_CPU_KERNELS={cap}");
    }
}

#[test]
fn chat_speaks_chatglm3_to_a_chatglm3_checkpoint() {
    // The tiny ChatGLM3 model of the family golden data: its release is
    // detected from the checkpoint and the reply is the official chat()'s.
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3/tiny");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family.join("golden/generate.json")).unwrap()).unwrap();
    let case = &golden["chat"][0];
    assert!(case["history"].as_array().unwrap().is_empty() && case["forced"].is_null());
    let model = family.join("model");
    let max_length = case["max_length"].to_string();
    let args = [
        "chat",
        "-m",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--temperature",
        "0",
        "--max-length",
        &max_length,
        "--system",
        "",
    ];
    let (stdout, stderr, ok) = chatglm(&args, &format!("{}\n", case["query"].as_str().unwrap()));
    assert!(ok, "{stderr}");
    // Generation ends at max_length here, where the official chat() drops the
    // last generated token from its reply; the stream shows it.
    let response = case["response"].as_str().unwrap();
    assert!(stdout.trim_start().starts_with(response), "{stdout:?} does not start with {response:?}");
}

#[test]
fn lora_adapters_merge_at_load_and_bad_ones_are_refused() {
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3");
    let model = family.join("tiny/model");
    let lora = family.join("lora");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "你好",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--json",
        ];
        args.extend_from_slice(extra);
        chatglm(&args, "")
    };
    let (base, stderr, ok) = run(&[]);
    assert!(ok, "{stderr}");
    let (tuned, stderr, ok) = run(&["--lora", lora.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let ids = |s: &str| serde_json::from_str::<Value>(s.trim()).unwrap()["generated_ids"].clone();
    assert_ne!(ids(&base), ids(&tuned), "the adapter changed nothing");
    // Scale 0 merges nothing.
    let zero = format!("{}:0", lora.display());
    let (none, stderr, ok) = run(&["--lora", &zero]);
    assert!(ok, "{stderr}");
    assert_eq!(ids(&base), ids(&none));
    let (_, stderr, ok) = run(&["--lora", "/nonexistent/adapter"]);
    assert!(!ok && stderr.contains("adapter_config.json"), "{stderr}");
}

#[test]
fn quantize_merges_lora_adapters_into_the_file() {
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3");
    let model = family.join("tiny/model");
    let lora = family.join("lora");
    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("tuned-f32.gguf");
    let (_, stderr, ok) = chatglm(
        &[
            "quantize",
            "-m",
            model.to_str().unwrap(),
            "--lora",
            lora.to_str().unwrap(),
            "--dtype",
            "f32",
            "-o",
            merged.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{stderr}");
    let generate = |m: &str, extra: &[&str]| {
        let mut args = vec!["generate", "-m", m, "-p", "你好", "--temperature", "0", "--max-new-tokens", "8", "--json"];
        args.extend_from_slice(extra);
        let (out, stderr, ok) = chatglm(&args, "");
        assert!(ok, "{stderr}");
        serde_json::from_str::<Value>(out.trim()).unwrap()["generated_ids"].clone()
    };
    let tuned = generate(model.to_str().unwrap(), &["--lora", lora.to_str().unwrap(), "--dtype", "f32"]);
    assert_eq!(generate(merged.to_str().unwrap(), &[]), tuned, "the file is not the merged model");
    assert_ne!(generate(model.to_str().unwrap(), &["--dtype", "f32"]), tuned, "the adapter changed nothing");

    // Quantized, the file holds what loading with the adapter quantizes.
    let q8 = dir.path().join("tuned-q8_0.gguf");
    let (_, stderr, ok) = chatglm(
        &[
            "quantize",
            "-m",
            model.to_str().unwrap(),
            "--lora",
            lora.to_str().unwrap(),
            "--dtype",
            "q8_0",
            "-o",
            q8.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        generate(q8.to_str().unwrap(), &[]),
        generate(model.to_str().unwrap(), &["--lora", lora.to_str().unwrap(), "--dtype", "q8_0"])
    );

    // Over an already quantized file the merge is not exact, and says so.
    let base_q8 = dir.path().join("base-q8_0.gguf");
    let (_, stderr, ok) =
        chatglm(&["quantize", "-m", model.to_str().unwrap(), "--dtype", "q8_0", "-o", base_q8.to_str().unwrap()], "");
    assert!(ok, "{stderr}");
    let requantized = dir.path().join("requantized.gguf");
    let (_, stderr, ok) = chatglm(
        &[
            "quantize",
            "-m",
            base_q8.to_str().unwrap(),
            "--lora",
            lora.to_str().unwrap(),
            "--dtype",
            "q8_0",
            "-o",
            requantized.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok && stderr.contains("quantized again"), "{stderr}");

    // A bad adapter is refused before anything is written.
    let refused = dir.path().join("refused.gguf");
    let (_, stderr, ok) = chatglm(
        &["quantize", "-m", model.to_str().unwrap(), "--lora", "/nonexistent/adapter", "-o", refused.to_str().unwrap()],
        "",
    );
    assert!(!ok && stderr.contains("adapter_config.json"), "{stderr}");
    assert!(!refused.exists());
}

#[test]
fn a_p_tuning_prefix_applies_and_bad_ones_are_refused() {
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3");
    let model = family.join("tiny/model");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "-m",
            model.to_str().unwrap(),
            "-p",
            "你好",
            "--temperature",
            "0",
            "--max-new-tokens",
            "8",
            "--json",
            "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        chatglm(&args, "")
    };
    let ids = |s: &str| serde_json::from_str::<Value>(s.trim()).unwrap()["generated_ids"].clone();
    let (base, stderr, ok) = run(&[]);
    assert!(ok, "{stderr}");
    for name in ["ptuning-v2", "ptuning-v2-projection"] {
        let dir = family.join(name);
        let (tuned, stderr, ok) = run(&["--ptuning", dir.to_str().unwrap()]);
        assert!(ok, "{stderr}");
        // (The projection's prefix moves the tiny model's logits, tested in
        // chatglm-model, but not these 8 greedy ids.)
        if name == "ptuning-v2" {
            assert_ne!(ids(&base), ids(&tuned), "{name}: the prefix changed nothing");
        }
    }
    // A folder without pre_seq_len is not a P-Tuning checkpoint.
    let (_, stderr, ok) = run(&["--ptuning", model.to_str().unwrap()]);
    assert!(!ok && stderr.contains("pre_seq_len"), "{stderr}");
}

#[test]
fn generate_speaks_chatglm3_with_an_official_history() {
    // The official chat cases of the tiny ChatGLM3 model, their history given
    // as the official list of messages (system prompts, tools, observations).
    let family = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../golden/family/chatglm3/tiny");
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(family.join("golden/generate.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = family.join("model");
    let mut checked = 0;
    for (i, case) in golden["chat"].as_array().unwrap().iter().enumerate() {
        if !case["forced"].is_null() || case["role"] != "user" {
            continue;
        }
        let history = dir.path().join(format!("h{i}.json"));
        std::fs::write(&history, case["history"].to_string()).unwrap();
        let max_length = case["max_length"].to_string();
        let args = [
            "generate",
            "-m",
            model.to_str().unwrap(),
            "-p",
            case["query"].as_str().unwrap(),
            "--temperature",
            "0",
            "--max-length",
            &max_length,
            "--history",
            history.to_str().unwrap(),
            "--json",
        ];
        let (stdout, stderr, ok) = chatglm(&args, "");
        assert!(ok, "{stderr}");
        let v: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(v["prompt_ids"], case["prompt_ids"], "case {i}");
        assert_eq!(v["generated_ids"], case["generated_ids"], "case {i}");
        assert_eq!(v["text"], case["response"], "case {i}");
        checked += 1;
    }
    assert!(checked >= 3, "{checked}");
}
