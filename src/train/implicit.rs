//! The implicit objective's trainer: iALS by conjugate gradient (`mf::als`) over any
//! `Collective`.
//!
//! Every rank owns its users' rows (as for the explicit objective) and holds every item row.
//! An epoch:
//!
//! 1. Users. A user's normal equations need the item rows and the items' Gram matrix only,
//!    both on every rank: each rank steps its own users, no messages. The Gram matrix is the
//!    sum of every rank's part (the Gram of its own range of the item rows), gathered and
//!    added in rank order.
//! 2. Items. An item's observed pairs are spread over every rank (its users live everywhere).
//!    Each rank owns a range of items. Two ways (`ItemSide`, chosen by the floats each moves):
//!    - gathered (`gathered`): the owner holds every pair of its items (sent once, before the
//!      first epoch) and, each epoch, every user's row (one share); it steps its items alone.
//!      The ranges are cut so that every rank has about as many pairs to step.
//!    - summed (`summed`, when users far outnumber items): each rank adds its users' part of
//!      every item's residual (or of `A d`) into one buffer, the parts are summed in rank
//!      order on the owner, which steps its items (an even range) and shares the new
//!      directions: `cg_steps + 1` sums and `cg_steps` shares of directions.
//!
//!    Either way the new item rows are then shared with everyone, in memory the ranks of a
//!    node map or as messages. The users' Gram matrix is summed like the items'.
//! 3. The items' new Gram matrix (the next epoch's first step uses it too) and the loss.
//!
//! Nothing depends on which algorithm MPI picks for a reduction, so the same data, seed and rank
//! count give the same model bit for bit; other rank counts add the parts in other groupings
//! (rounding only). docs/DESIGN.md has the reasoning and the measurements.

use std::time::Instant;

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::metrics::ErrorSums;
use crate::mf::als::{
    axpy, cg_rows, gram_apply_rows, gram_part, observed, observed_loss, CgRows, Failed, Gram,
    Observed, Slot0, Weights,
};
use crate::mf::kernel::score;
use crate::mf::{EpochStats, Hyper, ImplicitHyper, Params, ParamsRef};

use super::data::{ItemBlocks, RankData, RankRatings, UNKNOWN};
use super::gathered::{self, Everywhere};
use super::ordered::{balanced_ranges, even_ranges, gather_parts};
use super::summed::ItemSums;
use super::{ControlFlow, ItemRows, Progress, TrainState};

/// What a rank trains with the implicit objective.
pub struct ImplicitJob<'a> {
    pub data: &'a RankData,
    /// For the log's line on the item rows.
    pub blocks: &'a ItemBlocks,
    pub item_ids: &'a [crate::ids::Id],
    pub hyper: &'a Hyper,
}

/// Train from `start` (a checkpoint's state; `None`: from scratch) to `job.hyper.epochs`, like
/// `train::fit`, and how the ranks kept the item rows. The rows returned are the model's:
/// users' slot 0 (their constant 1 during training) back to a bias of 0.
pub fn fit(
    comm: &dyn Collective,
    job: &ImplicitJob,
    start: Option<TrainState>,
    mut after_epoch: impl FnMut(&Progress) -> Result<ControlFlow<()>>,
) -> Result<(TrainState, ItemRows)> {
    let hyper = job.hyper;
    let settings = hyper
        .implicit
        .expect("the implicit objective has its settings");
    let TrainState {
        epoch: done,
        mut params,
        mut history,
    } = start.unwrap_or_else(|| TrainState {
        epoch: 0,
        params: initial(job),
        history: Vec::new(),
    });
    let mut epochs = Epochs::new(comm, job, &params, settings)?;
    crate::memory::log(comm.rank(), "implicit: rows and item side set up");
    let item_rows = epochs.item_rows(comm.size());
    // `train` states it at info once the epochs are done (tune trains many models).
    if comm.is_root() {
        log::debug!(
            "item rows: {}",
            item_rows.describe(comm.size(), job.blocks, params.factors)
        );
    }
    let mut gram_items = epochs.gram(&params.items.as_slice()[epochs.my_item_floats()])?;
    let mut last = done;
    for epoch in done + 1..=hyper.epochs {
        let fault = crate::fault::point("epoch", comm.rank())
            .and_then(|_| crate::fault::point(&format!("epoch-{epoch}"), comm.rank()));
        comm.agree(fault)?;
        let (stats, next) = epochs.run(epoch, &mut params, &gram_items)?;
        if epoch == done + 1 {
            crate::memory::log(comm.rank(), "implicit: first epoch done");
        }
        gram_items = next;
        history.push(stats);
        last = epoch;
        let flow = after_epoch(&Progress {
            epoch,
            history: &history,
            params: params.view(),
        })?;
        if flow.is_break() {
            break;
        }
    }
    let width = params.width;
    for row in params.users.as_mut_slice().chunks_exact_mut(width) {
        row[0] = 0.0;
    }
    let state = TrainState {
        epoch: last,
        params,
        history,
    };
    Ok((state, item_rows))
}

