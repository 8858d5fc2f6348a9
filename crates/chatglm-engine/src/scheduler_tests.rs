use super::*;

fn config(max_batch_tokens: usize, max_batch_size: usize, total_blocks: usize) -> SchedulerConfig {
    SchedulerConfig { max_batch_tokens, max_batch_size, block_size_tokens: 4, total_blocks, lead_rows: 0 }
}

fn sched(max_batch_tokens: usize, max_batch_size: usize, total_blocks: usize) -> Scheduler {
    Scheduler::new(config(max_batch_tokens, max_batch_size, total_blocks)).unwrap()
}

/// `(id, start, n, sample)` of each chunk.
fn chunks(plan: &StepPlan) -> Vec<(SeqId, usize, usize, bool)> {
    plan.chunks.iter().map(|c| (c.id, c.start, c.n_tokens, c.sample)).collect()
}

/// Simulates the engine: every sampled sequence gets a new token (until its limit).
fn sample_all(s: &mut Scheduler, plan: &StepPlan) {
    for c in plan.chunks.iter().filter(|c| c.sample) {
        s.append_token(c.id);
    }
}

#[test]
fn config_is_validated() {
    assert!(Scheduler::new(config(4, 8, 10)).is_err());
    assert!(Scheduler::new(config(8, 0, 10)).is_err());
    assert!(Scheduler::new(config(8, 8, 0)).is_err());
    assert!(Scheduler::new(config(8, 8, 1)).is_ok());
}

#[test]
fn admits_in_fifo_order() {
    let mut s = sched(100, 8, 100);
    for id in [5, 3, 9] {
        s.add(id, 2, 10).unwrap();
    }
    let plan = s.schedule();
    assert_eq!(plan.admitted, vec![5, 3, 9]);
    assert_eq!(chunks(&plan), vec![(5, 0, 2, true), (3, 0, 2, true), (9, 0, 2, true)]);
}

#[test]
fn prefill_and_decode_share_the_token_budget() {
    let mut s = sched(8, 8, 100);
    s.add(1, 3, 20).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 0, 3, true)]);
    sample_all(&mut s, &p);
    // A 20-token prompt arrives: the decode goes first, the prompt takes the rest.
    s.add(2, 20, 40).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 3, 1, true), (2, 0, 7, false)]);
    assert_eq!(p.total_tokens(), 8);
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 4, 1, true), (2, 7, 7, false)]);
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 5, 1, true), (2, 14, 6, true)]);
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 6, 1, true), (2, 20, 1, true)]);
}

#[test]
fn long_prompts_are_chunked_and_never_exceed_the_budget() {
    let mut s = sched(16, 4, 1000);
    s.add(1, 50, 60).unwrap();
    let mut seen = 0;
    let mut steps = 0;
    while seen < 50 {
        let p = s.schedule();
        assert!(p.total_tokens() <= 16);
        assert_eq!(p.chunks[0].start, seen);
        seen += p.chunks[0].n_tokens;
        assert_eq!(p.chunks[0].sample, seen == 50);
        steps += 1;
    }
    assert_eq!(steps, 4);
}

#[test]
fn max_batch_size_caps_running_sequences() {
    let mut s = sched(100, 2, 100);
    for id in 1..=3 {
        s.add(id, 2, 4).unwrap();
    }
    let p = s.schedule();
    assert_eq!(p.admitted, vec![1, 2]);
    assert_eq!((s.running_len(), s.waiting_len()), (2, 1));
    sample_all(&mut s, &p);
    assert!(s.remove(1));
    let p = s.schedule();
    assert_eq!(p.admitted, vec![3]);
    assert_eq!(chunks(&p), vec![(2, 2, 1, true), (3, 0, 2, true)]);
}

#[test]
fn kv_budget_makes_requests_wait_and_rejects_what_never_fits() {
    // 10 blocks of 4 tokens = 40 tokens.
    let mut s = sched(100, 8, 10);
    assert_eq!(s.add(1, 40, 50), Err(AdmitError::NeverFits { needed_tokens: 41, capacity_tokens: 40 }));
    assert_eq!(s.add(1, 0, 50), Err(AdmitError::EmptyPrompt));
    // The most tokens a sequence may reach is clamped to the budget: the caller must stop there.
    assert_eq!(s.add(1, 10, 100), Ok(40));
    s.remove(1);
    // Blocks are taken for the tokens computed, not for the maximum length.
    assert_eq!(s.add(2, 24, 40), Ok(40)); // 6 blocks now
    assert_eq!(s.add(3, 20, 30), Ok(30)); // 5 blocks: waits
    assert_eq!(s.add(4, 1, 4), Ok(4)); // 1 block: fits, but must not overtake 3
    assert_eq!(s.add(2, 1, 4), Err(AdmitError::DuplicateId(2)));
    let p = s.schedule();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!((s.reserved_blocks(), s.free_blocks()), (6, 4));
    assert_eq!(s.used_blocks(), 6);
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert!(p.admitted.is_empty());
    assert_eq!(s.waiting_len(), 2);
    // Finishing 2 frees its blocks at once; 3 and 4 both fit now, in order.
    s.remove(2);
    assert_eq!(s.free_blocks(), 10);
    let p = s.schedule();
    assert_eq!(p.admitted, vec![3, 4]);
}

