//! Read-only memory maps of checkpoint files.

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::WeightsError;

/// Maps `path` read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap, WeightsError> {
    let file = File::open(path).map_err(|e| WeightsError::io(path, e))?;
    // SAFETY: the mapping is read-only and private to this process. As with
    // every mmap-based loader, a file truncated or rewritten by another
    // process while mapped is undefined behaviour; checkpoints are treated as
    // immutable while a model is loaded.
    unsafe { Mmap::map(&file) }.map_err(|e| WeightsError::io(path, e))
}
