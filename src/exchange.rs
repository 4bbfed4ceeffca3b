//! Routing ratings to the rank that owns their user, and agreeing on the item vocabulary.
//!
//! Users are spread over the ranks by their id hash, in two moves. First the hash space is cut
//! into equal ranges, one per rank (`Owners::even`): every (user, item) pair then lives on
//! exactly one rank, where its aggregation is exact (each rank aggregates locally first, so
//! repeated events cost no traffic). Then the ranks count their ratings per range of hashes
//! and cut again where the job's ratings (and, for the implicit objective, a cost per user:
//! `Input::user_cost`) are split evenly (`Owners::balance`), and the users
//! between the old and new cuts move, whole: ranks get equal work whatever the users' activity
//! (hash ranges of equal width left ranks 1.6-12% apart on 2 to 8 ranks). Both cuts depend on
//! the ratings alone, never on which rank read which file.

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::Result;
use crate::features::{aggregate, LocalRatings};
use crate::ids::{Id, Interner};
use crate::input::Aggregate;
use crate::ratings::{plain, timed, unplain, untimed, OwnedRatings, Plain, Rated, Triple};
use crate::wire::{Reader, Writer};

/// Users are counted in 2^BUCKET_BITS buckets by the top bits of their hash: a cut between two
/// ranks falls between buckets, fine enough that ranks differ by well under 1% of the ratings
/// (hash ranges of the same width: 1.6-12% apart on 2 to 8 ranks, measured).
const BUCKET_BITS: u32 = 14;

fn bucket(user_hash: u64) -> usize {
    (user_hash >> (64 - BUCKET_BITS)) as usize
}

/// Which rank owns which users: rank r owns the buckets `cuts[r]..cuts[r + 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Owners {
    cuts: Vec<usize>,
}

impl Owners {
    /// Contiguous ranges of buckets of about equal ratings (`ratings[b]`: the job's ratings
    /// of bucket b), each cut at the bucket boundary nearest its share. No ratings: equal ranges.
    pub fn balance(ratings: &[u64], ranks: usize) -> Owners {
        let ranks = ranks.max(1);
        let buckets = ratings.len();
        let total: u128 = ratings.iter().map(|&n| n as u128).sum();
        if total == 0 {
            return Owners::equal_ranges(buckets, ranks);
        }
        let mut below = 0u128; // the ratings of the buckets before `at`
        let mut at = 0usize;
        let mut cuts = vec![0];
        cuts.extend((1..ranks).map(|r| {
            let target = total * r as u128 / ranks as u128;
            while at < buckets && below + (ratings[at] as u128) < target {
                below += ratings[at] as u128;
                at += 1;
            }
            // The boundary before bucket `at` or after it, whichever is nearer the share.
            if at < buckets
                && below < target
                && below + ratings[at] as u128 - target < target - below
            {
                below += ratings[at] as u128;
                at += 1;
            }
            at
        }));
        cuts.push(buckets);
        Owners { cuts }
    }

    /// Equal ranges of buckets: where users go before anyone knows their ratings.
    pub fn even(ranks: usize) -> Owners {
        Owners::equal_ranges(1 << BUCKET_BITS, ranks.max(1))
    }

    fn equal_ranges(buckets: usize, ranks: usize) -> Owners {
        Owners {
            cuts: (0..=ranks).map(|r| buckets * r / ranks).collect(),
        }
    }

    pub fn ranks(&self) -> usize {
        self.cuts.len() - 1
    }

    /// The rank that owns a user.
    pub fn of(&self, user_hash: u64) -> usize {
        let b = bucket(user_hash);
        // The last rank whose range starts at or before b (empty ranges skipped).
        self.cuts[1..self.ranks()].partition_point(|&cut| cut <= b)
    }
}

