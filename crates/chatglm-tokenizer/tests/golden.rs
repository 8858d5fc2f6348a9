//! Every case of the golden files made with the official Python tokenizer
//! (`tokenizer.json`, `prompts.json`) for the real ChatGLM2 tokenizer and the
//! dev tokenizer must match exactly.

mod common;

use chatglm_tokenizer::{build_prompt, ChatGlmTokenizer, Detokenizer, PieceKind};
use common::{both, history, ids, str_of, strings, Golden};
use serde_json::Value;

fn stream_decode(tok: &ChatGlmTokenizer, ids: &[u32]) -> String {
    let mut detok = Detokenizer::new(tok);
    let mut out = String::new();
    for &id in ids {
        out += &detok.push(id);
    }
    out + &detok.finish()
}

#[test]
fn special_ids_match() {
    for golden in both() {
        let tok = golden.tokenizer();
        let special = &golden.tokenizer_cases()["special"];
        let n = special["sp_vocab_size"].as_u64().unwrap() as usize;
        assert_eq!(tok.sp_vocab_size(), n, "{}", golden.name);
        assert_eq!(tok.vocab_size() as u64, special["tokenizer_vocab_size"].as_u64().unwrap());
        assert_eq!(u64::from(tok.unk_id()), special["unk_id"].as_u64().unwrap());
        assert_eq!(u64::from(tok.bos_id()), special["bos_id"].as_u64().unwrap());
        assert_eq!(u64::from(tok.eos_id()), special["eos_id"].as_u64().unwrap());
        assert_eq!(u64::from(tok.eos_id()), special["eos_token_id"].as_u64().unwrap());
        assert_eq!(u64::from(tok.pad_id()), special["pad_token_id"].as_u64().unwrap());
        let specials = &special["special_tokens"];
        assert_eq!(u64::from(tok.mask_id()), specials["[MASK]"].as_u64().unwrap());
        assert_eq!(u64::from(tok.gmask_id()), specials["[gMASK]"].as_u64().unwrap());
        assert_eq!(u64::from(tok.smask_id()), specials["[sMASK]"].as_u64().unwrap());
        assert_eq!(u64::from(tok.sop_id()), specials["sop"].as_u64().unwrap());
        assert_eq!(u64::from(tok.eop_id()), specials["eop"].as_u64().unwrap());
        for (name, id) in specials.as_object().unwrap() {
            assert_eq!(tok.piece_to_id(name).map(u64::from), id.as_u64(), "{name}");
        }
        assert_eq!(tok.prefix_tokens().to_vec(), ids(&special["prefix_tokens"]));

        let first = strings(&special["first_pieces"]);
        for (id, text) in first.iter().enumerate() {
            assert_eq!(&tok.pieces()[id].text, text, "{}: piece {id}", golden.name);
        }
        for (text, id) in special["byte_piece_ids"].as_object().unwrap() {
            let id = id.as_u64().unwrap() as usize;
            assert_eq!(&tok.pieces()[id].text, text);
            assert_eq!(tok.pieces()[id].kind, PieceKind::Byte);
        }
        for id in special["convert_ids_to_tokens_of_specials"].as_object().unwrap().keys() {
            let id: u32 = id.parse().unwrap();
            assert_eq!(tok.decode(&[id]), "", "{}: id {id}", golden.name);
            assert!(tok.is_special(id));
        }

        let pair = ids(&special["pair_encoding_build_inputs_with_special_tokens([5,6],[7,8])"]);
        assert_eq!(tok.build_inputs_with_special_tokens(&[5, 6], Some(&[7, 8])), pair);
        assert_eq!(tok.build_inputs_with_special_tokens(&[5, 6], None), [&tok.prefix_tokens()[..], &[5, 6]].concat());

        let mixed = &special["decode_of_special_ids_mixed"];
        let mixed_ids = ids(&mixed["ids"]);
        assert_eq!(tok.decode(&mixed_ids), str_of(mixed, "decode"));
        assert_eq!(tok.decode(&mixed_ids), str_of(mixed, "decode_skip_special_tokens"));
        assert_eq!(stream_decode(&tok, &mixed_ids), str_of(mixed, "decode"));
    }
}

