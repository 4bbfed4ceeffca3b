//! Where the ranks keep the item rows while they train, and how each rank sees the others'
//! work (see the module documentation of `train`): one rank owns them all; ranks on one node
//! map one copy in shared memory and end each step at a barrier; ranks on several nodes pass
//! groups round the ring. The choice is made here (`FUNKSVD_SHARED_ROWS=0` asks for messages);
//! `comm` only provides the memory.

use std::ops::Range;

use crate::collective::{Collective, SharedFloats};
use crate::mf::params::padded_width;
use crate::mf::Rows;

use super::data::ItemBlocks;

/// Where the ranks keep the item rows while they train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemRows {
    /// One rank: all rows are its own.
    Own,
    /// All ranks on one node: the rows live in memory every rank maps (an MPI shared-memory
    /// window), each step works on its group in place and ends at a barrier; nothing is copied.
    Shared,
    /// Ranks on several nodes (or no shared memory): the groups travel round the ring.
    Passed,
    /// The implicit objective on several ranks: every rank holds every row, the ranks sum
    /// their parts of each item's conjugate-gradient steps (`train::summed`), in memory the
    /// ranks of a node share or as messages.
    Summed { cg_steps: usize, shared: bool },
    /// The implicit objective on several ranks: every rank holds every row, each item's owner
    /// steps it alone from all its pairs and every user's row (`train::gathered`), the rows
    /// shared in memory the ranks of a node map or as messages.
    /// `rows`: the most rows one rank shares at once (its users or its items).
    Gathered { shared: bool, rows: usize },
}

impl ItemRows {
    /// As `model.json` names it (`training.item_rows`).
    pub fn name(self) -> &'static str {
        match self {
            ItemRows::Own => "own",
            ItemRows::Shared => "shared",
            ItemRows::Passed => "passed",
            ItemRows::Summed { shared: true, .. } => "summed-shared",
            ItemRows::Summed { shared: false, .. } => "summed-passed",
            ItemRows::Gathered { shared: true, .. } => "gathered-shared",
            ItemRows::Gathered { shared: false, .. } => "gathered-passed",
        }
    }

    /// Synchronisations between the ranks per epoch for the item rows: hand-overs of groups,
    /// or barriers of the shared rows (one after each step, one before the next epoch writes).
    pub fn syncs_per_epoch(self, ranks: usize) -> usize {
        match self {
            ItemRows::Own => 0,
            ItemRows::Shared => ranks + 1,
            ItemRows::Passed => exchanges_per_epoch(ranks),
            // Two Gram matrices, cg_steps + 1 sums, cg_steps passes of directions, the rows,
            // the loss.
            ItemRows::Summed { cg_steps, .. } => 2 * cg_steps + 5,
            // Two Gram matrices, the users' rows, the items' rows, the loss.
            ItemRows::Gathered { .. } => 5,
        }
    }

    /// Floats a rank sends per synchronisation at most.
    pub fn floats_per_sync(self, blocks: &ItemBlocks, factors: usize) -> usize {
        match self {
            ItemRows::Own
            | ItemRows::Shared
            | ItemRows::Summed { shared: true, .. }
            | ItemRows::Gathered { shared: true, .. } => 0,
            ItemRows::Passed => floats_per_exchange(blocks, factors),
            ItemRows::Summed { .. } => blocks.order.len() * padded_width(factors),
            ItemRows::Gathered { rows, .. } => rows * padded_width(factors),
        }
    }

    /// For the log: how the rows are kept and what that costs per epoch.
    pub fn describe(self, ranks: usize, blocks: &ItemBlocks, factors: usize) -> String {
        let all = blocks.order.len() * (factors + 1);
        let s = if ranks == 2 { "" } else { "s" };
        match self {
            ItemRows::Own => format!("one rank, no exchanges ({all} floats)"),
            ItemRows::Shared => format!(
                "in memory the {ranks} ranks of this node share, {} barriers per epoch, no rows copied ({all} floats)",
                self.syncs_per_epoch(ranks)
            ),
            ItemRows::Passed => format!(
                "passed round the ring, {} exchanges per epoch ({} block hand-over{s} between the steps, {} more to share the final rows), at most {} floats per rank each (all item rows: {all} floats)",
                self.syncs_per_epoch(ranks),
                ranks - 1,
                ranks - 1,
                self.floats_per_sync(blocks, factors)
            ),
            ItemRows::Summed { cg_steps, shared } => {
                let what = format!(
                    "on every rank; {} synchronisations per epoch ({} sums of every item's parts and {cg_steps} passes of its directions for {cg_steps} conjugate-gradient steps, two Gram matrices, the new rows, the loss)",
                    self.syncs_per_epoch(ranks),
                    cg_steps + 1,
                );
                let memory = "parts and directions in memory";
                format!("{what}; {}", self.how(shared, memory, ranks, blocks, factors))
            }
            ItemRows::Gathered { shared, .. } => {
                let what = format!(
                    "on every rank; each item stepped by its owner from all its pairs and every user's row; {} synchronisations per epoch (the users' rows, the items' rows, two Gram matrices, the loss)",
                    self.syncs_per_epoch(ranks),
                );
                let memory = "the rows in memory";
                format!("{what}; {}", self.how(shared, memory, ranks, blocks, factors))
            }
        }
    }

    /// How the implicit objective's rows travel, for `describe`: `memory` the node's ranks
    /// share, or messages of at most `floats_per_sync` floats.
    fn how(
        self,
        shared: bool,
        memory: &str,
        ranks: usize,
        blocks: &ItemBlocks,
        factors: usize,
    ) -> String {
        if shared {
            format!("{memory} the {ranks} ranks of this node share")
        } else {
            format!(
                "passed as messages, at most {} floats per rank each",
                self.floats_per_sync(blocks, factors)
            )
        }
    }
}