/// This rank's work per bucket of users: its ratings, and `user_cost` per user.
fn work_per_bucket<R: Rated>(owned: &Owned<R>, user_cost: u64) -> Vec<u64> {
    let buckets: Vec<u32> = owned
        .users
        .iter()
        .map(|id| bucket(id.stable_hash()) as u32)
        .collect();
    let mut work = vec![0u64; 1 << BUCKET_BITS];
    for &b in &buckets {
        work[b as usize] += user_cost;
    }
    for t in &owned.triples {
        work[buckets[t.user as usize] as usize] += 1;
    }
    work
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
pub fn encode_outgoing(local: LocalRatings, agg: Aggregate, owners: &Owners) -> Outgoing {
    let LocalRatings {
        users,
        items,
        triples,
        times,
        ..
    } = local;
    match times.is_empty() {
        true => encode_ratings(users, items, plain(triples), agg, owners),
        false => encode_ratings(users, items, timed(triples, times), agg, owners),
    }
}

/// `encode_outgoing` of ratings of either kind.
fn encode_ratings<R: Rated>(
    users: Interner,
    items: Interner,
    mut triples: Vec<R>,
    agg: Aggregate,
    owners: &Owners,
) -> Outgoing {
    let ranks = owners.ranks();
    let (user_ids, item_ids) = (users.into_ids(), items.into_ids());
    let dest_of_user: Vec<usize> = user_ids
        .iter()
        .map(|id| owners.of(id.stable_hash()))
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
    let mut message = MessageWriter::new(item_ids.len());
    let mut at = 0usize;
    for d in 0..ranks {
        let start = w.buf.len();
        let end = at + triples[at..].partition_point(|t| (t.user as usize) < first[d + 1]);
        message.write(&mut w, &triples[at..end], &item_ids, |u| {
            &user_ids[user_of[u as usize] as usize]
        });
        lens.push((w.buf.len() - start) as u64);
        at = end;
    }
    Outgoing {
        bytes: w.finish(),
        lens,
    }
}

/// Writes messages: the user ids a run of triples mentions, the item ids it mentions, then the
/// triples indexing those two lists.
struct MessageWriter {
    /// Each item's number in the message being written (u32::MAX: not in it yet).
    item_slot: Vec<u32>,
    items_seen: Vec<u32>,
}

impl MessageWriter {
    fn new(items: usize) -> Self {
        MessageWriter {
            item_slot: vec![u32::MAX; items],
            items_seen: Vec::new(),
        }
    }

    /// `run` sorted by user; `user_id(t.user)` and `item_ids[t.item]` name its ids.
    fn write<'a, R: Rated>(
        &mut self,
        w: &mut Writer,
        run: &[R],
        item_ids: &[Id],
        user_id: impl Fn(u32) -> &'a Id,
    ) {
        // Its distinct users in order, and its items as first seen.
        let mut n_users = 0u64;
        let mut last = u32::MAX;
        self.items_seen.clear();
        for t in run {
            if t.user != last {
                n_users += 1;
                last = t.user;
            }
            let slot = &mut self.item_slot[t.item as usize];
            if *slot == u32::MAX {
                *slot = self.items_seen.len() as u32;
                self.items_seen.push(t.item);
            }
        }
        w.u64(n_users);
        let mut last = u32::MAX;
        for t in run {
            if t.user != last {
                user_id(t.user).write(w);
                last = t.user;
            }
        }
        w.u64(self.items_seen.len() as u64);
        for &i in &self.items_seen {
            item_ids[i as usize].write(w);
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
            w.u32(self.item_slot[t.item as usize]);
            w.f32(t.value);
            t.write_rest(w);
        }
        for &i in &self.items_seen {
            self.item_slot[i as usize] = u32::MAX;
        }
    }
}

/// Read the messages in `bytes` (`lens[r]` bytes from rank r, back to back), interning their
/// ids into `users` and `items` and appending their triples.
fn read_messages<R: Rated>(
    bytes: &[u8],
    lens: &[u64],
    users: &mut Interner,
    items: &mut Interner,
    triples: &mut Vec<R>,
) -> Result<()> {
    let mut at = 0usize;
    for &len in lens {
        read_message(&bytes[at..at + len as usize], users, items, triples)?;
        at += len as usize;
    }
    Ok(())
}

