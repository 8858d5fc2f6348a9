mod common;
#[test]
fn info() {
    for g in common::both() {
        let t = g.tokenizer();
        let mut kinds = std::collections::HashMap::new();
        for p in t.pieces() { *kinds.entry(format!("{:?}", p.kind)).or_insert(0) += 1; }
        let names: Vec<_> = ["[MASK]","[gMASK]","[sMASK]","sop","eop"].iter().map(|n| (n, t.pieces().iter().position(|p| p.text == *n))).collect();
        let xsp = t.pieces().iter().filter(|p| { let c: Vec<char> = p.text.chars().collect(); c.windows(2).any(|w| w[0] != '▁' && w[1] == '▁') }).count();
        println!("{}: {kinds:?} names {names:?} x▁ pieces {xsp}, model bytes {}", g.name, t.model_bytes().len());
        let rt = chatglm_tokenizer::ChatGlmTokenizer::from_pieces(t.pieces().to_vec(), t.settings().clone()).unwrap();
        println!("settings {:?} reencoded {}", t.settings(), rt.model_bytes().len());
    }
}