/// The item rows during training: this process's own, or memory the ranks of a node share.
pub(super) enum ItemStore {
    Own(Rows),
    Shared(Box<dyn SharedFloats>),
}

impl ItemStore {
    /// `rows` where training will keep them on `comm`'s ranks, and which way that is.
    pub(super) fn place(comm: &dyn Collective, rows: Rows) -> (ItemStore, ItemRows) {
        if comm.size() < 2 {
            return (ItemStore::Own(rows), ItemRows::Own);
        }
        match comm.node_floats(rows.as_slice(), sharing_wanted(comm.rank())) {
            Some(shared) => (ItemStore::Shared(shared), ItemRows::Shared),
            None => (ItemStore::Own(rows), ItemRows::Passed),
        }
    }

    /// Floats `range` (a group's rows), to update in this step.
    ///
    /// For shared rows: the DSGD schedule keeps every other rank on its own group until the
    /// step's `sync`, so no other process touches these floats meanwhile.
    pub(super) fn group_mut(&mut self, range: Range<usize>) -> &mut [f32] {
        match self {
            ItemStore::Own(rows) => &mut rows.as_mut_slice()[range],
            // SAFETY: see above: in a step, each rank updates only its own group.
            ItemStore::Shared(shared) => unsafe { shared.part_mut(range) },
        }
    }

    /// Every row, to read.
    ///
    /// # Safety
    /// For shared rows, every rank is past its last write of the epoch (its last step's
    /// `sync`), and none writes again before the slice is dropped (each epoch starts with a
    /// `sync` before its first write).
    pub(super) unsafe fn all(&self) -> &[f32] {
        match self {
            ItemStore::Own(rows) => rows.as_slice(),
            // SAFETY: the caller's contract, as `SharedFloats::all` asks.
            ItemStore::Shared(shared) => unsafe { shared.all() },
        }
    }

    /// This rank's step on `group` is done: let the other ranks see it. Shared rows: a barrier.
    /// Own rows: hand the group to the rank below and take the next from the rank above, or
    /// after the `last` step pass the final rows round the ring.
    pub(super) fn end_step(
        &mut self,
        comm: &dyn Collective,
        blocks: &ItemBlocks,
        width: usize,
        group: usize,
        last: bool,
    ) {
        match self {
            ItemStore::Shared(shared) => shared.sync(),
            ItemStore::Own(rows) if !last => {
                pass_on(comm, rows.as_mut_slice(), blocks, width, group)
            }
            ItemStore::Own(rows) => share_final_rows(comm, rows.as_mut_slice(), blocks, width),
        }
    }

    /// For shared rows, wait for every rank (see `SharedFloats::sync`); no-op otherwise.
    pub(super) fn sync(&self) {
        if let ItemStore::Shared(shared) = self {
            shared.sync();
        }
    }

