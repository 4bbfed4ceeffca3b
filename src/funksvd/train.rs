//! The distributed epoch loop: stratified SGD over item blocks (DSGD, Gemulla et al. 2011; the
//! block scheduling LibMF uses across threads, here across ranks).
//!
//! Every rank owns its users' rows outright. The item rows are cut into groups, one per rank,
//! of about equal rating counts (`data::ItemBlocks`). An epoch has R steps; in step t rank r
//! runs SGD over its users' ratings of group (r + t) mod R only. No two ranks ever update the
//! same row at the same time, so an epoch on R ranks is exactly an epoch of sequential SGD in
//! another order, and nothing needs averaging. How the ranks then see each other's work
//! (`ItemRows`):
//!
//! - All ranks on one node (`mpirun` on one machine, one Slurm node): the item rows live in
//!   memory every rank maps (an MPI shared-memory window). Each step updates its group in place
//!   and ends at a barrier; after the last step every rank already sees every final row. No
//!   rows are copied (2 ranks, 5M events: 9.96-9.99 ms per epoch against 10.69-10.96 ms with
//!   the hand-overs below; measured).
//! - Ranks on several nodes: after step t rank r passes its group to rank r - 1 and gets group
//!   (r + t + 1) mod R from rank r + 1. After the last step the groups go on round the ring
//!   R - 1 more times (an allgather, straight into the rows: rank r starts with the final rows
//!   of group r - 1 and passes on what it got).
//!
//! Either way every rank ends the epoch with the same item rows (for the hold-out score,
//! checkpoints and the model), updated in the same order: the same model, bit for bit.
//!
//! ```text
//! step 0:  rank 0: group 0   rank 1: group 1   rank 2: group 2
//! step 1:  rank 0: group 1   rank 1: group 2   rank 2: group 0     (passed: each group one rank down)
//! step 2:  rank 0: group 2   rank 1: group 0   rank 2: group 1     passed: 2 more moves
//! ```
//!
//! A group is itself `ceil(MIN_PASSES / R)` blocks, so a user's ratings are always split over
//! at least `MIN_PASSES` visits per epoch, whatever the rank count (a run of users goes through
//! the group's blocks one after the other): the model does not depend on the rank count, and
//! splitting a user's ratings this way trains better than visiting them all at once (MovieLens
//! hold-out RMSE 0.878 with one visit, 0.871 with two, 0.869 with four; measured).

use std::time::Instant;

use crate::error::{Error, Result};
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::rng::Rng;

use super::data::{ItemBlocks, RankRatings, Rating, UNKNOWN};
use super::kernel::{predict, prefetch_row, Portable, Step, Sums};
use super::params::padded_width;
pub use super::params::{Params, Rows};

/// How many steps ahead (a pair of ratings, or one rating alone) the SGD loop prefetches rows.
const PREFETCH_AHEAD: usize = 4;

/// Visits of each user per epoch, at least (see the module documentation).
pub const MIN_PASSES: usize = 4;

/// Users are visited in runs of this many consecutive users, the runs in a fresh random order
/// each epoch: within a run the hardware prefetchers stream user rows and rating lists, which
/// keeps short visits cheap (at 8 visits per user: 43M vs 20M updates/s, same RMSE; measured),
/// and a run goes through all of a step's blocks before the next run starts.
pub const USER_RUN: usize = 64;

/// Item blocks per rank for `ranks` ranks.
pub fn blocks_per_rank(ranks: usize) -> usize {
    MIN_PASSES.div_ceil(ranks.max(1))
}

/// Training hyperparameters, with the original job's defaults.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hyper {
    /// Latent factors per user and item [20].
    pub factors: usize,
    /// Passes over the training ratings [10].
    pub epochs: usize,
    /// SGD learning rate [0.01].
    pub lr: f32,
    /// L2 regularisation [0.02].
    pub reg: f32,
    /// Seed of every random choice (initial factors, hold-out split, order) [42].
    pub seed: u64,
    /// Global mean and biases (biased FunkSVD, as Surprise's SVD) [true].
    pub biased: bool,
    /// Standard deviation of the initial factors [0.1, as Surprise].
    pub init_std: f32,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            factors: 20,
            epochs: 10,
            lr: 0.01,
            reg: 0.02,
            seed: 42,
            biased: true,
            init_std: 0.1,
        }
    }
}

