//! Routing ratings to the rank that owns their user, and agreeing on the item vocabulary.
//!
//! A user belongs to rank `owner(hash(user id))`, whatever the file layout, so after the exchange
//! every (user, item) pair lives on exactly one rank and its aggregation is exact. Each rank
//! aggregates locally first (max and sum are associative), so repeated events cost no traffic.

use crate::comm::Comm;
use crate::error::Result;
use crate::features::{aggregate, Aggregate, LocalRatings, Triple};
use crate::ids::{Id, Interner};
use crate::wire::{Reader, Writer};

/// The rank that owns a user.
#[inline]
pub fn owner(user_hash: u64, ranks: usize) -> usize {
    ((user_hash as u128 * ranks as u128) >> 64) as usize
}

/// The ratings one rank owns after the exchange: its users sorted by id, the items they rated
/// (in no particular order), and the aggregated triples sorted by (user, item index).
pub struct OwnedRatings {
    pub users: Vec<Id>,
    pub items: Vec<Id>,
    pub triples: Vec<Triple>,
}

/// Encode what each rank must receive from this one. Aggregates `local` first.
pub fn encode_outgoing(mut local: LocalRatings, agg: Aggregate, ranks: usize) -> Vec<Vec<u8>> {
    aggregate(&mut local.triples, agg);
    let user_ids = local.users.ids();
    let item_ids = local.items.ids();
    let dest_of_user: Vec<usize> = user_ids
        .iter()
        .map(|id| owner(id.stable_hash(), ranks))
        .collect();
    // Bucket the triples by destination, keeping their (user, item) order.
    let mut by_dest: Vec<Vec<Triple>> = vec![Vec::new(); ranks];
    for t in &local.triples {
        by_dest[dest_of_user[t.user as usize]].push(*t);
    }
    let mut user_slot = vec![u32::MAX; user_ids.len()];
    let mut item_slot = vec![u32::MAX; item_ids.len()];
    by_dest
        .into_iter()
        .map(|triples| {
            let mut users: Vec<u32> = Vec::new();
            let mut items: Vec<u32> = Vec::new();
            let mut mapped: Vec<(u32, u32, f32)> = Vec::with_capacity(triples.len());
            for t in &triples {
                let u = &mut user_slot[t.user as usize];
                if *u == u32::MAX {
                    *u = users.len() as u32;
                    users.push(t.user);
                }
                let i = &mut item_slot[t.item as usize];
                if *i == u32::MAX {
                    *i = items.len() as u32;
                    items.push(t.item);
                }
                mapped.push((*u, *i, t.value));
            }
            let mut w = Writer::new();
            w.u64(users.len() as u64);
            for &u in &users {
                user_ids[u as usize].write(&mut w);
                user_slot[u as usize] = u32::MAX;
            }
            w.u64(items.len() as u64);
            for &i in &items {
                item_ids[i as usize].write(&mut w);
                item_slot[i as usize] = u32::MAX;
            }
            w.u64(mapped.len() as u64);
            for (u, i, v) in mapped {
                w.u32(u);
                w.u32(i);
                w.f32(v);
            }
            w.finish()
        })
        .collect()
}

/// Decode what all ranks sent to this one (in rank order) and aggregate.
pub fn decode_incoming(messages: &[Vec<u8>], agg: Aggregate) -> Result<OwnedRatings> {
    let mut users = Interner::new();
    let mut items = Interner::new();
    let mut triples = Vec::new();
    let mut user_map = Vec::new();
    let mut item_map = Vec::new();
    for msg in messages {
        let mut r = Reader::new(msg);
        user_map.clear();
        for _ in 0..r.u64()? {
            user_map.push(users.intern(&Id::read(&mut r)?));
        }
        item_map.clear();
        for _ in 0..r.u64()? {
            item_map.push(items.intern(&Id::read(&mut r)?));
        }
        let n = r.u64()? as usize;
        triples.reserve(n);
        for _ in 0..n {
            let (u, i, v) = (r.u32()?, r.u32()?, r.f32()?);
            let (Some(&user), Some(&item)) = (user_map.get(u as usize), item_map.get(i as usize))
            else {
                return Err(crate::error::Error::runtime(
                    "corrupt rating message between ranks",
                ));
            };
            triples.push(Triple {
                user,
                item,
                value: v,
            });
        }
    }
    // Number users in id order, so a rank's users do not depend on who sent what.
    let user_ids = users.into_ids();
    let mut order: Vec<u32> = (0..user_ids.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| user_ids[a as usize].cmp(&user_ids[b as usize]));
    let mut rank_of = vec![0u32; user_ids.len()];
    for (new, &old) in order.iter().enumerate() {
        rank_of[old as usize] = new as u32;
    }
    for t in &mut triples {
        t.user = rank_of[t.user as usize];
    }
    let mut sorted_users: Vec<Option<Id>> = user_ids.into_iter().map(Some).collect();
    let users: Vec<Id> = order
        .iter()
        .map(|&old| sorted_users[old as usize].take().unwrap_or(Id::Int(0)))
        .collect();
    aggregate(&mut triples, agg);
    Ok(OwnedRatings {
        users,
        items: items.into_ids(),
        triples,
    })
}

