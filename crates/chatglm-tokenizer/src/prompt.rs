//! The official ChatGLM2-6B chat prompt format.

use std::fmt::Write;

/// `ChatGLMTokenizer.build_prompt(query, history)`: one
/// `[Round i]\n\n问：q\n\n答：a\n\n` block per past round (i from 1), then
/// `[Round n+1]\n\n问：{query}\n\n答：`. The colons are full-width.
pub fn build_prompt(query: &str, history: &[(String, String)]) -> String {
    let mut prompt = String::new();
    for (i, (old_query, response)) in history.iter().enumerate() {
        // Writing to a String cannot fail.
        let _ = write!(prompt, "[Round {}]\n\n问：{}\n\n答：{}\n\n", i + 1, old_query, response);
    }
    let _ = write!(prompt, "[Round {}]\n\n问：{}\n\n答：", history.len() + 1, query);
    prompt
}

/// The prompt of `ChatGLMForConditionalGeneration.build_stream_inputs` when
/// there is history (the earlier rounds are already in the KV cache):
/// `\n\n[Round n+1]\n\n问：{query}\n\n答：`.
pub fn build_incremental_prompt(query: &str, history_len: usize) -> String {
    format!("\n\n[Round {}]\n\n问：{}\n\n答：", history_len + 1, query)
}