/// The collective operations training needs; `Comm` in production, `Solo` in unit tests.
pub trait Collective {
    fn ranks(&self) -> usize;
    fn rank(&self) -> usize;
    /// Send `send` to rank `dest` while receiving `recv` from rank `source`.
    fn sendrecv_f32(&self, send: &[f32], dest: usize, recv: &mut [f32], source: usize);
    fn sum_f64(&self, values: &mut [f64]);
    /// Every rank learns whether any rank failed (see `Comm::agree`).
    fn agree(&self, local: Result<()>) -> Result<()>;
    /// A copy of `rows` in memory every rank maps, if all ranks run on one node (see
    /// `Comm::node_floats`); `None` on every rank alike otherwise.
    fn share_rows(&self, rows: &Rows) -> Option<Rows>;
}

impl Collective for crate::comm::Comm {
    fn ranks(&self) -> usize {
        self.size()
    }
    fn rank(&self) -> usize {
        crate::comm::Comm::rank(self)
    }
    fn sendrecv_f32(&self, send: &[f32], dest: usize, recv: &mut [f32], source: usize) {
        crate::comm::Comm::sendrecv_f32(self, send, dest, recv, source)
    }
    fn sum_f64(&self, values: &mut [f64]) {
        self.allreduce_sum_f64(values)
    }
    fn agree(&self, local: Result<()>) -> Result<()> {
        crate::comm::Comm::agree(self, local)
    }
    fn share_rows(&self, rows: &Rows) -> Option<Rows> {
        let shared = self.node_floats(rows.as_slice())?;
        Some(Rows::mapped(Box::new(shared), rows.as_slice().len()))
    }
}

/// A single process: the collectives are identities.
pub struct Solo;

impl Collective for Solo {
    fn ranks(&self) -> usize {
        1
    }
    fn rank(&self) -> usize {
        0
    }
    fn sendrecv_f32(&self, send: &[f32], _dest: usize, recv: &mut [f32], _source: usize) {
        recv.copy_from_slice(send)
    }
    fn sum_f64(&self, _values: &mut [f64]) {}
    fn agree(&self, local: Result<()>) -> Result<()> {
        local
    }
    fn share_rows(&self, _rows: &Rows) -> Option<Rows> {
        None
    }
}

/// Where training stands after an epoch: what a checkpoint saves and `--resume` restores.
#[derive(Debug)]
pub struct TrainState {
    /// Epochs done.
    pub epoch: usize,
    pub params: Params,
    pub history: Vec<EpochStats>,
}

/// One epoch's numbers, as logged and saved in `model.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// RMSE of the predictions made during the epoch's SGD pass (before each update).
    pub train_rmse: f64,
    /// RMSE on the hold-out pairs after the epoch (None without a hold-out).
    pub holdout_rmse: Option<f64>,
    pub seconds: f64,
    /// Of `seconds`, the time this rank spent passing item blocks to the others (the messages,
    /// the read of the received rows, and waiting for slower ranks).
    #[serde(default)]
    pub sync_seconds: f64,
    /// Ratings processed per second by the whole job.
    pub ratings_per_second: f64,
}

/// What the model needs besides the rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Globals {
    pub global_mean: f32,
    /// Predictions are clipped to the training ratings' range.
    pub rating_range: (f32, f32),
}

impl Globals {
    /// What the rows' scores are added to: the global mean in the biased model, else 0.
    pub fn offset(&self, biased: bool) -> f32 {
        if biased {
            self.global_mean
        } else {
            0.0
        }
    }
}