/// Send every rating to its user's owner.
pub fn route(comm: &Comm, local: LocalRatings, agg: Aggregate) -> Result<OwnedRatings> {
    let outgoing = encode_outgoing(local, agg, comm.size());
    let incoming = comm.alltoall_bytes(&outgoing)?;
    drop(outgoing);
    decode_incoming(&incoming, agg)
}

/// The union of every rank's `mine`, sorted: the global item vocabulary.
pub fn agree_on_ids(comm: &Comm, mine: &[Id]) -> Result<Vec<Id>> {
    let mut w = Writer::new();
    w.u64(mine.len() as u64);
    for id in mine {
        id.write(&mut w);
    }
    let all = comm.allgather_bytes(&w.finish())?;
    let mut union: Vec<Id> = Vec::new();
    for msg in &all {
        let mut r = Reader::new(msg);
        for _ in 0..r.u64()? {
            union.push(Id::read(&mut r)?);
        }
    }
    union.sort_unstable();
    union.dedup();
    Ok(union)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::{ColumnNames, EventWeights, ValueRule};
    use arrow::array::{Int64Array, StringArray};

    fn local(rows: &[(i64, &str, &str)]) -> LocalRatings {
        let mut l = LocalRatings::new();
        let users = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let items = StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let events = StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let rule = ValueRule::Events(EventWeights::parse("view=1,cart=3,purchase=5").unwrap());
        let names = ColumnNames {
            file: "t",
            user: "u",
            item: "i",
            value: "e",
        };
        l.add_batch(&users, &items, &events, &rule, &names).unwrap();
        l
    }

    /// Simulate `ranks` ranks: encode on each, deliver, decode on each.
    fn simulate(parts: Vec<LocalRatings>, agg: Aggregate) -> Vec<OwnedRatings> {
        let ranks = parts.len();
        let outgoing: Vec<Vec<Vec<u8>>> = parts
            .into_iter()
            .map(|p| encode_outgoing(p, agg, ranks))
            .collect();
        (0..ranks)
            .map(|dest| {
                let inbox: Vec<Vec<u8>> = outgoing.iter().map(|o| o[dest].clone()).collect();
                decode_incoming(&inbox, agg).unwrap()
            })
            .collect()
    }

    fn flatten(owned: &[OwnedRatings]) -> Vec<(Id, Id, f32)> {
        let mut all: Vec<(Id, Id, f32)> = owned
            .iter()
            .flat_map(|o| {
                o.triples.iter().map(|t| {
                    (
                        o.users[t.user as usize].clone(),
                        o.items[t.item as usize].clone(),
                        t.value,
                    )
                })
            })
            .collect();
        all.sort_by(|a, b| a.partial_cmp(b).unwrap());
        all
    }

    #[test]
    fn aggregation_is_exact_whatever_the_slicing() {
        let rows: Vec<(i64, &str, &str)> = vec![
            (1, "a", "view"),
            (1, "a", "purchase"),
            (2, "a", "view"),
            (1, "b", "cart"),
            (3, "c", "view"),
            (2, "a", "view"),
            (3, "c", "cart"),
            (4, "a", "view"),
        ];
        let whole = flatten(&simulate(vec![local(&rows)], Aggregate::Sum));
        assert_eq!(whole.len(), 5);
        for ranks in 2..=4 {
            // Deal rows round-robin: every pair's events end up on different ranks.
            let parts: Vec<LocalRatings> = (0..ranks)
                .map(|r| {
                    local(
                        &rows
                            .iter()
                            .skip(r)
                            .step_by(ranks)
                            .cloned()
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let owned = simulate(parts, Aggregate::Sum);
            assert_eq!(flatten(&owned), whole, "ranks={ranks}");
            // Each user lives on exactly one rank, the one `owner` names.
            for (rank, o) in owned.iter().enumerate() {
                for u in &o.users {
                    assert_eq!(owner(u.stable_hash(), ranks), rank);
                }
                assert!(o.users.windows(2).all(|w| w[0] < w[1]), "users sorted");
            }
        }
    }

    #[test]
    fn owner_spreads_users_evenly() {
        let ranks = 4;
        let mut counts = vec![0usize; ranks];
        for u in 0..40_000i64 {
            counts[owner(Id::Int(u).stable_hash(), ranks)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{c}");
        }
    }
}