/// The first rows: random factors from each id's stream (as the explicit objective), users'
/// slot 0 the constant 1 that meets the item's bias, items' biases 0.
fn initial(job: &ImplicitJob) -> Params {
    let mut params = Params::init(&job.data.ratings.user_ids, job.item_ids, job.hyper);
    let width = params.width;
    for row in params.users.as_mut_slice().chunks_exact_mut(width) {
        row[0] = 1.0;
    }
    params
}

/// The values the confidences weigh: each user's scaled by `ImplicitHyper::confidence_scale`
/// when the confidences are balanced per user (a user's pairs are all on one rank), else the
/// values as they come.
fn weighed_values<'a>(
    ratings: &'a RankRatings,
    n_items: usize,
    settings: &ImplicitHyper,
) -> std::borrow::Cow<'a, [f32]> {
    if settings.balance.is_none() || ratings.balanced {
        return std::borrow::Cow::Borrowed(&ratings.values);
    }
    let mut values = ratings.values.clone();
    balance(ratings, &mut values, (n_items, settings));
    std::borrow::Cow::Owned(values)
}

/// Scale `ratings`' values by each user's confidence balance once, in place, for a job that
/// trains one model on them (`train`, the popularity weight's choice; not `tune`, whose trials
/// differ in balance): the trainer then reads them instead of a scaled copy (at 100M events a
/// tenth of a rank's memory). Their signs, all the metrics read of them, are kept.
pub fn balance_in_place(ratings: &mut RankRatings, n_items: usize, hyper: &Hyper) {
    let Some(settings) = hyper.implicit.filter(|s| s.balance.is_some()) else {
        return;
    };
    if ratings.balanced {
        return;
    }
    let mut values = std::mem::take(&mut ratings.values);
    balance(ratings, &mut values, (n_items, &settings));
    ratings.values = values;
    ratings.balanced = true;
}

/// Each user's `values` (in `ratings`' layout) times its confidence scale.
fn balance(
    ratings: &RankRatings,
    values: &mut [f32],
    (n_items, settings): (usize, &ImplicitHyper),
) {
    for u in 0..ratings.n_users() {
        let range = ratings.user_offsets[u]..ratings.user_offsets[u + 1];
        let sum = values[range.clone()].iter().map(|v| v.abs() as f64).sum();
        let scale = settings.confidence_scale(n_items, sum);
        values[range].iter_mut().for_each(|v| *v *= scale);
    }
}

/// A rank's pairs by item (its users in order, with their values): the transpose of
/// `RankRatings`, so an item's sum over its users is taken in one place.
struct ByItem {
    offsets: Vec<usize>,
    users: Vec<u32>,
    values: Vec<f32>,
}

impl ByItem {
    /// This rank's own pairs, users by their place on this rank.
    fn new(ratings: &RankRatings, values: &[f32], n_items: usize) -> ByItem {
        let pairs = (0..ratings.n_users()).flat_map(|u| {
            let (items, values) = ratings.ratings_with(u, values);
            items
                .iter()
                .zip(values)
                .map(move |(&i, &v)| (i, u as u32, v))
        });
        ByItem::from_pairs(n_items, pairs)
    }

