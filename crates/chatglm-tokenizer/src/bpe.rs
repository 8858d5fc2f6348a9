//! SentencePiece's BPE segmentation (`bpe_model.cc`, `Model::SampleEncode`
//! without dropout), reproduced step for step.
//!
//! Start from characters (user-defined pieces matched greedily first and
//! frozen), then repeatedly merge the adjacent pair whose concatenation is a
//! mergeable piece with the highest score, the leftmost pair on ties. Pieces of
//! type UNUSED may be merged through but are split back into the pair that
//! formed them (`rev_merge`), exactly as SentencePiece does.

use std::collections::BinaryHeap;

use crate::hash::FastMap;
use crate::piece::PieceKind;
use crate::vocab::Vocab;

const NONE: u32 = u32::MAX;

/// One symbol of the working segmentation: a byte range of the text. Merged
/// symbols are emptied (`start == end`) and unlinked.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: u32,
    end: u32,
    prev: u32,
    next: u32,
    /// User-defined pieces never merge.
    freeze: bool,
}

impl Symbol {
    fn len(&self) -> u32 {
        self.end - self.start
    }
}

/// A possible merge of `left` and `right`, ordered like SentencePiece's
/// agenda: higher score first, then smaller `left`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// `score_key << 32 | !left`: one integer comparison gives the agenda order.
    key: u64,
    right: u32,
    /// Byte length of the merged piece when the candidate was made; a merge
    /// of either side since then changes it and makes the candidate stale.
    len: u32,
}

impl Candidate {
    fn left(&self) -> u32 {
        !(self.key as u32)
    }
}

/// One output piece of BPE: a vocabulary id (the unknown id for characters
/// not in the vocabulary) and its byte range in the normalized text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BpeToken {
    pub id: u32,
    pub start: usize,
    pub end: usize,
}

/// Segments longer than this are cut (at a character boundary) before BPE so
/// that offsets fit in `u32`. Only inputs over 2 GiB without a single space
/// reach it; SentencePiece refuses inputs over 4 GiB altogether.
pub(crate) const MAX_SEGMENT_BYTES: usize = 1 << 31;

/// Reusable buffers for [`encode_segment`].
#[derive(Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    agenda: BinaryHeap<Candidate>,
    resegment_stack: Vec<(u32, u32)>,
}

/// Segments `text[start..end]` (a normalized string, at most
/// [`MAX_SEGMENT_BYTES`] long) and appends the pieces to `out`.
///
/// `rev_merge` must be `Some` when the vocabulary has UNUSED pieces: it maps an
/// UNUSED piece's text to the byte length of the left half of the last pair
/// seen forming it, shared by the whole call as in SentencePiece.
pub(crate) fn encode_segment<'t>(
    vocab: &Vocab,
    text: &'t [u8],
    start: usize,
    end: usize,
    scratch: &mut BpeScratch,
    mut rev_merge: Option<&mut FastMap<&'t [u8], u32>>,
    out: &mut Vec<BpeToken>,
) {
    if start >= end {
        return;
    }
    let seg = &text[start..end.min(start + MAX_SEGMENT_BYTES)];
    let seg_len = seg.len();
    let BpeScratch { symbols, agenda, resegment_stack } = scratch;
    symbols.clear();
    agenda.clear();

    // Split into characters (or greedy user-defined matches).
    let mut pos = 0;
    while pos < seg_len {
        let (len, freeze) = prefix_match(vocab, &seg[pos..]);
        let index = symbols.len() as u32;
        symbols.push(Symbol {
            start: pos as u32,
            end: (pos + len) as u32,
            prev: if index == 0 { NONE } else { index - 1 },
            next: if pos + len < seg_len { index + 1 } else { NONE },
            freeze,
        });
        pos += len;
    }

    let mut maybe_add = |symbols: &[Symbol], agenda: &mut BinaryHeap<Candidate>, left: u32, right: u32| {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        if l.freeze || r.freeze {
            return;
        }
        let piece = &seg[l.start as usize..r.end as usize];
        let Some((id, score_key)) = vocab.mergeable(piece) else {
            return;
        };
        agenda.push(Candidate { key: (u64::from(score_key) << 32) | u64::from(!left), right, len: l.len() + r.len() });
        if let Some(rev) = rev_merge.as_deref_mut() {
            if vocab.kind(id) == Some(PieceKind::Unused) {
                rev.insert(piece, l.len());
            }
        }
    };

    for i in 1..symbols.len() as u32 {
        maybe_add(symbols, agenda, i - 1, i);
    }

    while let Some(top) = agenda.pop() {
        let (left, right) = (top.left(), top.right);
        let (l, r) = (symbols[left as usize], symbols[right as usize]);
        if l.len() == 0 || r.len() == 0 || l.len() + r.len() != top.len {
            continue; // stale: one side has been merged since
        }
        // A valid candidate's symbols are adjacent, so the merge extends `left`.
        symbols[left as usize].end = r.end;
        symbols[left as usize].next = r.next;
        if r.next != NONE {
            symbols[r.next as usize].prev = left;
        }
        symbols[right as usize].end = r.start;
        let (prev, next) = (symbols[left as usize].prev, symbols[left as usize].next);
        maybe_add(symbols, agenda, prev, left);
        maybe_add(symbols, agenda, left, next);
    }

    let mut index = 0u32;
    while index != NONE {
        let s = symbols[index as usize];
        resegment(vocab, seg, start, (s.start, s.end), rev_merge.as_deref(), resegment_stack, out);
        index = s.next;
    }
}

/// Longest user-defined piece at the start of `rest`, else one character.
#[inline]
fn prefix_match(vocab: &Vocab, rest: &[u8]) -> (usize, bool) {
    let char_len = utf8_char_len(rest[0]).min(rest.len());
    if !vocab.has_user_defined() {
        return (char_len, false);
    }
    let max = vocab.user_defined_max_bytes().min(rest.len());
    for len in (1..=max).rev() {
        if let Some(id) = vocab.id_of(&rest[..len]) {
            if vocab.kind(id) == Some(PieceKind::UserDefined) {
                return (len, true);
            }
        }
    }
    (char_len, false)
}

/// Length of the UTF-8 sequence starting with `lead` (SentencePiece's `OneCharLen`).
#[inline]
fn utf8_char_len(lead: u8) -> usize {
    match lead {
        0x00..=0xBF => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

/// Emits a final symbol, splitting UNUSED pieces back into the pairs that formed them.
fn resegment(
    vocab: &Vocab,
    seg: &[u8],
    base: usize,
    range: (u32, u32),
    rev_merge: Option<&FastMap<&[u8], u32>>,
    stack: &mut Vec<(u32, u32)>,
    out: &mut Vec<BpeToken>,
) {
    stack.clear();
    stack.push(range);
    while let Some((start, end)) = stack.pop() {
        let piece = &seg[start as usize..end as usize];
        let id = vocab.id_of(piece).unwrap_or(vocab.unk_id());
        if vocab.kind(id) == Some(PieceKind::Unused) {
            if let Some(&left_len) = rev_merge.and_then(|m| m.get(piece)) {
                let mid = start + left_len;
                if start < mid && mid < end {
                    // Right first: the stack pops the left half next.
                    stack.push((mid, end));
                    stack.push((start, mid));
                    continue;
                }
            }
        }
        out.push(BpeToken { id, start: base + start as usize, end: base + end as usize });
    }
}
