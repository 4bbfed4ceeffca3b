//! What the ranks of a job do together, as a trait: the MPI communicator (`comm::Comm`) in
//! production, `Solo` (one process, every collective an identity) in unit tests and wherever a
//! single process needs no MPI. The pipeline, the exchange and the trainer are written against
//! this trait, so they compile and run without MPI; only `comm` implements it with MPI calls.

use std::ops::Range;

use crate::error::{Error, Result};

/// How `reduce_*` combines the ranks' values, element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Sum,
    Min,
    Max,
}

/// The collective operations the commands need. Every rank calls each of them in the same
/// order (as with MPI); `agree` before any of them that could otherwise wait for a rank that
/// failed.
pub trait Collective {
    /// This rank, 0..size.
    fn rank(&self) -> usize;
    /// How many ranks the job has.
    fn size(&self) -> usize;
    fn is_root(&self) -> bool {
        self.rank() == 0
    }
    /// Every rank's `mine`, in rank order (what `agree` is made of).
    fn gather_codes(&self, mine: i32) -> Vec<i32>;
    /// Combine `values` over all ranks, in place (same length on every rank).
    fn reduce_f32(&self, values: &mut [f32], op: Op);
    fn reduce_f64(&self, values: &mut [f64], op: Op);
    fn reduce_u64(&self, values: &mut [u64], op: Op);
    /// Send `send` to rank `dest` while receiving `recv.len()` floats from rank `source`.
    fn sendrecv_f32(&self, send: &[f32], dest: usize, recv: &mut [f32], source: usize);
    /// `root`'s bytes on every rank (the others pass anything).
    fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Result<Vec<u8>>;
    /// Every rank's bytes on every rank, in rank order.
    fn allgather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Personalised exchange of one buffer holding every destination's message back to back
    /// (`send_lens[r]` bytes for rank r); returns what arrived, back to back in rank order,
    /// and the length from each rank.
    fn alltoall_flat(&self, send: &[u8], send_lens: &[u64]) -> Result<(Vec<u8>, Vec<u64>)>;
    /// Every rank's bytes on `root`, back to back in rank order, with each rank's length;
    /// `None` on the other ranks.
    fn gather_flat(&self, root: usize, mine: &[u8]) -> Result<Option<(Vec<u8>, Vec<u64>)>>;
    fn barrier(&self);
    /// `init.len()` floats, holding `init` (the same on every rank), in memory every rank of
    /// the job maps, if all ranks run on one node and every rank passes `wanted`; `None` on
    /// every rank alike otherwise (one rank, several nodes, or no room for them).
    fn node_floats(&self, init: &[f32], wanted: bool) -> Option<Box<dyn SharedFloats>>;
    /// The ranks that pass the same `color`, as a collective of their own (ranks in the same
    /// order); every rank calls it.
    fn split(&self, color: usize) -> Box<dyn Collective>;
    /// Send `bytes` to rank `dest` alone (a message of its own, apart from the collectives).
    fn send_bytes(&self, dest: usize, bytes: &[u8]);
    /// A message some rank sent this one with `send_bytes`, if one has arrived: (its rank,
    /// its bytes).
    fn try_receive_bytes(&self) -> Option<(usize, Vec<u8>)>;
    /// Return once every rank got here, sleeping while others are still busy (a rank that
    /// waits long must not take a core from those that work).
    fn wait_for_all(&self);
    /// End every process of the job now, with `code` (after this rank said why).
    fn abort(&self, code: i32) -> !;
}

/// Floats that every rank of a node maps (an MPI shared-memory window): each rank reads and
/// writes them in place, and `sync` orders those accesses between the ranks. Another process
/// may write any of them at any time the ranks' own protocol allows, so references into them
/// come from `unsafe` calls whose callers state that protocol.
pub trait SharedFloats {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Floats `range`, to read and write.
    ///
    /// # Safety
    /// Until the returned slice is dropped, no other rank reads or writes `range` (the
    /// ranks' schedule keeps them on other floats until the next `sync`).
    unsafe fn part_mut(&mut self, range: Range<usize>) -> &mut [f32];
    /// Every float, to read.
    ///
    /// # Safety
    /// Until the returned slice is dropped, no rank writes any of the floats (the ranks have
    /// all passed a `sync` after their last writes, and write again only after another).
    unsafe fn all(&self) -> &[f32];
    /// Return once every rank sharing the floats got here; the writes each made before are
    /// then seen by all.
    fn sync(&self);
}

/// Operations built on the trait's, for any collective.
pub trait CollectiveExt: Collective {
    /// Every rank learns whether any rank failed, before anyone enters the next collective.
    ///
    /// The lowest rank that failed on its own gets its error back (and prints it); every other
    /// rank gets `PeerFailed` naming that rank and its exit code. So an error that every rank
    /// hits alike (a bad flag, a missing column) is printed once, and an error of one rank is
    /// printed by that rank; every rank exits with the same code.
    fn agree<T>(&self, local: Result<T>) -> Result<T> {
        let codes = self.gather_codes(failure_code(&local));
        settle(local, &codes, self.rank())
    }

