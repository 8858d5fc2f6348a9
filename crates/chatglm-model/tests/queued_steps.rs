//! Steps launched before the one ahead is read (`Model::launch_greedy` with
//! tokens chained from the step before) on the CPU, which computes them at
//! launch: the same ids as step-by-step greedy decoding.

mod common;

use chatglm_model::{CpuBackend, ForwardState, KvDType, LoadOptions, LogitsWanted, Model, SequenceInput, WeightFormat};
use chatglm_testdata::dir as testdata;
use chatglm_weights::Checkpoint;

fn dev_model() -> Model<CpuBackend> {
    let ckpt = Checkpoint::open(&testdata().join("dev/model/safetensors-f32")).unwrap();
    let backend = CpuBackend::for_config(&ckpt.config);
    Model::load(backend, &ckpt, LoadOptions::new(WeightFormat::F32), &mut |_, _| {}).unwrap()
}

#[test]
fn queued_steps_with_chained_tokens_match_step_by_step_decoding() {
    common::check_queued_steps_match_synchronous(&dev_model(), 20);
}

#[test]
fn bad_chained_rows_and_collects_are_errors() {
    let model = dev_model();
    let mut state = ForwardState::new(&model.backend);
    let mut cache = model.new_cache(KvDType::F32);
    // Nothing launched yet: nothing to collect, nothing to chain from.
    assert!(model.collect_greedy(&mut state).is_err());
    let mut batch = [SequenceInput { tokens: &[5], cache: &mut cache, logits: LogitsWanted::Last }];
    assert!(model.launch_greedy(&mut state, &mut batch, &[Some(0)]).is_err());
    // One entry per sequence.
    assert!(model.launch_greedy(&mut state, &mut batch, &[]).is_err());
    model.launch_greedy(&mut state, &mut batch, &[None]).unwrap();
    // Row 1 of a one-row step does not exist.
    assert!(model.launch_greedy(&mut state, &mut batch, &[Some(1)]).is_err());
    assert_eq!(model.collect_greedy(&mut state).unwrap().len(), 1);
    assert_eq!(state.launched_steps(), 0);
}
