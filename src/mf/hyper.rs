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
    };

    /// The flags that set these hyperparameters (the epoch count aside), for messages.
    pub fn flags(&self) -> String {
        format!(
            "--factors {} --lr {} --reg {} --seed {} --holdout {}{}{}",
            self.factors,
            self.lr,
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
