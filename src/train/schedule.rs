//! The order in which the SGD pass takes a rank's ratings, worked out once before the epochs:
//! users in runs of `USER_RUN`, each run's ratings of each group of item blocks as one stretch
//! of two interleaved chains of updates (see `schedule`), so the pass itself is two plain loops.

use super::data::{ItemBlocks, RankRatings};
use crate::rng::Rng;

/// Users are visited in runs of this many consecutive users, the runs in a fresh random order
/// each epoch: within a run the hardware prefetchers stream user rows and rating lists, which
/// keeps short visits cheap (at 8 visits per user: 43M vs 20M updates/s, same RMSE; measured),
/// and a run goes through all of a step's blocks before the next run starts.
pub const USER_RUN: usize = 64;

/// A rank's ratings in the SGD pass's order: run r's ratings of group g of item blocks are
/// `stretch(r, g)`, their items numbered from the group's first row (the pass gets the group's
/// rows alone).
#[derive(Debug)]
pub struct Schedule {
    ratings: Vec<Rating>,
    stretches: Vec<Stretch>,
    groups: usize,
}

impl Schedule {
    /// Cut every user's ratings (sorted by item row) at the blocks' first rows, list the visits
    /// of each run of `run` consecutive users to each block (`list_visits`), and lay out each
    /// run's ratings of each group of blocks in the pass's order (`schedule`).
    pub fn new(data: &RankRatings, blocks: &ItemBlocks, run: usize) -> Schedule {
        let list = list_visits(data, &blocks.starts, run);
        let per_group = blocks.per_rank;
        let groups = blocks.groups();
        let mut ratings = Vec::with_capacity(data.n_ratings());
        let mut stretches = Vec::with_capacity(list.runs() * groups);
        for r in 0..list.runs() {
            for g in 0..groups {
                let visits = list.segments_of(r, g * per_group..(g + 1) * per_group);
                let stretch = schedule(&data.items, &data.values, visits, &mut ratings);
                let first = blocks.group_rows(g).start as u32;
                for rating in &mut ratings[stretch.start..stretch.end] {
                    rating.item -= first;
                }
                stretches.push(stretch);
            }
        }
        Schedule {
            ratings,
            stretches,
            groups,
        }
    }

    /// Run `run`'s ratings of group `group`, in the pass's order (items numbered from the
    /// group's first row), and how many pairs of chains they start with.
    #[inline]
    pub fn stretch(&self, run: usize, group: usize) -> (&[Rating], usize) {
        let s = self.stretches[run * self.groups + group];
        (&self.ratings[s.start..s.end], s.pairs)
    }

    /// How many runs of users the schedule has.
    pub fn n_runs(&self) -> usize {
        self.stretches.len() / self.groups.max(1)
    }

    /// Every rating, in the pass's order.
    pub fn ratings(&self) -> &[Rating] {
        &self.ratings
    }
}

/// This epoch's order of the runs of users.
pub fn run_order(n_runs: usize, rng: &mut Rng, order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..n_runs as u32);
    rng.shuffle(order);
}

/// The visits of each run of `run` consecutive users to each item block (block b is rows
/// `starts[b]..starts[b + 1]`), in user order, users without ratings in the block left out.
pub fn list_visits(data: &RankRatings, starts: &[usize], run: usize) -> VisitList {
    let blocks = starts.len().saturating_sub(1).max(1);
    let run = run.max(1);
    let runs = data.n_users().div_ceil(run);
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
        let users = r * run..((r + 1) * run).min(data.n_users());
        at.clear();
        at.extend(users.clone().map(|u| data.user_offsets[u]));
        for &end in starts
            .get(1..)
            .unwrap_or(&[])
            .iter()
            .chain([&usize::MAX])
            .take(blocks)
        {
            for (u, at) in users.clone().zip(&mut at) {
                let items = &data.items[*at..data.user_offsets[u + 1]];
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
pub fn add_visits(data: &RankRatings, users: &[u32], out: &mut Vec<Visit>) {
    for &user in users {
        let (start, end) = (
            data.user_offsets[user as usize],
            data.user_offsets[user as usize + 1],
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

/// The visits of runs of users to item blocks (see `list_visits`): run r's visits
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    /// The ratings of a visit: item rows and values.
    fn visit(data: &RankRatings, v: Visit) -> (&[u32], &[f32]) {
        let r = v.start..v.start + v.len as usize;
        (&data.items[r.clone()], &data.values[r])
    }

    /// Blocks of one each of 8 items in id order, starting at `starts`.
    fn blocks_at(starts: &[usize]) -> ItemBlocks {
        ItemBlocks {
            row_of: (0..8).collect(),
            order: (0..8).collect(),
            starts: starts.to_vec(),
            per_rank: 1,
        }
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
            .map_or((&[], &[]), |&v| visit(data, v))
    }

    #[test]
    fn ratings_in_a_block_are_the_users_ratings_of_its_rows() {
        let data = RankRatings {
            user_ids: vec![Id::Int(1), Id::Int(2), Id::Int(3)],
            user_offsets: vec![0, 4, 4, 6],
            items: vec![0, 2, 3, 7, 1, 5],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            balanced: false,
        };
        let mut visits = Vec::new();
        add_visits(&data, &[2, 1, 0], &mut visits);
        assert_eq!(
            visits.iter().map(|v| (v.user, v.len)).collect::<Vec<_>>(),
            vec![(2, 2), (0, 4)],
            "the users' order, without users who have no ratings"
        );
        let starts = [0, 2, 4, 8];
        for run in [1, 2, 3, 64] {
            let list = list_visits(&data, &starts, run);
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
            // The schedule of groups of one block holds every rating once, each item
            // numbered from its block's first row.
            let schedule = Schedule::new(&data, &blocks_at(&starts), run);
            assert_eq!(schedule.n_runs(), list.runs());
            let mut all: Vec<f32> = schedule.ratings().iter().map(|r| r.value).collect();
            all.sort_by(f32::total_cmp);
            assert_eq!(all, data.values);
            for r in 0..schedule.n_runs() {
                for g in 0..3 {
                    let (ratings, _) = schedule.stretch(r, g);
                    assert!(ratings
                        .iter()
                        .all(|x| starts[g] + (x.item as usize) < starts[g + 1]));
                }
            }
        }
        let schedule = Schedule::new(&data, &blocks_at(&[0, 8]), 2);
        assert_eq!(
            schedule.stretch(0, 0).0.len(),
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
}
