//! Page-locked host buffers for transfers that must not make the host wait:
//! a step queued behind one still running stages its metadata (read in place
//! by the device) and reads its chosen tokens through these (copies from or
//! to pageable memory may wait for the stream).

use crate::{CudaError, Gpu};
use cudarc::driver::{result, CudaEvent, CudaSlice, DevicePtr, DeviceRepr, PinnedHostSlice, ValidAsZeroBits};

/// Page-locked host memory and the event of the last copy that used it.
pub struct HostBuffer<T: DeviceRepr> {
    pinned: PinnedHostSlice<T>,
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

    /// Waits until the copy last queued through this buffer is done.
    fn wait(&mut self) -> Result<(), CudaError> {
        if let Some(e) = self.last_copy.take() {
            e.synchronize().map_err(|e| CudaError::call("cuEventSynchronize(host buffer)", e))?;
        }
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
        let pinned = unsafe { self.context().alloc_pinned_with_flags::<T>(len.max(1), 0) }
            .map_err(|e| CudaError::call(format!("cuMemHostAlloc({what})"), e))?;
        Ok(HostBuffer { pinned, last_copy: None, filled: 0 })
    }

    /// Queues a copy of the first `n` elements of `src` into `buf`; read them
    /// with [`Gpu::take_download`].
    pub fn download_queued<T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        src: &CudaSlice<T>,
        n: usize,
        buf: &mut HostBuffer<T>,
        what: &str,
    ) -> Result<(), CudaError> {
        if n > src.len() || n > buf.len() {
            return Err(CudaError::invalid(
                format!("download {what}"),
                format!("{n} elements from a buffer of {} (host {})", src.len(), buf.len()),
            ));
        }
        self.flush_recorded(false)?;
        buf.wait()?;
        let host = buf.pinned.as_mut_slice().map_err(|e| CudaError::call(format!("pinned {what}"), e))?;
        let stream = self.stream();
        let (src_ptr, _record) = src.device_ptr(stream);
        // SAFETY: src holds ≥ n elements; the host slice is not read before
        // `last_copy` completes (take_download waits for it).
        unsafe { result::memcpy_dtoh_async(&mut host[..n], src_ptr, stream.cu_stream()) }
            .map_err(|e| CudaError::call(format!("cuMemcpyDtoHAsync({what})"), e))?;
        buf.last_copy =
            Some(stream.record_event(None).map_err(|e| CudaError::call(format!("cuEventRecord({what})"), e))?);
        buf.filled = n;
        Ok(())
    }

    /// Waits for `buf`'s queued download (and all work queued before it,
    /// whose faults it reports) and returns what it brought.
    pub fn take_download<'b, T: DeviceRepr + ValidAsZeroBits + Copy>(
        &self,
        buf: &'b mut HostBuffer<T>,
    ) -> Result<&'b [T], CudaError> {
        buf.wait()?;
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
        let ptr = host.as_mut_ptr();
        let mut device = 0;
        // SAFETY: `ptr` is the start of a live allocation made with DEVICEMAP.
        unsafe { cudarc::driver::sys::cuMemHostGetDevicePointer_v2(&mut device, ptr.cast(), 0) }
            .result()
            .map_err(|e| CudaError::call(format!("cuMemHostGetDevicePointer({what})"), e))?;
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