/// Read one message (see `MessageWriter`).
fn read_message<R: Rated>(
    msg: &[u8],
    users: &mut Interner,
    items: &mut Interner,
    triples: &mut Vec<R>,
) -> Result<()> {
    let mut r = Reader::new(msg);
    let user_map = (0..r.u64()?)
        .map(|_| Ok(users.intern(&Id::read(&mut r)?)))
        .collect::<Result<Vec<u32>>>()?;
    let item_map = (0..r.u64()?)
        .map(|_| Ok(items.intern(&Id::read(&mut r)?)))
        .collect::<Result<Vec<u32>>>()?;
    let n = r.u64()? as usize;
    for _ in 0..n {
        let (u, i, v) = (r.u32()?, r.u32()?, r.f32()?);
        let (Some(&user), Some(&item)) = (user_map.get(u as usize), item_map.get(i as usize))
        else {
            return Err(crate::error::Error::runtime(
                "corrupt rating message between ranks",
            ));
        };
        let triple = Triple {
            user,
            item,
            value: v,
        };
        triples.push(R::read_rest(triple, &mut r)?);
    }
    Ok(())
}

/// Decode what all ranks sent to this one (`lens[r]` bytes from rank r, back to back) and
/// aggregate.
pub fn decode_incoming(bytes: &[u8], lens: &[u64], agg: Aggregate) -> Result<OwnedRatings> {
    Ok(decode_ratings::<Plain>(bytes, lens, agg)?.plain())
}

/// `decode_incoming` of ratings of either kind.
fn decode_ratings<R: Rated>(bytes: &[u8], lens: &[u64], agg: Aggregate) -> Result<Owned<R>> {
    let mut users = Interner::new();
    let mut items = Interner::new();
    // Each rating takes at least 12 bytes on the wire: room for all of them at once.
    let mut triples = Vec::with_capacity(bytes.len() / 12);
    read_messages(bytes, lens, &mut users, &mut items, &mut triples)?;
    Ok(in_id_order(users, items, triples, agg))
}

/// A rank's ratings of either kind, as `OwnedRatings` promises them.
struct Owned<R> {
    users: Vec<Id>,
    items: Vec<Id>,
    triples: Vec<R>,
}

impl Owned<Plain> {
    fn plain(self) -> OwnedRatings {
        OwnedRatings {
            users: self.users,
            items: self.items,
            triples: unplain(self.triples),
            times: Vec::new(),
        }
    }
}

impl Owned<crate::ratings::Timed> {
    fn split(self) -> OwnedRatings {
        let (triples, times) = untimed(self.triples);
        OwnedRatings {
            users: self.users,
            items: self.items,
            triples,
            times,
        }
    }
}

/// `OwnedRatings` from interned ids and their triples: users numbered in id order (so a rank's
/// users do not depend on who sent what), pairs aggregated.
fn in_id_order<R: Rated>(
    users: Interner,
    items: Interner,
    mut triples: Vec<R>,
    agg: Aggregate,
) -> Owned<R> {
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
    Owned {
        users,
        items: items.into_ids(),
        triples,
    }
}

/// Send every rating to its user's owner.
///
/// `user_cost`: what each user weighs besides its ratings when the ranks are balanced.
pub fn route(
    comm: &dyn Collective,
    local: LocalRatings,
    agg: Aggregate,
    user_cost: u64,
) -> Result<OwnedRatings> {
    let LocalRatings {
        users,
        items,
        triples,
        times,
        ..
    } = local;
    match times.is_empty() {
        true => Ok(route_ratings(comm, (users, items), plain(triples), agg, user_cost)?.plain()),
        false => {
            let timed = timed(triples, times);
            Ok(route_ratings(comm, (users, items), timed, agg, user_cost)?.split())
        }
    }
}

