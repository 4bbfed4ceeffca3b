//! The trainer: stratified SGD over item blocks (DSGD, Gemulla et al. 2011; the block
//! scheduling LibMF uses across threads, here across ranks), over any `Collective` (MPI in
//! production, `Solo` in the unit tests).
//!
//! Every rank owns its users' rows outright. The item rows are cut into groups, one per rank,
//! of about equal rating counts (`data::ItemBlocks`). An epoch has R steps; in step t rank r
//! runs SGD over its users' ratings of group (r + t) mod R only. No two ranks ever update the
//! same row at the same time, so an epoch on R ranks is exactly an epoch of sequential SGD in
//! another order, and nothing needs averaging. How the ranks then see each other's work
//! (`item_rows`):
//!
//! - All ranks on one node (`mpirun` on one machine, one Slurm node): the item rows live in
//!   memory every rank maps (an MPI shared-memory window). Each step updates its group in place
//!   and ends at a barrier; after the last step every rank already sees every final row. No
//!   rows are copied.
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
//! splitting a user's ratings this way trains better than visiting them all at once
//! (docs/DESIGN.md has the figures).

pub mod checkpoint;
pub mod data;
mod gathered;
pub mod implicit;
pub mod item_rows;
pub mod ordered;
pub mod pass;
pub mod popularity;
pub mod ranked;
pub mod schedule;
mod summed;
pub mod user_table;

pub use std::ops::ControlFlow;
use std::time::Instant;

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::ids::Id;
use crate::mf::kernel::Step;
use crate::mf::{EpochStats, Globals, Hyper, Params, ParamsRef, Rows};
use crate::rng::Rng;

use data::{ItemBlocks, Prepared, RankData};
use implicit::ImplicitJob;
pub use item_rows::ItemRows;
use item_rows::{group_floats, ItemStore};
use pass::{holdout_errors, sgd_pass, PassRows};
use schedule::{run_order, Schedule, USER_RUN};

/// Visits of each user per epoch, at least (see the module documentation).
pub const MIN_PASSES: usize = 4;

/// Item blocks per rank for `ranks` ranks.
pub fn blocks_per_rank(ranks: usize) -> usize {
    MIN_PASSES.div_ceil(ranks.max(1))
}

/// Where training stands after an epoch: what a checkpoint saves and `--resume` restores.
#[derive(Debug)]
pub struct TrainState {
    /// Epochs done.
    pub epoch: usize,
    pub params: Params,
    pub history: Vec<EpochStats>,
}

/// What the caller sees after each epoch (to log it, to checkpoint it).
pub struct Progress<'a> {
    pub epoch: usize,
    pub history: &'a [EpochStats],
    pub params: ParamsRef<'a>,
}

/// What a rank trains: its data and how every rank numbers and groups the items.
pub struct Job<'a> {
    pub data: &'a RankData,
    /// One group of blocks per rank.
    pub blocks: &'a ItemBlocks,
    /// The item ids in row order.
    pub item_ids: &'a [Id],
    pub hyper: &'a Hyper,
    pub globals: Globals,
}

