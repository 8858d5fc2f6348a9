//! `hub::resolve` reads HF_HOME and HF_HUB_OFFLINE. One test in its own
//! binary, because it sets process environment variables.

#[test]
fn resolve_honours_hf_home_and_offline() {
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HOME", tmp.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    std::env::remove_var("HF_HUB_CACHE");
    let opts = chatglm_weights::hub::HubOptions::from_env();
    assert_eq!(opts.cache_dir, tmp.path().join("hub"));
    assert!(opts.offline);
    let err = chatglm_weights::hub::resolve("THUDM/chatglm2-6b").unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE") && err.contains(&tmp.path().join("hub").display().to_string()), "{err}");
}
