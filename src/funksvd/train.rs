//! The distributed epoch loop.
//!
//! Every rank owns its users' rows outright and holds a full copy of the item rows. Each epoch
//! is cut into `syncs_per_epoch` steps; in a step every rank runs SGD over a share of its users,
//! then one allreduce combines the item changes so every rank starts the next step with the same
//! item rows:
//!
//! ```text
//! items = snapshot + sum over ranks r of  w_r[i] * (items_r - snapshot)
//! ```
//!
//! with per-item weights that make the combined step match what one sequential SGD pass over
//! all ranks' ratings would have done (see `CombineWeights`). They are refreshed once per epoch
//! with one allreduce of two floats per item.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::rng::Rng;

use super::data::{RankRatings, UNKNOWN};
use super::kernel::{predict, prefetch_row, sgd_step, Step};

/// How many ratings ahead the SGD loop prefetches item rows.
const PREFETCH_AHEAD: usize = 4;

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
    /// Item synchronisations per epoch [8].
    pub syncs_per_epoch: usize,
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
            syncs_per_epoch: 8,
            init_std: 0.1,
        }
    }
}

/// The collective operations training needs; `Comm` in production, `Solo` in unit tests.
pub trait Collective {
    fn ranks(&self) -> usize;
    fn rank(&self) -> usize;
    fn sum_f32(&self, send: &[f32], recv: &mut [f32]);
    fn sum_f64(&self, values: &mut [f64]);
    /// Every rank learns whether any rank failed (see `Comm::agree`).
    fn agree(&self, local: Result<()>) -> Result<()>;
}