#[test]
fn many_short_chats_share_a_budget_their_maximum_lengths_would_exceed() {
    // 10 blocks; each chat may reach 40 tokens (the whole budget) but is short.
    let mut s = sched(100, 8, 10);
    for id in 1..=5 {
        s.add(id, 4, 40).unwrap();
    }
    let p = s.schedule();
    assert_eq!(p.admitted, vec![1, 2, 3, 4, 5]);
    assert_eq!(s.reserved_blocks(), 5);
}

#[test]
fn the_youngest_running_sequence_is_preempted_when_blocks_run_out() {
    // 4 blocks of 4 tokens; two sequences of 6-token prompts (2 blocks each).
    let mut s = sched(100, 8, 4);
    s.add(1, 6, 16).unwrap();
    s.add(2, 6, 16).unwrap();
    let mut p = s.schedule();
    assert_eq!(p.admitted, vec![1, 2]);
    assert_eq!(s.free_blocks(), 0);
    // Both decode to 8 tokens within their 2 blocks.
    for _ in 0..2 {
        sample_all(&mut s, &p);
        p = s.schedule();
        assert!(p.preempted.is_empty());
    }
    // Token 9 of sequence 1 needs a third block: 2 (the youngest) goes back to the queue.
    sample_all(&mut s, &p);
    p = s.schedule();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(chunks(&p), vec![(1, 8, 1, true)]);
    assert_eq!((s.running_len(), s.waiting_len()), (1, 1));
    // 1 runs to its end, then 2 is readmitted and recomputes its 9 known tokens.
    while s.append_token(1) {
        p = s.schedule();
        assert!(p.chunks.iter().all(|c| c.id == 1), "{p:?}");
    }
    s.remove(1);
    let p = s.schedule();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!(chunks(&p), vec![(2, 0, 9, true)]);
}

#[test]
fn the_youngest_yields_rather_than_an_older_sequence() {
    let mut s = sched(100, 8, 3);
    s.add(1, 4, 12).unwrap();
    s.add(2, 4, 12).unwrap();
    let mut p = s.schedule();
    assert_eq!(p.admitted, vec![1, 2]);
    sample_all(&mut s, &p);
    // Both need a second block; one is free: 1 takes it, 2 (the youngest) yields.
    p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 4, 1, true)]);
    assert_eq!(p.preempted, vec![2]);
}

#[test]
fn cancelling_frees_blocks_and_dequeues() {
    let mut s = sched(100, 1, 10);
    s.add(1, 10, 40).unwrap();
    s.add(2, 4, 8).unwrap();
    let p = s.schedule();
    assert_eq!(p.admitted, vec![1]);
    assert_eq!(s.free_blocks(), 7);
    // Cancel the waiting one, then the running one.
    assert!(s.remove(2));
    assert_eq!(s.waiting_len(), 0);
    assert!(s.remove(1));
    assert!(!s.remove(1));
    assert_eq!((s.free_blocks(), s.running_len()), (10, 0));
    assert!(s.is_idle());
    assert!(s.schedule().is_empty());
    assert!(!s.append_token(1));
}

