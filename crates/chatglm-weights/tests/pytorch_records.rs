//! Property test of the PyTorch loader's tensor records: every combination
//! of storage size, offset, shape and stride a pickle can state (including
//! zero-size dimensions, zero strides, views past the storage and sizes near
//! overflow) loads as exactly the elements the view names, or is refused with
//! an error. Never a panic, an out-of-bounds read or a huge allocation.

mod common;

use chatglm_weights::load_pytorch_bin;
use common::{state_dict_pickle, zip_stored};
use proptest::prelude::*;

/// The elements a view selects, computed the slow way (None: out of bounds).
fn reference_view(storage: &[f32], offset: usize, shape: &[usize], stride: &[usize]) -> Option<Vec<f32>> {
    let n: usize = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let mut out = Vec::with_capacity(n.min(1 << 16));
    let mut index = vec![0usize; shape.len()];
    for _ in 0..n {
        let at = index.iter().zip(stride).try_fold(offset, |a, (&i, &s)| a.checked_add(i.checked_mul(s)?))?;
        out.push(*storage.get(at)?);
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            if index[d] < shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Some(out)
}

fn dim() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..5, 1 => Just(0usize), 1 => Just(i32::MAX as usize)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn tensor_records_load_exactly_or_fail_cleanly(
        storage_elements in prop_oneof![8 => 0usize..40, 1 => Just(i32::MAX as usize)],
        entry_elements in 0usize..40,
        offset in prop_oneof![8 => 0usize..40, 1 => Just(i32::MAX as usize)],
        shape in prop::collection::vec(dim(), 0..4),
        stride_seed in prop::collection::vec(prop_oneof![6 => 0usize..8, 1 => Just(i32::MAX as usize)], 4),
    ) {
        let stride: Vec<usize> = stride_seed[..shape.len()].to_vec();
        let storage: Vec<f32> = (0..entry_elements).map(|i| i as f32 + 0.5).collect();
        let bytes: Vec<u8> = storage.iter().flat_map(|v| v.to_le_bytes()).collect();
        let pkl = state_dict_pickle(&[("w", "0", storage_elements, offset, &shape, &stride)]);
        let archive = zip_stored(&[("archive/data.pkl", &pkl), ("archive/data/0", &bytes)]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pytorch_model.bin");
        std::fs::write(&path, &archive).unwrap();
        match load_pytorch_bin(&path) {
            Ok(tensors) => {
                prop_assert_eq!(tensors.len(), 1);
                let t = &tensors[0];
                prop_assert_eq!(&t.shape, &shape);
                // The storage the record declares must fit in its entry, and
                // the view must lie inside the declared storage.
                prop_assert!(storage_elements <= entry_elements);
                let declared = &storage[..storage_elements];
                let want = reference_view(declared, offset, &shape, &stride);
                prop_assert!(want.is_some(), "loaded a view the reference says is out of bounds");
                let got: Vec<f32> =
                    t.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                prop_assert_eq!(got, want.unwrap());
            }
            Err(e) => {
                // A refusal names the tensor or the archive; a view that is
                // inside its storage is never refused.
                let msg = e.to_string();
                prop_assert!(!msg.is_empty());
                let n: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
                let fits = storage_elements <= entry_elements
                    && n.is_some_and(|n| n <= storage_elements)
                    && reference_view(&storage[..storage_elements.min(entry_elements)], offset, &shape, &stride)
                        .is_some()
                    && n.is_some_and(|n| n > 0 || offset <= storage_elements);
                prop_assert!(!fits, "refused a valid view: {msg}");
            }
        }
    }
}