    /// `(item, user, value)` pairs, each item's in the order given: counted on a first pass,
    /// placed on a second (no list of the pairs, 12 bytes each, beside the result while it is
    /// built; the run's peak, in the popularity weight's choice, lies elsewhere).
    fn from_pairs(n_items: usize, pairs: impl Iterator<Item = (u32, u32, f32)> + Clone) -> ByItem {
        let mut offsets = vec![0usize; n_items + 1];
        for (i, _, _) in pairs.clone() {
            offsets[i as usize + 1] += 1;
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut users = vec![0u32; offsets[n_items]];
        let mut values = vec![0.0f32; offsets[n_items]];
        for (i, u, v) in pairs {
            let at = &mut next[i as usize];
            users[*at] = u;
            values[*at] = v;
            *at += 1;
        }
        ByItem {
            offsets,
            users,
            values,
        }
    }

    fn of(&self, i: usize) -> (&[u32], &[f32]) {
        let range = self.offsets[i]..self.offsets[i + 1];
        (&self.users[range.clone()], &self.values[range])
    }
}

/// How the items' steps are taken (docs/DESIGN.md has the measurements behind the choice).
enum ItemSide {
    /// Every rank adds its users' parts of every item's sums, the owner of the item steps it
    /// (`summed`): `cg_steps + 1` sums and `cg_steps + 1` shares of item-sized buffers.
    Summed { sums: ItemSums, by_item: ByItem },
    /// The owner of an item steps it alone from all its pairs (`by_item`: this rank's items,
    /// users numbered rank by rank) and every user's row (`gathered`): one share of the
    /// users' rows, one of the items'.
    Gathered {
        by_item: ByItem,
        users: Everywhere,
        items: Everywhere,
        /// The most rows one rank shares at once.
        rows: usize,
    },
}

impl ItemSide {
    /// The gathered side: this rank's items' pairs from every rank, and the users' and items'
    /// tables placed (a collective call). `starts`: each rank's first user among all users.
    fn gathered(
        comm: &dyn Collective,
        ratings: &RankRatings,
        values: &[f32],
        starts: &[usize],
        item_ranges: &[std::ops::Range<usize>],
        width: usize,
    ) -> Result<ItemSide> {
        let rank = comm.rank();
        let pairs = gathered::owned_pairs(comm, ratings, values, item_ranges, starts[rank])?;
        let user_ranges: Vec<_> = starts.windows(2).map(|w| w[0]..w[1]).collect();
        let floats = |r: &std::ops::Range<usize>| r.start * width..r.end * width;
        let most = |r: &[std::ops::Range<usize>]| r.iter().map(|r| r.len()).max().unwrap_or(0);
        let (users, items) = Everywhere::place_two(
            comm,
            user_ranges.iter().map(floats).collect(),
            item_ranges.iter().map(floats).collect(),
        );
        Ok(ItemSide::Gathered {
            by_item: ByItem::from_pairs(item_ranges[rank].len(), pairs.into_iter()),
            rows: most(&user_ranges).max(most(item_ranges)),
            users,
            items,
        })
    }
}

/// Whether the items' owners step them alone (`ItemSide::Gathered`): one rank always does; on
/// several, when sharing every user's row and every item's moves fewer floats than summing
/// `2 cg_steps + 2` item-sized buffers, i.e. `users <= (2 cg_steps + 1) items`.
/// `FUNKSVD_ITEM_SIDE=summed` or `gathered` decides instead (tests, measurements).
fn gathers(ranks: usize, users: usize, items: usize, cg_steps: usize) -> bool {
    match std::env::var("FUNKSVD_ITEM_SIDE").as_deref() {
        Ok("summed") => false,
        Ok("gathered") => true,
        _ => ranks == 1 || users <= (2 * cg_steps + 1) * items,
    }
}

/// A row's own work in an epoch (its steps' products with the Gram matrix, the steps), in
/// observed pairs' work: 4 x (k+1) x width multiply-adds in a matrix product against
/// 4 x 2 x width per pair in the pair loops, which run about half as many per second, so
/// about (k + 1) / 4 pairs (16 at 64 factors). How the ranks' users and items are balanced.
pub fn row_cost(factors: usize) -> u64 {
    (factors as u64 + 1).div_ceil(4)
}

/// What stepping each item costs its owner, in pairs: its pairs on every rank and `row_cost`
/// (a sum over the ranks: a collective call).
fn item_costs(
    comm: &dyn Collective,
    ratings: &RankRatings,
    n_items: usize,
    factors: usize,
) -> Vec<u64> {
    let mut costs = vec![0u64; n_items];
    for &i in &ratings.items {
        costs[i as usize] += 1;
    }
    comm.reduce_u64(&mut costs, Op::Sum);
    costs.iter_mut().for_each(|c| *c += row_cost(factors));
    costs
}

/// What every epoch of one `fit` shares, and its work space.
struct Epochs<'a> {
    comm: &'a dyn Collective,
    data: &'a RankData,
    /// The training pairs' values as the confidences weigh them (balanced per user, or as
    /// they come), one per `data.ratings` value.
    values: std::borrow::Cow<'a, [f32]>,
    weights: Weights,
    steps: usize,
    /// Item biases solved for, or held at 0.
    item_slot0: Slot0,
    factors: usize,
    width: usize,
    /// This rank's range of item rows, in floats.
    mine: std::ops::Range<usize>,
    /// The job's training pairs.
    total_pairs: f64,
    /// How the items' steps are taken.
    side: ItemSide,
    /// The conjugate-gradient state of this rank's items.
    items_cg: CgRows,
    /// Of blocks of this rank's users.
    users_cg: CgRows,
    /// Seconds spent in messages during the current epoch.
    synced: f64,
}

