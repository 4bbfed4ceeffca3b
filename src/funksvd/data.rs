//! A rank's training data: the hold-out split, the global item numbering, and the ratings laid
//! out by user (CSR) so a user's row stays in cache while its ratings stream past.

use crate::exchange::OwnedRatings;
use crate::features::sort_by_user;
use crate::ids::{mix64, Id};
use crate::rng::unit_from_hash;

/// Marks a user or item that the model does not know (held-out only).
pub const UNKNOWN: u32 = u32::MAX;

/// A held-out rating, indexed into the rank's users and the global items (or UNKNOWN).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeldOut {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// Everything one rank trains on.
#[derive(Debug, Default)]
pub struct RankRatings {
    /// This rank's users that have training ratings, sorted by id.
    pub user_ids: Vec<Id>,
    /// Ratings of user u are `items[user_offsets[u]..user_offsets[u + 1]]` (same for values).
    pub user_offsets: Vec<usize>,
    pub items: Vec<u32>,
    pub values: Vec<f32>,
    pub holdout: Vec<HeldOut>,
    /// B, the number of item blocks (0 until `split_blocks`: one block).
    pub blocks: usize,
    /// Users per run (0 until `split_blocks`).
    pub run: usize,
    /// After `split_blocks`: the ratings of run r's visits to group g (blocks
    /// `g * per_group..(g + 1) * per_group`) are `stretches[r * G + g]` of `schedule`, in the
    /// order the SGD pass takes them (see `schedule`).
    pub schedule: Vec<Rating>,
    pub stretches: Vec<Stretch>,
    /// Blocks per group (0 until `split_blocks`).
    pub per_group: usize,
}

impl RankRatings {
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }
    pub fn n_ratings(&self) -> usize {
        self.values.len()
    }
    pub fn ratings_of(&self, user: usize) -> (&[u32], &[f32]) {
        let r = self.user_offsets[user]..self.user_offsets[user + 1];
        (&self.items[r.clone()], &self.values[r])
    }

    /// Cut every user's ratings (sorted by item row) at the item blocks' first rows `starts`
    /// (block b is rows `starts[b]..starts[b + 1]`), list the visits of each run of `run`
    /// consecutive users to each block (`list_visits`), and lay out each run's ratings of each
    /// group of `per_group` blocks in the SGD pass's order (`schedule`), so `stretch(r, g)` is
    /// a lookup.
    pub fn split_blocks(&mut self, starts: &[usize], run: usize, per_group: usize) {
        let list = self.list_visits(starts, run);
        let (blocks, runs) = (list.blocks, list.runs());
        self.blocks = blocks;
        self.run = run.max(1);
        // The SGD pass's order of each run's ratings of each group of blocks.
        let per_group = per_group.clamp(1, blocks);
        assert_eq!(blocks % per_group, 0, "whole groups of blocks");
        self.per_group = per_group;
        let groups = blocks / per_group;
        let mut ordered = std::mem::take(&mut self.schedule);
        ordered.clear();
        ordered.reserve_exact(self.items.len());
        self.stretches.clear();
        self.stretches.reserve_exact(runs * groups);
        for r in 0..runs {
            for g in 0..groups {
                let visits = list.segments_of(r, g * per_group..(g + 1) * per_group);
                let stretch = schedule(&self.items, &self.values, visits, &mut ordered);
                self.stretches.push(stretch);
            }
        }
        self.schedule = ordered;
    }

    /// Run `run`'s ratings of group `group`, in the pass's order (see `split_blocks`).
    #[inline]
    pub fn stretch(&self, run: usize, group: usize) -> (&[Rating], usize) {
        let s = self.stretches[run * self.n_groups() + group];
        (&self.schedule[s.start..s.end], s.pairs)
    }

    /// How many item blocks `split_blocks` cut the ratings into (1 if never).
    pub fn n_blocks(&self) -> usize {
        self.blocks.max(1)
    }

    /// How many groups of blocks `split_blocks` laid the ratings out by (1 if never).
    fn n_groups(&self) -> usize {
        self.n_blocks() / self.per_group.max(1)
    }

    /// How many runs of users `split_blocks` laid out.
    pub fn n_runs(&self) -> usize {
        self.stretches.len() / self.n_groups()
    }

    /// The visits of each run of `run` consecutive users to each item block (block b is rows
    /// `starts[b]..starts[b + 1]`), in user order, users without ratings in the block left out.
    pub fn list_visits(&self, starts: &[usize], run: usize) -> VisitList {
        let blocks = starts.len().saturating_sub(1).max(1);
        let run = run.max(1);
        let runs = self.n_users().div_ceil(run);
        let mut list = VisitList {
            visits: Vec::new(),
            segments: Vec::with_capacity(runs * blocks + 1),
            blocks,
        };
        list.segments.push(0);
        // Where each user of the run has got to in its ratings (they are sorted by item row,
        // so block after block).
        let mut at: Vec<usize> = Vec::with_capacity(run);
        for r in 0..runs {
            let users = r * run..((r + 1) * run).min(self.n_users());
            at.clear();
            at.extend(users.clone().map(|u| self.user_offsets[u]));
            for &end in starts
                .get(1..)
                .unwrap_or(&[])
                .iter()
                .chain([&usize::MAX])
                .take(blocks)
            {
                for (u, at) in users.clone().zip(&mut at) {
                    let items = &self.items[*at..self.user_offsets[u + 1]];
                    let len = items.partition_point(|&i| (i as usize) < end);
                    if len > 0 {
                        list.visits.push(Visit {
                            start: *at,
                            user: u as u32,
                            len: visit_len(len),
                        });
                    }
                    *at += len;
                }
                list.segments.push(list.visits.len());
            }
        }
        list
    }

    /// Appends the visits of `users` (in that order) to all their ratings, leaving out users
    /// without ratings (for passes without item blocks).
    pub fn add_visits(&self, users: &[u32], out: &mut Vec<Visit>) {
        for &user in users {
            let (start, end) = (
                self.user_offsets[user as usize],
                self.user_offsets[user as usize + 1],
            );
            if end > start {
                out.push(Visit {
                    start,
                    user,
                    len: visit_len(end - start),
                });
            }
        }
    }

    /// The ratings of a visit: item rows and values.
    #[inline(always)]
    pub fn visit(&self, v: Visit) -> (&[u32], &[f32]) {
        let r = v.start..v.start + v.len as usize;
        (&self.items[r.clone()], &self.values[r])
    }
}