/// Train from `start` (a checkpoint's state; `None`: from scratch) to `job.hyper.epochs`;
/// `after_epoch` sees each epoch's result. Every rank calls this with the same `job` but its
/// own `data`. Returns the final state and where the item rows were kept.
pub fn fit(
    comm: &dyn Collective,
    job: &Job,
    start: Option<TrainState>,
    mut after_epoch: impl FnMut(&Progress) -> Result<ControlFlow<()>>,
) -> Result<(TrainState, ItemRows)> {
    assert_eq!(
        job.blocks.groups(),
        comm.size(),
        "one group of item blocks per rank"
    );
    let hyper = job.hyper;
    let TrainState {
        epoch: done,
        params,
        mut history,
    } = start.unwrap_or_else(|| TrainState {
        epoch: 0,
        params: Params::init(&job.data.ratings.user_ids, job.item_ids, hyper),
        history: Vec::new(),
    });
    let Params {
        factors,
        width,
        mut users,
        items,
    } = params;
    let (mut items, item_rows) = ItemStore::place(comm, items);
    // `train` states it at info once the epochs are done (tune trains many models).
    if comm.is_root() {
        log::debug!(
            "item rows: {}",
            item_rows.describe(comm.size(), job.blocks, factors)
        );
    }
    let epochs = Epochs::new(comm, job, factors, width);
    let mut order = Vec::with_capacity(epochs.schedule.n_runs());
    let mut last = done;
    for epoch in done + 1..=hyper.epochs {
        let stats = epochs.run(epoch, &mut users, &mut items, &mut order)?;
        history.push(stats);
        last = epoch;
        // SAFETY: every rank is past the epoch's last step and its sync, and the next epoch
        // starts with a sync before anyone writes; the view is gone by then.
        let item_floats = unsafe { items.all() };
        let flow = after_epoch(&Progress {
            epoch,
            history: &history,
            params: epochs.view(&users, item_floats),
        })?;
        if flow.is_break() {
            break;
        }
    }
    // Back in this process's memory (freeing shared rows is collective: every rank gets here,
    // or leaves above at the same epoch with the same error).
    let items = items.into_own();
    let state = TrainState {
        epoch: last,
        params: Params {
            factors,
            width,
            users,
            items,
        },
        history,
    };
    Ok((state, item_rows))
}

/// The epochs of the objective `hyper` names, from `start`; where the item rows were kept.
pub fn fit_objective(
    comm: &dyn Collective,
    prepared: &Prepared,
    hyper: &Hyper,
    globals: Globals,
    start: Option<TrainState>,
    after_epoch: impl FnMut(&Progress) -> Result<ControlFlow<()>>,
) -> Result<(TrainState, ItemRows)> {
    match hyper.implicit {
        None => {
            let job = Job {
                data: &prepared.data,
                blocks: &prepared.blocks,
                item_ids: &prepared.item_ids,
                hyper,
                globals,
            };
            fit(comm, &job, start, after_epoch)
        }
        Some(_) => {
            let job = ImplicitJob {
                data: &prepared.data,
                blocks: &prepared.blocks,
                item_ids: &prepared.item_ids,
                hyper,
            };
            implicit::fit(comm, &job, start, after_epoch)
        }
    }
}

/// What every epoch of one `fit` shares.
struct Epochs<'a> {
    comm: &'a dyn Collective,
    job: &'a Job<'a>,
    schedule: Schedule,
    step: Step,
    mu: f32,
    factors: usize,
    width: usize,
    /// The job's training ratings.
    total_ratings: f64,
    /// Time each step and exchange for the debug log.
    profile: bool,
}

impl<'a> Epochs<'a> {
    fn new(comm: &'a dyn Collective, job: &'a Job<'a>, factors: usize, width: usize) -> Self {
        let hyper = job.hyper;
        let mut total = [job.data.ratings.n_ratings() as f64];
        comm.reduce_f64(&mut total, Op::Sum);
        Epochs {
            comm,
            job,
            schedule: Schedule::new(&job.data.ratings, job.blocks, USER_RUN),
            step: Step {
                lr: hyper.lr,
                reg: hyper.reg,
                biased: hyper.biased,
            },
            mu: job.globals.offset(hyper.biased),
            factors,
            width,
            total_ratings: total[0],
            profile: log::log_enabled!(log::Level::Debug),
        }
    }

    fn view<'v>(&self, users: &'v Rows, items: &'v [f32]) -> ParamsRef<'v> {
        ParamsRef {
            factors: self.factors,
            width: self.width,
            users: users.as_slice(),
            items,
        }
    }

