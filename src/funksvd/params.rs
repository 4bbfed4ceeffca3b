//! The model's parameters as training holds them: one row per user and per item, each
//! `[bias, f_0, ..., f_{k-1}, 0...]` padded with zeros to a whole number of SIMD lanes and
//! stored 64-byte aligned, so a row never straddles more cache lines than it must and the
//! kernel's loops have a fixed trip count.
//!
//! Outside training (checkpoints, model files) rows are packed: `factors + 1` floats each.

use crate::ids::Id;
use crate::rng::Rng;

use super::kernel::LANES;
use super::train::Hyper;

/// One cache line of floats; a `Vec` of these is a 64-byte aligned float buffer.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// Memory another owner maps into this process, where the rows of every rank of a node live
/// (an MPI shared-memory window, see `Comm::node_floats`): each rank reads and writes them in
/// place, and `sync` orders those accesses between the ranks.
pub trait Mapped {
    /// The mapping's first float, 64-byte aligned; the mapping outlives `self`'s borrows.
    fn floats(&self) -> *mut f32;
    /// Return once every rank sharing the memory got here; the writes each made before are then
    /// seen by all.
    fn sync(&self);
}

/// A 64-byte aligned buffer of `n_rows` rows of `width` floats: this process's own, or mapped
/// in from memory the ranks of a node share.
pub struct Rows {
    store: Store,
    len: usize,
}

enum Store {
    Own(Vec<Line>),
    Mapped(Box<dyn Mapped>),
}

impl Rows {
    fn zeros(len: usize) -> Rows {
        Rows {
            store: Store::Own(vec![Line::default(); len.div_ceil(16)]),
            len,
        }
    }

    /// `len` floats of `mapped`, which already holds the rows.
    pub fn mapped(mapped: Box<dyn Mapped>, len: usize) -> Rows {
        assert_eq!(
            mapped.floats() as usize % 64,
            0,
            "mapped rows 64-byte aligned"
        );
        Rows {
            store: Store::Mapped(mapped),
            len,
        }
    }

    /// Whether the rows live in memory shared by the ranks of a node.
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Mapped(_))
    }

    /// For mapped rows, wait for every rank sharing them (see `Mapped::sync`); no-op otherwise.
    pub fn sync(&self) {
        if let Store::Mapped(m) = &self.store {
            m.sync();
        }
    }

    /// The same rows in this process's own memory (the mapping, if any, is dropped by the caller).
    pub fn to_own(&self) -> Rows {
        let mut own = Rows::zeros(self.len);
        own.as_mut_slice().copy_from_slice(self.as_slice());
        own
    }

    pub fn as_slice(&self) -> &[f32] {
        match &self.store {
            // SAFETY: `Line` is `repr(C)` over 16 f32 with no padding (64 bytes, align 64), so
            // the lines are `16 * lines.len() >= len` contiguous, initialised f32.
            Store::Own(lines) => unsafe {
                std::slice::from_raw_parts(lines.as_ptr() as *const f32, self.len)
            },
            // SAFETY: a mapping holds at least `len` initialised floats (`Rows::mapped`) while
            // it lives; other processes write only the rows `sync` keeps apart from this one's.
            Store::Mapped(m) => unsafe { std::slice::from_raw_parts(m.floats(), self.len) },
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.store {
            // SAFETY: as in `as_slice`, and `&mut self` makes the borrow unique.
            Store::Own(lines) => unsafe {
                std::slice::from_raw_parts_mut(lines.as_mut_ptr() as *mut f32, self.len)
            },
            // SAFETY: as in `as_slice`; in this process `&mut self` makes the borrow unique.
            Store::Mapped(m) => unsafe { std::slice::from_raw_parts_mut(m.floats(), self.len) },
        }
    }
}

impl Clone for Rows {
    /// A copy in this process's own memory.
    fn clone(&self) -> Rows {
        self.to_own()
    }
}

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rows")
            .field("len", &self.len)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl PartialEq for Rows {
    fn eq(&self, other: &Rows) -> bool {
        self.as_slice() == other.as_slice()
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

    /// User u's `[bias, factors...]`.
    pub fn user(&self, u: usize) -> &[f32] {
        &self.users.as_slice()[u * self.width..u * self.width + self.factors + 1]
    }

    /// Item i's `[bias, factors...]`.
    pub fn item(&self, i: usize) -> &[f32] {
        &self.items.as_slice()[i * self.width..i * self.width + self.factors + 1]
    }

    /// The user rows packed, `factors + 1` floats each.
    pub fn users_packed(&self) -> Vec<f32> {
        pack(self.users.as_slice(), self.width, self.factors + 1)
    }

    /// The item rows packed, `factors + 1` floats each.
    pub fn items_packed(&self) -> Vec<f32> {
        pack(self.items.as_slice(), self.width, self.factors + 1)
    }
}

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
