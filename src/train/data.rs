//! A rank's training data: the hold-out split, the global item numbering, and the ratings laid
//! out by user (CSR) so a user's row stays in cache while its ratings stream past.

use crate::collective::{Collective, Op};
use crate::error::Result;
use crate::exchange::agree_on_ids;
use crate::ids::{mix64, Id};
use crate::mf::{HoldoutBy, Hyper};
use crate::ratings::{sort_by_user, OwnedRatings};
use crate::rng::unit_from_hash;

use super::blocks_per_rank;

/// Marks a user or item that the model does not know (held-out only).
pub const UNKNOWN: u32 = u32::MAX;

/// A held-out rating, indexed into the rank's users and the global items (or UNKNOWN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeldOut {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// A rank's training ratings by user (CSR), each user's sorted by item row.
#[derive(Debug, Default)]
pub struct RankRatings {
    /// This rank's users that have training ratings, sorted by id.
    pub user_ids: Vec<Id>,
    /// Ratings of user u are `items[user_offsets[u]..user_offsets[u + 1]]` (same for values).
    pub user_offsets: Vec<usize>,
    pub items: Vec<u32>,
    pub values: Vec<f32>,
    /// Whether `values` are already scaled by each user's confidence balance (`implicit::
    /// balance_in_place`): the trainer then reads them as they are.
    pub balanced: bool,
}

/// Everything one rank trains and scores on.
#[derive(Debug, Default)]
pub struct RankData {
    pub ratings: RankRatings,
    /// The rank's held-out pairs, by user.
    pub holdout: Vec<HeldOut>,
}

impl RankRatings {
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }
    pub fn n_ratings(&self) -> usize {
        self.values.len()
    }
    pub fn ratings_of(&self, user: usize) -> (&[u32], &[f32]) {
        self.ratings_with(user, &self.values)
    }
    /// `ratings_of`, the values taken from `values` (one per rating, as `self.values`).
    pub fn ratings_with<'v>(&self, user: usize, values: &'v [f32]) -> (&[u32], &'v [f32]) {
        let r = self.user_offsets[user]..self.user_offsets[user + 1];
        (&self.items[r.clone()], &values[r])
    }
}

/// Whether a (user, item) pair is held out: a function of the two ids and the seed only, so the
/// same pairs are held out whatever the rank count or file layout.
pub fn is_held_out(user: &Id, item: &Id, seed: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    let h =
        mix64(user.stable_hash() ^ mix64(item.stable_hash() ^ mix64(seed ^ 0x5851_F42D_4C95_7F2D)));
    unit_from_hash(h) < fraction
}

/// The hold-out decision for each of `owned`'s triples.
pub fn holdout_mask(owned: &OwnedRatings, seed: u64, fraction: f64) -> Vec<bool> {
    owned
        .triples
        .iter()
        .map(|t| {
            is_held_out(
                &owned.users[t.user as usize],
                &owned.items[t.item as usize],
                seed,
                fraction,
            )
        })
        .collect()
}

/// The hold-out decision for each of `owned`'s triples, the way `hyper` chooses them.
pub fn split_mask(owned: &OwnedRatings, hyper: &Hyper) -> Vec<bool> {
    match hyper.holdout_by {
        HoldoutBy::Pair => holdout_mask(owned, hyper.seed, hyper.holdout),
        HoldoutBy::Time => latest_mask(owned, hyper.seed, hyper.holdout),
    }
}

/// The hold-out by time: each user's most recent `round(fraction x n)` of their n pairs (at
/// most n - 1: every user keeps a pair to train on), a pair's time being its latest event's
/// (`owned.times`); equal times are ordered by a hash of (item, seed). A function of one user's
/// pairs, their times and the seed: the same pairs whatever the rank count or file layout (a
/// user's pairs are all on one rank after the exchange).
pub fn latest_mask(owned: &OwnedRatings, seed: u64, fraction: f64) -> Vec<bool> {
    let mut held = vec![false; owned.triples.len()];
    if fraction <= 0.0 || owned.times.len() != owned.triples.len() {
        return held;
    }
    let tie = |t: usize| mix64(owned.items[owned.triples[t].item as usize].stable_hash() ^ seed);
    let mut order: Vec<usize> = Vec::new();
    for run in owned.user_runs() {
        let n = run.len();
        let k = ((fraction * n as f64).round() as usize).min(n - 1);
        if k > 0 {
            order.clear();
            order.extend(run);
            order.sort_by_key(|&t| (std::cmp::Reverse(owned.times[t]), tie(t)));
            for &t in &order[..k] {
                held[t] = true;
            }
        }
    }
    held
}