impl Collective for crate::comm::Comm {
    fn ranks(&self) -> usize {
        self.size()
    }
    fn rank(&self) -> usize {
        crate::comm::Comm::rank(self)
    }
    fn sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        self.allreduce_sum_f32(send, recv)
    }
    fn sum_f64(&self, values: &mut [f64]) {
        self.allreduce_sum_f64(values)
    }
    fn agree(&self, local: Result<()>) -> Result<()> {
        crate::comm::Comm::agree(self, local)
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
    fn sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        recv.copy_from_slice(send)
    }
    fn sum_f64(&self, _values: &mut [f64]) {}
    fn agree(&self, local: Result<()>) -> Result<()> {
        local
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

#[derive(Debug)]
/// Parameters of one rank: its users' rows and the shared item rows, `stride` floats per row.
pub struct Params {
    pub factors: usize,
    pub stride: usize,
    pub users: Vec<f32>,
    pub items: Vec<f32>,
}

impl Params {
    /// Initial rows from each id's own random stream: the same on every rank, for any layout.
    pub fn init(user_ids: &[Id], item_ids: &[Id], hyper: &Hyper) -> Params {
        let stride = hyper.factors + 1;
        let fill = |ids: &[Id], salt: u64| {
            let mut rows = vec![0.0f32; ids.len() * stride];
            for (id, row) in ids.iter().zip(rows.chunks_exact_mut(stride)) {
                let mut rng = Rng::new(hyper.seed, id.stable_hash() ^ salt);
                for v in &mut row[1..] {
                    *v = (rng.normal() * hyper.init_std as f64) as f32;
                }
            }
            rows
        };
        Params {
            factors: hyper.factors,
            stride,
            users: fill(user_ids, 0x7573_6572),
            items: fill(item_ids, 0x6974_656D),
        }
    }

    pub fn user(&self, u: usize) -> &[f32] {
        &self.users[u * self.stride..(u + 1) * self.stride]
    }

    pub fn item(&self, i: usize) -> &[f32] {
        &self.items[i * self.stride..(i + 1) * self.stride]
    }
}

/// Train; `on_epoch` sees each epoch's numbers (the caller logs them on rank 0).
/// Every rank must call this with the same `hyper`, `n_items` and `item_counts_global`.
pub fn train(
    comm: &dyn Collective,
    data: &RankRatings,
    item_ids: &[Id],
    hyper: &Hyper,
    globals: Globals,
    start: Option<TrainState>,
    mut after_epoch: impl FnMut(&TrainState) -> Result<()>,
) -> Result<TrainState> {
    let TrainState {
        epoch: done,
        mut params,
        mut history,
    } = start.unwrap_or_else(|| TrainState {
        epoch: 0,
        params: Params::init(&data.user_ids, item_ids, hyper),
        history: Vec::with_capacity(hyper.epochs),
    });
    let stride = params.stride;
    let n_items = item_ids.len();
    let mut weights = CombineWeights::new(n_items);
    let step = Step {
        lr: hyper.lr,
        reg: hyper.reg,
        biased: hyper.biased,
    };
    let mu = if hyper.biased {
        globals.global_mean
    } else {
        0.0
    };
    let total_ratings = {
        let mut n = [data.n_ratings() as f64];
        comm.sum_f64(&mut n);
        n[0]
    };
    // Buffers for the combine, allocated once.
    let distributed = comm.ranks() > 1;
    let (mut snapshot, mut send, mut recv) = if distributed {
        (
            params.items.clone(),
            vec![0.0f32; params.items.len()],
            vec![0.0f32; params.items.len()],
        )
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    let mut order: Vec<u32> = Vec::with_capacity(data.n_users());
    let syncs = hyper.syncs_per_epoch.max(1);
    for epoch in done + 1..=hyper.epochs {
        let started = Instant::now();
        // A rank failing mid-training must not leave the others in the next allreduce.
        let fault = crate::fault::point("epoch", comm.rank())
            .and_then(|_| crate::fault::point(&format!("epoch-{epoch}"), comm.rank()));
        comm.agree(fault)?;
        // A fresh user order each epoch, from a stream of this rank and epoch only, so a run
        // resumed at any epoch visits users exactly as an uninterrupted one.
        order.clear();
        order.extend(0..data.n_users() as u32);
        let mut rng = Rng::new(hyper.seed, ((comm.rank() as u64) << 32) | epoch as u64);
        rng.shuffle(&mut order);
        let bounds = chunk_bounds(&order, data, syncs);
        if distributed {
            weights.refresh(comm, data, &params, hyper);
        }
        let mut sse = 0.0f64;
        for s in 0..syncs {
            for &u in &order[bounds[s]..bounds[s + 1]] {
                let u = u as usize;
                let (items, values) = data.ratings_of(u);
                let user_row = &mut params.users[u * stride..(u + 1) * stride];
                for (j, (&i, &r)) in items.iter().zip(values).enumerate() {
                    // The item rows do not fit in L2: ask for one a few ratings ahead.
                    if let Some(&ahead) = items.get(j + PREFETCH_AHEAD) {
                        prefetch_row(&params.items, ahead as usize * stride, stride);
                    }
                    let i = i as usize;
                    let item_row = &mut params.items[i * stride..(i + 1) * stride];
                    let err = sgd_step(user_row, item_row, r - mu, step);
                    sse += (err as f64) * (err as f64);
                }
            }
            if distributed {
                combine(
                    comm,
                    &mut params.items,
                    &mut snapshot,
                    &mut send,
                    &mut recv,
                    &weights,
                    stride,
                );
            }
        }
        let hold = holdout_errors(data, &params, hyper, globals);
        let mut sums = [sse, hold.squared, hold.n];
        comm.sum_f64(&mut sums);
        let seconds = started.elapsed().as_secs_f64();
        let train_rmse = (sums[0] / total_ratings.max(1.0)).sqrt();
        if !train_rmse.is_finite()
            || params
                .items
                .iter()
                .take(stride * 64)
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
    Ok(TrainState {
        epoch: hyper.epochs.max(done),
        params,
        history,
    })
}

/// The weights of this rank's change to each item in the combine: one for the bias, one for
/// the factors.
///
/// Between two syncs an SGD update contracts item i's row towards its fixed point by a factor
/// (1 - lr * c_u) with c_u = |p_u|^2 + reg for the factors (1 + reg for the bias), so rank r's
/// updates cover a fraction F(C_ri) = 1 - exp(-lr * C_ri / S) of the way towards its own fixed
/// point, where C_ri is the sum of c_u over rank r's ratings of item i and S the syncs per epoch.
/// One sequential pass over every rank's ratings would cover F(C_i) of the way towards the
/// C-weighted mean of the ranks' fixed points. Hence
///
/// ```text
/// w_r = (C_ri / C_i) * F(C_i) / F(C_ri)
/// ```
///
/// which is 1 (a plain sum) for an item that moves little between syncs and C_ri / C_i (a
/// weighted mean) for one that reaches its fixed point within a step: a plain sum there
/// overshoots and diverges on popular items, a plain mean slows every item down.
struct CombineWeights {
    bias: Vec<f32>,
    factors: Vec<f32>,
    /// [bias C_ri for all items, factor C_ri for all items], then summed over ranks.
    local: Vec<f64>,
    global: Vec<f64>,
}

impl CombineWeights {
    fn new(n_items: usize) -> Self {
        CombineWeights {
            bias: vec![0.0; n_items],
            factors: vec![0.0; n_items],
            local: vec![0.0; 2 * n_items],
            global: vec![0.0; 2 * n_items],
        }
    }

    /// Recompute from the current user rows (called at the start of each epoch).
    fn refresh(
        &mut self,
        comm: &dyn Collective,
        data: &RankRatings,
        params: &Params,
        hyper: &Hyper,
    ) {
        let n_items = self.bias.len();
        let reg = hyper.reg as f64;
        self.local.iter_mut().for_each(|v| *v = 0.0);
        let (bias_c, factor_c) = self.local.split_at_mut(n_items);
        for u in 0..data.n_users() {
            let row = &params.user(u)[1..];
            let c_u = row.iter().map(|&x| x as f64 * x as f64).sum::<f64>() + reg;
            for &i in data.ratings_of(u).0 {
                bias_c[i as usize] += 1.0 + reg;
                factor_c[i as usize] += c_u;
            }
        }
        self.global.copy_from_slice(&self.local);
        comm.sum_f64(&mut self.global);
        let rate = hyper.lr as f64 / hyper.syncs_per_epoch.max(1) as f64;
        let reach = |c: f64| -(-rate * c).exp_m1();
        let weight = |l: f64, g: f64| {
            if l <= 0.0 || g <= 0.0 {
                0.0
            } else {
                ((l / g) * reach(g) / reach(l)) as f32
            }
        };
        for i in 0..n_items {
            self.bias[i] = weight(self.local[i], self.global[i]);
            self.factors[i] = weight(self.local[n_items + i], self.global[n_items + i]);
        }
    }
}

/// One allreduce: items = snapshot + sum_r w_r * (items_r - snapshot); then snapshot = items.
fn combine(
    comm: &dyn Collective,
    items: &mut [f32],
    snapshot: &mut [f32],
    send: &mut [f32],
    recv: &mut [f32],
    weights: &CombineWeights,
    stride: usize,
) {
    for (i, (&wb, &wf)) in weights.bias.iter().zip(&weights.factors).enumerate() {
        let row = i * stride..(i + 1) * stride;
        let (s, cur, old) = (&mut send[row.clone()], &items[row.clone()], &snapshot[row]);
        s[0] = wb * (cur[0] - old[0]);
        for ((s, &cur), &old) in s[1..].iter_mut().zip(&cur[1..]).zip(&old[1..]) {
            *s = wf * (cur - old);
        }
    }
    comm.sum_f32(send, recv);
    for ((cur, old), &d) in items.iter_mut().zip(snapshot.iter_mut()).zip(recv.iter()) {
        *cur = *old + d;
        *old = *cur;
    }
}

/// Where each sync step's users start and end in `order`, so every step has about the same
/// number of ratings.
fn chunk_bounds(order: &[u32], data: &RankRatings, syncs: usize) -> Vec<usize> {
    let total = data.n_ratings();
    let mut bounds = Vec::with_capacity(syncs + 1);
    bounds.push(0);
    let mut seen = 0usize;
    let mut next = 1;
    for (pos, &u) in order.iter().enumerate() {
        while next < syncs && seen >= total * next / syncs {
            bounds.push(pos);
            next += 1;
        }
        let u = u as usize;
        seen += data.user_offsets[u + 1] - data.user_offsets[u];
    }
    while bounds.len() < syncs + 1 {
        bounds.push(order.len());
    }
    bounds
}

/// Errors of the current model on this rank's hold-out pairs.
pub fn holdout_errors(
    data: &RankRatings,
    params: &Params,
    hyper: &Hyper,
    globals: Globals,
) -> ErrorSums {
    let mut sums = ErrorSums::default();
    for h in &data.holdout {
        let user = (h.user != UNKNOWN).then(|| params.user(h.user as usize));
        let item = (h.item != UNKNOWN).then(|| params.item(h.item as usize));
        sums.add(
            h.value,
            predict(
                user,
                item,
                globals.global_mean,
                hyper.biased,
                globals.rating_range,
            ),
        );
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
    use crate::funksvd::data::HeldOut;

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
        (data, (0..items).map(|i| Id::Int(i as i64)).collect())
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
        } = train(&Solo, &data, &items, &hyper, globals, None, |_| Ok(())).unwrap();
        let first = &history[0];
        let last = history.last().unwrap();
        assert!(
            last.train_rmse < first.train_rmse * 0.6,
            "{first:?} -> {last:?}"
        );
        assert!(last.holdout_rmse.unwrap() < first.holdout_rmse.unwrap() * 0.8);
        let again = train(&Solo, &data, &items, &hyper, globals, None, |_| Ok(())).unwrap();
        assert_eq!(params.items, again.params.items);
        assert_eq!(params.users, again.params.users);
        // Stopped after 12 epochs and resumed: the same model, bit for bit.
        let first = Hyper {
            epochs: 12,
            ..hyper.clone()
        };
        let part = train(&Solo, &data, &items, &first, globals, None, |_| Ok(())).unwrap();
        let resumed = train(
            &Solo,
            &data,
            &items,
            &hyper,
            globals,
            Some(part),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(resumed.epoch, 30);
        assert_eq!(resumed.history.len(), 30);
        assert_eq!(params.items, resumed.params.items);
        assert_eq!(params.users, resumed.params.users);
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
        let err = train(&Solo, &data, &items, &hyper, globals, None, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("lower --lr"), "{err}");
    }

    #[test]
    fn sync_chunks_cover_every_user_once() {
        let (data, _) = planted(37, 5, 2);
        let order: Vec<u32> = (0..37).collect();
        for syncs in [1, 2, 4, 7, 50] {
            let b = chunk_bounds(&order, &data, syncs);
            assert_eq!(b.len(), syncs + 1);
            assert_eq!((b[0], b[syncs]), (0, 37));
            assert!(b.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
