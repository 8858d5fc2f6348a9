//! Recording a step's kernel launches and replaying them as a CUDA graph.
//!
//! A decode step is ~170 small launches whose arguments are the same from
//! one token to the next (everything that changes — ids, positions, block
//! tables, split counts — is read from device memory). While recording,
//! [`Gpu::launch`](crate::Gpu) queues launches instead of issuing them; the
//! step then ends with [`Gpu::flush_recorded`]: a graph captured earlier from
//! exactly the same launches (same kernels, shapes and argument values) is
//! replayed with one call, otherwise the launches are issued one by one (the
//! first time a step is seen) or captured into a new graph (the second). Equality of every argument is
//! the only condition for replay, so a replay does exactly what the queued
//! launches would have done.
//!
//! Matrix products through cuBLASLt are queued the same way (their arguments
//! are the product's shape and pointers; captured, cuBLASLt's kernels become
//! graph nodes). Anything else that touches the stream (copies, allocations,
//! classic cuBLAS, synchronisation) first issues the queued launches, so the
//! order of work never changes.

use crate::device::Args;
use crate::{CudaError, Gpu};
use cudarc::driver::{sys, CudaGraph, LaunchConfig};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

/// One queued kernel launch.
pub(crate) struct Launch {
    pub func: sys::CUfunction,
    pub args: Args,
    pub cfg: LaunchConfig,
    pub kernel: String,
}

// SAFETY: a CUfunction is a handle the driver lets any thread use with its
// context; the queue lives inside the `Gpu` that owns the module.
unsafe impl Send for Launch {}

/// One queued matrix product (`Gpu::gemm_strided`'s arguments).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GemmCall {
    pub w: u64,
    pub dtype: crate::DType,
    pub x: u64,
    pub out: u64,
    pub out_dtype: crate::DType,
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub ld_out: usize,
    pub accumulate: bool,
    pub bias: u64,
}

/// A queued piece of work.
pub(crate) enum Op {
    Kernel(Launch),
    Gemm(GemmCall),
}

/// Graphs kept: a few batch shapes and buffer sets (13 padded batch sizes
/// by 2–3 ways of choosing tokens, besides one-token steps); beyond that the
/// one used longest ago goes (capturing again costs one step's launches).
pub const MAX_GRAPHS: usize = 64;

struct Captured {
    signature: Vec<u64>,
    graph: CudaGraph,
    /// `Recorder::uses` at its last replay.
    last_use: u64,
}

// SAFETY: graphs are only used under the `Recorder` mutex (cudarc's CudaGraph
// is not thread safe; this serialises every call on it).
unsafe impl Send for Captured {}

/// Queued launches and captured graphs.
#[derive(Default)]
pub(crate) struct Recorder {
    queue: Option<Vec<Op>>,
    graphs: HashMap<u64, Captured>,
    /// Why capture last failed (graphs are then not tried again).
    failed: Option<String>,
    /// A capture holding a matrix product failed: products are no longer
    /// queued (steps with them run without graphs; the others keep theirs).
    products_failed: bool,
    /// Replays and captures so far, for keeping the graphs used last.
    uses: u64,
    /// Signatures seen once and issued launch by launch: a step is captured
    /// the second time it comes, so every kernel in it (cuBLASLt's too) has
    /// already run once outside a capture (loaded, attributes set).
    seen_once: std::collections::HashSet<u64>,
    replays: u64,
    captures: u64,
}

fn lock(m: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every value that decides what a list of launches does.
fn signature(ops: &[Op]) -> Vec<u64> {
    let mut sig = Vec::with_capacity(ops.len() * 16);
    for op in ops {
        let l = match op {
            Op::Kernel(l) => l,
            Op::Gemm(g) => {
                // A tag no kernel handle or grid takes, then every argument.
                sig.extend([u64::MAX, g.w, g.dtype.code() as u64, g.x, g.out, g.out_dtype.code() as u64]);
                sig.extend([g.n, g.rows, g.cols, g.ld_out].map(|v| v as u64));
                sig.extend([u64::from(g.accumulate), g.bias]);
                continue;
            }
        };
        let c = &l.cfg;
        sig.extend([l.func as u64, c.grid_dim.0 as u64, c.grid_dim.1 as u64, c.grid_dim.2 as u64]);
        sig.extend([c.block_dim.0 as u64, c.block_dim.1 as u64, c.block_dim.2 as u64, c.shared_mem_bytes as u64]);
        sig.push(l.args.values().len() as u64);
        sig.extend_from_slice(l.args.values());
    }
    sig
}

fn hash(sig: &[u64]) -> u64 {
    // A multiply-rotate mix: the signature is compared in full on a hit.
    sig.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &v| (h.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95))
}

