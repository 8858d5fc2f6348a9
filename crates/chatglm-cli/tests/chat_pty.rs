//! Drives the interactive `chatglm chat` demo in a pseudo-terminal:
//! two rounds, `clear`, a third round, `stop`.
//!
//! rexpect matches bytes as Latin-1 characters, so the checks use the ASCII
//! parts of the output (the welcome line's key help, the `--verbose` stats).

fn dev_model() -> String {
    chatglm_testdata::dir().join("dev/model/safetensors-f32").to_string_lossy().into_owned()
}

#[test]
fn interactive_chat_in_a_pty() {
    let cmd = format!(
        "{} chat -m {} --temperature 0 --max-new-tokens 6 --verbose",
        env!("CARGO_BIN_EXE_chatglm"),
        dev_model()
    );
    let mut p = rexpect::spawn(&cmd, Some(60_000)).expect("spawn chatglm chat in a pty");
    p.exp_string("Ctrl-D exits").unwrap();
    let context = |p: &mut rexpect::session::PtySession| -> usize {
        let (_, m) = p.exp_regex(r"context \d+ tokens").unwrap();
        m.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    p.send_line("你好").unwrap();
    let first = context(&mut p);
    p.send_line("再见").unwrap();
    let second = context(&mut p);
    assert!(second > first, "the second round extends the cached dialogue ({first} -> {second})");
    p.send_line("clear").unwrap();
    p.exp_string("Ctrl-D exits").unwrap();
    p.send_line("你好").unwrap();
    // After `clear` the dialogue restarts: the context is just this round again.
    assert_eq!(context(&mut p), first);
    p.send_line("stop").unwrap();
    p.exp_eof().unwrap();
}

#[test]
fn piped_chat_answers_one_query_per_line() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatglm"))
        .args(["chat", "-m", &dev_model(), "--temperature", "0", "--max-new-tokens", "4"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all("你好\n再见\nclear\n你好\nstop\nignored\n".as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[0], lines[2], "after clear the same question gets the same greedy answer");
}