/// The distinct items of the training triples (what this rank contributes to the vocabulary).
pub fn train_item_ids(owned: &OwnedRatings, held_out: &[bool]) -> Vec<Id> {
    let mut seen = vec![false; owned.items.len()];
    for (t, &h) in owned.triples.iter().zip(held_out) {
        if !h {
            seen[t.item as usize] = true;
        }
    }
    let mut ids: Vec<Id> = owned
        .items
        .iter()
        .zip(&seen)
        .filter(|(_, &s)| s)
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort_unstable();
    ids
}

/// Each of `owned`'s items as an index into `global_items` (sorted ids), or UNKNOWN.
pub fn sorted_item_index(owned: &OwnedRatings, global_items: &[Id]) -> Vec<u32> {
    owned
        .items
        .iter()
        .map(|id| {
            global_items
                .binary_search(id)
                .map(|i| i as u32)
                .unwrap_or(UNKNOWN)
        })
        .collect()
}

/// This rank's training ratings per global item (`item_index` from `sorted_item_index`).
pub fn train_counts(
    owned: &OwnedRatings,
    held_out: &[bool],
    item_index: &[u32],
    n_items: usize,
) -> Vec<u64> {
    let mut counts = vec![0u64; n_items];
    for (t, &h) in owned.triples.iter().zip(held_out) {
        let i = item_index[t.item as usize];
        if !h && i != UNKNOWN {
            counts[i as usize] += 1;
        }
    }
    counts
}

/// How training numbers and splits the item rows: `ranks x per_rank` blocks of contiguous rows
/// with about the same number of ratings each, in id order inside each block (one block is
/// exactly the sorted id order). A group is the `per_rank` consecutive blocks one rank works on
/// before handing them on (rank r starts an epoch on group r, see `train`).
#[derive(Clone, Debug, PartialEq)]
pub struct ItemBlocks {
    /// The training row of each item, by its index among the sorted item ids.
    pub row_of: Vec<u32>,
    /// The sorted-id index of each row (`row_of` inverted).
    pub order: Vec<u32>,
    /// Block b is rows `starts[b]..starts[b + 1]`.
    pub starts: Vec<usize>,
    /// Blocks per group.
    pub per_rank: usize,
}

impl ItemBlocks {
    /// From the job-wide training ratings per item (indexed by sorted id). Largest first into
    /// the lightest block (ties: the lower id, the lower block): a pure function of the counts.
    pub fn plan(counts: &[u64], ranks: usize, per_rank: usize) -> ItemBlocks {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let per_rank = per_rank.max(1);
        let blocks = ranks.max(1) * per_rank;
        let mut by_count: Vec<u32> = (0..counts.len() as u32).collect();
        by_count.sort_by_key(|&i| (Reverse(counts[i as usize]), i));
        let mut members: Vec<Vec<u32>> = vec![Vec::new(); blocks];
        let mut lightest: BinaryHeap<Reverse<(u64, usize)>> =
            (0..blocks).map(|b| Reverse((0, b))).collect();
        for i in by_count {
            let Reverse((load, b)) = lightest.pop().expect("at least one block");
            members[b].push(i);
            lightest.push(Reverse((load + counts[i as usize], b)));
        }
        let mut starts = Vec::with_capacity(blocks + 1);
        let mut order = Vec::with_capacity(counts.len());
        for mut m in members {
            // Inside a block, rows keep the items' id order. Not popularity order: a user's
            // ratings are visited in row order, and always ending on the rarest items biases
            // the user rows (MovieLens hold-out RMSE +0.8%, measured).
            m.sort_unstable();
            starts.push(order.len());
            order.extend(m);
        }
        starts.push(order.len());
        let mut row_of = vec![0u32; counts.len()];
        for (row, &i) in order.iter().enumerate() {
            row_of[i as usize] = row as u32;
        }
        ItemBlocks {
            row_of,
            order,
            starts,
            per_rank,
        }
    }