/// `route` of ratings of either kind.
fn route_ratings<R: Rated>(
    comm: &dyn Collective,
    (users, items): (Interner, Interner),
    triples: Vec<R>,
    agg: Aggregate,
    user_cost: u64,
) -> Result<Owned<R>> {
    let started = std::time::Instant::now();
    if comm.size() == 1 {
        // The only rank owns every user: nothing to encode, send, decode or balance.
        let mut owned = in_id_order(users, items, triples, agg);
        owned.triples.shrink_to_fit();
        log::debug!(
            "exchange: one rank, aggregate {:.3}s",
            started.elapsed().as_secs_f64()
        );
        return Ok(owned);
    }
    let even = Owners::even(comm.size());
    let outgoing = encode_ratings(users, items, triples, agg, &even);
    let encoded = started.elapsed().as_secs_f64();
    let (incoming, lens) = comm.alltoall_flat(&outgoing.bytes, &outgoing.lens)?;
    drop(outgoing);
    let sent = started.elapsed().as_secs_f64();
    // Every rank decodes before the next collective: none may wait there for a failed one.
    let owned = comm.agree(decode_ratings::<R>(&incoming, &lens, agg))?;
    drop(incoming);
    let decoded = started.elapsed().as_secs_f64();
    let mut ratings = work_per_bucket(&owned, user_cost);
    comm.reduce_u64(&mut ratings, Op::Sum);
    let owners = Owners::balance(&ratings, comm.size());
    let (owned, moved) = if owners == even {
        (owned, 0)
    } else {
        move_users(comm, owned, &owners)?
    };
    log::debug!(
        "exchange: aggregate + encode {encoded:.3}s, alltoall {:.3}s, decode + aggregate {:.3}s, balance {:.3}s ({moved} users moved out)",
        sent - encoded,
        decoded - sent,
        started.elapsed().as_secs_f64() - decoded
    );
    Ok(owned)
}

/// Hand the users `owners` gives to another rank over to it, whole, and take in the ones it
/// gives to this rank; returns the ratings and the count of users that left. Users and
/// triples come out in the order `OwnedRatings` promises.
fn move_users<R: Rated>(
    comm: &dyn Collective,
    owned: Owned<R>,
    owners: &Owners,
) -> Result<(Owned<R>, usize)> {
    let me = comm.rank() as u32;
    let Owned {
        users,
        items,
        mut triples,
    } = owned;
    let dest: Vec<u32> = users
        .iter()
        .map(|u| owners.of(u.stable_hash()) as u32)
        .collect();
    let leave = |t: &R| dest[t.user as usize] != me;
    let outgoing = encode_leaving(&triples, &dest, me, &users, &items, comm.size());
    triples.retain(|t| !leave(t));
    let (incoming, lens) = comm.alltoall_flat(&outgoing.bytes, &outgoing.lens)?;
    drop(outgoing);

    let mut item_index = Interner::new();
    for id in &items {
        item_index.intern(id);
    }
    drop(items);
    let mut arrivals = Interner::new();
    let mut arrived = Vec::new();
    read_messages(
        &incoming,
        &lens,
        &mut arrivals,
        &mut item_index,
        &mut arrived,
    )?;
    drop(incoming);
    let staying: Vec<u32> = (0..users.len() as u32)
        .filter(|&u| dest[u as usize] == me)
        .collect();
    let moved = users.len() - staying.len();
    let merged = merge_users(
        &users,
        &staying,
        arrivals.into_ids(),
        &mut triples,
        &mut arrived,
    );
    // The staying triples are still sorted (their users keep their order).
    arrived.sort_unstable_by_key(|t| (t.user, t.item));
    merge_sorted(&mut triples, &arrived);
    Ok((
        Owned {
            users: merged,
            items: item_index.into_ids(),
            triples,
        },
        moved,
    ))
}

/// The messages of the users leaving this rank (`dest[u] != me`), by destination, each
/// destination's in user order.
fn encode_leaving<R: Rated>(
    triples: &[R],
    dest: &[u32],
    me: u32,
    users: &[Id],
    items: &[Id],
    ranks: usize,
) -> Outgoing {
    let mut leaving: Vec<R> = triples
        .iter()
        .filter(|t| dest[t.user as usize] != me)
        .copied()
        .collect();
    // A stable sort: each destination's triples stay in user order.
    leaving.sort_by_key(|t| dest[t.user as usize]);
    let mut w = Writer::new();
    let mut lens = Vec::with_capacity(ranks);
    let mut message = MessageWriter::new(items.len());
    let mut at = 0;
    for d in 0..ranks as u32 {
        let start = w.buf.len();
        let end = at + leaving[at..].partition_point(|t| dest[t.user as usize] <= d);
        message.write(&mut w, &leaving[at..end], items, |u| &users[u as usize]);
        lens.push((w.buf.len() - start) as u64);
        at = end;
    }
    Outgoing {
        bytes: w.finish(),
        lens,
    }
}

