//! Kernel-to-kernel dependencies through counters in a recorded step.
//!
//! Every kernel of a step waits for the one before it. With programmatic
//! dependent launch that wait (`griddepcontrol.wait`) returns once the whole
//! grid before has drained and its writes are flushed; in a batch-1 decode
//! step of a quantized model the kernels after the first bytes are short, so
//! those ~140 boundaries a token are much of the step (run 91: the dense
//! product, its weights already in registers, ends 5.4 µs after the
//! attention before it). Kernels that take a `ChainSync` argument
//! (`common.cuh`: qmma's products, the tensor-core decode attention) can
//! instead wait for a counter that each block of the kernel before bumps
//! once its writes are done, and bump their own.
//!
//! A link is only made between two such kernels launched back to back while
//! a step is recorded; any other launch, product or stream operation breaks
//! the chain, and the next kernel waits with `griddepcontrol.wait` as
//! before. Each step's first launch zeroes the counters (after waiting for
//! the step before, whose kernels are then done with theirs), and every
//! link of a step takes the next counter, so a graph replays the same
//! addresses. Off by default until measured (`CHATGLM_CHAIN_SYNC=1`).

use crate::device::Args;
use crate::{CudaError, Gpu};
use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig};

/// Counters of one step (a decode step of ChatGLM2 links ~145 kernels).
pub(crate) const CHAIN_COUNTERS: usize = 1024;

/// The state of the chain of the step being recorded.
#[derive(Default)]
pub(crate) struct Chain {
    counters: Option<CudaSlice<i32>>,
    /// Counters taken so far this step.
    next: usize,
    /// The last launch, when it was a chained kernel: its counter and blocks.
    last: Option<(u64, u64)>,
    /// The step being recorded zeroed the counters first: links may be made
    /// (never otherwise — counters left from an earlier step would let a
    /// kernel through before the one it waits for is done).
    active: bool,
}

impl Chain {
    /// The `ChainSync` argument of the next kernel (`blocks` of them), with
    /// the counters at `base`: a link to the kernel before when the step
    /// zeroed the counters and is being recorded, else none.
    fn link(&mut self, base: Option<u64>, recording: bool, blocks: u64) -> [u64; 3] {
        match base {
            Some(base) if self.active && self.next < CHAIN_COUNTERS && recording => {
                let signal = base + 4 * self.next as u64;
                self.next += 1;
                let link = link_args(self.last, signal);
                self.last = Some((signal, blocks));
                link
            }
            _ => {
                self.last = None;
                [0; 3]
            }
        }
    }
}

/// The `ChainSync` argument (wait counter, signal counter, blocks to wait
/// for) of a kernel after `last`, whose own counter is `signal`.
pub(crate) fn link_args(last: Option<(u64, u64)>, signal: u64) -> [u64; 3] {
    let (wait, wait_n) = last.unwrap_or((0, 0));
    [wait, signal, wait_n]
}

/// Whether chained dependencies are asked for (`CHATGLM_CHAIN_SYNC=1`), read once.
pub(crate) fn chain_sync_requested() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CHATGLM_CHAIN_SYNC").is_ok_and(|v| v == "1"))
}

fn lock(m: &std::sync::Mutex<Chain>) -> std::sync::MutexGuard<'_, Chain> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gpu {
    /// Allocates the counters before the first recorded step (an
    /// allocation issues queued work, so not while recording).
    pub(crate) fn prepare_chain(&self) -> Result<(), CudaError> {
        if !self.chain_sync() || lock(&self.chain).counters.is_some() {
            return Ok(());
        }
        // Not under the lock: the allocation flushes the queue, which breaks the chain.
        let counters = self.alloc_zeros::<i32>(CHAIN_COUNTERS, "kernel chain counters")?;
        lock(&self.chain).counters = Some(counters);
        Ok(())
    }

    /// Starts a recorded step's chain: queues the kernel that zeroes the
    /// counters ([`Self::prepare_chain`] allocated them).
    pub(crate) fn begin_chain(&self) -> Result<(), CudaError> {
        lock(&self.chain).active = false;
        if !self.chain_sync() || !self.has_kernel("chain_reset") {
            return Ok(());
        }
        let Some(counters) = lock(&self.chain).counters.as_ref().map(crate::device_ptr) else { return Ok(()) };
        let f = self.kernel("chain_reset")?;
        let n = CHAIN_COUNTERS as i32;
        let mut a = Args::default();
        a.arg(&counters).arg(&n);
        let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(f, a, "chain_reset", cfg)?;
        let mut c = lock(&self.chain);
        c.next = 0;
        c.active = true;
        Ok(())
    }

    /// The recorded step's launches are issued: no more links until the
    /// next step zeroes the counters.
    pub(crate) fn end_chain(&self) {
        let mut c = lock(&self.chain);
        c.last = None;
        c.active = false;
    }

    /// The launch about to be issued is not a chained kernel.
    pub(crate) fn break_chain(&self) {
        lock(&self.chain).last = None;
    }

    /// Launches a kernel whose last parameter is a `ChainSync`: linked to
    /// the launch before when that was one too and a step is being recorded.
    pub(crate) fn launch_chained(
        &self,
        f: &CudaFunction,
        mut args: Args,
        kernel: &str,
        cfg: LaunchConfig,
    ) -> Result<(), CudaError> {
        let blocks = u64::from(cfg.grid_dim.0) * u64::from(cfg.grid_dim.1) * u64::from(cfg.grid_dim.2);
        let recording = self.recording();
        let link = {
            let mut c = lock(&self.chain);
            let base = c.counters.as_ref().map(crate::device_ptr);
            c.link(base, recording, blocks)
        };
        args.arg_struct(&link);
        self.launch_unbroken(f, args, kernel, cfg)
    }
}

impl Gpu {
    /// Turns chained dependencies on or off (from the next recorded step;
    /// for tests and measurements). Only with programmatic dependent launch.
    pub fn set_chain_sync(&self, on: bool) {
        self.chain_sync.store(on && self.pdl_enabled(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether recorded steps chain their kernels through counters.
    pub fn chain_sync(&self) -> bool {
        self.chain_sync.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_waits_for_the_chained_kernel_before_it() {
        assert_eq!(link_args(None, 0x1004), [0, 0x1004, 0], "first link: griddepcontrol.wait");
        assert_eq!(link_args(Some((0x1004, 264)), 0x1008), [0x1004, 0x1008, 264]);
    }

    #[test]
    fn links_are_made_only_in_a_step_that_zeroed_the_counters() {
        let base = Some(0x1000);
        let mut c = Chain::default();
        assert_eq!(c.link(base, true, 144), [0; 3], "counters not zeroed this step");
        c.active = true;
        assert_eq!(c.link(base, true, 144), [0, 0x1000, 0]);
        assert_eq!(c.link(base, true, 86), [0x1000, 0x1004, 144]);
        assert_eq!(c.link(base, false, 256), [0; 3], "not recording");
        assert_eq!(c.link(base, true, 256), [0, 0x1008, 0], "the chain broke: griddepcontrol.wait");
        assert_eq!(c.link(None, true, 256), [0; 3], "no counters");
        c.next = CHAIN_COUNTERS;
        assert_eq!(c.link(base, true, 256), [0; 3], "counters used up");
    }
}
