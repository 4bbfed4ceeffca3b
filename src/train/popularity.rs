//! The implicit objective's popularity term: `w ln(1 + n)` added to the score of an item with
//! `n` training pairs, published in the item's bias so that every reader of the model
//! (`recommend`, `serve`, `evaluate`, a Parquet reader) ranks by one rule. The personal part of
//! an iALS score knows what a user likes, not how much more often everybody picks a best
//! seller; where views follow popularity the personal part alone ranks below the best-seller
//! list, and where taste rules a large `w` would drown it. `w` is chosen on the training data:
//! the same model fitted on the training pairs less a validation share (held out the way the
//! hold-out is, by another seed), its ranking of the validation pairs for each weight of
//! `WEIGHTS`, and the best kept unless it beats the largest weight by no more than one standard
//! error of their difference (paired user by user). The largest weight ranks as the popularity
//! list does (the personal part only breaks its ties), so where the personal part's gain is
//! within the noise of the validation split the model ranks as the best sellers do, and above
//! them only where it has shown it can.

use std::time::Instant;

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::Result;
use crate::ids::mix64;
use crate::mf::{Globals, Hyper, ImplicitHyper, Params};
use crate::ratings::OwnedRatings;

use super::data::{prepare, split_mask, Prepared};
use super::ranked::RankCheck;
use super::{fit_objective, ControlFlow};

/// The weights tried, in increasing order.
pub const WEIGHTS: [f32; 10] = [0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0];
/// The most epochs the choice's fit runs: iALS has converged long before (15 by default), and
/// a job started with `--epochs 100000` to run until preempted must not fit that long first.
pub const MOST_CHOICE_EPOCHS: usize = 30;

/// The epochs of the choice's fit for a run of `epochs`.
pub fn choice_epochs(epochs: usize) -> usize {
    epochs.min(MOST_CHOICE_EPOCHS)
}

/// The share of the training pairs the choice holds out.
pub const VALIDATION_SHARE: f64 = 0.2;
/// The ranking's cut-off the choice maximises (NDCG@K).
const K: usize = 20;

/// The weight chosen, and what each weight scored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Choice {
    /// The weight kept: the best, or the largest where the best beats it only within noise.
    pub weight: f32,
    /// The weight of the highest validation NDCG@20 (the smallest of equals).
    pub best: f32,
    /// `(weight, validation NDCG@20)` for each of `WEIGHTS`.
    pub ndcg: Vec<(f32, f64)>,
    /// `(weight, standard error of its NDCG@20's difference from the best's)`, paired by user.
    pub standard_error: Vec<(f32, f64)>,
    /// The popularity list's validation NDCG@20.
    pub popularity_ndcg: f64,
    /// The users ranked (those with validation pairs and training pairs).
    pub validation_users: u64,
    pub seconds: f64,
}

/// Choose the popularity weight of a model `hyper` describes, on `owned` (this rank's pairs
/// before the hold-out split; collective).
pub fn choose_weight(comm: &dyn Collective, owned: &OwnedRatings, hyper: &Hyper) -> Result<Choice> {
    let started = Instant::now();
    let mut settings = hyper.implicit.expect("the implicit objective's settings");
    settings.popularity_weight = 0.0;
    let validation = Hyper {
        holdout: VALIDATION_SHARE,
        seed: mix64(hyper.seed ^ 0x7A11_DA7E),
        epochs: choice_epochs(hyper.epochs),
        implicit: Some(settings),
        ..hyper.clone()
    };
    let mut prepared = prepare(comm, training_pairs(owned, hyper), &validation)?;
    // What the ranking needs of the validation pairs is taken before the fit (the sampled
    // users' lists), and the fit reads the values balanced in place: the choice runs beside
    // the job's own pairs, and is its peak of memory.
    let check = RankCheck::new(
        comm,
        &prepared.data,
        prepared.item_ids.len(),
        (K, MOST_USERS),
    );
    prepared.data.holdout = Vec::new();
    let n_items = prepared.item_ids.len();
    super::implicit::balance_in_place(&mut prepared.data.ratings, n_items, &validation);
    crate::memory::log(comm.rank(), "popularity weight: validation split made");
    let fitted = fit_objective(
        comm,
        &prepared,
        &validation,
        Globals::PREFERENCES,
        None,
        // A signal (preemption) is honoured between the choice's epochs as between training's.
        |_| {
            match crate::interrupt::agreed(comm) {
            Some(signal) => Err(crate::interrupt::stopped(
                comm,
                signal,
                "while choosing the popularity weight, before training began: nothing was saved; run the same command again",
            )),
            None => Ok(ControlFlow::Continue(())),
        }
        },
    );
    let (mut state, _) = comm.agree(fitted)?;
    crate::memory::log(comm.rank(), "popularity weight: fitted");
    let mut choice = score_weights(comm, (&prepared, &check), &mut state.params, &settings);
    choice.seconds = started.elapsed().as_secs_f64();
    Ok(choice)
}

