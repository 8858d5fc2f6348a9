//! Page-locked host buffers for transfers that must not make the host wait:
//! a step queued behind one still running stages its metadata (read in place
//! by the device) and reads its chosen tokens through these (copies from or
//! to pageable memory may wait for the stream).

use crate::{CudaError, Gpu};
use cudarc::driver::{CudaEvent, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

/// Page-locked host memory (mapped: kernels may write it in place) and the
/// event of the last copy or launch that used it.
pub struct HostBuffer<T: DeviceRepr> {
    pinned: PinnedHostSlice<T>,
    device: u64,
    last_copy: Option<CudaEvent>,
    /// Elements the last queued download brings.
    filled: usize,
}

impl<T: DeviceRepr + ValidAsZeroBits + Copy> HostBuffer<T> {
    pub fn len(&self) -> usize {
        self.pinned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pinned.is_empty()
    }

    /// The device address kernels write the buffer through.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }

    /// Waits until the copy or launch last queued through this buffer is done.
    pub fn wait_for_device(&mut self) -> Result<(), CudaError> {
        if let Some(e) = self.last_copy.take() {
            e.synchronize().map_err(|e| CudaError::call("cuEventSynchronize(host buffer)", e))?;
        }
        Ok(())
    }

    /// Records that the launches queued so far write the first `n` elements
    /// (read them with [`Gpu::take_download`]).
    pub fn written_by_device(&mut self, gpu: &Gpu, n: usize) -> Result<(), CudaError> {
        let event = gpu.stream().record_event(None).map_err(|e| CudaError::call("cuEventRecord(host buffer)", e))?;
        self.last_copy = Some(event);
        self.filled = n;
        Ok(())
    }
}

impl Gpu {
    /// A page-locked host buffer of `len` elements (contents unset).
    pub fn host_buffer<T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<HostBuffer<T>, CudaError> {
        // SAFETY: the buffer is only read after a download filled it, or
        // written before an upload reads it.
        let mut pinned = unsafe {
            self.context().alloc_pinned_with_flags::<T>(len.max(1), cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP)
        }
        .map_err(|e| CudaError::call(format!("cuMemHostAlloc({what})"), e))?;
        let host = pinned.as_mut_slice().map_err(|e| CudaError::call(format!("pinned {what}"), e))?;
        let device = mapped_device_ptr(host.as_mut_ptr().cast(), what)?;
        Ok(HostBuffer { pinned, device, last_copy: None, filled: 0 })
    }

    /// Waits for what was queued to write `buf` (and all work queued before it,
    /// whose faults it reports) and returns what it brought.
    pub fn take_download<'b, T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        buf: &'b mut HostBuffer<T>,
    ) -> Result<&'b [T], CudaError> {
        buf.wait_for_device()?;
        let n = buf.filled;
        let host = buf.pinned.as_slice().map_err(|e| CudaError::call("pinned download", e))?;
        Ok(&host[..n])
    }
}

impl<T: DeviceRepr> Drop for HostBuffer<T> {
    fn drop(&mut self) {
        // The pinned memory must outlive a copy still queued through it.
        if let Some(e) = self.last_copy.take() {
            let _ = e.synchronize();
        }
    }
}

/// Page-locked host memory the device reads in place (zero-copy, over the
/// bus): a table too large to keep on the device that a step reads a few
/// rows of — the quantized models' embedding table, gathered on the device
/// from ids the step before chose there, so steps can be queued.
pub struct MappedHost {
    pinned: PinnedHostSlice<u8>,
    device: u64,
}

impl MappedHost {
    /// The device address of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.device
    }

    /// The bytes, on the host.
    pub fn as_slice(&self) -> &[u8] {
        self.pinned.as_slice().unwrap_or(&[])
    }

    pub fn len(&self) -> usize {
        self.pinned.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pinned.is_empty()
    }
}

impl Gpu {
    /// A mapped page-locked copy of `bytes` ([`MappedHost`]).
    pub fn mapped_host_copy(&self, bytes: &[u8], what: &str) -> Result<MappedHost, CudaError> {
        let flags = cudarc::driver::sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: filled below before anything reads it.
        let mut pinned = unsafe { self.context().alloc_pinned_with_flags::<u8>(bytes.len().max(1), flags) }
            .map_err(|e| CudaError::call(format!("cuMemHostAlloc({what}, {} bytes, mapped)", bytes.len()), e))?;
        let host = pinned.as_mut_slice().map_err(|e| CudaError::call(format!("pinned {what}"), e))?;
        host[..bytes.len()].copy_from_slice(bytes);
        let device = mapped_device_ptr(host.as_mut_ptr().cast(), what)?;
        Ok(MappedHost { pinned, device })
    }
}

/// Page-locked host memory the device reads in place that the host rewrites
/// between queued steps: before rewriting it, the host waits for the last
/// launch that read it (whose event [`StagingBuffer::mark_read`] keeps).
pub struct StagingBuffer {
    mapped: MappedHost,
    last_read: Option<CudaEvent>,
}

impl StagingBuffer {
    pub fn len(&self) -> usize {
        self.mapped.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mapped.is_empty()
    }

    /// The device address of the first byte.
    pub fn device_ptr(&self) -> u64 {
        self.mapped.device_ptr()
    }

    /// Waits for the last launch that read the buffer, then copies `parts`
    /// into it one after the other, each starting at a multiple of 16 bytes.
    pub fn fill(&mut self, parts: &[&[u8]]) -> Result<(), CudaError> {
        let needed: usize = parts.iter().map(|p| p.len().next_multiple_of(16)).sum();
        if needed > self.len() {
            return Err(CudaError::invalid("staging", format!("{needed} bytes into a buffer of {}", self.len())));
        }
        if let Some(e) = self.last_read.take() {
            e.synchronize().map_err(|e| CudaError::call("cuEventSynchronize(staging buffer)", e))?;
        }
        let host = self.mapped.pinned.as_mut_slice().map_err(|e| CudaError::call("pinned staging buffer", e))?;
        let mut at = 0;
        for p in parts {
            host[at..at + p.len()].copy_from_slice(p);
            at += p.len().next_multiple_of(16);
        }
        Ok(())
    }

    /// Records that the launches queued so far read the buffer.
    pub fn mark_read(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        let event = gpu.stream().record_event(None).map_err(|e| CudaError::call("cuEventRecord(staging)", e))?;
        self.last_read = Some(event);
        Ok(())
    }
}

impl Drop for StagingBuffer {
    fn drop(&mut self) {
        // The pinned memory must outlive a launch still queued that reads it.
        if let Some(e) = self.last_read.take() {
            let _ = e.synchronize();
        }
    }
}

impl Gpu {
    /// A [`StagingBuffer`] of at least `bytes` bytes.
    pub fn staging_buffer(&self, bytes: usize, what: &str) -> Result<StagingBuffer, CudaError> {
        Ok(StagingBuffer { mapped: self.mapped_host_copy(&vec![0; bytes.max(16)], what)?, last_read: None })
    }
}

/// The device address of page-locked memory allocated with DEVICEMAP.
fn mapped_device_ptr(ptr: *mut std::ffi::c_void, what: &str) -> Result<u64, CudaError> {
    let mut device = 0;
    // SAFETY: callers pass the start of a live allocation made with DEVICEMAP.
    unsafe { cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut device, ptr, 0) }
        .result()
        .map_err(|e| CudaError::call(format!("cuMemHostGetDevicePointer({what})"), e))?;
    Ok(device)
}
