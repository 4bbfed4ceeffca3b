//! Ratings as plain data, shared by the exchange (which routes them) and the trainer (which lays
//! them out): a (user, item, value) triple of dense indices, and the ratings one rank owns after
//! the exchange.

use std::ops::{Deref, DerefMut};

use crate::error::Result;
use crate::ids::Id;
use crate::input::Aggregate;
use crate::wire::{Reader, Writer};

/// A (user, item, value) triple with dense local indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Triple {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// The ratings one rank owns after the exchange: its users sorted by id, the items they rated
/// (in no particular order), and the aggregated triples sorted by (user, item index); with a
/// hold-out by time, `times[t]` is the time of triple t's latest event (else empty).
pub struct OwnedRatings {
    pub users: Vec<Id>,
    pub items: Vec<Id>,
    pub triples: Vec<Triple>,
    pub times: Vec<i64>,
}

impl OwnedRatings {
    /// Each user's triples, as ranges of `triples` (sorted by user, so each user's are one run).
    pub fn user_runs(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        let mut at = 0;
        std::iter::from_fn(move || {
            let user = self.triples.get(at)?.user;
            let start = at;
            at += self.triples[at..].partition_point(|t| t.user == user);
            Some(start..at)
        })
    }
}

/// A rating as the exchange moves and aggregates it: a triple (reached through `Deref`, so the
/// same code reads `t.user` of either kind), and whatever rides with it.
pub trait Rated: Copy + Send + Deref<Target = Triple> + DerefMut {
    /// Fold another rating of the same (user, item) pair into this one.
    fn absorb(&mut self, other: &Self, agg: Aggregate);
    /// What follows the triple on the wire.
    fn write_rest(&self, w: &mut Writer);
    /// The rating of `triple` and what follows it on the wire.
    fn read_rest(triple: Triple, r: &mut Reader) -> Result<Self>;
}

fn combine(into: &mut f32, other: f32, agg: Aggregate) {
    match agg {
        Aggregate::Max => *into = into.max(other),
        Aggregate::Sum => *into += other,
    }
}

/// A rating with nothing riding along (what the exchange moves without a hold-out by time).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub struct Plain(pub Triple);

impl Deref for Plain {
    type Target = Triple;
    fn deref(&self) -> &Triple {
        &self.0
    }
}

impl DerefMut for Plain {
    fn deref_mut(&mut self) -> &mut Triple {
        &mut self.0
    }
}

impl Rated for Plain {
    #[inline]
    fn absorb(&mut self, other: &Self, agg: Aggregate) {
        combine(&mut self.0.value, other.0.value, agg);
    }
    fn write_rest(&self, _: &mut Writer) {}
    fn read_rest(triple: Triple, _: &mut Reader) -> Result<Self> {
        Ok(Plain(triple))
    }
}

/// Triples as `Plain` ratings (in place: the same memory).
pub fn plain(triples: Vec<Triple>) -> Vec<Plain> {
    triples.into_iter().map(Plain).collect()
}

/// `Plain` ratings as triples (in place).
pub fn unplain(ratings: Vec<Plain>) -> Vec<Triple> {
    ratings.into_iter().map(|p| p.0).collect()
}

/// A rating with the time of its pair's latest event (for a hold-out by time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timed {
    pub triple: Triple,
    pub time: i64,
}

impl Deref for Timed {
    type Target = Triple;
    fn deref(&self) -> &Triple {
        &self.triple
    }
}

impl DerefMut for Timed {
    fn deref_mut(&mut self) -> &mut Triple {
        &mut self.triple
    }
}

impl Rated for Timed {
    #[inline]
    fn absorb(&mut self, other: &Self, agg: Aggregate) {
        combine(&mut self.triple.value, other.triple.value, agg);
        self.time = self.time.max(other.time);
    }
    fn write_rest(&self, w: &mut Writer) {
        w.i64(self.time);
    }
    fn read_rest(triple: Triple, r: &mut Reader) -> Result<Self> {
        Ok(Timed {
            triple,
            time: r.i64()?,
        })
    }
}

/// Triples and their times as `Timed` ratings.
pub fn timed(triples: Vec<Triple>, times: Vec<i64>) -> Vec<Timed> {
    triples
        .into_iter()
        .zip(times)
        .map(|(triple, time)| Timed { triple, time })
        .collect()
}

/// `Timed` ratings apart again.
pub fn untimed(ratings: Vec<Timed>) -> (Vec<Triple>, Vec<i64>) {
    ratings.into_iter().map(|r| (r.triple, r.time)).unzip()
}

/// Sort `v` by `key`, where `key` orders by `user(x)` first: one in-place bucket pass on the
/// user's high bits (American flag sort) spreads millions of ratings into buckets of a few
/// thousand, each then sorted in cache. Several times faster than one comparison sort over
/// everything, with no extra memory. Deterministic for a given input.
pub fn sort_by_user<T: Copy>(v: &mut [T], user: impl Fn(&T) -> u32, key: impl Fn(&T) -> u64) {
    const PER_BUCKET: usize = 2048;
    if v.len() <= 4 * PER_BUCKET {
        v.sort_unstable_by_key(key);
        return;
    }
    // u32::MAX marks an unknown user (sorted last): it shares the last bucket.
    let max_user = v
        .iter()
        .map(&user)
        .filter(|&u| u != u32::MAX)
        .max()
        .unwrap_or(0);
    let user_bits = 32 - max_user.leading_zeros();
    let bucket_bits = (v.len() / PER_BUCKET).clamp(1, 1 << 16).ilog2();
    let shift = user_bits.saturating_sub(bucket_bits);
    let n_buckets = (max_user >> shift) as usize + 1;
    let bucket = |x: &T| ((user(x) >> shift) as usize).min(n_buckets - 1);
    let mut starts = vec![0usize; n_buckets + 1];
    for x in v.iter() {
        starts[bucket(x) + 1] += 1;
    }
    for b in 0..n_buckets {
        starts[b + 1] += starts[b];
    }
    // Each bucket fills from its start; an element out of place is swapped into the next free
    // slot of its own bucket, and whatever comes back is examined in turn.
    let mut next = starts[..n_buckets].to_vec();
    for b in 0..n_buckets {
        while next[b] < starts[b + 1] {
            let d = bucket(&v[next[b]]);
            if d == b {
                next[b] += 1;
            } else {
                v.swap(next[b], next[d]);
                next[d] += 1;
            }
        }
    }
    for b in 0..n_buckets {
        v[starts[b]..starts[b + 1]].sort_unstable_by_key(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_by_user_sorts_large_and_small_inputs_like_a_plain_sort() {
        let mut rng = crate::rng::Rng::new(3, 4);
        for (n, users) in [(10, 5), (20_000, 3), (100_000, 70_000), (50_000, 1 << 31)] {
            let v: Vec<Triple> = (0..n)
                .map(|k| Triple {
                    // Now and then an unknown user (u32::MAX), which sorts last.
                    user: if k % 997 == 5 {
                        u32::MAX
                    } else {
                        rng.below(users) as u32
                    },
                    item: rng.below(1000) as u32,
                    value: 1.0,
                })
                .collect();
            let key = |t: &Triple| ((t.user as u64) << 32) | t.item as u64;
            let mut plain = v.clone();
            plain.sort_by_key(key);
            let mut fast = v;
            sort_by_user(&mut fast, |t| t.user, key);
            assert_eq!(fast, plain, "n={n}");
        }
    }
}