/// Train; `after_epoch` sees each epoch's state (the caller logs, checkpoints).
/// Every rank must call this with the same `hyper`, `item_ids` and `blocks` (one group per
/// rank; `item_ids` in row order); `data` is split by the same blocks.
#[allow(clippy::too_many_arguments)]
pub fn train(
    comm: &dyn Collective,
    data: &RankRatings,
    item_ids: &[Id],
    blocks: &ItemBlocks,
    hyper: &Hyper,
    globals: Globals,
    start: Option<TrainState>,
    mut after_epoch: impl FnMut(&TrainState) -> Result<()>,
) -> Result<(TrainState, ItemRows)> {
    let (ranks, me) = (comm.ranks(), comm.rank());
    assert_eq!(blocks.groups(), ranks, "one group of item blocks per rank");
    assert_eq!(
        data.n_blocks(),
        blocks.len(),
        "ratings split by the item blocks"
    );
    let TrainState {
        epoch: done,
        mut params,
        mut history,
    } = start.unwrap_or_else(|| TrainState {
        epoch: 0,
        params: Params::init(&data.user_ids, item_ids, hyper),
        history: Vec::with_capacity(hyper.epochs),
    });
    let step = Step {
        lr: hyper.lr,
        reg: hyper.reg,
        biased: hyper.biased,
    };
    let mu = globals.offset(hyper.biased);
    let total_ratings = {
        let mut n = [data.n_ratings() as f64];
        comm.sum_f64(&mut n);
        n[0]
    };
    assert_eq!(
        data.run, USER_RUN,
        "visits listed by runs of USER_RUN users"
    );
    assert_eq!(
        data.per_group, blocks.per_rank,
        "ratings laid out by the same groups of blocks"
    );
    // On one node the item rows live in memory every rank maps: a step ends at a barrier, and
    // no rows are copied (see the module documentation).
    let item_rows = if ranks < 2 {
        ItemRows::Own
    } else if let Some(rows) = comm.share_rows(&params.items) {
        params.items = rows;
        ItemRows::Shared
    } else {
        ItemRows::Passed
    };
    if me == 0 {
        log::info!(
            "item rows: {}",
            item_rows.describe(ranks, blocks, hyper.factors)
        );
    }
    let mut order: Vec<u32> = Vec::with_capacity(data.n_runs());
    let profile = log::log_enabled!(log::Level::Debug);
    for epoch in done + 1..=hyper.epochs {
        let started = Instant::now();
        // A rank failing mid-training must not leave the others in the next exchange.
        let fault = crate::fault::point("epoch", me)
            .and_then(|_| crate::fault::point(&format!("epoch-{epoch}"), me));
        comm.agree(fault)?;
        // Every rank is done reading the last epoch's rows (hold-out, checkpoint).
        params.items.sync();
        // A fresh order of the runs of users each epoch, from a stream of this rank and epoch
        // only, so a run resumed at any epoch visits users exactly as an uninterrupted one.
        let mut rng = Rng::new(hyper.seed, ((me as u64) << 32) | epoch as u64);
        run_order(data.n_runs(), &mut rng, &mut order);
        let mut sse = 0.0f64;
        let mut sync_seconds = 0.0;
        // This rank's time per step and per exchange, for the debug log: where a rank waits.
        let mut timeline = Vec::with_capacity(if profile { 2 * ranks + 1 } else { 0 });
        for t in 0..ranks {
            let group = (me + t) % ranks;
            let stepped = Instant::now();
            // Run by run, each run through every block of the group: a user's visits follow
            // one another while its row is still in L1 (same quality, ~10% faster than whole
            // passes per block, measured).
            for (n, &run) in order.iter().enumerate() {
                let (ratings, pairs) = data.stretch(run as usize, group);
                let following = order
                    .get(n + 1)
                    .map_or(&[][..], |&r| data.stretch(r as usize, group).0);
                sse += sgd_pass(&mut params, ratings, pairs, following, step, mu);
            }
            let waited = Instant::now();
            if profile {
                timeline.push(waited.duration_since(stepped).as_secs_f64());
            }
            if params.items.is_mapped() {
                params.items.sync();
            } else if t + 1 < ranks {
                pass_on(comm, &mut params, blocks, group);
            } else {
                share_final_rows(comm, &mut params, blocks);
            }
            let exchanged = waited.elapsed().as_secs_f64();
            sync_seconds += exchanged;
            if profile {
                timeline.push(exchanged);
            }
        }
        let scored = Instant::now();
        let hold = holdout_errors(data, &params, hyper, globals);
        let scoring = scored.elapsed().as_secs_f64();
        if profile {
            let ms = |s: &f64| format!("{:.2}", s * 1e3);
            let steps: Vec<String> = timeline.iter().step_by(2).map(ms).collect();
            let exchanges: Vec<String> = timeline.iter().skip(1).step_by(2).map(ms).collect();
            log::debug!(
                "rank {me} epoch {epoch}: steps {} ms, exchanges {} ms (waiting included), hold-out {:.2} ms",
                steps.join(" "),
                exchanges.join(" "),
                scoring * 1e3
            );
        }
        let mut sums = [sse, hold.squared, hold.n];
        comm.sum_f64(&mut sums);
        let seconds = started.elapsed().as_secs_f64();
        let train_rmse = (sums[0] / total_ratings.max(1.0)).sqrt();
        if !train_rmse.is_finite()
            || params
                .items
                .as_slice()
                .iter()
                .take(params.width * 64)
                .any(|v| !v.is_finite())
        {
            return Err(Error::usage(format!(
                "training diverged in epoch {epoch} (train RMSE is {train_rmse}): the learning rate is too high for this data; lower --lr (now {})",
                hyper.lr
            )));
        }
        let stats = EpochStats {
            epoch,
            train_rmse,
            holdout_rmse: (sums[2] > 0.0).then(|| (sums[1] / sums[2]).sqrt()),
            seconds,
            sync_seconds,
            ratings_per_second: total_ratings / seconds.max(1e-9),
        };
        history.push(stats);
        let state = TrainState {
            epoch,
            params,
            history,
        };
        after_epoch(&state)?;
        TrainState {
            params,
            history,
            ..
        } = state;
    }
    // Back in this process's memory (freeing the shared window is collective: every rank gets
    // here, or leaves above at the same epoch with the same error).
    if params.items.is_mapped() {
        params.items = params.items.to_own();
    }
    let state = TrainState {
        epoch: hyper.epochs.max(done),
        params,
        history,
    };
    Ok((state, item_rows))
}

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
}

