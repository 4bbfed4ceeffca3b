//! The implicit objective's trainer: iALS by conjugate gradient (`mf::als`) over any
//! `Collective`.
//!
//! Every rank owns its users' rows (as for the explicit objective) and holds every item row.
//! An epoch:
//!
//! 1. Users. A user's normal equations need the item rows and the items' Gram matrix only,
//!    both on every rank: each rank steps its own users, no messages. The Gram matrix is the
//!    sum of every rank's part (its even share of the item rows), gathered and added in rank
//!    order.
//! 2. Items. An item's observed pairs are spread over every rank (its users live everywhere),
//!    so its conjugate-gradient steps are taken together: each rank adds its users' part of
//!    every item's residual (or of `A d`) into one buffer, the parts are summed in rank order
//!    on the rank that owns the item (each rank owns an even range of items), the owner steps
//!    its items and shares the new directions with everyone (`summed`: in memory the ranks of
//!    a node share, or as messages). `cg_steps + 1` sums and `cg_steps` shares of directions,
//!    then one of the new rows. The users' Gram matrix is summed like the items'.
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
use super::ordered::{even_ranges, gather_parts};
use super::summed::ItemSums;
use super::{ItemRows, Progress, TrainState};

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
    mut after_epoch: impl FnMut(&Progress) -> Result<()>,
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
    let mut epochs = Epochs::new(comm, job, &params, settings);
    let item_rows = epochs.sums.item_rows(settings.cg_steps);
    if comm.is_root() {
        log::info!(
            "item rows: {}",
            item_rows.describe(comm.size(), job.blocks, params.factors)
        );
    }
    let mut gram_items = epochs.gram(&params.items.as_slice()[epochs.my_item_floats()])?;
    for epoch in done + 1..=hyper.epochs {
        let fault = crate::fault::point("epoch", comm.rank())
            .and_then(|_| crate::fault::point(&format!("epoch-{epoch}"), comm.rank()));
        comm.agree(fault)?;
        let (stats, next) = epochs.run(epoch, &mut params, &gram_items)?;
        gram_items = next;
        history.push(stats);
        after_epoch(&Progress {
            epoch,
            history: &history,
            params: params.view(),
        })?;
    }
    let width = params.width;
    for row in params.users.as_mut_slice().chunks_exact_mut(width) {
        row[0] = 0.0;
    }
    let state = TrainState {
        epoch: hyper.epochs.max(done),
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

/// A rank's pairs by item (its users in order, with their values): the transpose of
/// `RankRatings`, so an item's sum over its users is taken in one place.
struct ByItem {
    offsets: Vec<usize>,
    users: Vec<u32>,
    values: Vec<f32>,
}

impl ByItem {
    fn new(ratings: &RankRatings, n_items: usize) -> ByItem {
        let mut offsets = vec![0usize; n_items + 1];
        for &i in &ratings.items {
            offsets[i as usize + 1] += 1;
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }
        let mut next = offsets.clone();
        let mut users = vec![0u32; ratings.items.len()];
        let mut values = vec![0.0f32; ratings.items.len()];
        for u in 0..ratings.n_users() {
            let (items, vals) = ratings.ratings_of(u);
            for (&i, &v) in items.iter().zip(vals) {
                let at = &mut next[i as usize];
                users[*at] = u as u32;
                values[*at] = v;
                *at += 1;
            }
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

/// What every epoch of one `fit` shares, and its work space.
struct Epochs<'a> {
    comm: &'a dyn Collective,
    data: &'a RankData,
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
    /// The item side's sums and shares.
    sums: ItemSums,
    /// This rank's pairs item by item.
    by_item: ByItem,
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
    ) -> Self {
        let hyper = job.hyper;
        let n_items = job.item_ids.len();
        let width = params.width;
        let float_ranges: Vec<_> = even_ranges(n_items, comm.size())
            .iter()
            .map(|r| r.start * width..r.end * width)
            .collect();
        let mut total = [job.data.ratings.n_ratings() as f64];
        comm.reduce_f64(&mut total, Op::Sum);
        Epochs {
            comm,
            data: job.data,
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
            by_item: ByItem::new(&job.data.ratings, n_items),
            items_cg: CgRows::default(),
            users_cg: CgRows::default(),
            mine: float_ranges[comm.rank()].clone(),
            total_pairs: total[0],
            sums: ItemSums::place(comm, n_items * width, float_ranges),
            synced: 0.0,
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
        let ratings = &self.data.ratings;
        cg_rows(
            &self.weights,
            gram_items,
            Slot0::Frozen,
            self.steps,
            params.users.as_mut_slice(),
            params.items.as_slice(),
            |u| ratings.ratings_of(u),
            &mut self.users_cg,
        )
    }

    /// The items' steps, taken together by every rank; how many of this rank's items' systems
    /// failed.
    fn solve_items(&mut self, params: &mut Params, gram_users: &Gram) -> Result<Failed> {
        let (w, slot0, width) = (self.weights, self.item_slot0, self.width);
        let (comm, by_item) = (self.comm, &self.by_item);
        let mine = self.mine.clone();
        let sums = &mut self.sums;
        let users = params.users.as_slice();
        let parts = sums.parts_mut();
        add_parts(
            &w,
            by_item,
            width,
            users,
            params.items.as_slice(),
            Observed::Residual,
            parts,
        );
        let summed = sums.sum(comm)?;
        let items = &mut params.items.as_mut_slice()[mine];
        let cg = &mut self.items_cg;
        cg.resize(items.len() / width, width);
        gram_apply_rows(gram_users, -w.unobserved, -w.reg, items, &mut cg.r);
        axpy(1.0, summed, &mut cg.r);
        cg.start(slot0);
        sums.share(comm, &cg.d)?;
        let mut failed = Failed::default();
        for step in 0..self.steps {
            let (parts, directions) = sums.parts_and_directions(&cg.d);
            add_parts(
                &w,
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
            if step + 1 < self.steps {
                sums.share(comm, &cg.d)?;
            }
        }
        sums.share_rows(comm, params.items.as_mut_slice())?;
        self.synced += sums.take_synced();
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
            let (pairs, values) = self.data.ratings.ratings_of(u);
            let (l, e) = observed_loss(&self.weights, user, items, width, pairs, values);
            loss += l;
            sse += e;
        }
        (loss, sse)
    }
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
        let (state, rows) = fit(&Solo, &job, start, |_| Ok(())).unwrap();
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
        let err = fit(&Solo, &job, None, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("--alpha"), "{err}");
    }
}