fn check_case(golden: &Golden, tok: &ChatGlmTokenizer, case: &Value) -> Vec<String> {
    let mut failures = Vec::new();
    let text = str_of(case, "text");
    let mut check = |what: &str, ok: bool, detail: String| {
        if !ok {
            failures.push(format!("{}: {what} for {text:?}: {detail}", golden.name));
        }
    };
    let input_ids = ids(&case["input_ids"]);
    let no_special = ids(&case["ids_no_special"]);
    let pieces = strings(&case["pieces"]);

    let got = tok.encode(text);
    check("input_ids", got == input_ids, format!("got {got:?}, want {input_ids:?}"));
    let got = tok.encode_no_special(text);
    check("ids_no_special", got == no_special, format!("got {got:?}, want {no_special:?}"));
    let got = tok.tokenize(text);
    check("pieces", got == pieces, format!("got {got:?}, want {pieces:?}"));

    let skip: Vec<u32> = input_ids.iter().copied().filter(|&id| !tok.is_special(id)).collect();
    for (what, ids, key) in [
        ("decode_input_ids", &input_ids, "decode_input_ids"),
        ("decode_ids_no_special", &no_special, "decode_ids_no_special"),
        ("decode_input_ids_skip_special", &skip, "decode_input_ids_skip_special"),
        ("sp_decode_ids_no_special", &no_special, "sp_decode_ids_no_special"),
    ] {
        let want = str_of(case, key);
        let got = tok.decode(ids);
        check(what, got == want, format!("got {got:?}, want {want:?}"));
        let got = stream_decode(tok, ids);
        check(&format!("{what} (streaming)"), got == want, format!("got {got:?}, want {want:?}"));
    }
    let roundtrip = case["roundtrip_exact"].as_bool().unwrap();
    check("roundtrip_exact", (tok.decode(&no_special) == text) == roundtrip, String::new());
    failures
}

#[test]
fn tokenizer_cases_match() {
    for golden in both() {
        let tok = golden.tokenizer();
        let cases = golden.tokenizer_cases();
        let cases = cases["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 160, "{}", golden.name);
        let failures: Vec<String> = cases.iter().flat_map(|case| check_case(&golden, &tok, case)).collect();
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }
}

#[test]
fn prompt_cases_match() {
    for golden in both() {
        let tok = golden.tokenizer();
        let prompts = golden.prompt_cases();
        let cases = prompts["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 3);
        let mut incremental_cases = 0;
        for case in cases {
            let query = str_of(case, "query");
            let history = history(&case["history"]);
            assert_eq!(build_prompt(query, &history), str_of(case, "prompt"), "{}", golden.name);
            let inputs = case.get("build_inputs").or_else(|| case.get("tokenizer_call")).unwrap();
            let want = ids(&inputs["input_ids"]);
            assert_eq!(tok.encode_chat(query, &history), want, "{}: {query}", golden.name);
            assert_eq!(tok.encode(str_of(case, "prompt")), want);
            if let Some(stream) = case.get("build_stream_inputs_with_history") {
                incremental_cases += 1;
                let want = ids(&stream["input_ids"]);
                assert_eq!(tok.encode_chat_incremental(query, &history), want, "{}: {query}", golden.name);
                assert_eq!(
                    chatglm_tokenizer::build_incremental_prompt(query, history.len()),
                    str_of(case, "build_stream_inputs_prompt")
                );
            } else if history.is_empty() {
                assert_eq!(tok.encode_chat_incremental(query, &history), want);
            }
        }
        if let Some(batch) = prompts.get("batch_left_padded") {
            // tokenizer([p1, p2], padding=True): left padding with pad id 0.
            let rows = batch["input_ids"].as_array().unwrap();
            let width = rows.iter().map(|r| r.as_array().unwrap().len()).max().unwrap();
            for row in rows {
                let row = ids(row);
                let start = row.iter().position(|&id| id != tok.pad_id()).unwrap();
                assert_eq!(row.len(), width);
                assert_eq!(&row[start..start + 2], &tok.prefix_tokens());
                assert!(row[..start].iter().all(|&id| id == tok.pad_id()));
            }
        }
        if golden.name == "dev" {
            assert_eq!(incremental_cases, 2);
        }
    }
}

/// `generate.json`: the official decode of generated ids (random model output,
/// with incomplete byte-fallback sequences decoding to U+FFFD).
#[test]
fn generated_text_decodes_like_official() {
    let golden = common::dev();
    let path = common::testdata_dir().join("dev/golden/generate.json");
    let data = common::read_json(&path);
    let tok = golden.tokenizer();
    let mut checked = 0;
    for case in data["chat"].as_array().unwrap() {
        let generated = ids(&case["generated_ids"]);
        let want = str_of(case, "raw_decode");
        assert_eq!(tok.decode(&generated), want);
        assert_eq!(stream_decode(&tok, &generated), want);
        let prompt = ids(&case["prompt_ids"]);
        let query = str_of(case, "query");
        assert_eq!(tok.encode_chat(query, &history(&case["history"])), prompt);
        checked += 1;
    }
    assert!(checked > 0);
}
