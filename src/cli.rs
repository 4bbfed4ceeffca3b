//! Command-line interface: every flag of SPEC "Commands", with defaults and examples in --help.

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::features::{Aggregate, EventWeights, ValueRule, DEFAULT_EVENT_WEIGHTS};
use crate::funksvd::Hyper;
use crate::ingest::{Format, InputSpec};

#[derive(Parser, Debug)]
#[command(
    name = "funksvd",
    version,
    about = "Distributed FunkSVD recommender training over MPI, from clickstream data on local disk or S3/MinIO",
    long_about = "Distributed FunkSVD recommender training over MPI.\n\n\
        Run it under a launcher (mpirun, srun, an MPIJob) for N ranks, or alone for one. Every rank \
        reads its own slice of the dataset, ratings are routed to the rank that owns their user, each \
        rank trains its users while blocks of item factors rotate between the ranks, and at the end \
        of each epoch they go once more round the ring, leaving the item factors identical on \
        every rank.",
    after_help = "Examples:\n  \
        mpirun -n 2 funksvd generate --out data/events --events 1000000\n  \
        mpirun -n 2 funksvd train --data data/events --model models/demo\n  \
        funksvd evaluate --model models/demo --data data/events --split holdout\n  \
        mpirun -n 4 funksvd train --data s3://shop/clickstream/ --model s3://shop/models/funksvd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model on a dataset (the distributed job).
    #[command(after_help = "Examples:\n  \
        mpirun -n 2 funksvd train --data data/events --model models/demo\n  \
        mpirun -n 4 funksvd train --data ratings.csv --rating-col rating --user-col userId --item-col movieId --model models/ml\n  \
        funksvd train --data events.csv --event-col event_type --event-weights view=1,cart=3,purchase=5 --model models/shop")]
    Train(TrainArgs),
    /// Score a saved model on a dataset; prints metrics as JSON on stdout.
    #[command(after_help = "Examples:\n  \
        funksvd evaluate --model models/demo --data data/events\n  \
        mpirun -n 2 funksvd evaluate --model models/demo --data data/events --split holdout")]
    Evaluate(EvaluateArgs),
    /// Check the cluster: ranks, hosts, cores, memory, collectives, storage. Exit 0 if all is well.
    #[command(after_help = "Examples:\n  \
        mpirun -n 4 funksvd verify\n  \
        mpirun -n 4 funksvd verify --data s3://shop/events --model s3://shop/models/funksvd --json")]
    Verify(VerifyArgs),
    /// Write a synthetic clickstream with planted low-rank structure.
    #[command(after_help = "Examples:\n  \
        funksvd generate --out data/events\n  \
        mpirun -n 2 funksvd generate --out data/big --users 100000 --items 20000 --events 5000000 --files 8")]
    Generate(GenerateArgs),
}

/// Where the ratings come from in the input rows.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Column with the user id (integer or string).
    #[arg(long, default_value = "user_id")]
    pub user_col: String,
    /// Column with the item id [default: product_id, falling back to item_id].
    #[arg(long)]
    pub item_col: Option<String>,
    /// Column with the event type (view, add_to_cart, ...).
    #[arg(long, default_value = "event_type")]
    pub event_col: String,
    /// Event type -> rating weight; other event types are skipped and counted.
    #[arg(long, default_value = DEFAULT_EVENT_WEIGHTS)]
    pub event_weights: String,
    /// Use this numeric column as an explicit rating (no event mapping).
    #[arg(long)]
    pub rating_col: Option<String>,
    /// Column with the event time (kept for reference; not needed for training).
    #[arg(long, default_value = "timestamp")]
    pub time_col: String,
    /// How repeated (user, item) values combine.
    #[arg(long, value_enum, default_value_t = Aggregate::Max)]
    pub aggregate: Aggregate,
    /// Input format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
}

