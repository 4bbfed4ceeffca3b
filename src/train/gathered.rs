//! The implicit trainer's item side when each item's owner steps its items alone
//! (`train::implicit`, `ItemRows::Gathered`): the owner holds every pair of its items (sent to
//! it once, before the first epoch) and, each epoch, every user's row. Two shares per epoch (the
//! users' rows before the items' steps, the items' new rows after them) instead of the
//! `2 cg_steps + 2` of summing every item's parts (`train::summed`).
//!
//! - One rank: its rows are everyone's; nothing moves.
//! - Ranks on one node: each rank writes its range into a window the ranks map (MPI shared
//!   memory); after a barrier everyone reads the users' rows in place (`gather`) and copies
//!   the items' into its own rows (`share`).
//! - Ranks on several nodes (or `FUNKSVD_SHARED_ROWS=0`, or no room in /dev/shm): an allgather.
//!
//! Both ways give every rank the same floats, so the model does not depend on the way.

use std::ops::Range;
use std::time::Instant;

use crate::collective::{Collective, CollectiveExt, SharedFloats};
use crate::error::{Error, Result};

use super::data::RankRatings;
use super::item_rows::sharing_wanted;
use super::ordered::allgather;

/// A table of rows cut into one range per rank, each rank computing its own range and every
/// rank needing the whole.
pub(super) struct Everywhere {
    way: Way,
    /// Every rank's range of the floats.
    ranges: Vec<Range<usize>>,
    rank: usize,
    /// Seconds spent in barriers and messages since the last `take_synced`.
    synced: f64,
}

enum Way {
    Own,
    Shared(Box<dyn SharedFloats>),
    /// The whole table, for `gather` (empty for `share`, whose caller holds it).
    Passed(Vec<f32>),
}

impl Everywhere {
    /// Two tables (the users' rows and the items'), cut by `first` and `second`, kept the way
    /// `comm`'s ranks allow: both in shared memory or both as messages (a collective call).
    pub(super) fn place_two(
        comm: &dyn Collective,
        first: Vec<Range<usize>>,
        second: Vec<Range<usize>>,
    ) -> (Everywhere, Everywhere) {
        let rank = comm.rank();
        let table = |ranges: Vec<Range<usize>>, way| Everywhere {
            way,
            ranges,
            rank,
            synced: 0.0,
        };
        if comm.size() == 1 {
            return (table(first, Way::Own), table(second, Way::Own));
        }
        let end = |r: &[Range<usize>]| r.last().map_or(0, |r| r.end);
        // Zeros from the allocator: pages no rank touches until it writes its range.
        let a = comm.node_floats(&vec![0.0; end(&first)], sharing_wanted(rank));
        let b = comm.node_floats(&vec![0.0; end(&second)], a.is_some());
        match (a, b) {
            (Some(a), Some(b)) => (table(first, Way::Shared(a)), table(second, Way::Shared(b))),
            _ => {
                let whole = vec![0.0; end(&first)];
                (
                    table(first, Way::Passed(whole)),
                    table(second, Way::Passed(Vec::new())),
                )
            }
        }
    }

    /// Whether the ranks share the table in memory.
    pub(super) fn shared(&self) -> bool {
        matches!(self.way, Way::Shared(_))
    }

    /// Seconds spent synchronising since the last call.
    pub(super) fn take_synced(&mut self) -> f64 {
        std::mem::take(&mut self.synced)
    }

