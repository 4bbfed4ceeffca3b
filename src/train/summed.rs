//! Where the implicit trainer's ranks add up their parts of every item's conjugate-gradient
//! steps (`train::implicit`), and how each item's direction and new row reach every rank.
//!
//! - One rank: its parts are the sums, its directions everyone's; nothing moves.
//! - Ranks on one node: every rank writes its parts into its own slice of memory they all map
//!   (an MPI shared-memory window), and after a barrier the owner of each item adds the ranks'
//!   slices up; the owners write directions and rows into a second window, read in place by
//!   all after the next barrier. A barrier per step, no floats copied between the processes.
//! - Ranks on several nodes (or no room in shared memory, or `FUNKSVD_SHARED_ROWS=0`): the
//!   same sums and copies as messages (`ordered::reduce_scatter`, `ordered::allgather`).
//!
//! Both ways add the same floats in the same order (`ordered::add_in_rank_order`), so the
//! model does not depend on which one a job took.

use std::ops::Range;
use std::time::Instant;

use crate::collective::{Collective, SharedFloats};
use crate::error::Result;

use super::item_rows::{sharing_wanted, ItemRows};
use super::ordered::{add_in_rank_order, allgather, reduce_scatter};

/// The item side's buffers shared between the ranks, and the seconds spent synchronising them.
pub(super) struct ItemSums {
    way: Way,
    /// Every rank's range of the item floats.
    ranges: Vec<Range<usize>>,
    rank: usize,
    /// Seconds spent in barriers and messages since the last `take_synced`.
    synced: f64,
}

enum Way {
    Own {
        parts: Vec<f32>,
    },
    Shared {
        /// Every rank's parts, one slice of all the item floats per rank in rank order.
        parts: Box<dyn SharedFloats>,
        /// Every item's direction, or after the last step its new row.
        directions: Box<dyn SharedFloats>,
        summed: Vec<f32>,
    },
    Passed {
        parts: Vec<f32>,
        directions: Vec<f32>,
        summed: Vec<f32>,
    },
}

impl ItemSums {
    /// Room for `floats` item floats cut into the ranks' `ranges`, kept the way `comm`'s ranks
    /// allow (a collective call).
    pub(super) fn place(comm: &dyn Collective, floats: usize, ranges: Vec<Range<usize>>) -> Self {
        let rank = comm.rank();
        let mine = ranges[rank].len();
        let way = if comm.size() == 1 {
            Way::Own {
                parts: vec![0.0; floats],
            }
        } else {
            // Zeros from the allocator: pages no rank touches (only the leader reads them).
            let wanted = sharing_wanted(rank);
            let parts = comm.node_floats(&vec![0.0; floats * comm.size()], wanted);
            let directions = comm.node_floats(&vec![0.0; floats], parts.is_some());
            match (parts, directions) {
                (Some(parts), Some(directions)) => Way::Shared {
                    parts,
                    directions,
                    summed: vec![0.0; mine],
                },
                _ => Way::Passed {
                    parts: vec![0.0; floats],
                    directions: vec![0.0; floats],
                    summed: vec![0.0; mine],
                },
            }
        };
        ItemSums {
            way,
            ranges,
            rank,
            synced: 0.0,
        }
    }

    /// How the rows were kept, for the log and `model.json`.
    pub(super) fn item_rows(&self, cg_steps: usize) -> ItemRows {
        match self.way {
            Way::Own { .. } => ItemRows::Own,
            Way::Shared { .. } => ItemRows::Summed {
                cg_steps,
                shared: true,
            },
            Way::Passed { .. } => ItemRows::Summed {
                cg_steps,
                shared: false,
            },
        }
    }

    /// Seconds spent synchronising since the last call.
    pub(super) fn take_synced(&mut self) -> f64 {
        std::mem::take(&mut self.synced)
    }

    fn whole(&self) -> Range<usize> {
        0..self.ranges.last().map_or(0, |r| r.end)
    }

    /// This rank's parts of every item, to fill before `sum`.
    pub(super) fn parts_mut(&mut self) -> &mut [f32] {
        let (rank, whole) = (self.rank, self.whole());
        match &mut self.way {
            Way::Own { parts } | Way::Passed { parts, .. } => parts,
            // SAFETY: rank r writes only slice r. The other ranks read it in `sum`, after the
            // barrier that follows these writes, and they are done before they pass the next
            // barrier (in `share` or `share_rows`), which this rank passes before it writes here
            // again.
            Way::Shared { parts, .. } => unsafe {
                parts.part_mut(rank * whole.end..(rank + 1) * whole.end)
            },
        }
    }