/// The visits of runs of users to item blocks (see `RankRatings::list_visits`): run r's visits
/// to block b are `visits[segments[r * B + b]..segments[r * B + b + 1]]` for B blocks.
#[derive(Debug, Default)]
pub struct VisitList {
    pub visits: Vec<Visit>,
    pub segments: Vec<usize>,
    pub blocks: usize,
}

impl VisitList {
    /// How many runs of users the list covers.
    pub fn runs(&self) -> usize {
        (self.segments.len().max(1) - 1) / self.blocks.max(1)
    }

    /// The visits of run `run` to item block `block`.
    pub fn segment(&self, run: usize, block: usize) -> &[Visit] {
        self.segments_of(run, block..block + 1)
    }

    /// The visits of run `run` to item blocks `blocks`, block after block.
    pub fn segments_of(&self, run: usize, blocks: std::ops::Range<usize>) -> &[Visit] {
        let s = run * self.blocks.max(1);
        &self.visits[self.segments[s + blocks.start]..self.segments[s + blocks.end]]
    }
}

/// A visit's length as stored (a user with 2^32 ratings in one block is not a shop's user).
fn visit_len(len: usize) -> u32 {
    u32::try_from(len).expect("fewer than 2^32 ratings of one user in one block")
}

/// One user's ratings of one item block (`items[start..start + len]`, same for values): the
/// unit of work of the SGD pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Visit {
    pub start: usize,
    pub user: u32,
    pub len: u32,
}

/// One rating, in the order the SGD pass takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rating {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// A stretch of a schedule: `schedule[start..end]`, of which the first `2 * pairs` ratings
/// alternate between two chains of updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stretch {
    pub start: usize,
    pub pairs: usize,
    pub end: usize,
}