/// `owned` less the pairs `hyper`'s hold-out keeps out.
fn training_pairs(owned: &OwnedRatings, hyper: &Hyper) -> OwnedRatings {
    let held = split_mask(owned, hyper);
    fn keep<T: Copy>(all: &[T], held: &[bool]) -> Vec<T> {
        all.iter()
            .zip(held)
            .filter(|(_, &h)| !h)
            .map(|(t, _)| *t)
            .collect()
    }
    OwnedRatings {
        users: owned.users.clone(),
        items: owned.items.clone(),
        triples: keep(&owned.triples, &held),
        times: match owned.times.len() == owned.triples.len() {
            true => keep(&owned.times, &held),
            false => Vec::new(),
        },
    }
}

/// The validation NDCG@20 of the model `params` holds (trained on `prepared`) with each weight
/// of `WEIGHTS`, and the weight kept (collective).
fn score_weights(
    comm: &dyn Collective,
    (prepared, check): (&Prepared, &RankCheck),
    params: &mut Params,
    settings: &ImplicitHyper,
) -> Choice {
    let counts = counts_by_row(prepared);
    let width = params.width;
    let biases: Vec<f32> = (params.items.as_slice().chunks_exact(width))
        .map(|row| row[0])
        .collect();
    let set_weight = |params: &mut Params, weight: f32| {
        let term = ImplicitHyper {
            popularity_weight: weight,
            ..*settings
        };
        let rows = params.items.as_mut_slice().chunks_exact_mut(width);
        for ((row, &bias), &n) in rows.zip(&biases).zip(&counts) {
            row[0] = bias + term.popularity_bonus(n);
        }
    };
    let user_ids = &prepared.data.ratings.user_ids;
    let by_weight: Vec<Vec<f64>> = WEIGHTS
        .iter()
        .map(|&weight| {
            set_weight(params, weight);
            let view = params.view();
            check.ndcg_by_user(
                view,
                user_ids,
                &prepared.item_ids,
                true,
                Globals::PREFERENCES,
            )
        })
        .collect();
    let paired = Paired::of(comm, &by_weight);
    let kept = paired.kept();
    // The popularity list's figure, from the same users (and the kept model's, as a check of
    // the paired means).
    set_weight(params, WEIGHTS[kept]);
    let ranking = check.rank(
        comm,
        params.view(),
        user_ids,
        &prepared.item_ids,
        true,
        Globals::PREFERENCES,
    );
    let mean = |sums: &[crate::metrics::RankSums]| {
        sums.first().and_then(|s| s.means()).map_or(0.0, |m| m[2])
    };
    Choice {
        weight: WEIGHTS[kept],
        best: WEIGHTS[paired.best],
        ndcg: WEIGHTS.iter().copied().zip(paired.means.clone()).collect(),
        standard_error: WEIGHTS.iter().copied().zip(paired.standard_error).collect(),
        popularity_ndcg: mean(&ranking.popular),
        validation_users: paired.users,
        seconds: 0.0,
    }
}

/// Each weight's mean validation NDCG and, paired user by user, how far from the best one's.
struct Paired {
    means: Vec<f64>,
    /// The first best: the smallest weight among equals.
    best: usize,
    /// The standard error of each weight's mean difference from the best's (0 for the best).
    standard_error: Vec<f64>,
    users: u64,
}

