//! A rank's training data: the hold-out split, the global item numbering, and the ratings laid
//! out by user (CSR) so a user's row stays in cache while its ratings stream past.

use crate::exchange::OwnedRatings;
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

/// Lay out a rank's ratings against the global item vocabulary (sorted ids).
pub fn index(owned: OwnedRatings, held_out: &[bool], global_items: &[Id]) -> RankRatings {
    let item_index: Vec<u32> = owned
        .items
        .iter()
        .map(|id| {
            global_items
                .binary_search(id)
                .map(|i| i as u32)
                .unwrap_or(UNKNOWN)
        })
        .collect();
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
        let (user, item) = (user_index[t.user as usize], item_index[t.item as usize]);
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
    // By user, then by global item: the same order whatever the layout of the input.
    train.sort_unstable_by_key(|&(u, i, _)| ((u as u64) << 32) | i as u64);
    holdout.sort_unstable_by_key(|h| ((h.user as u64) << 32) | h.item as u64);
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
                if crate::exchange::owner(u.stable_hash(), 4) == rank {
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
        let r = index(owned, &held, &global);
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