/// Appends the ratings of `visits` to `out` in the order the SGD pass takes them, and returns
/// where they are. Two chains of updates go at once, one rating of each in turn, each chain
/// taking the next visit when its own ends: the updates of one user depend on each other, the
/// two chains do not, and the core overlaps them. Visits are short (a few ratings), so taking
/// the next one as each chain runs dry keeps both busy; when the list runs out, the chain left
/// finishes alone. The order is worked out once here, so the pass itself is two plain loops.
pub fn schedule(items: &[u32], values: &[f32], visits: &[Visit], out: &mut Vec<Rating>) -> Stretch {
    let start = out.len();
    let mut queue = visits.iter();
    let mut take = || {
        queue
            .next()
            .map(|v| (v.user, v.start, v.start + v.len as usize))
    };
    let rating = |user: u32, at: usize| Rating {
        user,
        item: items[at],
        value: values[at],
    };
    let mut chains = [take(), take()];
    // Both chains busy: the ratings both have left, in turn, then refill the dry ones.
    while let [Some((ua, a, a_end)), Some((ub, b, b_end))] = chains {
        let left = (a_end - a).min(b_end - b);
        for k in 0..left {
            out.push(rating(ua, a + k));
            out.push(rating(ub, b + k));
        }
        chains = [Some((ua, a + left, a_end)), Some((ub, b + left, b_end))];
        for chain in &mut chains {
            if matches!(chain, Some((_, at, end)) if at == end) {
                *chain = take();
            }
        }
    }
    let pairs = (out.len() - start) / 2;
    for (user, at, end) in chains.into_iter().flatten() {
        out.extend((at..end).map(|at| rating(user, at)));
    }
    Stretch {
        start,
        pairs,
        end: out.len(),
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

/// Lay out a rank's ratings by user; `item_rows[i]` is the row of `owned.items[i]` (UNKNOWN for
/// an item without training ratings anywhere).
pub fn index(owned: OwnedRatings, held_out: &[bool], item_rows: &[u32]) -> RankRatings {
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
    RankRatings {
        user_ids,
        user_offsets,
        items: train.iter().map(|t| t.1).collect(),
        values: train.iter().map(|t| t.2).collect(),
        holdout,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::Triple;

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

    /// User `user`'s ratings of block `block`, through the visits of its run.
    fn ratings_in<'a>(
        data: &'a RankRatings,
        list: &VisitList,
        run: usize,
        block: usize,
        user: usize,
    ) -> (&'a [u32], &'a [f32]) {
        list.segment(user / run, block)
            .iter()
            .find(|v| v.user as usize == user)
            .map_or((&[], &[]), |&v| data.visit(v))
    }

    #[test]
    fn ratings_in_a_block_are_the_users_ratings_of_its_rows() {
        let mut data = RankRatings {
            user_ids: vec![Id::Int(1), Id::Int(2), Id::Int(3)],
            user_offsets: vec![0, 4, 4, 6],
            items: vec![0, 2, 3, 7, 1, 5],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ..Default::default()
        };
        assert_eq!(data.n_blocks(), 1);
        let mut visits = Vec::new();
        data.add_visits(&[2, 1, 0], &mut visits);
        assert_eq!(
            visits.iter().map(|v| (v.user, v.len)).collect::<Vec<_>>(),
            vec![(2, 2), (0, 4)],
            "the users' order, without users who have no ratings"
        );
        let starts = [0, 2, 4, 8];
        for run in [1, 2, 3, 64] {
            let list = data.list_visits(&starts, run);
            assert_eq!((list.blocks, list.runs()), (3, 3usize.div_ceil(run)));
            let of = |b, u| ratings_in(&data, &list, run, b, u);
            assert_eq!(of(0, 0), (&[0u32][..], &[1.0f32][..]));
            assert_eq!(of(1, 0), (&[2u32, 3][..], &[2.0f32, 3.0][..]));
            assert_eq!(of(2, 0), (&[7u32][..], &[4.0f32][..]));
            assert!((0..3).all(|b| of(b, 1).0.is_empty()));
            assert_eq!(of(0, 2).0, &[1]);
            assert_eq!(of(1, 2).0.len(), 0);
            assert_eq!(of(2, 2).0, &[5]);
            // In user order, users without ratings in the block left out.
            for r in 0..list.runs() {
                for b in 0..3 {
                    let users: Vec<u32> = list.segment(r, b).iter().map(|v| v.user).collect();
                    assert!(users.windows(2).all(|w| w[0] < w[1]));
                    assert!(users.iter().all(|&u| u as usize / run == r && u != 1));
                }
            }
            assert_eq!(list.visits.len(), 5);
            let lens: usize = list.visits.iter().map(|v| v.len as usize).sum();
            assert_eq!(lens, 6, "every rating in exactly one visit");
            // The schedule of groups of one block holds every rating once.
            data.split_blocks(&starts, run, 1);
            assert_eq!((data.n_blocks(), data.n_runs()), (3, list.runs()));
            let mut all: Vec<f32> = data.schedule.iter().map(|r| r.value).collect();
            all.sort_by(f32::total_cmp);
            assert_eq!(all, data.values);
            for r in 0..data.n_runs() {
                for g in 0..3 {
                    let (ratings, _) = data.stretch(r, g);
                    assert!(ratings
                        .iter()
                        .all(|x| (starts[g]..starts[g + 1]).contains(&(x.item as usize))));
                }
            }
        }
        data.split_blocks(&[0, 8], 2, 1);
        assert_eq!(data.n_blocks(), 1);
        assert_eq!(
            data.stretch(0, 0).0.len(),
            4,
            "user 0's 4 ratings (user 1 has none)"
        );
    }

    #[test]
    fn a_schedule_takes_every_rating_once_in_two_chains() {
        // Visits of lengths 3, 1, 4, 2, 5 over ratings 0..15 (value = position, item = user).
        let lens = [3usize, 1, 4, 2, 5];
        let mut visits = Vec::new();
        let mut start = 0;
        for (u, &len) in lens.iter().enumerate() {
            visits.push(Visit {
                start,
                user: u as u32,
                len: len as u32,
            });
            start += len;
        }
        let items: Vec<u32> = visits
            .iter()
            .flat_map(|v| std::iter::repeat_n(v.user, v.len as usize))
            .collect();
        let values: Vec<f32> = (0..start).map(|x| x as f32).collect();
        let mut out = vec![Rating::default()];
        let s = schedule(&items, &values, &visits, &mut out);
        assert_eq!((s.start, s.end), (1, 1 + start));
        let taken = &out[s.start..s.end];
        let mut seen: Vec<usize> = taken.iter().map(|r| r.value as usize).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..start).collect::<Vec<_>>(), "every rating once");
        assert!(taken.iter().all(|r| r.item == r.user));
        for u in 0..lens.len() as u32 {
            let mine: Vec<f32> = taken
                .iter()
                .filter(|r| r.user == u)
                .map(|r| r.value)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "a visit's ratings in order"
            );
        }
        // a: visit 0 (3), b: visit 1 (1); 1 pair, b takes visit 2 (4); 2 pairs, a takes
        // visit 3 (2); 2 pairs, both dry, a takes visit 4 (5) and finishes alone.
        assert_eq!(s.pairs, 5, "{s:?}");
        for pair in taken[..2 * s.pairs].chunks_exact(2) {
            assert_ne!(pair[0].user, pair[1].user, "two users at a time");
        }
        // One visit: nothing to pair.
        let mut one = Vec::new();
        let s = schedule(&items, &values, &visits[..1], &mut one);
        assert_eq!((s.pairs, s.end), (0, 3));
    }

    #[test]
    fn index_builds_csr_by_user_and_marks_unknowns() {
        let owned = OwnedRatings {
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
        let r = index(owned, &held, &sorted);
        assert_eq!(r.user_ids, vec![Id::Int(1), Id::Int(3)]);
        assert_eq!(r.user_offsets, vec![0, 2, 3]);
        assert_eq!(r.items, vec![0, 1, 0]); // user 1: items 10, 30 in id order
        assert_eq!(r.values, vec![2.0, 1.0, 4.0]);
        assert_eq!(
            r.holdout,
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