/// The staying users (`users[staying[..]]`, in id order) and the arrived ones numbered in one
/// id order, the triples of both renumbered to match; returns the merged ids.
fn merge_users<R: Rated>(
    users: &[Id],
    staying: &[u32],
    arrived_ids: Vec<Id>,
    staying_triples: &mut [R],
    arrived_triples: &mut [R],
) -> Vec<Id> {
    let mut by_id: Vec<u32> = (0..arrived_ids.len() as u32).collect();
    by_id.sort_unstable_by(|&a, &b| arrived_ids[a as usize].cmp(&arrived_ids[b as usize]));
    let mut number_staying = vec![u32::MAX; users.len()];
    let mut number_arrived = vec![0u32; arrived_ids.len()];
    let mut merged: Vec<Id> = Vec::with_capacity(staying.len() + by_id.len());
    let (mut a, mut b) = (0, 0);
    while a < staying.len() || b < by_id.len() {
        let next = merged.len() as u32;
        if b == by_id.len()
            || (a < staying.len() && users[staying[a] as usize] < arrived_ids[by_id[b] as usize])
        {
            number_staying[staying[a] as usize] = next;
            merged.push(users[staying[a] as usize].clone());
            a += 1;
        } else {
            number_arrived[by_id[b] as usize] = next;
            merged.push(arrived_ids[by_id[b] as usize].clone());
            b += 1;
        }
    }
    for t in staying_triples {
        t.user = number_staying[t.user as usize];
    }
    for t in arrived_triples {
        t.user = number_arrived[t.user as usize];
    }
    merged
}

/// Merge `from` into `into`, both sorted by (user, item) with no key in both, in place from
/// the back: one pass, no second buffer.
fn merge_sorted<R: Rated>(into: &mut Vec<R>, from: &[R]) {
    let key = |t: &R| (t.user, t.item);
    let mut kept = into.len();
    let mut left = from.len();
    into.extend_from_slice(from);
    for at in (0..into.len()).rev() {
        if left == 0 {
            break;
        }
        if kept > 0 && key(&into[kept - 1]) > key(&from[left - 1]) {
            into[at] = into[kept - 1];
            kept -= 1;
        } else {
            into[at] = from[left - 1];
            left -= 1;
        }
    }
}

