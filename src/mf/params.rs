//! The model's parameters as training holds them: one row per user and per item, each
//! `[bias, f_0, ..., f_{k-1}, 0...]` padded with zeros to a whole number of SIMD lanes and
//! stored 64-byte aligned, so a row never straddles more cache lines than it must and the
//! kernel's loops have a fixed trip count.
//!
//! Outside training (checkpoints, model files) rows are packed: `factors + 1` floats each.

use crate::ids::Id;
use crate::rng::Rng;

use super::kernel::LANES;
use super::Hyper;

/// One cache line of floats; a `Vec` of these is a 64-byte aligned float buffer.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A 64-byte aligned buffer of `len` floats, zeros to start with: rows of `width` floats each.
#[derive(Clone)]
pub struct Rows {
    lines: Vec<Line>,
    len: usize,
}

impl Rows {
    pub fn zeros(len: usize) -> Rows {
        Rows {
            lines: vec![Line::default(); len.div_ceil(16)],
            len,
        }
    }

    /// A copy of `floats`, aligned.
    pub fn copy_of(floats: &[f32]) -> Rows {
        let mut rows = Rows::zeros(floats.len());
        rows.as_mut_slice().copy_from_slice(floats);
        rows
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `Line` is `repr(C)` over 16 f32 with no padding (64 bytes, align 64), so the
        // lines are `16 * lines.len() >= len` contiguous, initialised f32.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len) }
    }
}

impl PartialEq for Rows {
    fn eq(&self, other: &Rows) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows").field("len", &self.len).finish()
    }
}

/// Floats per padded row for `factors` factors (bias included).
pub fn padded_width(factors: usize) -> usize {
    (factors + 1).div_ceil(LANES) * LANES
}

/// Parameters of one rank: its users' rows and the shared item rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    pub factors: usize,
    /// Floats per row in `users` and `items` (a multiple of `LANES`).
    pub width: usize,
    pub users: Rows,
    pub items: Rows,
}

impl Params {
    /// Initial rows from each id's own random stream: the same on every rank, for any layout.
    pub fn init(user_ids: &[Id], item_ids: &[Id], hyper: &Hyper) -> Params {
        let width = padded_width(hyper.factors);
        let fill = |ids: &[Id], salt: u64| {
            let mut rows = Rows::zeros(ids.len() * width);
            for (id, row) in ids.iter().zip(rows.as_mut_slice().chunks_exact_mut(width)) {
                let mut rng = Rng::new(hyper.seed, id.stable_hash() ^ salt);
                for v in &mut row[1..=hyper.factors] {
                    *v = (rng.normal() * hyper.init_std as f64) as f32;
                }
            }
            rows
        };
        Params {
            factors: hyper.factors,
            width,
            users: fill(user_ids, 0x7573_6572),
            items: fill(item_ids, 0x6974_656D),
        }
    }

    /// From packed rows (`factors + 1` floats each), as checkpoints store them.
    pub fn from_packed(factors: usize, users: &[f32], items: &[f32]) -> Params {
        let width = padded_width(factors);
        let unpack = |packed: &[f32]| {
            let n = packed.len() / (factors + 1);
            let mut rows = Rows::zeros(n * width);
            for (row, src) in rows
                .as_mut_slice()
                .chunks_exact_mut(width)
                .zip(packed.chunks_exact(factors + 1))
            {
                row[..=factors].copy_from_slice(src);
            }
            rows
        };
        Params {
            factors,
            width,
            users: unpack(users),
            items: unpack(items),
        }
    }

    pub fn n_users(&self) -> usize {
        self.users.len / self.width
    }

    pub fn n_items(&self) -> usize {
        self.items.len / self.width
    }

    /// The rows to read.
    pub fn view(&self) -> ParamsRef<'_> {
        ParamsRef {
            factors: self.factors,
            width: self.width,
            users: self.users.as_slice(),
            items: self.items.as_slice(),
        }
    }

    /// User u's `[bias, factors...]`.
    pub fn user(&self, u: usize) -> &[f32] {
        self.view().user(u)
    }

    /// Item i's `[bias, factors...]`.
    pub fn item(&self, i: usize) -> &[f32] {
        self.view().item(i)
    }

    /// The user rows packed, `factors + 1` floats each.
    pub fn users_packed(&self) -> Vec<f32> {
        self.view().users_packed()
    }

    /// The item rows packed, `factors + 1` floats each.
    pub fn items_packed(&self) -> Vec<f32> {
        self.view().items_packed()
    }
}

/// Parameters to read, wherever the rows live (this process's memory, or memory the ranks of a
/// node share): padded rows of `width` floats.
#[derive(Clone, Copy, Debug)]
pub struct ParamsRef<'a> {
    pub factors: usize,
    pub width: usize,
    pub users: &'a [f32],
    pub items: &'a [f32],
}

impl<'a> ParamsRef<'a> {
    /// User u's `[bias, factors...]`.
    pub fn user(&self, u: usize) -> &'a [f32] {
        &self.users[u * self.width..u * self.width + self.factors + 1]
    }

    /// Item i's `[bias, factors...]`.
    pub fn item(&self, i: usize) -> &'a [f32] {
        &self.items[i * self.width..i * self.width + self.factors + 1]
    }

    /// The user rows packed, `factors + 1` floats each.
    pub fn users_packed(&self) -> Vec<f32> {
        pack(self.users, self.width, self.factors + 1)
    }

    /// The item rows packed, `factors + 1` floats each (in their row order).
    pub fn items_packed(&self) -> Vec<f32> {
        pack(self.items, self.width, self.factors + 1)
    }
}

/// Padded rows of `width` floats packed to their first `keep` floats each.
fn pack(rows: &[f32], width: usize, keep: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() / width * keep);
    for row in rows.chunks_exact(width) {
        out.extend_from_slice(&row[..keep]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_aligned_padded_and_round_trip_packed() {
        let users: Vec<Id> = (0..5).map(Id::Int).collect();
        let items: Vec<Id> = (0..3).map(Id::Int).collect();
        for factors in [1, 7, 8, 20, 33] {
            let hyper = Hyper {
                factors,
                ..Hyper::default()
            };
            let p = Params::init(&users, &items, &hyper);
            assert_eq!(p.width % LANES, 0);
            assert!(p.width > factors);
            assert_eq!(p.users.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!(p.items.as_slice().as_ptr() as usize % 64, 0);
            assert_eq!((p.n_users(), p.n_items()), (5, 3));
            for row in p.users.as_slice().chunks_exact(p.width) {
                assert_eq!(row[0], 0.0, "biases start at zero");
                assert!(
                    row[factors + 1..].iter().all(|&v| v == 0.0),
                    "padding is zero"
                );
                assert!(row[1..=factors].iter().all(|&v| v != 0.0));
            }
            let back = Params::from_packed(factors, &p.users_packed(), &p.items_packed());
            assert_eq!(back.users.as_slice(), p.users.as_slice());
            assert_eq!(back.items.as_slice(), p.items.as_slice());
            assert_eq!(p.user(4).len(), factors + 1);
            assert_eq!(p.item(2), &p.items_packed()[2 * (factors + 1)..]);
        }
    }
}