    /// The rows in this process's own memory; the shared memory, if any, is freed (a
    /// collective call: every rank gets here at the same point).
    pub(super) fn into_own(self) -> Rows {
        match self {
            ItemStore::Own(rows) => rows,
            ItemStore::Shared(shared) => {
                // SAFETY: training is over: every rank is past its last write and its last
                // sync, and frees the memory only after this copy.
                Rows::copy_of(unsafe { shared.all() })
            }
        }
    }
}

/// Whether this rank agrees to keep the item rows in shared memory: not when
/// `FUNKSVD_SHARED_ROWS` says no, nor when the failure tests inject a node without room
/// (`FUNKSVD_FAULT=shared-rows@RANK`). Every rank must agree for the rows to be shared.
pub fn sharing_wanted(rank: usize) -> bool {
    let refused = matches!(
        std::env::var("FUNKSVD_SHARED_ROWS").as_deref(),
        Ok("0" | "off" | "false" | "no")
    );
    if let Err(e) = crate::fault::point("shared-rows", rank) {
        log::warn!("{e}: the ranks pass the item rows as messages instead");
        return false;
    }
    !refused
}

/// Floats one rank sends per exchange at most: its largest group, as stored (padded rows of
/// `padded_width(factors)` floats; never more than the item rows' `factors + 1` floats from
/// 2 ranks on).
pub fn floats_per_exchange(blocks: &ItemBlocks, factors: usize) -> usize {
    if blocks.groups() < 2 {
        return 0;
    }
    (0..blocks.groups())
        .map(|g| blocks.group_rows(g).len())
        .max()
        .unwrap_or(0)
        * padded_width(factors)
}

/// Exchanges of item rows per epoch on `ranks` ranks: R - 1 hand-overs between the steps, then
/// R - 1 more to share the final rows (see the module documentation of `train`).
pub fn exchanges_per_epoch(ranks: usize) -> usize {
    2 * ranks.saturating_sub(1)
}

/// Where group `g`'s rows are in the item rows, in floats (rows of `width` floats).
pub(super) fn group_floats(blocks: &ItemBlocks, g: usize, width: usize) -> Range<usize> {
    let rows = blocks.group_rows(g);
    rows.start * width..rows.end * width
}

/// This step is done on `group`: hand it to the rank below, take the next from the rank above.
/// Groups travel as stored, rows padded: a group's rows are one contiguous range of the rows,
/// so this sends from and receives into the rows themselves, with no packing.
fn pass_on(
    comm: &dyn Collective,
    items: &mut [f32],
    blocks: &ItemBlocks,
    width: usize,
    group: usize,
) {
    let (ranks, me) = (comm.size(), comm.rank());
    if ranks < 2 {
        return;
    }
    let (send, recv) = (
        group_floats(blocks, group, width),
        group_floats(blocks, (group + 1) % ranks, width),
    );
    // Two different groups: disjoint ranges of the rows.
    let (send, recv): (&[f32], &mut [f32]) = if send.start < recv.start {
        let (low, high) = items.split_at_mut(recv.start);
        (&low[send], &mut high[..recv.len()])
    } else {
        let (low, high) = items.split_at_mut(send.start);
        (&high[..send.len()], &mut low[recv])
    };
    comm.sendrecv_f32(send, (me + ranks - 1) % ranks, recv, (me + 1) % ranks);
    warm(recv);
}

/// The epoch's steps are done: rank r holds the final rows of group r - 1 (mod R) and passes it
/// on round the ring, then each group it receives, until every rank has every group (a ring
/// allgather into the rows themselves: no buffer, no copy, faster than MPI_Allgatherv into a
/// buffer; docs/DESIGN.md has the figures).
fn share_final_rows(comm: &dyn Collective, items: &mut [f32], blocks: &ItemBlocks, width: usize) {
    let (ranks, me) = (comm.size(), comm.rank());
    for moved in 0..ranks.saturating_sub(1) {
        pass_on(comm, items, blocks, width, (me + ranks - 1 + moved) % ranks);
    }
}

/// Read `rows` front to back, a float per cache line, so they are in this core's cache before
/// the random reads of the next step or of the hold-out scoring: MPI's copy leaves them in
/// another core's cache or in memory (measured: docs/DESIGN.md, "Passing the item rows").
fn warm(rows: &[f32]) {
    let mut sum = 0.0f32;
    for line in rows.chunks(16) {
        sum += line[0];
    }
    std::hint::black_box(sum);
}