    /// Groups: one per rank.
    pub fn groups(&self) -> usize {
        self.len() / self.per_rank
    }

    /// The rows of group g (contiguous: its blocks are).
    pub fn group_rows(&self, g: usize) -> std::ops::Range<usize> {
        self.starts[g * self.per_rank]..self.starts[(g + 1) * self.per_rank]
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows of block b.
    pub fn rows(&self, b: usize) -> std::ops::Range<usize> {
        self.starts[b]..self.starts[b + 1]
    }

    /// `item_index` (by sorted id) turned into training rows.
    pub fn rows_of(&self, item_index: &[u32]) -> Vec<u32> {
        item_index
            .iter()
            .map(|&i| {
                if i == UNKNOWN {
                    UNKNOWN
                } else {
                    self.row_of[i as usize]
                }
            })
            .collect()
    }
}

/// A rank's training data and the item numbering every rank shares.
pub struct Prepared {
    pub data: RankData,
    pub blocks: ItemBlocks,
    /// The item ids in training-row order (block by block).
    pub item_ids: Vec<Id>,
    /// The item ids sorted (as the model file lists them).
    pub sorted_items: Vec<Id>,
    /// The job's training ratings of each item, by sorted id (the model's `n_ratings`).
    pub item_counts: Vec<u64>,
}

/// Split off the hold-out pairs, agree with the other ranks on the items (those with training
/// ratings anywhere) and their rows (a group of item blocks per rank, see `train`), and lay out
/// this rank's ratings.
pub fn prepare(comm: &dyn Collective, owned: OwnedRatings, hyper: &Hyper) -> Result<Prepared> {
    let held = split_mask(&owned, hyper);
    let sorted_items = agree_on_ids(comm, &train_item_ids(&owned, &held))?;
    let by_sorted = sorted_item_index(&owned, &sorted_items);
    let mut counts = train_counts(&owned, &held, &by_sorted, sorted_items.len());
    comm.reduce_u64(&mut counts, Op::Sum);
    let blocks = ItemBlocks::plan(&counts, comm.size(), blocks_per_rank(comm.size()));
    let item_ids = blocks
        .order
        .iter()
        .map(|&i| sorted_items[i as usize].clone())
        .collect();
    let data = index(owned, &held, &blocks.rows_of(&by_sorted));
    Ok(Prepared {
        data,
        blocks,
        item_ids,
        sorted_items,
        item_counts: counts,
    })
}

/// Lay out a rank's ratings by user; `item_rows[i]` is the row of `owned.items[i]` (UNKNOWN for
/// an item without training ratings anywhere).
pub fn index(owned: OwnedRatings, held_out: &[bool], item_rows: &[u32]) -> RankData {
    // Users with at least one training rating, in id order (owned.users is sorted).
    let mut has_train = vec![false; owned.users.len()];
    for (t, &h) in owned.triples.iter().zip(held_out) {
        if !h {
            has_train[t.user as usize] = true;
        }
    }
    let mut user_index = vec![UNKNOWN; owned.users.len()];
    let mut user_ids = Vec::new();
    for (u, id) in owned.users.into_iter().enumerate() {
        if has_train[u] {
            user_index[u] = user_ids.len() as u32;
            user_ids.push(id);
        }
    }
    let mut train: Vec<(u32, u32, f32)> = Vec::new();
    let mut holdout = Vec::new();
    for (t, &h) in owned.triples.iter().zip(held_out) {
        let (user, item) = (user_index[t.user as usize], item_rows[t.item as usize]);
        if h {
            holdout.push(HeldOut {
                user,
                item,
                value: t.value,
            });
        } else {
            train.push((user, item, t.value));
        }
    }
    // By user, then by item row: the same order whatever the layout of the input, and each
    // user's ratings of one block are contiguous.
    sort_by_user(
        &mut train,
        |t| t.0,
        |&(u, i, _)| ((u as u64) << 32) | i as u64,
    );
    // Unknown users (u32::MAX) sort last.
    sort_by_user(
        &mut holdout,
        |h| h.user,
        |h| ((h.user as u64) << 32) | h.item as u64,
    );
    let mut user_offsets = vec![0usize; user_ids.len() + 1];
    for &(u, _, _) in &train {
        user_offsets[u as usize + 1] += 1;
    }
    for u in 0..user_ids.len() {
        user_offsets[u + 1] += user_offsets[u];
    }
    RankData {
        ratings: RankRatings {
            user_ids,
            user_offsets,
            items: train.iter().map(|t| t.1).collect(),
            values: train.iter().map(|t| t.2).collect(),
            balanced: false,
        },
        holdout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratings::Triple;

    #[test]
    fn holdout_split_is_independent_of_rank_count() {
        // The decision is a pure function of (user, item, seed): the same pair gets the same
        // answer on any rank, in any file, for any rank count.
        let pairs: Vec<(Id, Id)> = (0..5000)
            .map(|n| (Id::Int(n % 97), Id::Str(format!("item-{}", n / 97).into())))
            .collect();
        let one: Vec<bool> = pairs
            .iter()
            .map(|(u, i)| is_held_out(u, i, 42, 0.2))
            .collect();
        // "Four ranks": each rank decides for the users it owns.
        let mut four = vec![false; pairs.len()];
        for rank in 0..4 {
            for (n, (u, i)) in pairs.iter().enumerate() {
                if u.stable_hash() % 4 == rank {
                    four[n] = is_held_out(u, i, 42, 0.2);
                }
            }
        }
        assert_eq!(one, four);
        let frac = one.iter().filter(|&&h| h).count() as f64 / one.len() as f64;
        assert!((frac - 0.2).abs() < 0.02, "{frac}");
        let other_seed: Vec<bool> = pairs
            .iter()
            .map(|(u, i)| is_held_out(u, i, 43, 0.2))
            .collect();
        assert_ne!(one, other_seed);
        assert!(pairs.iter().all(|(u, i)| !is_held_out(u, i, 42, 0.0)));
    }

    #[test]
    fn the_split_by_time_holds_out_each_users_latest_pairs() {
        let t = |user, item| Triple {
            user,
            item,
            value: 1.0,
        };
        // User 0: five pairs (one held out at 0.2), user 1: one pair (kept), user 2: ten pairs
        // with two at the same latest time (both held out) and one tie at the cut.
        let mut triples = Vec::new();
        let mut times = Vec::new();
        for (item, time) in [(0, 5), (1, 9), (2, 1), (3, 7), (4, 3)] {
            triples.push(t(0, item));
            times.push(time);
        }
        triples.push(t(1, 0));
        times.push(100);
        for (item, time) in [
            (0, 1),
            (1, 2),
            (2, 3),
            (3, 4),
            (4, 5),
            (5, 6),
            (6, 7),
            (7, 8),
            (8, 20),
            (9, 20),
        ] {
            triples.push(t(2, item));
            times.push(time);
        }
        let owned = OwnedRatings {
            users: (0..3).map(Id::Int).collect(),
            items: (0..10).map(|i| Id::Int(100 + i)).collect(),
            triples,
            times,
        };
        let held = latest_mask(&owned, 42, 0.2);
        let held_of = |user: u32| -> Vec<u32> {
            owned
                .triples
                .iter()
                .zip(&held)
                .filter(|(t, &h)| h && t.user == user)
                .map(|(t, _)| t.item)
                .collect()
        };
        assert_eq!(held_of(0), vec![1], "time 9, the latest");
        assert!(held_of(1).is_empty(), "a user keeps a pair to train on");
        assert_eq!(held_of(2), vec![8, 9], "the two at time 20");
        // A tie at the cut goes by the seed's hash, the same every time.
        let mut tied = owned;
        tied.times[6 + 9] = 8;
        let a = latest_mask(&tied, 42, 0.2);
        assert_eq!(a, latest_mask(&tied, 42, 0.2));
        assert_eq!(a.iter().filter(|&&h| h).count(), 3);
        assert!(latest_mask(&tied, 42, 0.0).iter().all(|&h| !h));
    }

    #[test]
    fn item_blocks_balance_ratings_and_are_contiguous_runs() {
        let counts: Vec<u64> = (0..1000u64).map(|i| 1 + 5000 / (i + 1)).collect();
        for (ranks, per_rank) in [(1, 1), (2, 1), (3, 1), (8, 1), (1, 4), (3, 2)] {
            let b = ItemBlocks::plan(&counts, ranks, per_rank);
            assert_eq!(b.groups(), ranks);
            assert_eq!(b.group_rows(ranks - 1).end, 1000);
            let blocks = ranks * per_rank;
            assert_eq!(b.len(), blocks);
            assert_eq!((b.starts[0], b.starts[blocks]), (0, 1000));
            let mut seen = b.order.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..1000).collect::<Vec<u32>>(), "a permutation");
            for (row, &i) in b.order.iter().enumerate() {
                assert_eq!(b.row_of[i as usize] as usize, row);
            }
            let loads: Vec<u64> = (0..blocks)
                .map(|k| b.rows(k).map(|r| counts[b.order[r] as usize]).sum())
                .collect();
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            // Off by at most the heaviest item.
            assert!(hi - lo <= counts[0], "{blocks} blocks: {loads:?}");
            for k in 0..blocks {
                let ids = &b.order[b.rows(k)];
                assert!(
                    ids.windows(2).all(|w| w[0] < w[1]),
                    "id order inside a block"
                );
            }
            assert_eq!(b, ItemBlocks::plan(&counts, ranks, per_rank));
        }
        // More blocks than items: some stay empty.
        let b = ItemBlocks::plan(&[3, 1], 4, 1);
        assert_eq!(b.starts, vec![0, 1, 2, 2, 2]);
        assert_eq!(b.rows_of(&[1, UNKNOWN, 0]), vec![1, UNKNOWN, 0]);
        assert_eq!(ItemBlocks::plan(&[3, 1, 2], 1, 1).order, vec![0, 1, 2]);
        let b = ItemBlocks::plan(&[3, 1, 2, 2], 2, 2);
        assert_eq!((b.group_rows(0), b.group_rows(1)), (0..2, 2..4));
    }