impl ItemRows {
    /// As `model.json` names it (`training.item_rows`).
    pub fn name(self) -> &'static str {
        match self {
            ItemRows::Own => "own",
            ItemRows::Shared => "shared",
            ItemRows::Passed => "passed",
        }
    }

    /// Synchronisations between the ranks per epoch for the item rows: hand-overs of groups,
    /// or barriers of the shared rows (one after each step, one before the next epoch writes).
    pub fn syncs_per_epoch(self, ranks: usize) -> usize {
        match self {
            ItemRows::Own => 0,
            ItemRows::Shared => ranks + 1,
            ItemRows::Passed => exchanges_per_epoch(ranks),
        }
    }

    /// Floats a rank sends per synchronisation at most.
    pub fn floats_per_sync(self, blocks: &ItemBlocks, factors: usize) -> usize {
        match self {
            ItemRows::Own | ItemRows::Shared => 0,
            ItemRows::Passed => floats_per_exchange(blocks, factors),
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
        }
    }
}

/// This epoch's order of the runs of users (see `RankRatings::split_blocks`).
pub fn run_order(n_runs: usize, rng: &mut Rng, order: &mut Vec<u32>) {
    order.clear();
    order.extend(0..n_runs as u32);
    rng.shuffle(order);
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
/// R - 1 more to share the final rows (see the module documentation).
pub fn exchanges_per_epoch(ranks: usize) -> usize {
    2 * ranks.saturating_sub(1)
}

/// This step is done on `group`: hand it to the rank below, take the next from the rank above.
/// Groups travel as stored, rows padded: a group's rows are one contiguous range of
/// `params.items`, so this sends from and receives into the rows themselves, with no packing.
fn pass_on(comm: &dyn Collective, params: &mut Params, blocks: &ItemBlocks, group: usize) {
    let (ranks, me) = (comm.ranks(), comm.rank());
    if ranks < 2 {
        return;
    }
    let rows = |g| group_floats(blocks, g, params.width);
    let (send, recv) = (rows(group), rows((group + 1) % ranks));
    let items = params.items.as_mut_slice();
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

/// Read `rows` front to back, a float per cache line, so they are in this core's cache before
/// the random reads of the next step or of the hold-out scoring: MPI's copy leaves them in
/// another core's cache or in memory (2 ranks: hold-out scoring 1.46 -> 1.22 ms, hand-over
/// with this read 0.31-0.41 -> 0.24 ms; medians over 6 runs x 23 epochs).
fn warm(rows: &[f32]) {
    let mut sum = 0.0f32;
    for line in rows.chunks(16) {
        sum += line[0];
    }
    std::hint::black_box(sum);
}

/// The epoch's steps are done: rank r holds the final rows of group r - 1 (mod R) and passes it
/// on round the ring, then each group it receives, until every rank has every group (a ring
/// allgather into the rows themselves: no buffer, no copy; on 2 ranks 0.15 ms instead of the
/// 0.35 ms of MPI_Allgatherv into a buffer, measured).
fn share_final_rows(comm: &dyn Collective, params: &mut Params, blocks: &ItemBlocks) {
    let (ranks, me) = (comm.ranks(), comm.rank());
    for moved in 0..ranks.saturating_sub(1) {
        pass_on(comm, params, blocks, (me + ranks - 1 + moved) % ranks);
    }
}

/// Where group `g`'s rows are in the item rows, in floats (rows of `width` floats).
fn group_floats(blocks: &ItemBlocks, g: usize, width: usize) -> std::ops::Range<usize> {
    let rows = blocks.group_rows(g);
    rows.start * width..rows.end * width
}

/// Call `$generic::<W>$args` with the row width W as a constant, so the compiler unrolls the
/// kernel completely: widths up to 128 floats (127 factors) get their own copy, through the
/// AVX2 copy `$avx2::<W>` where the CPU has it; wider rows run `$generic::<0>` (a loop).
macro_rules! by_width {
    ($width:expr, $generic:ident, $avx2:ident, $args:tt) => {
        by_width!(@ $width, $generic, $avx2, $args,
            8 16 24 32 40 48 56 64 72 80 88 96 104 112 120 128)
    };
    (@ $width:expr, $generic:ident, $avx2:ident, $args:tt, $($w:literal)*) => {
        match $width {
            $($w => {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2 (checked just above).
                    return unsafe { $avx2::<$w> $args };
                }
                $generic::<$w, Portable> $args
            })*
            _ => $generic::<0, Portable> $args,
        }
    };
}

/// One SGD pass over `ratings`, a stretch of a schedule (see `data::schedule`): the first
/// `pairs` pairs alternate between two independent chains of updates, the rest go one by one.
/// Returns the sum of squared errors before each update. `following` are the ratings of the
/// next pass, if known: the pass starts fetching their rows.
///
/// The item rows may not fit in L2 and the users come in runs of random order, so the loop
/// asks for the rows of the ratings a few places ahead.
pub fn sgd_pass(
    params: &mut Params,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    by_width!(
        params.width,
        pass_rows,
        pass_avx2,
        (params, ratings, pairs, following, step, mu)
    )
}

/// The same code with AVX2's 8-lane registers; the arithmetic is identical (no FMA), so the
/// results are bit for bit those of `pass_rows`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pass_avx2<const W: usize>(
    params: &mut Params,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    pass_rows::<W, super::kernel::Avx>(params, ratings, pairs, following, step, mu)
}