    /// This rank's parts to fill, and every item's direction as last shared (`mine`, this
    /// rank's, are all of them on one rank).
    pub(super) fn parts_and_directions<'s>(
        &'s mut self,
        mine: &'s [f32],
    ) -> (&'s mut [f32], &'s [f32]) {
        let (rank, whole) = (self.rank, self.whole());
        match &mut self.way {
            Way::Own { parts } => (parts, mine),
            Way::Passed {
                parts, directions, ..
            } => (parts, directions),
            // SAFETY: as `parts_mut`; and the directions are read only between the barrier
            // that ends `share` and the one that starts `sum`, while nobody writes them.
            Way::Shared {
                parts, directions, ..
            } => unsafe {
                (
                    parts.part_mut(rank * whole.end..(rank + 1) * whole.end),
                    directions.all(),
                )
            },
        }
    }

    /// Every rank's parts of this rank's items, added up in rank order.
    pub(super) fn sum(&mut self, comm: &dyn Collective) -> Result<&[f32]> {
        let started = Instant::now();
        let (mine, whole) = (self.ranges[self.rank].clone(), self.whole());
        match &mut self.way {
            Way::Own { .. } => {}
            Way::Passed { parts, summed, .. } => reduce_scatter(comm, parts, &self.ranges, summed)?,
            Way::Shared { parts, summed, .. } => {
                parts.sync();
                // SAFETY: every rank wrote its slice before the barrier just passed and writes
                // it again only after the next one (see `parts_mut`).
                let all = unsafe { parts.all() };
                let slices =
                    (0..comm.size()).map(|r| all[r * whole.end..][mine.clone()].iter().copied());
                add_in_rank_order(summed, slices);
            }
        }
        self.synced += started.elapsed().as_secs_f64();
        match &self.way {
            Way::Own { parts } => Ok(parts),
            Way::Shared { summed, .. } | Way::Passed { summed, .. } => Ok(summed),
        }
    }

    /// This rank's items' directions `mine` to every rank (read through
    /// `parts_and_directions`).
    pub(super) fn share(&mut self, comm: &dyn Collective, mine: &[f32]) -> Result<()> {
        let started = Instant::now();
        let range = self.ranges[self.rank].clone();
        match &mut self.way {
            Way::Own { .. } => return Ok(()),
            Way::Passed { directions, .. } => {
                directions[range].copy_from_slice(mine);
                allgather(comm, directions, &self.ranges)?;
            }
            Way::Shared { directions, .. } => {
                // SAFETY: see `write_own`.
                unsafe { write_own(directions.as_mut(), range, mine) };
                directions.sync();
            }
        }
        self.synced += started.elapsed().as_secs_f64();
        Ok(())
    }

    /// Every rank's items' new rows into `rows` (this rank's range of it already holds its
    /// own).
    pub(super) fn share_rows(&mut self, comm: &dyn Collective, rows: &mut [f32]) -> Result<()> {
        let started = Instant::now();
        let range = self.ranges[self.rank].clone();
        match &mut self.way {
            Way::Own { .. } => return Ok(()),
            Way::Passed { .. } => allgather(comm, rows, &self.ranges)?,
            Way::Shared { directions, .. } => {
                // SAFETY: see `write_own`.
                unsafe { write_own(directions.as_mut(), range.clone(), &rows[range]) };
                directions.sync();
                // SAFETY: every owner wrote before the barrier just passed and writes again
                // only after the next `sum`'s barrier, which this rank reaches after this copy.
                rows.copy_from_slice(unsafe { directions.all() });
            }
        }
        self.synced += started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// `mine` into this rank's `range` of the shared directions.
///
/// # Safety
/// Only this rank writes `range`, and every rank read the previous directions before the
/// barrier that started the `sum` this write follows (they read them only between the barrier
/// that ends a share and the one that starts the next sum).
unsafe fn write_own(directions: &mut dyn SharedFloats, range: Range<usize>, mine: &[f32]) {
    // SAFETY: the caller's contract, as `SharedFloats::part_mut` asks.
    unsafe { directions.part_mut(range) }.copy_from_slice(mine);
}