/// Counters of graph use, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphStats {
    pub captures: u64,
    pub replays: u64,
    pub cached: usize,
}

impl Gpu {
    /// Starts queuing launches (see the module notes). Launches already
    /// queued are issued first.
    pub fn begin_recording(&self) -> Result<(), CudaError> {
        self.flush_recorded(false)?;
        self.prepare_chain()?;
        lock(&self.recorder).queue = Some(Vec::with_capacity(256));
        self.begin_chain()
    }

    /// Whether launches are being queued.
    pub fn recording(&self) -> bool {
        lock(&self.recorder).queue.is_some()
    }

    /// Queues `op` if recording; otherwise hands it back.
    pub(crate) fn record(&self, op: Op) -> Option<Op> {
        if matches!(op, Op::Gemm(_)) {
            self.break_chain();
        }
        match lock(&self.recorder).queue.as_mut() {
            Some(q) => {
                q.push(op);
                None
            }
            None => Some(op),
        }
    }

    /// Issues one piece of work now (`capturing`: into the graph being
    /// captured, where a product must not fall back to classic cuBLAS).
    fn issue(&self, op: &Op, capturing: bool) -> Result<(), CudaError> {
        match op {
            Op::Kernel(l) => self.launch_raw(l),
            // SAFETY: the call's pointers were checked when it was queued,
            // and its buffers outlive the step that queued it.
            Op::Gemm(g) if capturing => unsafe { self.gemm_captured(g) },
            // SAFETY: as above.
            Op::Gemm(g) => unsafe { self.gemm_now(g) },
        }
    }

    /// Whether a capture holding a product has failed (products are then
    /// issued at once instead of queued).
    pub(crate) fn products_capture_failed(&self) -> bool {
        lock(&self.recorder).products_failed
    }

    /// Stops recording and issues the queued launches: from a graph when
    /// `graph` (replaying a matching one, or capturing a new one), else one by
    /// one. Without a queue this does nothing.
    pub fn flush_recorded(&self, graph: bool) -> Result<(), CudaError> {
        // Whatever follows on the stream is not linked to the queued kernels.
        self.end_chain();
        let mut rec = lock(&self.recorder);
        let Some(queue) = rec.queue.take() else { return Ok(()) };
        if queue.is_empty() {
            return Ok(());
        }
        if !graph || !self.graphs_enabled.load(std::sync::atomic::Ordering::Relaxed) || rec.failed.is_some() {
            drop(rec);
            return queue.iter().try_for_each(|op| self.issue(op, false));
        }
        let sig = signature(&queue);
        let key = hash(&sig);
        rec.uses += 1;
        let now = rec.uses;
        if let Some(c) = rec.graphs.get_mut(&key).filter(|c| c.signature == sig) {
            c.graph.launch().map_err(|e| CudaError::call("cuGraphLaunch", e))?;
            c.last_use = now;
            rec.replays += 1;
            return Ok(());
        }
        if rec.seen_once.len() > 4 * MAX_GRAPHS {
            rec.seen_once.clear();
        }
        if rec.seen_once.insert(key) {
            drop(rec);
            return queue.iter().try_for_each(|op| self.issue(op, false));
        }
        // Capture without holding the recorder: the capture issues products
        // through cuBLASLt, and nothing it calls may queue work.
        drop(rec);
        let captured = self.capture(&queue);
        let mut rec = lock(&self.recorder);
        match captured {
            Ok(graph) => {
                graph.launch().map_err(|e| CudaError::call("cuGraphLaunch", e))?;
                if rec.graphs.len() >= MAX_GRAPHS {
                    let oldest = rec.graphs.iter().min_by_key(|(_, c)| c.last_use).map(|(k, _)| *k);
                    if let Some(k) = oldest {
                        rec.graphs.remove(&k);
                    }
                }
                rec.graphs.insert(key, Captured { signature: sig, graph, last_use: now });
                rec.captures += 1;
                Ok(())
            }
            Err(e) => {
                // Graphs are an optimisation: keep running without them —
                // without queued products where the failed capture held one,
                // else without graphs at all.
                if queue.iter().any(|op| matches!(op, Op::Gemm(_))) {
                    tracing::warn!("CUDA graph capture of a step with matrix products failed; such steps now run without graphs: {e}");
                    rec.products_failed = true;
                } else {
                    tracing::warn!("CUDA graph capture failed, launching kernels one by one from now on: {e}");
                    rec.failed = Some(e.to_string());
                }
                drop(rec);
                queue.iter().try_for_each(|op| self.issue(op, false))
            }
        }
    }

