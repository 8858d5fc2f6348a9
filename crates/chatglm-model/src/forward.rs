//! The forward pass: the one hot loop, generic over the backend.

use crate::loader::{load_weights, LoadOptions, TensorSource};
use crate::{Backend, Config, KvCache, KvCacheOps, KvDType, ModelError, Weights};
use chatglm_cpu::attention::AttentionShape;
use chatglm_weights::lora::LoraAdapter;
use chatglm_weights::ptuning::PrefixKv;
use std::path::Path;

/// Which logits a sequence needs from a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// Only the last token's (generation).
    Last,
    /// Every token's (scoring, tests).
    All,
    /// None (a prefill chunk that is not the last).
    None,
}

/// A chunk of one sequence's tokens to run, continuing its cache.
pub struct SequenceInput<'a, C = KvCache> {
    pub tokens: &'a [u32],
    pub cache: &'a mut C,
    pub logits: LogitsWanted,
}

/// How the device picks one logits row's token: the request's sampling
/// parameters (no repetition penalty) and the uniform draw in `[0, 1)` the
/// host's generator made for this token, so the device draws exactly what
/// the host's sampler would have drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenChoice {
    /// `<= 0`: greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0: off.
    pub top_k: usize,
    pub uniform: f64,
}

/// What [`Model::forward_sampled`] returns: each logits row's token where the
/// backend chose it, and the logits of every row when some row was left to
/// the host (empty otherwise).
#[derive(Debug)]
pub struct SampledStep<'s> {
    pub ids: &'s [Option<u32>],
    pub logits: &'s [f32],
}

/// What a step hands back for its logits rows.
#[derive(Clone, Copy)]
enum Readout<'c> {
    Logits,
    Greedy,
    /// Greedy ids read later ([`Model::collect_greedy`]): the step is queued.
    GreedyQueued,
    Sample(&'c [TokenChoice]),
}

/// Where every token of a step sits: its sequence and position.
#[derive(Debug, Default, Clone)]
pub struct TokenLayout {
    /// Sequence index of each token (row of the activations).
    pub seq_of_token: Vec<usize>,
    /// Absolute position of each token in its sequence.
    pub position: Vec<usize>,
    /// Position of each sequence's first new token (its cache length).
    pub seq_start: Vec<usize>,
    /// New tokens of each sequence in this step.
    pub seq_tokens: Vec<usize>,
    /// Rows (tokens) whose logits the step returns, in order.
    pub logit_rows: Vec<usize>,
    /// (row, source): the row's token is the id the step launched before
    /// chose for its logits row `source`, not yet read by the host
    /// ([`Model::launch_greedy`] on a backend that queues steps).
    pub chained: Vec<(usize, usize)>,
}

/// Reusable activation buffers, sized to the largest step seen so far.
pub struct ForwardState<B: Backend> {
    hidden: B::Activations, // (tokens, hidden): the residual stream
    normed: B::Activations, // (tokens, hidden)
    qkv: B::Activations,    // (tokens, qkv_out)
    attn: B::Activations,   // (tokens, heads*head_dim)
    proj: B::Activations,   // (tokens, hidden)
    ffn_up: B::Activations, // (tokens, 2*ffn)
    ffn: B::Activations,    // (tokens, ffn)
    picked: B::Activations, // (logit rows, hidden)
    logits: B::Activations, // (logit rows, vocab)
    ids: Vec<u32>,
    layout: TokenLayout,
    out: Vec<f32>,
    chosen: Vec<u32>,
    sampled: Vec<Option<u32>>,
    /// Steps launched by [`Model::launch_greedy`] and not yet collected:
    /// their logits rows, and (where the backend does not queue steps) the
    /// ids computed at launch.
    launched: std::collections::VecDeque<(usize, Vec<u32>)>,
    /// The ids of the last launched step (chained tokens on a backend that
    /// computes at launch).
    last_launched: Vec<u32>,
}

impl<B: Backend> ForwardState<B> {
    pub fn new(backend: &B) -> Self {
        Self {
            hidden: backend.new_activations(),
            normed: backend.new_activations(),
            qkv: backend.new_activations(),
            attn: backend.new_activations(),
            proj: backend.new_activations(),
            ffn_up: backend.new_activations(),
            ffn: backend.new_activations(),
            picked: backend.new_activations(),
            logits: backend.new_activations(),
            ids: Vec::new(),
            layout: TokenLayout::default(),
            out: Vec::new(),
            chosen: Vec::new(),
            sampled: Vec::new(),
            launched: Default::default(),
            last_launched: Vec::new(),
        }
    }