impl<'a> Epochs<'a> {
    fn new(
        comm: &'a dyn Collective,
        job: &'a ImplicitJob<'a>,
        params: &Params,
        settings: ImplicitHyper,
    ) -> Result<Self> {
        let hyper = job.hyper;
        let n_items = job.item_ids.len();
        let width = params.width;
        let ratings = &job.data.ratings;
        let values = weighed_values(ratings, n_items, &settings);
        let starts = gathered::user_starts(comm, ratings.n_users())?;
        let n_users = *starts.last().expect("a start per rank");
        let gather = gathers(comm.size(), n_users, n_items, settings.cg_steps);
        let item_ranges = if gather && comm.size() > 1 {
            let costs = item_costs(comm, ratings, n_items, params.factors);
            balanced_ranges(&costs, comm.size())
        } else {
            even_ranges(n_items, comm.size())
        };
        let floats = |r: &std::ops::Range<usize>| r.start * width..r.end * width;
        let float_ranges: Vec<_> = item_ranges.iter().map(floats).collect();
        let mut total = [ratings.n_ratings() as f64];
        comm.reduce_f64(&mut total, Op::Sum);
        let side = if gather {
            ItemSide::gathered(comm, ratings, &values, &starts, &item_ranges, width)?
        } else {
            ItemSide::Summed {
                sums: ItemSums::place(comm, n_items * width, float_ranges.clone()),
                by_item: ByItem::new(ratings, &values, n_items),
            }
        };
        Ok(Epochs {
            comm,
            data: job.data,
            values,
            weights: Weights {
                alpha: settings.alpha,
                unobserved: settings.unobserved_weight,
                reg: hyper.reg,
            },
            steps: settings.cg_steps,
            item_slot0: if hyper.biased {
                Slot0::Free
            } else {
                Slot0::Frozen
            },
            factors: params.factors,
            width,
            items_cg: CgRows::default(),
            users_cg: CgRows::default(),
            mine: float_ranges[comm.rank()].clone(),
            total_pairs: total[0],
            side,
            synced: 0.0,
        })
    }

    /// How the ranks keep the item rows, for the log and `model.json`.
    fn item_rows(&self, ranks: usize) -> ItemRows {
        match &self.side {
            ItemSide::Summed { sums, .. } => sums.item_rows(self.steps),
            ItemSide::Gathered { .. } if ranks == 1 => ItemRows::Own,
            ItemSide::Gathered { users, rows, .. } => ItemRows::Gathered {
                shared: users.shared(),
                rows: *rows,
            },
        }
    }