/// `sgd_pass` for rows of `W` floats (`W == 0`: `params.width`, known only at run time).
#[inline(always)]
fn pass_rows<const W: usize, S: Sums>(
    params: &mut Params,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    let width = if W == 0 { params.width } else { W };
    let user_rows = params.users.as_mut_slice();
    let item_rows = params.items.as_mut_slice();
    let pairs = pairs.min(ratings.len() / 2);
    let (both, alone) = ratings.split_at(2 * pairs);
    let mut sse = [0.0f64; 2];
    for (k, pair) in both.chunks_exact(2).enumerate() {
        let ahead = 2 * (k + PREFETCH_AHEAD);
        fetch(ratings, following, ahead, user_rows, item_rows, width);
        fetch(ratings, following, ahead + 1, user_rows, item_rows, width);
        sse[0] += update::<S>(user_rows, item_rows, width, pair[0], step, mu);
        sse[1] += update::<S>(user_rows, item_rows, width, pair[1], step, mu);
    }
    for (k, &r) in alone.iter().enumerate() {
        let ahead = both.len() + k + PREFETCH_AHEAD;
        fetch(ratings, following, ahead, user_rows, item_rows, width);
        sse[0] += update::<S>(user_rows, item_rows, width, r, step, mu);
    }
    sse[0] + sse[1]
}