impl Paired {
    /// `by_weight[w]`: this rank's users' NDCG with weight w, users in one order (collective).
    fn of(comm: &dyn Collective, by_weight: &[Vec<f64>]) -> Paired {
        let mut sums: Vec<f64> = by_weight.iter().map(|v| v.iter().sum()).collect();
        sums.push(by_weight.first().map_or(0, |v| v.len()) as f64);
        comm.reduce_f64(&mut sums, Op::Sum);
        let n = sums.pop().unwrap_or(0.0);
        let means: Vec<f64> = sums.iter().map(|s| s / n.max(1.0)).collect();
        let mut best = 0;
        for (w, &m) in means.iter().enumerate() {
            if m > means[best] {
                best = w;
            }
        }
        let mut moments: Vec<f64> = by_weight
            .iter()
            .flat_map(|v| {
                let d = v.iter().zip(&by_weight[best]).map(|(x, b)| x - b);
                let (s1, s2) = d.fold((0.0, 0.0), |(s1, s2), d| (s1 + d, s2 + d * d));
                [s1, s2]
            })
            .collect();
        comm.reduce_f64(&mut moments, Op::Sum);
        let standard_error = moments
            .chunks_exact(2)
            .map(|m| match n > 1.0 {
                true => {
                    let mean = m[0] / n;
                    ((m[1] - n * mean * mean).max(0.0) / (n - 1.0) / n).sqrt()
                }
                false => 0.0,
            })
            .collect();
        Paired {
            means,
            best,
            standard_error,
            users: n as u64,
        }
    }

    /// The best weight, unless it beats the largest (which ranks as the best-seller list does)
    /// by no more than one standard error of their difference: a personal ranking a shop puts
    /// before its best sellers has to beat them by more than the validation split's noise. (A
    /// one-standard-error rule over every weight, as in choosing a penalty, cost 4% on REES46
    /// and 1% on MovieLens' time split, where the personal part is strong but the validation
    /// users few: only the step to the list itself is held to it.)
    fn kept(&self) -> usize {
        let list = self.means.len() - 1;
        match self.means[self.best] - self.means[list] <= self.standard_error[list] {
            true => list,
            false => self.best,
        }
    }
}

/// About how many validation users the choice ranks (a uniform sample of them above it,
/// `ranking::Sample`): each weight's ranking scores every one against every item, and a mean
/// over thousands of users tells the weights of the grid apart.
const MOST_USERS: u64 = 5000;

/// The job's training pairs of each item row (`prepared.item_counts` is by sorted id).
pub fn counts_by_row(prepared: &Prepared) -> Vec<u64> {
    prepared
        .blocks
        .order
        .iter()
        .map(|&sorted| prepared.item_counts[sorted as usize])
        .collect()
}

/// Add the popularity term of `settings` to the item biases of `params` (rows in training
/// order, `counts` by row).
pub fn add_term(params: &mut Params, counts: &[u64], settings: &ImplicitHyper) {
    let width = params.width;
    let rows = params.items.as_mut_slice().chunks_exact_mut(width);
    for (row, &n) in rows.zip(counts) {
        row[0] += settings.popularity_bonus(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;

    /// Per-user NDCG of three weights over `n` users: `gain` added to every user's figure of
    /// the best weight (the first), `spread` its per-user noise.
    fn figures(n: usize, gain: f64, spread: f64) -> Vec<Vec<f64>> {
        let base: Vec<f64> = (0..n)
            .map(|u| 0.2 + 0.1 * ((u * 7 % 11) as f64 / 11.0))
            .collect();
        let best = base
            .iter()
            .enumerate()
            .map(|(u, b)| b + gain + spread * if u % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        vec![best, base.iter().map(|b| b - 0.05).collect(), base]
    }

    #[test]
    fn the_best_weight_is_kept_only_when_it_beats_the_list_beyond_the_noise() {
        // A clear gain over the last weight (the list's order): the best is kept.
        let clear = Paired::of(&Solo, &figures(1000, 0.02, 0.01));
        assert_eq!((clear.best, clear.kept()), (0, 0));
        assert_eq!(clear.standard_error[0], 0.0, "the best against itself");
        // The same mean gain drowned in per-user noise: the list's order is kept.
        let noisy = Paired::of(&Solo, &figures(1000, 0.0005, 0.2));
        assert_eq!((noisy.best, noisy.kept()), (0, 2));
        // The standard error of a paired difference: sd / sqrt(n) (sd 0.2 here).
        let se = noisy.standard_error[2];
        assert!((se - 0.2 / 1000f64.sqrt()).abs() < 1e-3, "{se}");
    }
}