    fn my_item_floats(&self) -> std::ops::Range<usize> {
        self.mine.clone()
    }

    /// The Gram matrix of the rows whose every rank gives its `rows`, summed in rank order.
    fn gram(&mut self, rows: &[f32]) -> Result<Gram> {
        let dims = self.factors + 1;
        let part = gram_part(rows, self.width, dims);
        let started = Instant::now();
        let parts = gather_parts(self.comm, &part)?;
        self.synced += started.elapsed().as_secs_f64();
        Ok(Gram::from_parts(
            dims,
            self.width,
            parts.iter().map(|p| &p[..]),
        ))
    }

    /// One epoch: users, items, the new Gram matrix of the items and the loss.
    fn run(
        &mut self,
        epoch: usize,
        params: &mut Params,
        gram_items: &Gram,
    ) -> Result<(EpochStats, Gram)> {
        let started = Instant::now();
        self.synced = 0.0;
        let mut failed = self.solve_users(params, gram_items);
        let users_done = started.elapsed().as_secs_f64();
        let gram_users = self.gram(params.users.as_slice())?;
        failed.add(self.solve_items(params, &gram_users)?);
        log::debug!(
            "rank {} epoch {epoch}: users {:.3}s, items {:.3}s ({:.3}s of them in messages and waiting)",
            self.comm.rank(),
            users_done,
            started.elapsed().as_secs_f64() - users_done,
            self.synced
        );
        let gram_items = self.gram(&params.items.as_slice()[self.my_item_floats()])?;
        let (observed, sse) = self.observed_loss(params);
        let mut sums = [
            observed,
            sse,
            failed.singular as f64,
            failed.diverged as f64,
        ];
        self.comm.reduce_f64(&mut sums, Op::Sum);
        let [observed, sse, singular, diverged] = sums;
        // Every pair's w0 s^2 is sum_u x_u^T G_items x_u = <G_items, G_users>; the rows'
        // squared norms are the traces (the users' constant slot 0 left out).
        let w = &self.weights;
        let loss = observed
            + w.unobserved as f64 * gram_items.inner(&gram_users)
            + w.reg as f64 * (gram_items.trace(0) + gram_users.trace(1));
        let n = self.total_pairs.max(1.0);
        self.check(epoch, loss, [singular, diverged], params)?;
        let seconds = started.elapsed().as_secs_f64();
        let stats = EpochStats {
            epoch,
            train_rmse: (sse / n).sqrt(),
            holdout_rmse: None,
            loss: Some(loss / n),
            seconds,
            sync_seconds: self.synced,
            ratings_per_second: self.total_pairs / seconds.max(1e-9),
        };
        Ok((stats, gram_items))
    }

    /// A loss that is not a number, or a system with no positive curvature, stops the job with
    /// the flag to change (every rank sees the same sums).
    fn check(&self, epoch: usize, loss: f64, failed: [f64; 2], params: &Params) -> Result<()> {
        let [singular, diverged] = failed;
        let w = &self.weights;
        let rows = params.items.as_slice();
        let first = &rows[..(self.width * 64).min(rows.len())];
        if diverged > 0.0 || !loss.is_finite() || first.iter().any(|v| !v.is_finite()) {
            return Err(Error::usage(format!(
                "the implicit solve diverged in epoch {epoch} (the loss is {loss}): lower --alpha (now {}) or raise --reg (now {})",
                w.alpha, w.reg
            )));
        }
        if singular > 0.0 {
            return Err(Error::usage(format!(
                "the implicit solve is singular in epoch {epoch} ({singular} rows' systems have no positive curvature): raise --reg (now {}) or --unobserved-weight (now {})",
                w.reg, w.unobserved
            )));
        }
        Ok(())
    }

