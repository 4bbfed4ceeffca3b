//! Ratings as plain data, shared by the exchange (which routes them) and the trainer (which lays
//! them out): a (user, item, value) triple of dense indices, and the ratings one rank owns after
//! the exchange.

use crate::ids::Id;

/// A (user, item, value) triple with dense local indices.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Triple {
    pub user: u32,
    pub item: u32,
    pub value: f32,
}

/// The ratings one rank owns after the exchange: its users sorted by id, the items they rated
/// (in no particular order), and the aggregated triples sorted by (user, item index).
pub struct OwnedRatings {
    pub users: Vec<Id>,
    pub items: Vec<Id>,
    pub triples: Vec<Triple>,
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