    /// One epoch: R steps, then the hold-out score; the epoch's numbers.
    fn run(
        &self,
        epoch: usize,
        users: &mut Rows,
        items: &mut ItemStore,
        order: &mut Vec<u32>,
    ) -> Result<EpochStats> {
        let (comm, me) = (self.comm, self.comm.rank());
        let started = Instant::now();
        // A rank failing mid-training must not leave the others in the next exchange.
        let fault = crate::fault::point("epoch", me)
            .and_then(|_| crate::fault::point(&format!("epoch-{epoch}"), me));
        comm.agree(fault)?;
        // Every rank is done reading the last epoch's rows (hold-out, checkpoint).
        items.sync();
        // A fresh order of the runs of users each epoch, from a stream of this rank and epoch
        // only, so a run resumed at any epoch visits users exactly as an uninterrupted one.
        let mut rng = Rng::new(self.job.hyper.seed, ((me as u64) << 32) | epoch as u64);
        run_order(self.schedule.n_runs(), &mut rng, order);
        let (sse, timeline) = self.steps(users, items, order);
        let scored = Instant::now();
        // SAFETY: every rank is past its last step's sync; nobody writes before the next
        // epoch's first sync, after this view is gone.
        let view = self.view(users, unsafe { items.all() });
        let hold = holdout_errors(
            &self.job.data.holdout,
            view,
            self.step.biased,
            self.job.globals,
        );
        if self.profile {
            log_timeline(me, epoch, &timeline, scored.elapsed().as_secs_f64());
        }
        let mut sums = [sse, hold.squared, hold.n];
        comm.reduce_f64(&mut sums, Op::Sum);
        let seconds = started.elapsed().as_secs_f64();
        let train_rmse = (sums[0] / self.total_ratings.max(1.0)).sqrt();
        let first_rows = &view.items[..(self.width * 64).min(view.items.len())];
        if !train_rmse.is_finite() || first_rows.iter().any(|v| !v.is_finite()) {
            return Err(Error::usage(format!(
                "training diverged in epoch {epoch} (train RMSE is {train_rmse}): the learning rate is too high for this data; lower --lr (now {})",
                self.step.lr
            )));
        }
        Ok(EpochStats {
            epoch,
            train_rmse,
            holdout_rmse: (sums[2] > 0.0).then(|| (sums[1] / sums[2]).sqrt()),
            loss: None,
            seconds,
            sync_seconds: timeline.iter().skip(1).step_by(2).sum(),
            ratings_per_second: self.total_ratings / seconds.max(1e-9),
        })
    }

    /// The epoch's R steps, each over one group of item blocks, run by run (each run through
    /// every block of the group: a user's visits follow one another while its row is still in
    /// L1). Returns the sum of squared errors and this rank's seconds per step and per
    /// exchange, in turn (where a rank waits).
    fn steps(&self, users: &mut Rows, items: &mut ItemStore, order: &[u32]) -> (f64, Vec<f64>) {
        let (ranks, me) = (self.comm.size(), self.comm.rank());
        let mut sse = 0.0f64;
        let mut timeline = Vec::with_capacity(2 * ranks);
        for t in 0..ranks {
            let group = (me + t) % ranks;
            let stepped = Instant::now();
            let group_rows = items.group_mut(group_floats(self.job.blocks, group, self.width));
            for (n, &run) in order.iter().enumerate() {
                let (ratings, pairs) = self.schedule.stretch(run as usize, group);
                let following = order
                    .get(n + 1)
                    .map_or(&[][..], |&r| self.schedule.stretch(r as usize, group).0);
                let rows = PassRows {
                    users: users.as_mut_slice(),
                    items: &mut *group_rows,
                    width: self.width,
                };
                sse += sgd_pass(rows, ratings, pairs, following, self.step, self.mu);
            }
            let waited = Instant::now();
            timeline.push(waited.duration_since(stepped).as_secs_f64());
            items.end_step(
                self.comm,
                self.job.blocks,
                self.width,
                group,
                t + 1 == ranks,
            );
            timeline.push(waited.elapsed().as_secs_f64());
        }
        (sse, timeline)
    }
}