    /// Every own user's steps against the item rows; how many systems failed.
    fn solve_users(&mut self, params: &mut Params, gram_items: &Gram) -> Failed {
        let (ratings, values) = (&self.data.ratings, &self.values);
        cg_rows(
            &self.weights,
            gram_items,
            Slot0::Frozen,
            self.steps,
            params.users.as_mut_slice(),
            params.items.as_slice(),
            |u| ratings.ratings_with(u, values),
            &mut self.users_cg,
        )
    }

    /// The items' steps; how many of this rank's items' systems failed.
    fn solve_items(&mut self, params: &mut Params, gram_users: &Gram) -> Result<Failed> {
        let (w, slot0, steps, comm) = (self.weights, self.item_slot0, self.steps, self.comm);
        let failed = match &mut self.side {
            ItemSide::Summed { sums, by_item } => {
                let mine = self.mine.clone();
                let failed = summed_steps(
                    (&w, slot0, steps),
                    comm,
                    sums,
                    by_item,
                    gram_users,
                    params,
                    mine,
                    &mut self.items_cg,
                )?;
                self.synced += sums.take_synced();
                failed
            }
            ItemSide::Gathered {
                by_item,
                users,
                items,
                ..
            } => {
                let others = users.gather(comm, params.users.as_slice())?;
                let rows = &mut params.items.as_mut_slice()[self.mine.clone()];
                let pairs_of = |i| by_item.of(i);
                let cg = &mut self.items_cg;
                let failed = cg_rows(&w, gram_users, slot0, steps, rows, others, pairs_of, cg);
                items.share(comm, params.items.as_mut_slice())?;
                self.synced += users.take_synced() + items.take_synced();
                failed
            }
        };
        Ok(failed)
    }

    /// This rank's part of the observed pairs' loss, `c (y - s)^2 - w0 s^2` (the rest of the
    /// loss comes from the Gram matrices, see `run`), and of the squared errors of their
    /// preferences.
    fn observed_loss(&self, params: &Params) -> (f64, f64) {
        let width = self.width;
        let items = params.items.as_slice();
        let (mut loss, mut sse) = (0.0f64, 0.0f64);
        for (u, user) in params.users.as_slice().chunks_exact(width).enumerate() {
            let (pairs, values) = self.data.ratings.ratings_with(u, &self.values);
            let (l, e) = observed_loss(&self.weights, user, items, width, pairs, values);
            loss += l;
            sse += e;
        }
        (loss, sse)
    }
}

/// The items' steps taken together by every rank (`ItemSide::Summed`): each rank adds its users'
/// part of every item's sums (`by_item`: its own pairs), summed on the owner of the items, which
/// steps its `mine` (floats of the item rows) and shares the directions and the new rows.
#[allow(clippy::too_many_arguments)]
fn summed_steps(
    (w, slot0, steps): (&Weights, Slot0, usize),
    comm: &dyn Collective,
    sums: &mut ItemSums,
    by_item: &ByItem,
    gram_users: &Gram,
    params: &mut Params,
    mine: std::ops::Range<usize>,
    cg: &mut CgRows,
) -> Result<Failed> {
    let width = params.width;
    let users = params.users.as_slice();
    let parts = sums.parts_mut();
    add_parts(
        w,
        by_item,
        width,
        users,
        params.items.as_slice(),
        Observed::Residual,
        parts,
    );
    let summed = sums.sum(comm)?;
    let items = &mut params.items.as_mut_slice()[mine];
    cg.resize(items.len() / width, width);
    gram_apply_rows(gram_users, -w.unobserved, -w.reg, items, &mut cg.r);
    axpy(1.0, summed, &mut cg.r);
    cg.start(slot0);
    sums.share(comm, &cg.d)?;
    let mut failed = Failed::default();
    for step in 0..steps {
        let (parts, directions) = sums.parts_and_directions(&cg.d);
        add_parts(
            w,
            by_item,
            width,
            users,
            directions,
            Observed::Product,
            parts,
        );
        let summed = sums.sum(comm)?;
        gram_apply_rows(gram_users, w.unobserved, w.reg, &cg.d, &mut cg.ad);
        axpy(1.0, summed, &mut cg.ad);
        failed.add(cg.step(items, slot0));
        if step + 1 < steps {
            sums.share(comm, &cg.d)?;
        }
    }
    sums.share_rows(comm, params.items.as_mut_slice())?;
    Ok(failed)
}