#[test]
fn a_sequence_without_a_new_token_is_not_scheduled() {
    let mut s = sched(100, 8, 10);
    s.add(1, 3, 8).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 0, 3, true)]);
    // The engine has not appended the sampled token yet.
    assert!(s.schedule().is_empty());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Add { prompt: usize, extra: usize },
        Step,
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, 0usize..30).prop_map(|(prompt, extra)| Op::Add { prompt, extra }),
            Just(Op::Step),
            Just(Op::Step),
            (0usize..20).prop_map(Op::Remove),
        ]
    }

    proptest! {
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..120),
                           budget in 4usize..32, batch in 1usize..5, blocks in 1usize..40) {
            let cfg = config(budget.max(batch), batch, blocks);
            let mut s = Scheduler::new(cfg).unwrap();
            let mut next_id = 0u64;
            let mut live: Vec<SeqId> = Vec::new();
            for op in ops {
                match op {
                    Op::Add { prompt, extra } => {
                        if s.add(next_id, prompt, prompt + extra).is_ok() {
                            live.push(next_id);
                        }
                        next_id += 1;
                    }
                    Op::Step => {
                        let p = s.schedule();
                        prop_assert!(p.total_tokens() <= cfg.max_batch_tokens);
                        prop_assert!(p.chunks.iter().all(|c| c.n_tokens > 0));
                        sample_all(&mut s, &p);
                    }
                    Op::Remove(i) => {
                        if !live.is_empty() {
                            let id = live.remove(i % live.len());
                            prop_assert!(s.remove(id));
                        }
                    }
                }
                prop_assert!(s.running_len() <= cfg.max_batch_size);
                prop_assert_eq!(s.free_blocks() + s.reserved_blocks(), cfg.total_blocks);
                prop_assert!(s.used_blocks() <= s.reserved_blocks());
                // Real block ids: no block is held by two sequences, and the
                // running ones hold every reserved block.
                let mut held: Vec<u32> = live.iter().flat_map(|&id| s.blocks_of(id).to_vec()).collect();
                prop_assert_eq!(held.len(), s.reserved_blocks());
                held.sort_unstable();
                held.dedup();
                prop_assert_eq!(held.len(), s.reserved_blocks());
                prop_assert!(held.iter().all(|&b| (b as usize) < cfg.total_blocks));
                // No deadlock: with work waiting and nothing running, a step admits.
                if s.running_len() == 0 && s.waiting_len() > 0 {
                    prop_assert!(!s.clone().schedule().is_empty());
                }
            }
            for id in live {
                s.remove(id);
            }
            prop_assert_eq!(s.free_blocks(), cfg.total_blocks);
        }
    }
}

#[test]
fn a_finished_sequence_s_blocks_are_taken_over_by_the_next_round() {
    let mut s = sched(100, 8, 20);
    s.add(1, 10, 12).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 0, 10, true)]);
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(1, 10, 1, true)]);
    // 11 tokens computed (3 blocks of 4); the engine keeps them.
    assert!(s.retain(1, 11));
    assert_eq!(s.retained_blocks(), 3);
    assert_eq!(s.reserved_blocks(), 3);
    // The next round's prompt starts with 9 of them: 3 blocks hold them.
    let blocks = s.take_retained(1, 9).unwrap();
    assert_eq!(blocks.len(), 3);
    assert!(s.take_retained(1, 9).is_none(), "taken once");
    s.add_reusing(2, 14, 20, blocks.clone(), 9).unwrap();
    let p = s.schedule();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!(chunks(&p), vec![(2, 9, 5, true)], "computing starts after the reused tokens");
    assert_eq!(&s.blocks_of(2)[..3], &blocks[..], "the reused blocks come first");
    assert_eq!(s.blocks_of(2).len(), 4);
    assert!(s.remove(2));
    assert_eq!(s.reserved_blocks(), 0);
}

#[test]
fn retained_blocks_go_before_any_running_sequence_is_preempted() {
    let mut s = sched(100, 8, 6);
    s.add(1, 8, 9).unwrap();
    let p = s.schedule();
    sample_all(&mut s, &p);
    assert!(s.retain(1, 8));
    assert_eq!(s.retained_blocks(), 2);
    // A 16-token prompt needs 4 of the 4 free blocks, then one more: the
    // retained sequence's blocks are taken back, nobody is preempted.
    s.add(2, 16, 24).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(2, 0, 16, true)]);
    assert!(p.evicted.is_empty());
    sample_all(&mut s, &p);
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(2, 16, 1, true)]);
    assert_eq!(p.evicted, vec![1]);
    assert!(p.preempted.is_empty());
    assert_eq!(s.retained_blocks(), 0);
    assert!(s.take_retained(1, 8).is_none());
}

#[test]
fn a_waiting_sequence_that_took_blocks_over_frees_them_when_removed() {
    let mut s = sched(100, 8, 10);
    s.add(1, 8, 9).unwrap();
    let p = s.schedule();
    sample_all(&mut s, &p);
    assert!(s.retain(1, 8));
    let blocks = s.take_retained(1, 8).unwrap();
    s.add_reusing(2, 12, 20, blocks, 8).unwrap();
    assert_eq!(s.reserved_blocks(), 2);
    assert!(s.remove(2));
    assert_eq!(s.reserved_blocks(), 0);
    // Reuse never covers the whole prompt: at least one token is computed.
    s.add(3, 8, 9).unwrap();
    let p = s.schedule();
    sample_all(&mut s, &p);
    assert!(s.retain(3, 8));
    let blocks = s.take_retained(3, 8).unwrap();
    s.add_reusing(4, 8, 12, blocks, 8).unwrap();
    let p = s.schedule();
    assert_eq!(chunks(&p), vec![(4, 7, 1, true)]);
}
