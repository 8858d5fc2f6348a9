//! Recording a step's kernel launches and replaying them as a CUDA graph.
//!
//! A decode step is ~170 small launches whose arguments are the same from
//! one token to the next (everything that changes — ids, positions, block
//! tables, split counts — is read from device memory). While recording,
//! [`Gpu::launch`](crate::Gpu) queues launches instead of issuing them; the
//! step then ends with [`Gpu::flush_recorded`]: a graph captured earlier from
//! exactly the same launches (same kernels, shapes and argument values) is
//! replayed with one call, otherwise the launches are captured into a new
//! graph (and replayed), or issued one by one. Equality of every argument is
//! the only condition for replay, so a replay does exactly what the queued
//! launches would have done.
//!
//! Anything else that touches the stream (copies, allocations, cuBLAS,
//! synchronisation) first issues the queued launches, so the order of work
//! never changes.

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

/// Graphs kept: a few batch shapes and buffer sets; beyond that the cache
/// starts over (capturing again costs one step's launches).
const MAX_GRAPHS: usize = 32;

struct Captured {
    signature: Vec<u64>,
    graph: CudaGraph,
}

// SAFETY: graphs are only used under the `Recorder` mutex (cudarc's CudaGraph
// is not thread safe; this serialises every call on it).
unsafe impl Send for Captured {}

/// Queued launches and captured graphs.
#[derive(Default)]
pub(crate) struct Recorder {
    queue: Option<Vec<Launch>>,
    graphs: HashMap<u64, Captured>,
    /// Why capture last failed (graphs are then not tried again).
    failed: Option<String>,
    replays: u64,
    captures: u64,
}

fn lock(m: &Mutex<Recorder>) -> MutexGuard<'_, Recorder> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every value that decides what a list of launches does.
fn signature(launches: &[Launch]) -> Vec<u64> {
    let mut sig = Vec::with_capacity(launches.len() * 16);
    for l in launches {
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
        lock(&self.recorder).queue = Some(Vec::with_capacity(256));
        Ok(())
    }

    /// Whether launches are being queued.
    pub fn recording(&self) -> bool {
        lock(&self.recorder).queue.is_some()
    }

    /// Queues `launch` if recording; otherwise hands it back.
    pub(crate) fn record(&self, launch: Launch) -> Option<Launch> {
        match lock(&self.recorder).queue.as_mut() {
            Some(q) => {
                q.push(launch);
                None
            }
            None => Some(launch),
        }
    }

    /// Stops recording and issues the queued launches: from a graph when
    /// `graph` (replaying a matching one, or capturing a new one), else one by
    /// one. Without a queue this does nothing.
    pub fn flush_recorded(&self, graph: bool) -> Result<(), CudaError> {
        let mut rec = lock(&self.recorder);
        let Some(queue) = rec.queue.take() else { return Ok(()) };
        if queue.is_empty() {
            return Ok(());
        }
        if !graph || !self.graphs_enabled.load(std::sync::atomic::Ordering::Relaxed) || rec.failed.is_some() {
            drop(rec);
            return queue.into_iter().try_for_each(|l| self.launch_now(l));
        }
        let sig = signature(&queue);
        let key = hash(&sig);
        if let Some(c) = rec.graphs.get(&key).filter(|c| c.signature == sig) {
            c.graph.launch().map_err(|e| CudaError::call("cuGraphLaunch", e))?;
            rec.replays += 1;
            return Ok(());
        }
        match self.capture(&queue) {
            Ok(graph) => {
                graph.launch().map_err(|e| CudaError::call("cuGraphLaunch", e))?;
                if rec.graphs.len() >= MAX_GRAPHS {
                    rec.graphs.clear();
                }
                rec.graphs.insert(key, Captured { signature: sig, graph });
                rec.captures += 1;
                Ok(())
            }
            Err(e) => {
                // Graphs are an optimisation: keep running without them.
                tracing::warn!("CUDA graph capture failed, launching kernels one by one from now on: {e}");
                rec.failed = Some(e.to_string());
                drop(rec);
                queue.into_iter().try_for_each(|l| self.launch_now(l))
            }
        }
    }

    fn capture(&self, queue: &[Launch]) -> Result<CudaGraph, CudaError> {
        let stream = self.stream();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| CudaError::call("cuStreamBeginCapture", e))?;
        let launched = queue.iter().try_for_each(|l| self.launch_raw(l));
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

    fn launch(func: usize, grid: u32, args: &[u64]) -> Launch {
        let mut a = Args::default();
        for v in args {
            a.arg(v);
        }
        Launch {
            func: func as sys::CUfunction,
            args: a,
            cfg: LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 },
            kernel: "k".into(),
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