/// This rank's users' part of every item's observed `sum` into `parts`: the residual at the
/// item rows `of`, or the product `A d` with `of` the directions. Item by item, so each item's
/// sum is written once.
fn add_parts(
    w: &Weights,
    by_item: &ByItem,
    width: usize,
    users: &[f32],
    of: &[f32],
    sum: Observed,
    parts: &mut [f32],
) {
    for (i, (part, x)) in parts
        .chunks_exact_mut(width)
        .zip(of.chunks_exact(width))
        .enumerate()
    {
        part.fill(0.0);
        let (pairs, values) = by_item.of(i);
        observed(sum, w, x, users, width, pairs, values, part);
    }
}

/// The final model's errors on the preferences (1 for a positive value, else 0) of this rank's
/// training and hold-out pairs, its scores clipped to [0, 1] as `Model::predict` clips them.
pub fn preference_errors(data: &RankData, params: ParamsRef) -> [ErrorSums; 2] {
    let w = params.width;
    // Whole padded rows: the kernel's score reads whole lanes.
    let predict = |u: usize, i: usize| {
        score(&params.users[u * w..][..w], &params.items[i * w..][..w]).clamp(0.0, 1.0)
    };
    let truth = |v: f32| if v > 0.0 { 1.0 } else { 0.0 };
    let mut train = ErrorSums::default();
    for u in 0..data.ratings.n_users() {
        let (items, values) = data.ratings.ratings_of(u);
        for (&i, &v) in items.iter().zip(values) {
            train.add(truth(v), predict(u, i as usize));
        }
    }
    let mut hold = ErrorSums::default();
    for h in &data.holdout {
        if h.user != UNKNOWN && h.item != UNKNOWN {
            hold.add(truth(h.value), predict(h.user as usize, h.item as usize));
        }
    }
    [train, hold]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::ids::Id;
    use crate::mf::als::dot;
    use crate::rng::Rng;
    use crate::train::data::{HeldOut, RankRatings};

    /// Users who each click items of one of `groups` taste groups (and a few at random): the
    /// implicit model must rank a user's unseen group items above the others.
    fn clicks(users: usize, items: usize, groups: usize) -> (RankData, Vec<Id>) {
        let mut rng = Rng::new(7, 8);
        let mut data = RankData {
            ratings: RankRatings {
                user_offsets: vec![0],
                ..Default::default()
            },
            holdout: Vec::new(),
        };
        let r = &mut data.ratings;
        for u in 0..users {
            r.user_ids.push(Id::Int(u as i64));
            for i in 0..items {
                let liked = i % groups == u % groups;
                let p = if liked { 0.5 } else { 0.02 };
                if rng.next_f64() < p {
                    if rng.next_f64() < 0.2 {
                        data.holdout.push(HeldOut {
                            user: u as u32,
                            item: i as u32,
                            value: 1.0,
                        });
                    } else {
                        r.items.push(i as u32);
                        r.values.push(1.0 + (rng.next_f64() * 3.0).floor() as f32);
                    }
                }
            }
            r.user_offsets.push(r.items.len());
        }
        (data, (0..items).map(|i| Id::Int(i as i64)).collect())
    }

    fn implicit_hyper(epochs: usize, biased: bool) -> Hyper {
        Hyper {
            factors: 6,
            epochs,
            reg: 0.1,
            biased,
            objective: crate::mf::Objective::Implicit,
            implicit: Some(ImplicitHyper {
                alpha: 2.0,
                unobserved_weight: 1.0,
                cg_steps: 3,
                balance: None,
                popularity_weight: 0.0,
            }),
            ..Hyper::default()
        }
    }

    fn solo(data: &RankData, items: &[Id], hyper: &Hyper, start: Option<TrainState>) -> TrainState {
        let blocks = ItemBlocks::plan(&vec![1; items.len()], 1, 1);
        let job = ImplicitJob {
            data,
            blocks: &blocks,
            item_ids: items,
            hyper,
        };
        let (state, rows) = fit(&Solo, &job, start, |_| Ok(ControlFlow::Continue(()))).unwrap();
        assert_eq!(rows, ItemRows::Own);
        state
    }

    /// Hold-out hits in each user's top 5 unseen items.
    fn hits(data: &RankData, params: &Params) -> usize {
        let w = params.width;
        let n_items = params.items.len() / w;
        let mut found = 0;
        for u in 0..data.ratings.n_users() {
            let user = &params.users.as_slice()[u * w..][..w];
            let (seen, _) = data.ratings.ratings_of(u);
            let mut scores: Vec<(f32, u32)> = (0..n_items as u32)
                .filter(|i| !seen.contains(i))
                .map(|i| {
                    let item = &params.items.as_slice()[i as usize * w..][..w];
                    (item[0] + dot(&user[1..], &item[1..]), i)
                })
                .collect();
            scores.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top: Vec<u32> = scores.iter().take(5).map(|s| s.1).collect();
            found += data
                .holdout
                .iter()
                .filter(|h| h.user as usize == u && top.contains(&h.item))
                .count();
        }
        found
    }

    #[test]
    fn the_loss_falls_the_taste_groups_are_found_and_a_resumed_run_is_the_same() {
        let (data, items) = clicks(120, 60, 4);
        for biased in [true, false] {
            let hyper = implicit_hyper(8, biased);
            let state = solo(&data, &items, &hyper, None);
            let losses: Vec<f64> = state.history.iter().map(|s| s.loss.unwrap()).collect();
            assert!(
                losses.windows(2).all(|w| w[1] <= w[0] * 1.001),
                "{losses:?}"
            );
            assert!(losses[7] < losses[0] * 0.9, "{losses:?}");
            // Users' slot 0 is a bias of 0 in the model; items' biases only when asked for.
            let width = state.params.width;
            assert!(state
                .params
                .users
                .as_slice()
                .chunks_exact(width)
                .all(|r| r[0] == 0.0));
            let biases = state
                .params
                .items
                .as_slice()
                .chunks_exact(width)
                .map(|r| r[0]);
            assert_eq!(biases.clone().all(|b| b == 0.0), !biased);
            // Most held-out items are in the user's group: a top 5 from the 15 group items
            // finds far more of them than a random 5 of the 60 would (about 1 in 12).
            // The recorded preference RMSE is that of the final rows (before clipping).
            let [train, _] = preference_errors(&data, state.params.view());
            let last = state.history.last().unwrap().train_rmse;
            assert!(train.rmse().unwrap() <= last + 1e-6, "{train:?} vs {last}");
            let found = hits(&data, &state.params);
            assert!(
                found * 3 > data.holdout.len(),
                "{found} of {}",
                data.holdout.len()
            );
            // Stopped after 3 epochs and resumed: the same rows, bit for bit.
            let part = solo(&data, &items, &implicit_hyper(3, biased), None);
            let mut part_params = part.params.clone();
            for row in part_params.users.as_mut_slice().chunks_exact_mut(width) {
                row[0] = 1.0;
            }
            let resumed = solo(
                &data,
                &items,
                &hyper,
                Some(TrainState {
                    params: part_params,
                    ..part
                }),
            );
            assert_eq!(resumed.params, state.params);
            assert_eq!(resumed.history.len(), 8);
        }
    }

    #[test]
    fn an_absurd_confidence_is_reported_as_divergence_naming_alpha() {
        let (data, items) = clicks(30, 20, 2);
        let mut h = implicit_hyper(2, true);
        h.implicit.as_mut().unwrap().alpha = 1e38;
        let blocks = ItemBlocks::plan(&vec![1; items.len()], 1, 1);
        let job = ImplicitJob {
            data: &data,
            blocks: &blocks,
            item_ids: &items,
            hyper: &h,
        };
        let err = fit(&Solo, &job, None, |_| Ok(ControlFlow::Continue(()))).unwrap_err();
        assert!(err.to_string().contains("--alpha"), "{err}");
    }
}