    /// Launched steps not yet collected.
    pub fn launched_steps(&self) -> usize {
        self.launched.len()
    }
}

/// A loaded model on a backend.
pub struct Model<B: Backend> {
    pub config: Config,
    pub backend: B,
    pub weights: Weights<B>,
    /// P-Tuning v2 prefix keys and values every new cache starts with.
    pub prefix: Option<PrefixKv>,
}

impl<B: Backend> Model<B> {
    /// Loads weights from `source` (a checkpoint or GGUF file).
    pub fn load<S: TensorSource + ?Sized>(
        backend: B,
        source: &S,
        options: LoadOptions,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        Self::load_with_adapters(backend, source, options, &[], progress)
    }

    /// As [`Model::load`], with LoRA `adapters` merged into the weights they
    /// target before any conversion (checked against the model first).
    pub fn load_with_adapters<S: TensorSource + ?Sized>(
        backend: B,
        source: &S,
        options: LoadOptions,
        adapters: &[LoraAdapter],
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, ModelError> {
        let config = source.config().clone();
        let shapes = chatglm_weights::lora::expected_shapes(&config);
        for a in adapters {
            a.check(|name| shapes.get(name).cloned())?;
        }
        let weights = load_weights(&backend, source, options, adapters, progress)?;
        let prefix = match config.pre_seq_len {
            Some(n) => Some(
                chatglm_weights::ptuning::prefix_kv(
                    &config,
                    n,
                    |name| source.tensor(name).ok(),
                    Path::new("checkpoint"),
                )?
                .ok_or_else(|| ModelError::BadTensor {
                    tensor: chatglm_weights::ptuning::EMBEDDING.into(),
                    message: format!(
                        "config.json sets pre_seq_len {n} but there is no prefix encoder: load the base model \
                             and give the P-Tuning checkpoint with --ptuning DIR"
                    ),
                })?,
            ),
            None => None,
        };
        let mut model = Self { config, backend, weights, prefix: None };
        model.set_prefix(prefix)?;
        Ok(model)
    }

    /// Puts P-Tuning v2 prefix keys and values in front of every new cache
    /// (`None`: none). Refused where the backend cannot hold them or their
    /// shape does not fit the model.
    pub fn set_prefix(&mut self, prefix: Option<PrefixKv>) -> Result<(), ModelError> {
        if let Some(p) = &prefix {
            let width = self.config.multi_query_group_num * self.config.kv_channels;
            let fits = p.layers.len() == self.config.num_layers
                && p.layers.iter().all(|(k, v)| k.len() == p.len * width && v.len() == p.len * width);
            if !fits {
                return Err(ModelError::BadTensor {
                    tensor: chatglm_weights::ptuning::EMBEDDING.into(),
                    message: format!(
                        "a prefix of {} layers does not fit this model's {}",
                        p.layers.len(),
                        self.config.num_layers
                    ),
                });
            }
            if !self.backend.supports_kv_prefix() {
                return Err(ModelError::Backend {
                    op: "P-Tuning v2".into(),
                    message: format!(
                        "{} cannot hold prefix keys and values yet; use --device cpu",
                        self.backend.name()
                    ),
                });
            }
        }
        self.prefix = prefix;
        Ok(())
    }

    /// Random weights of `config`'s shapes, without a file (benchmarks).
    pub fn synthetic(backend: B, config: Config, options: LoadOptions, seed: u64) -> Self {
        let weights = crate::loader::synthetic_weights(&backend, &config, options, seed);
        Self { config, backend, weights, prefix: None }
    }

    fn attention_shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.config.num_attention_heads,
            n_groups: self.config.multi_query_group_num,
            head_dim: self.config.kv_channels,
        }
    }

    /// Checks that this model can cache keys and values as `dtype`.
    pub fn check_kv_dtype(&self, dtype: KvDType) -> Result<(), ModelError> {
        if dtype == KvDType::Q8_0 && !self.config.kv_channels.is_multiple_of(32) {
            return Err(ModelError::UnsupportedKvDType {
                dtype: dtype.name(),
                reason: format!("the head size {} is not a multiple of 32", self.config.kv_channels),
            });
        }
        Ok(())
    }

    /// A fresh, empty cache for one sequence (holding the P-Tuning prefix,
    /// if the model has one, in front of its tokens).
    pub fn new_cache(&self, dtype: KvDType) -> B::Cache {
        let mut cache = self.backend.new_cache(
            self.config.num_layers,
            self.config.multi_query_group_num,
            self.config.kv_channels,
            dtype,
        );
        if let Some(p) = &self.prefix {
            self.backend.set_kv_prefix(&mut cache, p);
        }
        cache
    }

    /// Bytes of KV cache per token at `dtype`.
    pub fn kv_bytes_per_token(&self, dtype: KvDType) -> usize {
        let values = self.config.num_layers * 2 * self.config.multi_query_group_num * self.config.kv_channels;
        (values as f64 * dtype.bytes_per_value()).ceil() as usize
    }

    /// The backend's memory line for this model and KV element type (see
    /// [`Backend::memory_plan`]).
    pub fn memory_plan(&self, kv_dtype: KvDType) -> Option<String> {
        let embedding = self.backend.matrix_bytes(&self.weights.embedding);
        self.backend.memory_plan(self.weight_bytes() + embedding, self.kv_bytes_per_token(kv_dtype))
    }

    /// Bytes of weight matrices (what a decode step streams).
    pub fn weight_bytes(&self) -> usize {
        let w = &self.weights;
        let b = &self.backend;
        b.matrix_bytes(&w.output)
            + w.layers
                .iter()
                .map(|l| {
                    b.matrix_bytes(&l.qkv)
                        + b.matrix_bytes(&l.dense)
                        + b.matrix_bytes(&l.h_to_4h)
                        + b.matrix_bytes(&l.four_h_to_h)
                })
                .sum::<usize>()
    }

    /// One read-only pass over the weights a decode step streams, in its
    /// order (each layer's products, then the output layer), where the
    /// backend has one ([`Backend::read_matrix`]): the bytes read.
    pub fn read_weights(&self, prefetch: bool) -> Option<usize> {
        let w = &self.weights;
        let b = &self.backend;
        let mut bytes = 0;
        for l in &w.layers {
            for m in [&l.qkv, &l.dense, &l.h_to_4h, &l.four_h_to_h] {
                bytes += b.read_matrix(m, prefetch)?.0;
            }
        }
        Some(bytes + b.read_matrix(&w.output, prefetch)?.0)
    }

    /// Runs one step over a batch of independent sequences. Each sequence's
    /// tokens continue its cache (positions `cache.len()..`), and are appended
    /// to it. Returns the requested logits rows, concatenated in batch order
    /// (`rows × padded_vocab`), valid until the next call.
    pub fn forward<'s>(
        &self,
        state: &'s mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
    ) -> Result<&'s [f32], ModelError> {
        self.backend.run_step(|| self.forward_on_backend(state, batch, Readout::Logits))?;
        Ok(&state.out)
    }

    /// As [`Model::forward`], returning for each requested logits row only
    /// its greedy token ([`crate::greedy_token`]; on a GPU only the ids cross
    /// to the host).
    pub fn forward_greedy<'s>(
        &self,
        state: &'s mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
    ) -> Result<&'s [u32], ModelError> {
        self.backend.run_step(|| self.forward_on_backend(state, batch, Readout::Greedy))?;
        Ok(&state.chosen)
    }

    /// As [`Model::forward`], choosing each requested logits row's token as
    /// `choices` (one per row, in row order) say. A backend that samples on
    /// the device returns the ids only; rows it leaves to the host (and every
    /// row on a backend without device sampling) are `None`, and then the
    /// logits of all rows come back for the host's sampler.
    pub fn forward_sampled<'s>(
        &self,
        state: &'s mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
        choices: &[TokenChoice],
    ) -> Result<SampledStep<'s>, ModelError> {
        self.backend.run_step(|| self.forward_on_backend(state, batch, Readout::Sample(choices)))?;
        Ok(SampledStep { ids: &state.sampled, logits: &state.out })
    }

    /// Queues a greedy step and returns without waiting for its ids where
    /// the backend queues steps ([`Backend::queues_steps`]); elsewhere it
    /// computes the step now. [`Model::collect_greedy`] returns each launched
    /// step's ids, oldest first. `from_previous[i] = Some(j)`: sequence `i`
    /// has one token, the id the step launched just before chose for its
    /// logits row `j` (its `tokens` are not read) — so the host can queue a
    /// decode step before it has read the step ahead.
    pub fn launch_greedy(
        &self,
        state: &mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
        from_previous: &[Option<usize>],
    ) -> Result<(), ModelError> {
        if from_previous.len() != batch.len() {
            return Err(ModelError::Backend {
                op: "launch".into(),
                message: format!("{} chained-token entries for {} sequences", from_previous.len(), batch.len()),
            });
        }
        let queued = self.backend.queues_steps();
        let readout = if queued { Readout::GreedyQueued } else { Readout::Greedy };
        self.backend.run_step(|| self.forward_chained(state, batch, from_previous, readout))?;
        let rows = state.layout.logit_rows.len();
        let ids = if queued { Vec::new() } else { state.chosen.clone() };
        if !queued {
            state.last_launched.clone_from(&ids);
        }
        state.launched.push_back((rows, ids));
        Ok(())
    }

    /// The greedy ids of the oldest step [`Model::launch_greedy`] launched
    /// and not yet collected (waiting for it where it is queued).
    pub fn collect_greedy<'s>(&self, state: &'s mut ForwardState<B>) -> Result<&'s [u32], ModelError> {
        let Some((rows, ids)) = state.launched.pop_front() else {
            return Err(ModelError::Backend { op: "collect".into(), message: "no launched step to collect".into() });
        };
        if !self.backend.queues_steps() {
            state.chosen = ids;
            return Ok(&state.chosen);
        }
        state.chosen.clear();
        if rows > 0 {
            self.backend.run_step(|| self.backend.collect_greedy(&mut state.chosen))?;
            if state.chosen.len() != rows {
                return Err(ModelError::Backend {
                    op: "collect".into(),
                    message: format!("{} ids for {rows} logits rows", state.chosen.len()),
                });
            }
        }
        Ok(&state.chosen)
    }

    fn forward_on_backend(
        &self,
        state: &mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
        readout: Readout<'_>,
    ) -> Result<(), ModelError> {
        self.forward_chained(state, batch, &[], readout)
    }

    fn forward_chained(
        &self,
        state: &mut ForwardState<B>,
        batch: &mut [SequenceInput<'_, B::Cache>],
        from_previous: &[Option<usize>],
        readout: Readout<'_>,
    ) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (b, w) = (&self.backend, &self.weights);
        let shape = self.attention_shape();
        let (hidden, vocab, ffn) = (cfg.hidden_size, cfg.padded_vocab_size, cfg.ffn_hidden_size);
        let eps = cfg.layernorm_epsilon;

        // Lay out the step: every sequence's tokens, in batch order.
        let st = &mut *state;
        st.ids.clear();
        st.layout.seq_of_token.clear();
        st.layout.position.clear();
        st.layout.seq_start.clear();
        st.layout.seq_tokens.clear();
        st.layout.logit_rows.clear();
        st.layout.chained.clear();
        let on_device = self.backend.queues_steps();
        for (s, seq) in batch.iter().enumerate() {
            if let Some(&Some(source)) = from_previous.get(s) {
                // One token, chosen by the step before: on the device (a
                // placeholder id here) or already known to the host.
                let start = seq.cache.len();
                if start + 1 > cfg.seq_length {
                    return Err(ModelError::ContextOverflow { needed: start + 1, limit: cfg.seq_length });
                }
                let id = if on_device {
                    st.layout.chained.push((st.ids.len(), source));
                    0
                } else {
                    *st.last_launched.get(source).ok_or_else(|| ModelError::Backend {
                        op: "launch".into(),
                        message: format!(
                            "chained token from row {source} of a step with {} rows",
                            st.last_launched.len()
                        ),
                    })?
                };
                st.layout.seq_start.push(start);
                st.layout.seq_tokens.push(1);
                st.ids.push(id);
                st.layout.seq_of_token.push(s);
                st.layout.position.push(start);
                match seq.logits {
                    LogitsWanted::None => {}
                    _ => st.layout.logit_rows.push(st.ids.len() - 1),
                }
                continue;
            }
            if seq.tokens.is_empty() {
                return Err(ModelError::EmptyInput);
            }
            let start = seq.cache.len();
            let needed = start + seq.tokens.len();
            if needed > cfg.seq_length {
                return Err(ModelError::ContextOverflow { needed, limit: cfg.seq_length });
            }
            if let Some(&id) = seq.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::TokenOutOfRange { id, vocab });
            }
            let first_row = st.ids.len();
            st.layout.seq_start.push(start);
            st.layout.seq_tokens.push(seq.tokens.len());
            for (i, &id) in seq.tokens.iter().enumerate() {
                st.ids.push(id);
                st.layout.seq_of_token.push(s);
                st.layout.position.push(start + i);
            }
            let last_row = st.ids.len() - 1;
            match seq.logits {
                LogitsWanted::Last => st.layout.logit_rows.push(last_row),
                LogitsWanted::All => st.layout.logit_rows.extend(first_row..=last_row),
                LogitsWanted::None => {}
            }
        }
        let n = st.ids.len();
        if let Readout::Sample(choices) = readout {
            if choices.len() != st.layout.logit_rows.len() {
                return Err(ModelError::Backend {
                    op: "sampling".into(),
                    message: format!("{} token choices for {} logits rows", choices.len(), st.layout.logit_rows.len()),
                });
            }
            b.set_sampling(choices);
        }
        b.prepare_step(&st.layout, &st.ids, batch)?;

        // Embedding.
        b.resize(&mut st.hidden, n, hidden);
        b.embed(&w.embedding, &st.ids, &mut st.hidden);

        for (i, layer) in w.layers.iter().enumerate() {
            // Attention block: RMSNorm → QKV (+bias) → RoPE, cache, attend → dense → residual.
            b.resize(&mut st.normed, n, hidden);
            b.resize(&mut st.qkv, n, cfg.qkv_out_dim());
            let (norm, bias) = (&layer.input_norm, Some(&layer.qkv_bias));
            b.rms_norm_qkv(i, &st.hidden, norm, eps, &mut st.normed, &layer.qkv, bias, &mut st.qkv);
            b.resize(&mut st.attn, n, cfg.q_dim());
            b.attention(shape, i, &mut st.qkv, &st.layout, batch, &mut st.attn);
            b.resize(&mut st.proj, n, hidden);
            // Then dense → residual, and the MLP block: RMSNorm → [gate | up] →
            // silu(gate)·up → down → residual.
            b.resize(&mut st.ffn_up, n, 2 * ffn);
            b.resize(&mut st.ffn, n, ffn);
            b.dense_and_mlp(
                i,
                &layer.dense,
                &st.attn,
                &mut st.hidden,
                &mut st.proj,
                &layer.post_norm,
                eps,
                &mut st.normed,
                &layer.h_to_4h,
                &mut st.ffn_up,
                &mut st.ffn,
                &layer.four_h_to_h,
            );
        }
        for (seq, &n_new) in batch.iter_mut().zip(&st.layout.seq_tokens) {
            KvCacheOps::advance(&mut *seq.cache, n_new);
        }

        // Final norm and logits, only for the rows asked for.
        let rows = st.layout.logit_rows.len();
        st.out.clear();
        st.chosen.clear();
        st.sampled.clear();
        if rows == 0 {
            return match readout {
                Readout::GreedyQueued => b.finish_queued_step(),
                _ => b.finish_step(),
            };
        }
        // Decode steps want every row: no gather then.
        let every_row = rows == n && st.layout.logit_rows.iter().enumerate().all(|(i, &r)| i == r);
        let last = if every_row {
            &st.hidden
        } else {
            b.resize(&mut st.picked, rows, hidden);
            b.gather_rows(&st.hidden, &st.layout.logit_rows, &mut st.picked);
            &st.picked
        };
        b.resize(&mut st.normed, rows, hidden);
        b.resize(&mut st.logits, rows, vocab);
        b.rms_norm_linear(last, &w.final_norm, eps, &mut st.normed, &w.output, None, &mut st.logits);
        match readout {
            Readout::GreedyQueued => {
                b.queue_greedy(&st.logits, vocab);
                return b.finish_queued_step();
            }
            Readout::Greedy => b.read_greedy(&st.logits, vocab, &mut st.chosen),
            Readout::Logits => b.read(&st.logits, &mut st.out),
            Readout::Sample(_) => {
                b.read_sampled(&st.logits, rows, vocab, &mut st.sampled);
                if st.sampled.len() != rows || st.sampled.iter().any(Option::is_none) {
                    st.sampled.resize(rows, None);
                    b.read(&st.logits, &mut st.out);
                }
            }
        }
        b.finish_step()
    }
}