/// The debug log's line of where rank `me` spent epoch `epoch`: the steps, the exchanges (or
/// barriers) after each, and the hold-out scoring.
fn log_timeline(me: usize, epoch: usize, timeline: &[f64], scoring: f64) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::train::data::{HeldOut, RankRatings};
    use crate::train::schedule::{add_visits, schedule};

    /// Planted low-rank ratings: SGD must fit them far better than the global mean does.
    fn planted(users: usize, items: usize, k: usize) -> (RankData, Vec<Id>) {
        let mut rng = Rng::new(1, 2);
        let uf: Vec<Vec<f64>> = (0..users)
            .map(|_| (0..k).map(|_| rng.normal()).collect())
            .collect();
        let vf: Vec<Vec<f64>> = (0..items)
            .map(|_| (0..k).map(|_| rng.normal()).collect())
            .collect();
        let mut data = RankData {
            ratings: RankRatings {
                user_offsets: vec![0],
                ..Default::default()
            },
            holdout: Vec::new(),
        };
        let r = &mut data.ratings;
        for (u, pu) in uf.iter().enumerate() {
            r.user_ids.push(Id::Int(u as i64));
            for (i, qi) in vf.iter().enumerate() {
                let value = 3.0 + pu.iter().zip(qi).map(|(a, b)| a * b).sum::<f64>() * 0.5;
                let value = value.clamp(1.0, 5.0) as f32;
                if rng.next_f64() < 0.2 {
                    data.holdout.push(HeldOut {
                        user: u as u32,
                        item: i as u32,
                        value,
                    });
                } else {
                    r.items.push(i as u32);
                    r.values.push(value);
                }
            }
            r.user_offsets.push(r.items.len());
        }
        (data, (0..items).map(|i| Id::Int(i as i64)).collect())
    }

    /// Items in id order, cut into blocks starting at `starts` (one per "rank").
    fn blocks_at(starts: &[usize]) -> ItemBlocks {
        let n = *starts.last().unwrap();
        ItemBlocks {
            row_of: (0..n as u32).collect(),
            order: (0..n as u32).collect(),
            starts: starts.to_vec(),
            per_rank: 1,
        }
    }

    /// `fit` on one process, items in one block, from `start` (None: from scratch).
    fn solo(
        data: &RankData,
        items: &[Id],
        hyper: &Hyper,
        globals: Globals,
        start: Option<TrainState>,
    ) -> Result<TrainState> {
        let blocks = blocks_at(&[0, items.len()]);
        let job = Job {
            data,
            blocks: &blocks,
            item_ids: items,
            hyper,
            globals,
        };
        fit(&Solo, &job, start, |_| Ok(ControlFlow::Continue(()))).map(|(state, rows)| {
            assert_eq!(rows, ItemRows::Own);
            state
        })
    }

    #[test]
    fn sgd_learns_planted_structure_and_is_deterministic() {
        let (data, items) = planted(200, 100, 3);
        let values = &data.ratings.values;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
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
        add_visits(&data.ratings, &order, &mut visits);
        let mut ratings = Vec::new();
        let r = &data.ratings;
        let pairs = schedule(&r.items, &r.values, &visits, &mut ratings).pairs;
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
            let start = Params::init(&r.user_ids, &items, &hyper);
            let run = |pass: &dyn Fn(PassRows) -> f64| {
                let mut p = start.clone();
                let sse = (0..3)
                    .map(|_| {
                        pass(PassRows {
                            users: p.users.as_mut_slice(),
                            items: p.items.as_mut_slice(),
                            width: p.width,
                        })
                    })
                    .sum::<f64>();
                (p, sse)
            };
            let chosen = run(&|rows| sgd_pass(rows, &ratings, pairs, &[], step, 3.0));
            let looped = run(&|rows| pass::tests::portable::<0>(rows, &ratings, pairs, step, 3.0));
            assert_eq!(chosen.0, looped.0, "k={factors}");
            assert_eq!(chosen.1, looped.1);
            if factors == 20 {
                let unrolled =
                    run(&|rows| pass::tests::portable::<24>(rows, &ratings, pairs, step, 3.0));
                assert_eq!(chosen.0, unrolled.0);
            }
            // A group of rows: only those items move, and only users who rated one.
            let blocks = blocks_at(&[0, 40, 80, 120]);
            let split = Schedule::new(r, &blocks, USER_RUN);
            let mut part = start.clone();
            let group = group_floats(&blocks, 1, part.width);
            for run in 0..split.n_runs() {
                let (ratings, pairs) = split.stretch(run, 1);
                let rows = PassRows {
                    users: part.users.as_mut_slice(),
                    items: &mut part.items.as_mut_slice()[group.clone()],
                    width: part.width,
                };
                sgd_pass(rows, ratings, pairs, &[], step, 3.0);
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