/// The union of every rank's `mine`, sorted: the global item vocabulary.
pub fn agree_on_ids(comm: &dyn Collective, mine: &[Id]) -> Result<Vec<Id>> {
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
    use crate::features::ColumnNames;
    use crate::input::{EventWeights, ValueRule};
    use arrow::array::{Int64Array, StringArray};

    fn local(rows: &[(i64, &str, &str)]) -> LocalRatings {
        let mut l = LocalRatings::new();
        let users = Int64Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
        let items = StringArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
        let events = StringArray::from(rows.iter().map(|r| r.2).collect::<Vec<_>>());
        let weights = EventWeights::parse("view=1,cart=3,purchase=5").unwrap();
        let rule = ValueRule::Events(&weights);
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
    fn simulate(parts: Vec<LocalRatings>, agg: Aggregate) -> (Vec<OwnedRatings>, Owners) {
        let ranks = parts.len();
        let owners = Owners::even(ranks);
        let outgoing: Vec<Outgoing> = parts
            .into_iter()
            .map(|p| encode_outgoing(p, agg, &owners))
            .collect();
        let message = |o: &Outgoing, dest: usize| {
            let at: u64 = o.lens[..dest].iter().sum();
            o.bytes[at as usize..(at + o.lens[dest]) as usize].to_vec()
        };
        let owned = (0..ranks)
            .map(|dest| {
                let inbox: Vec<Vec<u8>> = outgoing.iter().map(|o| message(o, dest)).collect();
                let lens: Vec<u64> = inbox.iter().map(|m| m.len() as u64).collect();
                decode_incoming(&inbox.concat(), &lens, agg).unwrap()
            })
            .collect();
        (owned, owners)
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
        let whole = flatten(&simulate(vec![local(&rows)], Aggregate::Sum).0);
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
            let (owned, owners) = simulate(parts, Aggregate::Sum);
            assert_eq!(flatten(&owned), whole, "ranks={ranks}");
            // Each user lives on exactly one rank, the one `Owners` names.
            for (rank, o) in owned.iter().enumerate() {
                for u in &o.users {
                    assert_eq!(owners.of(u.stable_hash()), rank);
                }
                assert!(o.users.windows(2).all(|w| w[0] < w[1]), "users sorted");
            }
        }
    }

    #[test]
    fn merging_sorted_triples_in_place_gives_the_sorted_union() {
        let t = |user, item| Triple {
            user,
            item,
            value: (user * 100 + item) as f32,
        };
        let cases: Vec<(Vec<Triple>, Vec<Triple>)> = vec![
            (vec![], vec![]),
            (vec![t(1, 1)], vec![]),
            (vec![], vec![t(0, 2), t(0, 3)]),
            (
                vec![t(1, 1), t(1, 4), t(5, 0)],
                vec![t(0, 2), t(3, 3), t(3, 9), t(7, 1)],
            ),
            (vec![t(0, 0), t(0, 1)], vec![t(2, 0)]),
            (vec![t(4, 0)], vec![t(1, 0), t(2, 0)]),
        ];
        for (into, from) in cases {
            let mut expected = [into.clone(), from.clone()].concat();
            expected.sort_by_key(|t| (t.user, t.item));
            let mut merged = crate::ratings::plain(into);
            merge_sorted(&mut merged, &crate::ratings::plain(from));
            assert_eq!(crate::ratings::unplain(merged), expected);
        }
    }

    #[test]
    fn a_bucket_weighs_its_ratings_and_the_cost_of_each_of_its_users() {
        let (heavy, light) = (Id::Int(1), Id::Int(2));
        let t = |user, item| Triple {
            user,
            item,
            value: 1.0,
        };
        let owned = Owned {
            users: vec![heavy.clone(), light.clone()],
            items: vec![Id::Int(10), Id::Int(11), Id::Int(12)],
            triples: crate::ratings::plain(vec![t(0, 0), t(0, 1), t(0, 2), t(1, 0)]),
        };
        let at = |id: &Id| bucket(id.stable_hash());
        for cost in [0, 16] {
            let work = work_per_bucket(&owned, cost);
            assert_eq!(work.iter().sum::<u64>(), 4 + 2 * cost);
            if at(&heavy) != at(&light) {
                assert_eq!(work[at(&heavy)], 3 + cost);
                assert_eq!(work[at(&light)], 1 + cost);
            }
        }
    }

    #[test]
    fn owners_cut_the_hash_space_into_ranges_of_equal_ratings() {
        // Skewed activity: a few heavy buckets among many light ones.
        let buckets = 1 << BUCKET_BITS;
        let rows: Vec<u64> = (0..buckets as u64)
            .map(|b| if b % 97 == 0 { 5_000 } else { 1 + b % 13 })
            .collect();
        let total: u64 = rows.iter().sum();
        for ranks in [1, 2, 3, 8, 64] {
            let owners = Owners::balance(&rows, ranks);
            assert_eq!(owners.ranks(), ranks);
            let mut load = vec![0u64; ranks];
            for (b, &n) in rows.iter().enumerate() {
                load[owners.of((b as u64) << (64 - BUCKET_BITS))] += n;
            }
            assert_eq!(load.iter().sum::<u64>(), total);
            // Each rank is off its share by at most one heavy bucket.
            let share = total / ranks as u64;
            assert!(
                load.iter().all(|&l| l.abs_diff(share) <= 5_000),
                "{ranks} ranks: {load:?}"
            );
            // Contiguous: the owner never goes down as the hash goes up.
            let mut last = 0;
            for b in 0..buckets {
                let o = owners.of((b as u64) << (64 - BUCKET_BITS) | 12345);
                assert!(o >= last);
                last = o;
            }
        }
        // A single bucket holding everything: every bucket still has an owner, no panic.
        let mut one = vec![0u64; buckets];
        one[77] = 10;
        let owners = Owners::balance(&one, 4);
        assert!((0..buckets).all(|b| owners.of((b as u64) << (64 - BUCKET_BITS)) < 4));
        // No ratings at all: equal ranges.
        let owners = Owners::balance(&vec![0; buckets], 4);
        let per_rank: Vec<usize> = (0..4)
            .map(|r| {
                (0..buckets)
                    .filter(|&b| owners.of((b as u64) << (64 - BUCKET_BITS)) == r)
                    .count()
            })
            .collect();
        assert_eq!(per_rank, vec![buckets / 4; 4]);
    }
}