    fn capture(&self, queue: &[Op]) -> Result<CudaGraph, CudaError> {
        let stream = self.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| CudaError::call("cuStreamBeginCapture", e))?;
        let launched = queue.iter().try_for_each(|op| self.issue(op, true));
        // End the capture whatever happened, so the stream is usable again.
        let ended = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        launched?;
        ended
            .map_err(|e| CudaError::call("cuStreamEndCapture/cuGraphInstantiate", e))?
            .ok_or_else(|| CudaError::invalid("graph capture", "the capture produced no graph"))
    }

    /// Turns graph replay on or off (off: queued launches are issued one by
    /// one; for measurements and tests).
    pub fn set_graphs(&self, on: bool) {
        self.graphs_enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Graph use so far.
    pub fn graph_stats(&self) -> GraphStats {
        let rec = lock(&self.recorder);
        GraphStats { captures: rec.captures, replays: rec.replays, cached: rec.graphs.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(func: usize, grid: u32, args: &[u64]) -> Op {
        let mut a = Args::default();
        for v in args {
            a.arg(v);
        }
        Op::Kernel(Launch {
            func: func as sys::CUfunction,
            args: a,
            cfg: LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 },
            kernel: "k".into(),
        })
    }

    fn gemm(n: usize, out: u64) -> Op {
        Op::Gemm(GemmCall {
            w: 0x1000,
            dtype: crate::DType::F16,
            x: 0x2000,
            out,
            out_dtype: crate::DType::F32,
            n,
            rows: 64,
            cols: 32,
            ld_out: 64,
            accumulate: false,
            bias: 0,
        })
    }

    #[test]
    fn a_graph_with_products_replays_only_the_same_products() {
        let base = [launch(1, 4, &[10]), gemm(8, 0x3000), launch(2, 8, &[30])];
        let same = [launch(1, 4, &[10]), gemm(8, 0x3000), launch(2, 8, &[30])];
        assert_eq!(signature(&base), signature(&same));
        for other in [
            vec![launch(1, 4, &[10]), gemm(9, 0x3000), launch(2, 8, &[30])],
            vec![launch(1, 4, &[10]), gemm(8, 0x3100), launch(2, 8, &[30])],
            vec![launch(1, 4, &[10]), launch(2, 8, &[30])],
            vec![gemm(8, 0x3000), launch(1, 4, &[10]), launch(2, 8, &[30])],
        ] {
            assert_ne!(signature(&base), signature(&other));
        }
    }

    #[test]
    fn a_graph_replays_only_exactly_the_same_launches() {
        let base = [launch(1, 4, &[10, 20]), launch(2, 8, &[30])];
        let same = [launch(1, 4, &[10, 20]), launch(2, 8, &[30])];
        assert_eq!(signature(&base), signature(&same));
        assert_eq!(hash(&signature(&base)), hash(&signature(&same)));
        // Any kernel, shape or argument that differs is another graph.
        for other in [
            vec![launch(1, 4, &[10, 21]), launch(2, 8, &[30])],
            vec![launch(1, 5, &[10, 20]), launch(2, 8, &[30])],
            vec![launch(3, 4, &[10, 20]), launch(2, 8, &[30])],
            vec![launch(1, 4, &[10, 20])],
            vec![launch(1, 4, &[10]), launch(2, 8, &[20, 30])],
        ] {
            assert_ne!(signature(&base), signature(&other));
        }
    }

    #[test]
    fn struct_arguments_are_contiguous_slots() {
        let mut a = Args::default();
        a.arg(&7u64).arg_struct(&[1, 2, 3]).arg(&-1i32).arg(&1.5f32);
        assert_eq!(a.values(), &[7, 1, 2, 3, u32::MAX as u64, 1.5f32.to_bits() as u64]);
        let p = a.pointers();
        assert_eq!(p.len(), 4);
        // The struct's pointer is its first slot; the next parameter follows its last.
        let at = |i: usize| p[i] as usize;
        assert_eq!(at(1) - at(0), 8);
        assert_eq!(at(2) - at(1), 24);
        assert_eq!(at(3) - at(2), 8);
    }
}