/// Prefetch the rows of rating `k` of `ratings` then `following` (part of `pass_rows`; a
/// function, not a closure: closures are not inlined into `target_feature` functions).
#[inline(always)]
fn fetch(
    ratings: &[Rating],
    following: &[Rating],
    k: usize,
    user_rows: &[f32],
    item_rows: &[f32],
    width: usize,
) {
    let ahead = ratings.get(k).or_else(|| following.get(k - ratings.len()));
    if let Some(r) = ahead {
        prefetch_row(item_rows, r.item as usize * width, width);
        prefetch_row(user_rows, r.user as usize * width, width);
    }
}

/// One SGD step on rating `r`; its squared error (part of `pass_rows`).
#[inline(always)]
fn update<S: Sums>(
    user_rows: &mut [f32],
    item_rows: &mut [f32],
    width: usize,
    r: Rating,
    step: Step,
    mu: f32,
) -> f64 {
    let err = S::step(
        &mut user_rows[r.user as usize * width..][..width],
        &mut item_rows[r.item as usize * width..][..width],
        r.value - mu,
        step,
    );
    (err as f64) * (err as f64)
}

/// Errors of the current model on this rank's hold-out pairs (sorted by user, so user rows
/// stream; item rows are fetched ahead).
pub fn holdout_errors(
    data: &RankRatings,
    params: &Params,
    hyper: &Hyper,
    globals: Globals,
) -> ErrorSums {
    by_width!(
        params.width,
        holdout_rows,
        holdout_avx2,
        (data, params, hyper, globals)
    )
}

/// `holdout_errors` with AVX2 registers (the same arithmetic, see `pass_avx2`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn holdout_avx2<const W: usize>(
    data: &RankRatings,
    params: &Params,
    hyper: &Hyper,
    globals: Globals,
) -> ErrorSums {
    holdout_rows::<W, super::kernel::Avx>(data, params, hyper, globals)
}