    /// Personalised exchange of separate messages: `outgoing[r]` goes to rank r; returns what
    /// each rank sent to this one (`alltoall_flat` for messages already in one buffer).
    fn alltoall_bytes(&self, outgoing: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        let lens: Vec<u64> = outgoing.iter().map(|m| m.len() as u64).collect();
        let (all, from) = self.alltoall_flat(&outgoing.concat(), &lens)?;
        Ok(split_by_lengths(&all, &from))
    }
}

/// Back-to-back messages of `lens` bytes each, apart.
pub(crate) fn split_by_lengths(all: &[u8], lens: &[u64]) -> Vec<Vec<u8>> {
    let mut at = 0usize;
    lens.iter()
        .map(|&len| {
            at += len as usize;
            all[at - len as usize..at].to_vec()
        })
        .collect()
}

impl<C: Collective + ?Sized> CollectiveExt for C {}

/// What a rank tells the others in `agree`: 0 all well; > 0 its own failure's exit code;
/// < 0 it already stopped for another rank's failure.
fn failure_code<T>(local: &Result<T>) -> i32 {
    match local {
        Ok(_) => 0,
        Err(Error::PeerFailed { code, .. }) => -(*code).max(1),
        Err(e) => e.exit_code().max(1),
    }
}

/// The outcome of `agree` for rank `me`, given every rank's `failure_code`.
fn settle<T>(local: Result<T>, codes: &[i32], me: usize) -> Result<T> {
    if let Some(origin) = codes.iter().position(|&c| c > 0) {
        return if origin == me {
            local
        } else {
            Err(Error::PeerFailed {
                rank: origin,
                code: codes[origin],
            })
        };
    }
    match (local, codes.iter().position(|&c| c < 0)) {
        (Ok(_), Some(r)) => Err(Error::PeerFailed {
            rank: r,
            code: -codes[r],
        }),
        (local, _) => local,
    }
}

/// A single process: every collective is an identity.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn gather_codes(&self, mine: i32) -> Vec<i32> {
        vec![mine]
    }
    fn reduce_f32(&self, _values: &mut [f32], _op: Op) {}
    fn reduce_f64(&self, _values: &mut [f64], _op: Op) {}
    fn reduce_u64(&self, _values: &mut [u64], _op: Op) {}
    fn sendrecv_f32(&self, send: &[f32], _dest: usize, recv: &mut [f32], _source: usize) {
        recv.copy_from_slice(send)
    }
    fn broadcast_bytes(&self, _root: usize, bytes: Vec<u8>) -> Result<Vec<u8>> {
        Ok(bytes)
    }
    fn allgather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn alltoall_flat(&self, send: &[u8], send_lens: &[u64]) -> Result<(Vec<u8>, Vec<u64>)> {
        Ok((send.to_vec(), send_lens.to_vec()))
    }
    fn gather_flat(&self, _root: usize, mine: &[u8]) -> Result<Option<(Vec<u8>, Vec<u64>)>> {
        Ok(Some((mine.to_vec(), vec![mine.len() as u64])))
    }
    fn barrier(&self) {}
    fn node_floats(&self, _init: &[f32], _wanted: bool) -> Option<Box<dyn SharedFloats>> {
        None
    }
    fn split(&self, _color: usize) -> Box<dyn Collective> {
        Box::new(Solo)
    }
    fn send_bytes(&self, _dest: usize, _bytes: &[u8]) {
        unreachable!("one process sends no messages to itself")
    }
    fn try_receive_bytes(&self) -> Option<(usize, Vec<u8>)> {
        None
    }
    fn wait_for_all(&self) {}
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes_of(results: &[Result<()>]) -> Vec<i32> {
        results.iter().map(failure_code).collect()
    }

    #[test]
    fn the_lowest_failing_rank_keeps_its_error_and_the_others_name_it() {
        // Rank 1 fails with a usage error, rank 2 with a runtime error.
        let results = || {
            vec![
                Ok(()),
                Err(Error::usage("bad column")),
                Err(Error::runtime("disk full")),
            ]
        };
        let codes = codes_of(&results());
        for (me, local) in results().into_iter().enumerate() {
            match (me, settle(local, &codes, me)) {
                (1, Err(Error::Usage(m))) => assert_eq!(m, "bad column"),
                (_, Err(Error::PeerFailed { rank: 1, code: 2 })) => {}
                (me, other) => panic!("rank {me}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_rank_that_stopped_for_another_stops_everyone_with_that_code() {
        let results = || vec![Ok(()), Err(Error::PeerFailed { rank: 3, code: 1 })];
        let codes = codes_of(&results());
        for (me, local) in results().into_iter().enumerate() {
            assert!(
                matches!(
                    settle(local, &codes, me),
                    Err(Error::PeerFailed { code: 1, .. })
                ),
                "rank {me}"
            );
        }
        assert_eq!(settle(Ok(7), &[0, 0], 0).unwrap(), 7);
    }

    #[test]
    fn solo_collectives_are_identities() {
        let mut v = [1.5f64, 2.0];
        Solo.reduce_f64(&mut v, Op::Sum);
        assert_eq!(v, [1.5, 2.0]);
        let (bytes, lens) = Solo.alltoall_flat(b"abc", &[3]).unwrap();
        assert_eq!(
            (bytes.as_slice(), lens.as_slice()),
            (&b"abc"[..], &[3u64][..])
        );
        assert_eq!(Solo.agree(Ok(3)).unwrap(), 3);
        assert!(Solo.node_floats(&[0.0; 4], true).is_none());
    }
}
