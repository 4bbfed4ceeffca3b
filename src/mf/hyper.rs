//! The hyperparameters of a model: one typed struct, its defaults written once (`Hyper::DEFAULT`,
//! which the command line shows and uses).

use serde::{Deserialize, Serialize};

/// Training hyperparameters, with the original job's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Fraction of (user, item) pairs held out for evaluation [0.2; 0: none]. It decides which
    /// pairs train the model, so it is a hyperparameter (model.json of version 1 files without
    /// it: see `ModelMeta::from_json`).
    #[serde(default = "default_holdout")]
    pub holdout: f64,
    /// How the hold-out pairs are chosen [pair]; absent from files written before it existed
    /// and from those that hold out by pair.
    #[serde(default, skip_serializing_if = "HoldoutBy::is_pair")]
    pub holdout_by: HoldoutBy,
    /// What the model fits [explicit]; files written before it existed are explicit.
    #[serde(default)]
    pub objective: Objective,
    /// The implicit objective's settings (present exactly when `objective` is implicit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub implicit: Option<ImplicitHyper>,
}

/// What a model fits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// The observed values (ratings, event weights): FunkSVD by SGD, judged by RMSE.
    #[default]
    Explicit,
    /// Every (user, item) pair as a preference, observed ones with a confidence: iALS by
    /// conjugate gradient, judged by ranking metrics.
    Implicit,
}

impl Objective {
    pub fn name(&self) -> &'static str {
        match self {
            Objective::Explicit => "explicit",
            Objective::Implicit => "implicit",
        }
    }
}

/// The implicit objective's settings (`mf::als`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImplicitHyper {
    /// Confidence per unit of value: an observed pair weighs `1 + alpha |value|` [1].
    pub alpha: f32,
    /// The weight of every pair not observed [1].
    pub unobserved_weight: f32,
    /// Conjugate-gradient steps per row and epoch [3].
    pub cg_steps: usize,
    /// Confidences balanced per user: each user's values are scaled so that their observed
    /// pairs' extra confidence (`c - 1`) sums to `balance` x the number of items, whatever
    /// how many pairs the user has [0.05]. `None`: `1 + alpha |value|` as the values come
    /// (`--alpha` given, and every model written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<f32>,
    /// The weight `w` of the popularity term: an item's score is its bias plus the users'
    /// dot product plus `w ln(1 + n)`, `n` its training pairs (published in the item's bias;
    /// `popularity_bonus`). Chosen on a validation split unless given; 0 in models written
    /// before it existed.
    #[serde(default)]
    pub popularity_weight: f32,
}

impl ImplicitHyper {
    /// The objective's default epoch count (`Hyper::DEFAULT.epochs` is the explicit one's).
    pub const EPOCHS: usize = 15;

    pub const DEFAULT: ImplicitHyper = ImplicitHyper {
        alpha: 1.0,
        unobserved_weight: 1.0,
        cg_steps: 3,
        balance: Some(0.05),
        popularity_weight: 0.0,
    };

    /// What multiplies the values of a user whose values' magnitudes sum to `value_sum`
    /// against `n_items` items (training and fold-in alike): see `balance`.
    pub fn confidence_scale(&self, n_items: usize, value_sum: f64) -> f32 {
        match self.balance {
            Some(share) if value_sum > 0.0 => (share as f64 * n_items as f64 / value_sum) as f32,
            _ => 1.0,
        }
    }

    /// What the popularity term adds to the score of an item with `count` training pairs.
    pub fn popularity_bonus(&self, count: u64) -> f32 {
        self.popularity_weight * (count as f32).ln_1p()
    }
}

/// How the hold-out pairs are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldoutBy {
    /// By a hash of (user, item, seed): each pair alike, whatever its time.
    #[default]
    Pair,
    /// Each user's most recent interactions (by the time column): train on the past, test on
    /// the future.
    Time,
}

impl HoldoutBy {
    pub fn is_pair(&self) -> bool {
        *self == HoldoutBy::Pair
    }

    pub fn name(&self) -> &'static str {
        match self {
            HoldoutBy::Pair => "pair",
            HoldoutBy::Time => "time",
        }
    }
}

impl Hyper {
    pub const DEFAULT: Hyper = Hyper {
        factors: 20,
        epochs: 10,
        lr: 0.01,
        reg: 0.02,
        seed: 42,
        biased: true,
        init_std: 0.1,
        holdout: 0.2,
        holdout_by: HoldoutBy::Pair,
        objective: Objective::Explicit,
        implicit: None,
    };

    /// The flags that set these hyperparameters (the epoch count aside), for messages.
    pub fn flags(&self) -> String {
        let objective = match &self.implicit {
            None => format!("--objective explicit --lr {}", self.lr),
            Some(i) => format!(
                "--objective implicit {} --unobserved-weight {} --cg-steps {} --popularity-weight {}",
                match i.balance {
                    Some(b) => format!("--balance {b}"),
                    None => format!("--alpha {}", i.alpha),
                },
                i.unobserved_weight,
                i.cg_steps,
                i.popularity_weight
            ),
        };
        format!(
            "--factors {} {objective} --reg {} --seed {} --holdout {}{}{}",
            self.factors,
            self.reg,
            self.seed,
            self.holdout,
            match self.holdout_by {
                HoldoutBy::Pair => "",
                HoldoutBy::Time => " --holdout-by time",
            },
            if self.biased { "" } else { " --no-bias" }
        )
    }
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper::DEFAULT
    }
}

fn default_holdout() -> f64 {
    Hyper::DEFAULT.holdout
}