/// `holdout_errors` for rows of `W` floats (`W == 0`: known only at run time).
#[inline(always)]
fn holdout_rows<const W: usize, S: Sums>(
    data: &RankRatings,
    params: &Params,
    hyper: &Hyper,
    globals: Globals,
) -> ErrorSums {
    let width = if W == 0 { params.width } else { W };
    let (user_rows, item_rows) = (params.users.as_slice(), params.items.as_slice());
    let mu = globals.offset(hyper.biased);
    let (lo, hi) = globals.rating_range;
    let mut sums = ErrorSums::default();
    for (n, h) in data.holdout.iter().enumerate() {
        if let Some(ahead) = data.holdout.get(n + PREFETCH_AHEAD) {
            if ahead.item != UNKNOWN {
                prefetch_row(item_rows, ahead.item as usize * width, width);
            }
        }
        let predicted = if h.user != UNKNOWN && h.item != UNKNOWN {
            let (u, i) = (h.user as usize * width, h.item as usize * width);
            (mu + S::score(&user_rows[u..u + width], &item_rows[i..i + width])).clamp(lo, hi)
        } else {
            let user = (h.user != UNKNOWN).then(|| params.user(h.user as usize));
            let item = (h.item != UNKNOWN).then(|| params.item(h.item as usize));
            predict(user, item, globals.global_mean, hyper.biased, (lo, hi))
        };
        sums.add(h.value, predicted);
    }
    sums
}

