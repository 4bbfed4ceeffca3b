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

/// What one rank sends in the exchange: the message for each destination rank, back to back
/// in one buffer (`lens[d]` bytes for rank d), as the alltoall takes them.
pub struct Outgoing {
    pub bytes: Vec<u8>,
    pub lens: Vec<u64>,
}

/// Encode what each rank must receive from this one. Aggregates `local` first.
///
/// A message: the user ids it mentions, the item ids it mentions, then (user, item, value)
/// triples indexing those two lists. Users are renumbered by destination first, so that after
/// the (user, item) sort each destination's triples are one run, written straight into the
/// one send buffer: no per-destination copies.
pub fn encode_outgoing(local: LocalRatings, agg: Aggregate, ranks: usize) -> Outgoing {
    let LocalRatings {
        users,
        items,
        mut triples,
        ..
    } = local;
    let (user_ids, item_ids) = (users.into_ids(), items.into_ids());
    let dest_of_user: Vec<usize> = user_ids
        .iter()
        .map(|id| owner(id.stable_hash(), ranks))
        .collect();
    // Users of destination d get the numbers first[d]..first[d + 1], in their local order.
    let mut first = vec![0usize; ranks + 1];
    for &d in &dest_of_user {
        first[d + 1] += 1;
    }
    for d in 0..ranks {
        first[d + 1] += first[d];
    }
    let mut next = first.clone();
    let mut renumbered = vec![0u32; user_ids.len()];
    let mut user_of = vec![0u32; user_ids.len()];
    for (u, &d) in dest_of_user.iter().enumerate() {
        renumbered[u] = next[d] as u32;
        user_of[next[d]] = u as u32;
        next[d] += 1;
    }
    drop((dest_of_user, next));
    for t in &mut triples {
        t.user = renumbered[t.user as usize];
    }
    drop(renumbered);
    aggregate(&mut triples, agg);
    // Repeated events are gone: give their room back before the buffers of the exchange.
    triples.shrink_to_fit();

    let mut w = Writer::new();
    w.buf.reserve(triples.len() * 12 + 64 * ranks);
    let mut lens = Vec::with_capacity(ranks);
    let mut item_slot = vec![u32::MAX; item_ids.len()];
    let mut items_seen: Vec<u32> = Vec::new();
    let mut at = 0usize;
    for d in 0..ranks {
        let start = w.buf.len();
        let end = at + triples[at..].partition_point(|t| (t.user as usize) < first[d + 1]);
        let run = &triples[at..end];
        // The run is sorted by user: its distinct users in order, and its items as first seen.
        let mut n_users = 0u64;
        let mut last = u32::MAX;
        items_seen.clear();
        for t in run {
            if t.user != last {
                n_users += 1;
                last = t.user;
            }
            let slot = &mut item_slot[t.item as usize];
            if *slot == u32::MAX {
                *slot = items_seen.len() as u32;
                items_seen.push(t.item);
            }
        }
        w.u64(n_users);
        let mut last = u32::MAX;
        for t in run {
            if t.user != last {
                user_ids[user_of[t.user as usize] as usize].write(&mut w);
                last = t.user;
            }
        }
        w.u64(items_seen.len() as u64);
        for &i in &items_seen {
            item_ids[i as usize].write(&mut w);
        }
        w.u64(run.len() as u64);
        let mut user_slot = 0u32;
        let mut last = run.first().map_or(0, |t| t.user);
        for t in run {
            if t.user != last {
                user_slot += 1;
                last = t.user;
            }
            w.u32(user_slot);
            w.u32(item_slot[t.item as usize]);
            w.f32(t.value);
        }
        for &i in &items_seen {
            item_slot[i as usize] = u32::MAX;
        }
        lens.push((w.buf.len() - start) as u64);
        at = end;
    }
    Outgoing {
        bytes: w.finish(),
        lens,
    }
}

/// Decode what all ranks sent to this one (`lens[r]` bytes from rank r, back to back) and
/// aggregate.
pub fn decode_incoming(bytes: &[u8], lens: &[u64], agg: Aggregate) -> Result<OwnedRatings> {
    let mut users = Interner::new();
    let mut items = Interner::new();
    // Each triple takes 12 bytes on the wire: room for all of them at once.
    let mut triples = Vec::with_capacity(bytes.len() / 12);
    let mut user_map = Vec::new();
    let mut item_map = Vec::new();
    let mut at = 0usize;
    for &len in lens {
        let msg = &bytes[at..at + len as usize];
        at += len as usize;
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
    let started = std::time::Instant::now();
    let outgoing = encode_outgoing(local, agg, comm.size());
    let encoded = started.elapsed().as_secs_f64();
    let (incoming, lens) = comm.alltoall_flat(&outgoing.bytes, &outgoing.lens)?;
    drop(outgoing);
    let sent = started.elapsed().as_secs_f64();
    let owned = decode_incoming(&incoming, &lens, agg);
    log::debug!(
        "exchange: aggregate + encode {encoded:.3}s, alltoall {:.3}s, decode + aggregate {:.3}s",
        sent - encoded,
        started.elapsed().as_secs_f64() - sent
    );
    owned
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
        let outgoing: Vec<Outgoing> = parts
            .into_iter()
            .map(|p| encode_outgoing(p, agg, ranks))
            .collect();
        let message = |o: &Outgoing, dest: usize| {
            let at: u64 = o.lens[..dest].iter().sum();
            o.bytes[at as usize..(at + o.lens[dest]) as usize].to_vec()
        };
        (0..ranks)
            .map(|dest| {
                let inbox: Vec<Vec<u8>> = outgoing.iter().map(|o| message(o, dest)).collect();
                let lens: Vec<u64> = inbox.iter().map(|m| m.len() as u64).collect();
                decode_incoming(&inbox.concat(), &lens, agg).unwrap()
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