impl InputArgs {
    pub fn spec(&self) -> Result<InputSpec> {
        let (value_col, rule) = match &self.rating_col {
            Some(col) => (col.clone(), ValueRule::Rating),
            None => (
                self.event_col.clone(),
                ValueRule::Events(EventWeights::parse(&self.event_weights)?),
            ),
        };
        Ok(InputSpec {
            user_col: self.user_col.clone(),
            item_col: self.item_col.clone(),
            value_col,
            rule,
            format: self.format,
        })
    }
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset: a file or a prefix (/dir, file:///dir, s3://bucket/prefix).
    #[arg(long)]
    pub data: String,
    /// Where to write the model (a prefix: model.json, users.parquet, items.parquet).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub input: InputArgs,
    /// Latent factors per user and item.
    #[arg(long, default_value_t = 20)]
    pub factors: usize,
    /// Passes over the training ratings.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub lr: f32,
    /// L2 regularisation.
    #[arg(long, default_value_t = 0.02, allow_negative_numbers = true)]
    pub reg: f32,
    /// Seed for initial factors, the hold-out split and the visiting order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Fraction of (user, item) pairs held out for evaluation (0 disables).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub holdout: f64,
    /// Pure FunkSVD: no global mean, no biases.
    #[arg(long)]
    pub no_bias: bool,
    /// Ignored (kept so existing job scripts run): ranks now pass item blocks to each other,
    /// one exchange per rank per epoch, which needs no tuning.
    #[arg(long, value_name = "N", hide = true)]
    pub syncs_per_epoch: Option<usize>,
    /// Save the full training state under the model prefix every N epochs (_checkpoints/).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue from the newest complete checkpoint under --model (same data, flags and ranks).
    #[arg(long)]
    pub resume: bool,
}

impl TrainArgs {
    /// The hyperparameters, checked; errors name the flag.
    pub fn hyper(&self) -> Result<Hyper> {
        if self.factors == 0 || self.factors > 4096 {
            return Err(Error::usage(format!(
                "--factors {}: must be between 1 and 4096",
                self.factors
            )));
        }
        if self.epochs == 0 {
            return Err(Error::usage("--epochs 0: must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::usage(format!(
                "--lr {}: must be a positive number",
                self.lr
            )));
        }
        if !(self.reg.is_finite() && self.reg >= 0.0) {
            return Err(Error::usage(format!(
                "--reg {}: must be zero or positive",
                self.reg
            )));
        }
        if !(0.0..1.0).contains(&self.holdout) {
            return Err(Error::usage(format!(
                "--holdout {}: must be at least 0 and below 1 (it is the fraction of pairs kept out)",
                self.holdout
            )));
        }
        if self.syncs_per_epoch == Some(0) {
            return Err(Error::usage("--syncs-per-epoch 0: must be at least 1"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::usage("--checkpoint-every 0: must be at least 1"));
        }
        Ok(Hyper {
            factors: self.factors,
            epochs: self.epochs,
            lr: self.lr,
            reg: self.reg,
            seed: self.seed,
            biased: !self.no_bias,
            ..Hyper::default()
        })
    }
}

/// Which pairs `evaluate` scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// Every pair of the dataset.
    All,
    /// Only pairs the model trained on (by the model's seed and hold-out fraction).
    Train,
    /// Only pairs the model held out.
    Holdout,
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// The model to score (a prefix holding model.json).
    #[arg(long)]
    pub model: String,
    /// Dataset to score on.
    #[arg(long)]
    pub data: String,
    /// Which pairs to score, using the model's seed and hold-out fraction.
    #[arg(long, value_enum, default_value_t = Split::All)]
    pub split: Split,
    /// Column with the user id [default: as the model was trained].
    #[arg(long)]
    pub user_col: Option<String>,
    /// Column with the item id [default: as the model was trained].
    #[arg(long)]
    pub item_col: Option<String>,
    /// Column with the event type [default: as the model was trained].
    #[arg(long)]
    pub event_col: Option<String>,
    /// Event type -> rating weight [default: the model's].
    #[arg(long)]
    pub event_weights: Option<String>,
    /// Explicit rating column [default: as the model was trained].
    #[arg(long)]
    pub rating_col: Option<String>,
    /// How repeated (user, item) values combine [default: as the model was trained].
    #[arg(long, value_enum)]
    pub aggregate: Option<Aggregate>,
    /// Input format [default: auto].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Check that every rank can list and read this dataset (and size the bandwidth test by its items).
    #[arg(long)]
    pub data: Option<String>,
    /// Check that rank 0 can write (and delete) a probe object at this model location.
    #[arg(long)]
    pub model: Option<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Factors of the model, for the size of the bandwidth test.
    #[arg(long, default_value_t = 20)]
    pub factors: usize,
    /// Items of the model when --data is not given, for the size of the bandwidth test.
    #[arg(long, default_value_t = 100_000)]
    pub items: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Parquet,
    Csv,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Output folder (/dir, file:///dir, s3://bucket/prefix).
    #[arg(long)]
    pub out: String,
    /// Distinct users.
    #[arg(long, default_value_t = 10_000)]
    pub users: usize,
    /// Distinct items.
    #[arg(long, default_value_t = 2_000)]
    pub items: usize,
    /// Events in total.
    #[arg(long, default_value_t = 500_000)]
    pub events: usize,
    /// Files to split the events over (written in parallel by the ranks).
    #[arg(long, default_value_t = 4)]
    pub files: usize,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = 128 * 1024)]
    pub row_group_size: usize,
    /// Rank of the hidden user/item structure.
    #[arg(long, default_value_t = 8)]
    pub latent: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OutFormat::Parquet)]
    pub format: OutFormat,
}

impl GenerateArgs {
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--users", self.users),
            ("--items", self.items),
            ("--files", self.files),
            ("--row-group-size", self.row_group_size),
            ("--latent", self.latent),
        ] {
            if v == 0 {
                return Err(Error::usage(format!("{flag} 0: must be at least 1")));
            }
        }
        if self.users > u32::MAX as usize || self.items > u32::MAX as usize {
            return Err(Error::usage("--users/--items: at most 4294967295"));
        }
        Ok(())
    }
}