/// Errors of the final model on this rank's training ratings, with the same prediction rule as
/// `evaluate`.
pub fn train_errors(
    data: &RankRatings,
    params: &Params,
    hyper: &Hyper,
    globals: Globals,
) -> ErrorSums {
    let mut sums = ErrorSums::default();
    for u in 0..data.n_users() {
        let (items, values) = data.ratings_of(u);
        for (&i, &r) in items.iter().zip(values) {
            let (user, item) = (params.user(u), params.item(i as usize));
            sums.add(
                r,
                predict(
                    Some(user),
                    Some(item),
                    globals.global_mean,
                    hyper.biased,
                    globals.rating_range,
                ),
            );
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::funksvd::data::{schedule, HeldOut};

    /// Planted low-rank ratings: SGD must fit them far better than the global mean does.
    fn planted(users: usize, items: usize, k: usize) -> (RankRatings, Vec<Id>) {
        let mut rng = Rng::new(1, 2);
        let uf: Vec<Vec<f64>> = (0..users)
            .map(|_| (0..k).map(|_| rng.normal()).collect())
            .collect();
        let vf: Vec<Vec<f64>> = (0..items)
            .map(|_| (0..k).map(|_| rng.normal()).collect())
            .collect();
        let mut data = RankRatings {
            user_offsets: vec![0],
            ..Default::default()
        };
        for (u, pu) in uf.iter().enumerate() {
            data.user_ids.push(Id::Int(u as i64));
            for (i, qi) in vf.iter().enumerate() {
                let r = 3.0 + pu.iter().zip(qi).map(|(a, b)| a * b).sum::<f64>() * 0.5;
                let r = r.clamp(1.0, 5.0) as f32;
                if rng.next_f64() < 0.2 {
                    data.holdout.push(HeldOut {
                        user: u as u32,
                        item: i as u32,
                        value: r,
                    });
                } else {
                    data.items.push(i as u32);
                    data.values.push(r);
                }
            }
            data.user_offsets.push(data.items.len());
        }
        data.split_blocks(&[0, items], USER_RUN, 1);
        (data, (0..items).map(|i| Id::Int(i as i64)).collect())
    }

    /// `train` on one process, items in one block, from `start` (None: from scratch).
    fn solo(
        data: &RankRatings,
        items: &[Id],
        hyper: &Hyper,
        globals: Globals,
        start: Option<TrainState>,
    ) -> Result<TrainState> {
        let blocks = ItemBlocks::plan(&vec![0; items.len()], 1, 1);
        train(&Solo, data, items, &blocks, hyper, globals, start, |_| {
            Ok(())
        })
        .map(|(state, _)| state)
    }

    #[test]
    fn sgd_learns_planted_structure_and_is_deterministic() {
        let (data, items) = planted(200, 100, 3);
        let mean = data.values.iter().map(|&v| v as f64).sum::<f64>() / data.values.len() as f64;
        let globals = Globals {
            global_mean: mean as f32,
            rating_range: (1.0, 5.0),
        };
        let hyper = Hyper {
            epochs: 30,
            lr: 0.02,
            factors: 8,
            ..Hyper::default()
        };
        let TrainState {
            params, history, ..
        } = solo(&data, &items, &hyper, globals, None).unwrap();
        let first = &history[0];
        let last = history.last().unwrap();
        assert!(
            last.train_rmse < first.train_rmse * 0.6,
            "{first:?} -> {last:?}"
        );
        assert!(last.holdout_rmse.unwrap() < first.holdout_rmse.unwrap() * 0.8);
        let again = solo(&data, &items, &hyper, globals, None).unwrap();
        assert_eq!(params.items, again.params.items);
        assert_eq!(params.users, again.params.users);
        // Stopped after 12 epochs and resumed: the same model, bit for bit.
        let first = Hyper {
            epochs: 12,
            ..hyper.clone()
        };
        let part = solo(&data, &items, &first, globals, None).unwrap();
        let resumed = solo(&data, &items, &hyper, globals, Some(part)).unwrap();
        assert_eq!(resumed.epoch, 30);
        assert_eq!(resumed.history.len(), 30);
        assert_eq!(params.items, resumed.params.items);
        assert_eq!(params.users, resumed.params.users);
    }

    #[test]
    fn every_code_path_of_the_sgd_pass_gives_the_same_rows() {
        let (data, items) = planted(300, 120, 3);
        let order: Vec<u32> = (0..300).rev().collect();
        let mut visits = Vec::new();
        data.add_visits(&order, &mut visits);
        let mut ratings = Vec::new();
        let pairs = schedule(&data.items, &data.values, &visits, &mut ratings).pairs;
        assert!(pairs > 0);
        let step = Step {
            lr: 0.01,
            reg: 0.02,
            biased: true,
        };
        for factors in [3, 20] {
            let hyper = Hyper {
                factors,
                ..Hyper::default()
            };
            let start = Params::init(&data.user_ids, &items, &hyper);
            let run = |pass: &dyn Fn(&mut Params) -> f64| {
                let mut p = start.clone();
                let sse = (0..3).map(|_| pass(&mut p)).sum::<f64>();
                (p, sse)
            };
            let chosen = run(&|p| sgd_pass(p, &ratings, pairs, &[], step, 3.0));
            let looped = run(&|p| pass_rows::<0, Portable>(p, &ratings, pairs, &[], step, 3.0));
            assert_eq!(chosen.0, looped.0, "k={factors}");
            assert_eq!(chosen.1, looped.1);
            if factors == 20 {
                let unrolled =
                    run(&|p| pass_rows::<24, Portable>(p, &ratings, pairs, &[], step, 3.0));
                assert_eq!(chosen.0, unrolled.0);
            }
            // A block of rows: only those items move, and only users who rated one.
            let mut split = RankRatings {
                user_ids: data.user_ids.clone(),
                user_offsets: data.user_offsets.clone(),
                items: data.items.clone(),
                values: data.values.clone(),
                ..Default::default()
            };
            split.split_blocks(&[0, 40, 80, 120], USER_RUN, 1);
            let mut part = start.clone();
            for r in 0..split.n_runs() {
                let (ratings, pairs) = split.stretch(r, 1);
                sgd_pass(&mut part, ratings, pairs, &[], step, 3.0);
            }
            for i in 0..120 {
                let moved = part.item(i) != start.item(i);
                assert_eq!(moved, (40..80).contains(&i), "k={factors} item {i}");
            }
            // The rows moved, the padding did not.
            assert_ne!(chosen.0, start);
            for row in chosen.0.items.as_slice().chunks_exact(chosen.0.width) {
                assert!(row[factors + 1..].iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn a_learning_rate_far_too_high_is_reported_as_divergence() {
        let (data, items) = planted(50, 40, 2);
        let globals = Globals {
            global_mean: 3.0,
            rating_range: (1.0, 5.0),
        };
        let hyper = Hyper {
            epochs: 20,
            lr: 5.0,
            ..Hyper::default()
        };
        let err = solo(&data, &items, &hyper, globals, None).unwrap_err();
        assert!(err.to_string().contains("lower --lr"), "{err}");
    }
}