    #[test]
    fn index_builds_csr_by_user_and_marks_unknowns() {
        let owned = OwnedRatings {
            times: Vec::new(),
            users: vec![Id::Int(1), Id::Int(2), Id::Int(3)],
            items: vec![Id::Int(30), Id::Int(10), Id::Int(20)],
            triples: vec![
                Triple {
                    user: 0,
                    item: 0,
                    value: 1.0,
                },
                Triple {
                    user: 0,
                    item: 1,
                    value: 2.0,
                },
                Triple {
                    user: 1,
                    item: 2,
                    value: 3.0,
                }, // held out: user 2 has nothing else
                Triple {
                    user: 2,
                    item: 1,
                    value: 4.0,
                },
                Triple {
                    user: 2,
                    item: 0,
                    value: 5.0,
                }, // held out
            ],
        };
        let held = vec![false, false, true, false, true];
        assert_eq!(
            train_item_ids(&owned, &held),
            vec![Id::Int(10), Id::Int(30)]
        );
        let global = vec![Id::Int(10), Id::Int(30)];
        let sorted = sorted_item_index(&owned, &global);
        assert_eq!(sorted, vec![1, 0, UNKNOWN]);
        assert_eq!(train_counts(&owned, &held, &sorted, 2), vec![2, 1]);
        let RankData {
            ratings: r,
            holdout,
        } = index(owned, &held, &sorted);
        assert_eq!(r.user_ids, vec![Id::Int(1), Id::Int(3)]);
        assert_eq!(r.user_offsets, vec![0, 2, 3]);
        assert_eq!(r.items, vec![0, 1, 0]); // user 1: items 10, 30 in id order
        assert_eq!(r.values, vec![2.0, 1.0, 4.0]);
        assert_eq!(
            holdout,
            vec![
                HeldOut {
                    user: 1,
                    item: 1,
                    value: 5.0
                },
                HeldOut {
                    user: UNKNOWN,
                    item: UNKNOWN,
                    value: 3.0
                },
            ]
        );
    }
}