    /// The whole table, given this rank's range `own` (the first table of `place_two`): read
    /// in place from the shared memory, gathered into a buffer from messages, `own` itself on
    /// one rank.
    ///
    /// Valid until this rank's next call: every rank reads it only before the other table's
    /// next barrier, and writes its range again only after that barrier.
    pub(super) fn gather<'s>(
        &'s mut self,
        comm: &dyn Collective,
        own: &'s [f32],
    ) -> Result<&'s [f32]> {
        let started = Instant::now();
        let range = self.ranges[self.rank].clone();
        let whole: &[f32] = match &mut self.way {
            Way::Own => own,
            Way::Passed(whole) => {
                whole[range].copy_from_slice(own);
                allgather(comm, whole, &self.ranges)?;
                whole
            }
            Way::Shared(window) => {
                // SAFETY: only this rank writes `range`; see above for the readers.
                unsafe { window.part_mut(range) }.copy_from_slice(own);
                window.sync();
                // SAFETY: every rank wrote its range before the barrier just passed; see above.
                unsafe { window.all() }
            }
        };
        self.synced += started.elapsed().as_secs_f64();
        Ok(whole)
    }

    /// Every rank's range into `rows` (the whole table; this rank's range already holds its
    /// own).
    ///
    /// Each table is shared once per epoch, and between two shares of one table every rank
    /// passes the other table's barrier after its copy of this one: so no rank writes its
    /// range again while another still copies the previous floats.
    pub(super) fn share(&mut self, comm: &dyn Collective, rows: &mut [f32]) -> Result<()> {
        let started = Instant::now();
        let range = self.ranges[self.rank].clone();
        match &mut self.way {
            Way::Own => return Ok(()),
            Way::Passed(_) => allgather(comm, rows, &self.ranges)?,
            Way::Shared(window) => {
                // SAFETY: only this rank writes `range`; see above for the readers.
                unsafe { window.part_mut(range.clone()) }.copy_from_slice(&rows[range]);
                window.sync();
                // SAFETY: every rank wrote its range before the barrier just passed and writes
                // again only after the other table's barrier, which this rank reaches after
                // this copy.
                rows.copy_from_slice(unsafe { window.all() });
            }
        }
        self.synced += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// This rank's items' pairs from every rank, as `(item, user, value)` in the order an item's
/// sums take them: by source rank, then by the source's user order. An item is numbered within
/// `items` (this rank's range), a user by its place among all users, rank by rank
/// (`first_user` is this rank's first). One all-to-all (a collective call).
pub(super) fn owned_pairs(
    comm: &dyn Collective,
    ratings: &RankRatings,
    values: &[f32],
    item_ranges: &[Range<usize>],
    first_user: usize,
) -> Result<Vec<(u32, u32, f32)>> {
    let n_items = item_ranges.last().map_or(0, |r| r.end);
    let mut owner = vec![0u32; n_items];
    for (r, range) in item_ranges.iter().enumerate() {
        owner[range.clone()].fill(r as u32);
    }
    let mut outgoing = vec![Vec::new(); comm.size()];
    for u in 0..ratings.n_users() {
        let user = u32::try_from(first_user + u)
            .map_err(|_| Error::usage("more than 4 billion users".to_string()))?;
        let (items, values) = ratings.ratings_with(u, values);
        for (&i, &v) in items.iter().zip(values) {
            let r = owner[i as usize] as usize;
            let local = i - item_ranges[r].start as u32;
            let out: &mut Vec<u8> = &mut outgoing[r];
            out.extend_from_slice(&local.to_le_bytes());
            out.extend_from_slice(&user.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let incoming = comm.alltoall_bytes(&outgoing)?;
    drop(outgoing);
    let word = |b: &[u8], at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
    Ok(incoming
        .iter()
        .flat_map(|bytes| bytes.chunks_exact(12))
        .map(|p| {
            (
                u32::from_le_bytes(word(p, 0)),
                u32::from_le_bytes(word(p, 4)),
                f32::from_le_bytes(word(p, 8)),
            )
        })
        .collect())
}

/// Where each rank's users start among all users, rank by rank (a collective call).
pub(super) fn user_starts(comm: &dyn Collective, mine: usize) -> Result<Vec<usize>> {
    let counts = comm.allgather_bytes(&(mine as u64).to_le_bytes())?;
    let mut starts = Vec::with_capacity(counts.len() + 1);
    let mut at = 0usize;
    starts.push(0);
    for c in counts {
        at += u64::from_le_bytes(c[..8].try_into().expect("8 bytes")) as usize;
        starts.push(at);
    }
    Ok(starts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::ids::Id;
    use crate::train::ordered::even_ranges;

    #[test]
    fn one_rank_owns_every_pair_in_user_order() {
        let ratings = RankRatings {
            user_ids: vec![Id::Int(1), Id::Int(2)],
            user_offsets: vec![0, 2, 3],
            items: vec![0, 2, 2],
            values: vec![1.0, 3.0, 5.0],
            balanced: false,
        };
        let items = even_ranges(3, 1);
        let pairs = owned_pairs(&Solo, &ratings, &ratings.values, &items, 10).unwrap();
        assert_eq!(pairs, vec![(0, 10, 1.0), (2, 10, 3.0), (2, 11, 5.0)]);
        assert_eq!(user_starts(&Solo, 2).unwrap(), vec![0, 2]);
    }
}
