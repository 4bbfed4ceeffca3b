//! Command-line interface: every flag of SPEC "Commands", with defaults and examples in --help.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::input::{
    parse_delimiter, Aggregate, EventWeights, Format, Input, InputSettings, DEFAULT_EVENT_COL,
    DEFAULT_EVENT_WEIGHTS, DEFAULT_TIME_COL, DEFAULT_USER_COL,
};
use crate::mf::{HoldoutBy, Hyper, ImplicitHyper, Objective};

#[derive(Parser, Debug)]
#[command(
    name = "funksvd",
    version,
    about = "Distributed FunkSVD recommender training over MPI, from clickstream data on local disk or S3/MinIO",
    long_about = "Distributed FunkSVD recommender training over MPI.\n\n\
        Run it under a launcher (mpirun, srun, an MPIJob) for N ranks, or alone for one. Every rank \
        reads its own slice of the dataset, ratings are routed to the rank that owns their user, each \
        rank trains its users while blocks of item factors rotate between the ranks (kept in \
        memory the ranks of a node share, or passed round the ring between nodes), and every rank \
        ends each epoch with the same item factors.",
    after_help = "Examples:\n  \
        mpirun -n 2 funksvd generate --out data/events --events 1000000\n  \
        mpirun -n 2 funksvd train --data data/events --model models/demo\n  \
        funksvd evaluate --model models/demo --data data/events --split holdout\n  \
        mpirun -n 4 funksvd train --data s3://shop/clickstream/ --model s3://shop/models/funksvd"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Seconds a rank may go unheard (its host down, cut off or frozen) before the job stops,
    /// naming it; 0 turns the watch off [default: FUNKSVD_STALL_TIMEOUT, else 60].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub stall_timeout: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model on a dataset (the distributed job).
    #[command(after_help = "Examples:\n  \
        mpirun -n 2 funksvd train --data data/events --model models/demo\n  \
        mpirun -n 4 funksvd train --data ratings.csv --rating-col rating --user-col userId --item-col movieId --model models/ml\n  \
        funksvd train --data events.csv --event-col event_type --event-weights view=1,cart=3,purchase=5 --model models/shop\n  \
        mpirun -n 2 funksvd train --data data/events --model models/funk --objective explicit --lr 0.01\n\n\
        Objective: events (no --rating-col) train iALS (--objective implicit) with confidences balanced\n  \
        per user and a popularity term whose weight is chosen on a validation split of the training\n  \
        pairs; ratings (--rating-col) train FunkSVD by SGD (--objective explicit), the original job.\n  \
        The closing line gives the hold-out NDCG@20 beside the best-seller list's.")]
    Train(TrainArgs),
    /// Score a saved model on a dataset; prints metrics as JSON on stdout.
    #[command(after_help = "Examples:\n  \
        funksvd evaluate --model models/demo --data data/events\n  \
        mpirun -n 2 funksvd evaluate --model models/demo --data data/events --split holdout")]
    Evaluate(EvaluateArgs),
    /// Top-N items for every user (or the most similar items of every item), distributed.
    #[command(after_help = "Examples:\n  \
        mpirun -n 2 funksvd recommend --model models/demo --out recs/demo --top 20 --data data/events\n  \
        mpirun -n 2 funksvd recommend --model models/demo --out recs/some --top 10 --users users.csv --data data/events\n  \
        mpirun -n 2 funksvd recommend --model models/demo --out recs/similar --top 20 --similar-items\n\n\
        Output: OUT/part-RRRRR.parquet (one per rank; user_id, rank, item_id, score, source), then\n\
        OUT/_SUCCESS (a JSON manifest) written last: no _SUCCESS, no finished output.")]
    Recommend(RecommendArgs),
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
    /// Recommendations over HTTP/JSON from the published model (one process, no MPI; picks up
    /// each newly published model by itself).
    #[command(after_help = "Examples:\n  \
        funksvd serve --model models/demo --data data/events\n  \
        funksvd serve --model s3://shop/models/funksvd --data s3://shop/clickstream/ --listen 0.0.0.0:8080 --token-file /run/secrets/token\n\n\
        Endpoints: GET /v1/recommend?user=ID&n=10, POST /v1/recommend {\"items\": [...], \"n\": 10},\n  \
        GET /v1/similar?item=ID&n=10, GET /v1/predict?user=ID&item=ID, GET /healthz, GET /metrics, GET /")]
    Serve(ServeArgs),
    /// Search hyperparameters: trials of train's flags over groups of ranks, ASHA early
    /// stopping, then the best configuration trained on all ranks and published.
    #[command(after_help = "Examples:\n  \
        mpirun -n 2 funksvd tune --data ratings.csv --rating-col rating --user-col userId --item-col movieId --model models/ml \\\n      \
        --space 'lr=log:0.002..0.05 reg=log:0.005..0.2 factors=16,32,64,128 epochs=10..60' --trials 40\n  \
        mpirun -n 4 funksvd tune --data data/events --model models/shop --objective implicit --metric ndcg@20 \\\n      \
        --space 'alpha=log:1..100 reg=log:0.1..1000 factors=32,64' --ranks-per-trial 2\n  \
        mpirun -n 2 funksvd tune ... --resume     (the same flags: runs the trials not finished)\n\n\
        Space: NAME=a,b,c (a list), NAME=lo..hi (uniform), NAME=log:lo..hi (log-uniform); NAME is one of\n  \
        factors, epochs, lr, reg, objective, alpha, balance, popularity-weight, unobserved-weight,\n  \
        cg-steps, no-bias. Every dimension a list: the grid. The other flags of train set what every trial shares.\n\n\
        Output: MODEL/_tune/trials.parquet (a row per trial and measurement), MODEL/_tune/best.json, and the\n  \
        best trial's configuration trained on all ranks and published at MODEL (model.json \"tuned\").")]
    Tune(TuneArgs),
}

/// Where the ratings come from in the input rows.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Column with the user id (integer or string).
    #[arg(long, default_value = DEFAULT_USER_COL)]
    pub user_col: String,
    /// Column with the item id [default: product_id, falling back to item_id].
    #[arg(long)]
    pub item_col: Option<String>,
    /// Column with the event type (view, add_to_cart, ...).
    #[arg(long, default_value = DEFAULT_EVENT_COL)]
    pub event_col: String,
    /// Event type -> rating weight; other event types are skipped and counted.
    #[arg(long, default_value = DEFAULT_EVENT_WEIGHTS)]
    pub event_weights: String,
    /// Use this numeric column as an explicit rating (no event mapping).
    #[arg(long)]
    pub rating_col: Option<String>,
    /// Column with the event time (read by --holdout-by time; integers, timestamps, or text
    /// such as 2019-11-01 00:00:00 UTC).
    #[arg(long, default_value = DEFAULT_TIME_COL)]
    pub time_col: String,
    /// How repeated (user, item) values combine.
    #[arg(long, value_parser = aggregate_parser(), default_value = "max")]
    pub aggregate: Aggregate,
    /// Input format.
    #[arg(long, value_parser = format_parser(), default_value = "auto")]
    pub format: Format,
    /// CSV field separator: one character, or `tab` [default: a tab for .tsv files, else a comma].
    #[arg(long, value_parser = delimiter_parser())]
    pub delimiter: Option<char>,
}

impl InputArgs {
    /// How to read the dataset; errors name the flag.
    pub fn input(&self) -> Result<Input> {
        Ok(Input {
            settings: InputSettings {
                format: self.format,
                user_col: self.user_col.clone(),
                item_col: self.item_col.clone(),
                event_col: self.event_col.clone(),
                rating_col: self.rating_col.clone(),
                time_col: self.time_col.clone(),
                aggregate: self.aggregate,
                delimiter: self.delimiter,
            },
            weights: EventWeights::parse(&self.event_weights)?,
            read_time: false,
            user_cost: 0,
        })
    }
}

/// `--aggregate`'s values, with their help.
fn aggregate_parser() -> impl TypedValueParser<Value = Aggregate> {
    PossibleValuesParser::new([
        PossibleValue::new("max").help("The strongest signal: a purchase beats a view"),
        PossibleValue::new("sum").help("Every event counts"),
    ])
    .map(|v| match v.as_str() {
        "sum" => Aggregate::Sum,
        _ => Aggregate::Max,
    })
}

/// `--holdout-by`'s values, with their help.
fn holdout_by_parser() -> impl TypedValueParser<Value = HoldoutBy> {
    PossibleValuesParser::new([
        PossibleValue::new("pair")
            .help("A hash of (user, item, seed): the same pairs whatever the ranks or files"),
        PossibleValue::new("time").help(
            "Each user's latest interactions by --time-col (a pair's time: its latest event)",
        ),
    ])
    .map(|v| match v.as_str() {
        "time" => HoldoutBy::Time,
        _ => HoldoutBy::Pair,
    })
}

fn objective_parser() -> impl TypedValueParser<Value = Objective> {
    PossibleValuesParser::new([
        PossibleValue::new("explicit")
            .help("FunkSVD by SGD on the observed values (ratings, event weights), judged by RMSE"),
        PossibleValue::new("implicit").help(
            "iALS: every pair a preference, the observed ones with confidence 1 + alpha x value; for clicks, judged by ranking (NDCG@20)",
        ),
    ])
    .map(|v| match v.as_str() {
        "implicit" => Objective::Implicit,
        _ => Objective::Explicit,
    })
}

/// `--delimiter`: checked by `input::parse_delimiter`.
fn delimiter_parser() -> impl TypedValueParser<Value = char> {
    clap::builder::NonEmptyStringValueParser::new()
        .try_map(|text| parse_delimiter(&text).map_err(|e| e.to_string()))
}

/// `--format`'s values, with their help.
fn format_parser() -> impl TypedValueParser<Value = Format> {
    PossibleValuesParser::new([
        PossibleValue::new("auto")
            .help("By file name: .parquet/.pq/.parq are Parquet, .csv/.tsv/.txt are CSV (.tsv tab-separated)"),
        PossibleValue::new("parquet"),
        PossibleValue::new("csv"),
    ])
    .map(|v| match v.as_str() {
        "parquet" => Format::Parquet,
        "csv" => Format::Csv,
        _ => Format::Auto,
    })
}

/// Most epochs one run may ask for: model.json and each checkpoint record every epoch's figures
/// (about 100 bytes each), and SGD on any real dataset has long converged.
pub const MAX_EPOCHS: usize = 100_000;

#[derive(Args, Debug, Clone)]
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
    #[arg(long, default_value_t = Hyper::DEFAULT.factors)]
    pub factors: usize,
    /// Passes over the training ratings [10 for the explicit objective, 15 for the implicit
    /// one].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// SGD learning rate (the explicit objective's; the implicit objective has none) [0.01].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// L2 regularisation.
    #[arg(long, default_value_t = Hyper::DEFAULT.reg, allow_negative_numbers = true)]
    pub reg: f32,
    /// Seed for initial factors, the hold-out split and the visiting order.
    #[arg(long, default_value_t = Hyper::DEFAULT.seed)]
    pub seed: u64,
    /// Fraction of (user, item) pairs held out for evaluation (0 disables).
    #[arg(long, default_value_t = Hyper::DEFAULT.holdout, allow_negative_numbers = true)]
    pub holdout: f64,
    /// Which pairs are held out: by a hash of (user, item, seed), or each user's most recent
    /// interactions by --time-col (train on the past, test on the future).
    #[arg(long, value_parser = holdout_by_parser(), default_value = "pair")]
    pub holdout_by: HoldoutBy,
    /// Pure FunkSVD: no global mean, no biases (implicit: no item biases).
    #[arg(long)]
    pub no_bias: bool,
    /// What the model fits: the observed values (FunkSVD), or every pair as a preference
    /// weighted by confidence (iALS, for clickstreams) [default: implicit for events, explicit
    /// with --rating-col].
    #[arg(long, value_parser = objective_parser())]
    pub objective: Option<Objective>,
    /// Implicit: confidence per unit of value, an observed pair weighs 1 + alpha x value, the
    /// same for every user [default: confidences balanced per user, see --balance].
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f32>,
    /// Implicit: each user's observed pairs together weigh B x the number of items beyond
    /// their weight of 1, however many pairs the user has [0.05].
    #[arg(long, value_name = "B", allow_negative_numbers = true)]
    pub balance: Option<f32>,
    /// Implicit: the weight W of the popularity term, W ln(1 + the item's training pairs)
    /// added to every score [default: chosen on a validation split of the training pairs].
    #[arg(long, value_name = "W", allow_negative_numbers = true)]
    pub popularity_weight: Option<f32>,
    /// Implicit: the weight of every pair not observed [1].
    #[arg(long, allow_negative_numbers = true)]
    pub unobserved_weight: Option<f32>,
    /// Implicit: conjugate-gradient steps per user and item row and epoch [3].
    #[arg(long, value_name = "N")]
    pub cg_steps: Option<usize>,
    /// No effect, with a warning (kept so job scripts written for the allreduce design still
    /// run): the item blocks' rotation needs no tuning.
    #[arg(long, value_name = "N", hide = true)]
    pub syncs_per_epoch: Option<usize>,
    /// Save the full training state under the model prefix every N epochs (_checkpoints/).
    #[arg(long, value_name = "N")]
    pub checkpoint_every: Option<usize>,
    /// Continue from the newest complete checkpoint under --model (same data, flags and ranks).
    #[arg(long)]
    pub resume: bool,
    /// Log the hold-out NDCG@K (and recall@K) on each epoch line, and the popularity
    /// baseline's once: every user's top K among all items minus their training items, against
    /// their held-out items. Costs a scoring of every user against every item per epoch shown.
    #[arg(long, value_name = "K", num_args = 0..=1, default_missing_value = "20")]
    pub rank_metrics: Option<usize>,
    /// The most users with held-out pairs the hold-out ranking scores (the final one and
    /// --rank-metrics'): above it a uniform sample of about N users, its NDCG given with its
    /// standard error. Scoring a user costs the whole catalogue; 0 scores every user.
    #[arg(long, value_name = "N", default_value_t = crate::ranking::RANK_USERS)]
    pub rank_users: u64,
}

impl TrainArgs {
    /// `--objective`, or the default for the data: the implicit objective for events, the
    /// explicit one for ratings (`--rating-col`).
    pub fn objective(&self) -> Objective {
        match (self.objective, &self.input.rating_col) {
            (Some(objective), _) => objective,
            (None, Some(_)) => Objective::Explicit,
            (None, None) => Objective::Implicit,
        }
    }

    /// `--epochs`, or the objective's default: conjugate gradient with few steps per epoch
    /// needs more epochs than SGD (15 reach what `implicit`'s 15 reach; 10 fall short on a
    /// clickstream of short histories).
    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(match self.objective() {
            Objective::Explicit => Hyper::DEFAULT.epochs,
            Objective::Implicit => ImplicitHyper::EPOCHS,
        })
    }

    /// Whether the popularity term's weight is chosen on a validation split: the implicit
    /// objective with item biases (the term lives in them) and no --popularity-weight.
    pub fn chooses_popularity_weight(&self) -> bool {
        self.objective() == Objective::Implicit && !self.no_bias && self.popularity_weight.is_none()
    }

    /// The hyperparameters, checked; errors name the flag.
    pub fn hyper(&self) -> Result<Hyper> {
        if self.factors == 0 || self.factors > 4096 {
            return Err(Error::usage(format!(
                "--factors {}: must be between 1 and 4096",
                self.factors
            )));
        }
        let epochs = self.epochs();
        if epochs == 0 || epochs > MAX_EPOCHS {
            return Err(Error::usage(format!(
                "--epochs {epochs}: must be between 1 and {MAX_EPOCHS}"
            )));
        }
        let lr = self.lr.unwrap_or(Hyper::DEFAULT.lr);
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::usage(format!(
                "--lr {lr}: must be a positive number"
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
        if self.checkpoint_every == Some(0) {
            return Err(Error::usage("--checkpoint-every 0: must be at least 1"));
        }
        Ok(Hyper {
            implicit: self.implicit_hyper()?,
            objective: self.objective(),
            factors: self.factors,
            epochs,
            lr,
            reg: self.reg,
            seed: self.seed,
            biased: !self.no_bias,
            holdout: self.holdout,
            holdout_by: self.holdout_by,
            ..Hyper::DEFAULT
        })
    }
}

impl TrainArgs {
    /// The implicit objective's settings, checked; `None` for the explicit objective, which
    /// refuses them (they would silently do nothing).
    fn implicit_hyper(&self) -> Result<Option<ImplicitHyper>> {
        let given = [
            ("--alpha", self.alpha.is_some()),
            ("--unobserved-weight", self.unobserved_weight.is_some()),
            ("--cg-steps", self.cg_steps.is_some()),
            ("--balance", self.balance.is_some()),
            ("--popularity-weight", self.popularity_weight.is_some()),
        ];
        if self.objective() == Objective::Explicit {
            if let Some((flag, _)) = given.iter().find(|(_, set)| *set) {
                return Err(Error::usage(format!(
                    "{flag} applies to --objective implicit only (this run trains the explicit objective)"
                )));
            }
            return Ok(None);
        }
        let d = ImplicitHyper::DEFAULT;
        let alpha = self.alpha.unwrap_or(d.alpha);
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(Error::usage(format!(
                "--alpha {alpha}: must be a positive number (an observed pair weighs 1 + alpha x value)"
            )));
        }
        let unobserved_weight = self.unobserved_weight.unwrap_or(d.unobserved_weight);
        if !(unobserved_weight.is_finite() && unobserved_weight >= 0.0) {
            return Err(Error::usage(format!(
                "--unobserved-weight {unobserved_weight}: must be zero or positive"
            )));
        }
        let cg_steps = self.cg_steps.unwrap_or(d.cg_steps);
        if cg_steps == 0 || cg_steps > 1000 {
            return Err(Error::usage(format!(
                "--cg-steps {cg_steps}: must be between 1 and 1000"
            )));
        }
        let balance = match (self.alpha, self.balance) {
            (Some(_), Some(_)) => {
                return Err(Error::usage(
                    "--alpha and --balance: give one (--alpha weighs every user's values alike, --balance balances them per user)",
                ))
            }
            (Some(_), None) => None,
            (None, b) => Some(b.unwrap_or(d.balance.expect("balanced by default"))),
        };
        if let Some(b) = balance.filter(|b| !(b.is_finite() && *b > 0.0)) {
            return Err(Error::usage(format!(
                "--balance {b}: must be a positive number (a user's observed pairs weigh B x the number of items)"
            )));
        }
        let popularity_weight = self.popularity_weight.unwrap_or(0.0);
        if !(popularity_weight.is_finite() && popularity_weight >= 0.0) {
            return Err(Error::usage(format!(
                "--popularity-weight {popularity_weight}: must be zero or positive"
            )));
        }
        if self.no_bias && popularity_weight > 0.0 {
            return Err(Error::usage(format!(
                "--popularity-weight {popularity_weight} needs the item biases it is added to: leave out --no-bias"
            )));
        }
        Ok(Some(ImplicitHyper {
            alpha,
            unobserved_weight,
            cg_steps,
            balance,
            popularity_weight,
        }))
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

impl Split {
    /// As the flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Split::All => "all",
            Split::Train => "train",
            Split::Holdout => "holdout",
        }
    }
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
    /// Cut-offs of the ranking metrics (on the model's hold-out: each user's top k against the
    /// interactions held out), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 20])]
    pub k: Vec<usize>,
    /// The most users with held-out pairs the ranking scores: above it a uniform sample of
    /// about N users (the same users at any count of ranks), its NDCG given with its standard
    /// error. 0 scores every user.
    #[arg(long, value_name = "N", default_value_t = crate::ranking::RANK_USERS)]
    pub rank_users: u64,
    #[command(flatten)]
    pub input: TrainedInputArgs,
}

/// How the model's training read its data, each flag given overriding its part (`evaluate`,
/// `recommend`: read a dataset the way the model was trained).
#[derive(Args, Debug, Clone, Default)]
pub struct TrainedInputArgs {
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
    /// Event time column, for a model that held out by time [default: as it was trained].
    #[arg(long)]
    pub time_col: Option<String>,
    /// How repeated (user, item) values combine [default: as the model was trained].
    #[arg(long, value_parser = aggregate_parser())]
    pub aggregate: Option<Aggregate>,
    /// Input format [default: as the model was trained].
    #[arg(long, value_parser = format_parser())]
    pub format: Option<Format>,
    /// CSV field separator [default: as the model was trained].
    #[arg(long, value_parser = delimiter_parser())]
    pub delimiter: Option<char>,
}

impl TrainedInputArgs {
    /// How to read the dataset: as `trained` was read, each flag given overriding its part.
    pub fn input(&self, trained: Input) -> Result<Input> {
        let Input {
            settings: mut s,
            mut weights,
            read_time,
            user_cost,
        } = trained;
        let given = |flag: &Option<String>, field: &mut String| {
            if let Some(v) = flag {
                *field = v.clone();
            }
        };
        given(&self.user_col, &mut s.user_col);
        given(&self.event_col, &mut s.event_col);
        given(&self.time_col, &mut s.time_col);
        s.item_col = self.item_col.clone().or(s.item_col);
        s.rating_col = self.rating_col.clone().or(s.rating_col);
        s.aggregate = self.aggregate.unwrap_or(s.aggregate);
        s.format = self.format.unwrap_or(s.format);
        s.delimiter = self.delimiter.or(s.delimiter);
        if let Some(spec) = &self.event_weights {
            weights = EventWeights::parse(spec)?;
        }
        Ok(Input {
            settings: s,
            weights,
            read_time,
            user_cost,
        })
    }
}

#[derive(Args, Debug)]
pub struct RecommendArgs {
    /// The model (a prefix holding model.json).
    #[arg(long)]
    pub model: String,
    /// Where to write the recommendations: a folder (local or s3://) that is new, empty, or holds
    /// an earlier run's output (replaced).
    #[arg(long)]
    pub out: String,
    /// Items per user (or per item with --similar-items); more than the model's items: all of them.
    #[arg(long)]
    pub top: usize,
    /// The interactions to leave out of each user's list (the items they already have), read
    /// as the model was trained; also the popularity for users the model does not know.
    #[arg(long)]
    pub data: Option<String>,
    /// Only these users: a file or prefix (Parquet or CSV) with a column of ids, named as the
    /// model's user column or the only column. Users the model does not know get the most
    /// popular items (source = "popular").
    #[arg(long)]
    pub users: Option<String>,
    /// Recommend items a user already interacted with too (with --data).
    #[arg(long)]
    pub include_seen: bool,
    /// For every item, the items most similar to it (cosine of their factors) instead.
    #[arg(long)]
    pub similar_items: bool,
    #[command(flatten)]
    pub input: TrainedInputArgs,
}

impl RecommendArgs {
    /// The flags that cannot go together, or a `--top` that asks for nothing.
    pub fn check(&self) -> Result<()> {
        if self.top == 0 {
            return Err(Error::usage(
                "--top 0: give the number of items per list, 1 or more",
            ));
        }
        if self.similar_items {
            for (given, flag) in [
                (self.users.is_some(), "--users"),
                (self.data.is_some(), "--data"),
                (self.include_seen, "--include-seen"),
            ] {
                if given {
                    return Err(Error::usage(format!(
                        "{flag} does not go with --similar-items (item lists are for every item, and leave out only the item itself)"
                    )));
                }
            }
        }
        Ok(())
    }
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

impl VerifyArgs {
    /// The bandwidth test's model size, in a range that fits in memory.
    pub fn check(&self) -> Result<()> {
        if self.factors == 0 || self.factors > 4096 {
            return Err(Error::usage(format!(
                "--factors {}: must be between 1 and 4096",
                self.factors
            )));
        }
        // Each rank holds the test's item rows about twice.
        let bytes = self.items as u64 * (self.factors as u64 + 8) * 4;
        if self.items == 0 || bytes > 4 << 30 {
            return Err(Error::usage(format!(
                "--items {} x --factors {}: the bandwidth test's item rows must be between 1 item and 4 GiB",
                self.items, self.factors
            )));
        }
        Ok(())
    }
}

#[derive(Args, Debug, Clone)]
pub struct TuneArgs {
    /// The search space: NAME=VALUES terms separated by spaces (see below).
    #[arg(long, value_name = "SPEC")]
    pub space: String,
    /// Trials to run [random search: 20; a grid: all of its points].
    #[arg(long, value_name = "N")]
    pub trials: Option<usize>,
    /// What the trials are judged by on the hold-out: holdout_rmse, holdout_mae (smaller is
    /// better), or ndcg@K, recall@K, precision@K, map@K, hit_rate@K (larger is better)
    /// [holdout_rmse; ndcg@20 when a trial may train the implicit objective].
    #[arg(long, value_name = "NAME")]
    pub metric: Option<String>,
    /// Ranks that train one trial together; the job's ranks form groups of this many, each
    /// running trials one after another.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub ranks_per_trial: usize,
    /// Early stopping: `asha` stops a trial whose metric at a rung is below the top 1/eta of
    /// the trials measured there; `none` runs every trial to its last epoch.
    #[arg(long, value_enum, default_value = "asha")]
    pub scheduler: Scheduler,
    /// ASHA's first rung, in epochs (the next ones are --eta times further each) [the longest
    /// trial's epochs / eta^3, at least 1: 3 rungs before its end].
    #[arg(long, value_name = "EPOCHS")]
    pub grace_epochs: Option<usize>,
    /// ASHA's reduction factor: the share of trials that pass a rung is 1/eta.
    #[arg(long, default_value_t = 3)]
    pub eta: usize,
    /// Start no trial after this many seconds of search (the trials running then finish);
    /// the best so far is published.
    #[arg(long, value_name = "SECONDS")]
    pub max_seconds: Option<f64>,
    /// The hold-out of the model published at the end: the best trial's flags trained again
    /// with this fraction kept out; 0 trains on all of the data (no hold-out metrics then)
    /// [--holdout: the best trial's model as the search trained it].
    #[arg(long, value_name = "FRACTION", allow_negative_numbers = true)]
    pub final_holdout: Option<f64>,
    /// The flags every trial shares (those of train; --seed also draws the trials).
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scheduler {
    Asha,
    None,
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The model (a prefix holding model.json), local or s3://; watched for new publications.
    #[arg(long)]
    pub model: String,
    /// Address and port to listen on. The default takes connections from this machine only; give
    /// 0.0.0.0:8080 in a container (and --token-file where others can reach it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// The interactions behind the model, read as it was trained (re-read with each new model):
    /// the items left out of a user's recommendations, the rows folded in for users of the
    /// data the model does not know, and popularity. Without it nothing is left out.
    #[arg(long)]
    pub data: Option<String>,
    /// Seconds between two looks at model.json for a newly published model (0: never).
    #[arg(long, default_value_t = 10.0)]
    pub poll_seconds: f64,
    /// A file holding a bearer token: every /v1 request must then carry
    /// `Authorization: Bearer <token>` (/healthz, /livez and /metrics stay open).
    #[arg(long)]
    pub token_file: Option<String>,
    /// The most items one request may ask for (`n`).
    #[arg(long, default_value_t = 1000)]
    pub max_n: usize,
    /// Seconds a request may take before it is answered 503.
    #[arg(long, default_value_t = 10.0)]
    pub timeout_seconds: f64,
    /// Worker threads answering requests [default: the cores this process may use].
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub input: TrainedInputArgs,
}

impl ServeArgs {
    pub fn check(&self) -> Result<()> {
        for (flag, v) in [
            ("--poll-seconds", self.poll_seconds),
            ("--timeout-seconds", self.timeout_seconds),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(Error::usage(format!(
                    "{flag} {v}: must be a number of seconds between 0 and 86400"
                )));
            }
        }
        if self.timeout_seconds == 0.0 {
            return Err(Error::usage("--timeout-seconds 0: must be above 0"));
        }
        if !(1..=1_000_000).contains(&self.max_n) {
            return Err(Error::usage(format!(
                "--max-n {}: must be between 1 and 1000000",
                self.max_n
            )));
        }
        if self.threads == Some(0) {
            return Err(Error::usage("--threads 0: must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    Parquet,
    Csv,
}

/// What a generated clickstream looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Each view followed by its own funnel (carts and purchases about half the events), 30
    /// days spread over the files in order: the demo and the tests' data.
    Demo,
    /// A shop's export: visits (sessions of a few events) of users whose activity has a long
    /// tail, views 94-98% of the events, `--days` days, one folder per day
    /// (`date=YYYY-MM-DD/`), each file one day's share.
    Shop,
}

/// Events `generate` builds in memory for one file (about 1 GB with its encoding).
const MAX_EVENTS_PER_FILE: usize = 20_000_000;

#[derive(Args, Debug, Clone)]
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
    /// The share of views a user picks by taste (0 to 1): such a view keeps a popular item only
    /// as often as the user's hidden vector likes it. 0 (the default): which items a user views
    /// follows popularity alone, and only carts and purchases depend on the user.
    #[arg(long, default_value_t = 0.0)]
    pub taste: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t = OutFormat::Parquet)]
    pub format: OutFormat,
    /// The data's shape: demo (the default) or shop (visits, views 94-98%, date folders).
    #[arg(long, value_enum, default_value_t = Profile::Demo)]
    pub profile: Profile,
    /// Days the shop profile spans [default: 30] (each file holds one day's share; --files at
    /// least this).
    #[arg(long)]
    pub days: Option<usize>,
    /// Replace the files of an earlier generation in --out (an --out holding data is refused
    /// without it, so that two generations never mix).
    #[arg(long)]
    pub overwrite: bool,
}

impl GenerateArgs {
    /// The days the shop profile spans.
    pub fn days(&self) -> usize {
        self.days.unwrap_or(30)
    }

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
        // Ranges that fit in memory: the hidden vectors (users and items x latent floats) and one
        // file's events (24 bytes each, plus its encoding) are held at once.
        for (flag, v, most) in [
            ("--users", self.users, 50_000_000),
            ("--items", self.items, 50_000_000),
            ("--latent", self.latent, 64),
            ("--files", self.files, 100_000),
            ("--row-group-size", self.row_group_size, 10_000_000),
        ] {
            if v > most {
                return Err(Error::usage(format!("{flag} {v}: at most {most}")));
            }
        }
        if !(0.0..=1.0).contains(&self.taste) {
            return Err(Error::usage(format!(
                "--taste {}: must be between 0 and 1 (the share of views picked by taste)",
                self.taste
            )));
        }
        match (self.profile, self.days) {
            (Profile::Demo, Some(_)) => {
                return Err(Error::usage(
                    "--days applies to --profile shop (the demo profile spans 30 days)",
                ))
            }
            (Profile::Demo, None) => {}
            (Profile::Shop, _) => {
                let days = self.days();
                if !(1..=3650).contains(&days) {
                    return Err(Error::usage(format!(
                        "--days {days}: must be between 1 and 3650"
                    )));
                }
                if self.files < days {
                    return Err(Error::usage(format!(
                        "--profile shop --days {days}: give --files {days} or more (a file holds one day's share)"
                    )));
                }
            }
        }
        let per_file = self.events.div_ceil(self.files);
        if per_file > MAX_EVENTS_PER_FILE {
            return Err(Error::usage(format!(
                "--events {} over --files {}: {per_file} events per file, at most {MAX_EVENTS_PER_FILE} (a file is built in memory); give --files {} or more",
                self.events,
                self.files,
                self.events.div_ceil(MAX_EVENTS_PER_FILE)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(extra: &[&str]) -> TrainArgs {
        let mut argv = vec!["funksvd", "train", "--data", "d", "--model", "m"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Train(args) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn train_flags_default_to_the_model_cores_hyperparameters_and_the_default_input() {
        let explicit = ["--objective", "explicit"];
        assert_eq!(train(&explicit).hyper().unwrap(), Hyper::DEFAULT);
        assert_eq!(train(&[]).input.input().unwrap(), Input::default());
        let h = train(&["--holdout", "0.1", "--no-bias", "--factors", "7"])
            .hyper()
            .unwrap();
        assert_eq!((h.holdout, h.biased, h.factors), (0.1, false, 7));
    }

    #[test]
    fn events_default_to_the_implicit_objective_and_ratings_to_the_explicit_one() {
        let events = train(&[]);
        let h = events.hyper().unwrap();
        assert_eq!(h.objective, Objective::Implicit);
        assert_eq!(h.implicit, Some(ImplicitHyper::DEFAULT));
        assert_eq!(h.epochs, ImplicitHyper::EPOCHS);
        assert_eq!((h.factors, h.reg), (20, 0.02));
        assert!(events.chooses_popularity_weight());
        let ratings = train(&["--rating-col", "rating"]);
        assert_eq!(ratings.hyper().unwrap(), Hyper::DEFAULT);
        assert!(!ratings.chooses_popularity_weight());
        // Named, either way.
        let h = train(&["--rating-col", "rating", "--objective", "implicit"]).hyper();
        assert_eq!(h.unwrap().objective, Objective::Implicit);
        assert_eq!(
            train(&["--objective", "explicit"])
                .hyper()
                .unwrap()
                .objective,
            Objective::Explicit
        );
        // The original job's flags keep running under the implicit default.
        let original = [
            "--factors",
            "20",
            "--epochs",
            "10",
            "--lr",
            "0.01",
            "--reg",
            "0.02",
        ];
        let h = train(&original).hyper().unwrap();
        assert_eq!(
            (h.objective, h.epochs, h.lr),
            (Objective::Implicit, 10, 0.01)
        );
    }

    #[test]
    fn the_implicit_confidences_are_balanced_unless_alpha_is_given() {
        let implicit = |extra: &[&str]| train(extra).hyper().map(|h| h.implicit.unwrap());
        assert_eq!(implicit(&["--alpha", "4"]).unwrap().balance, None);
        assert_eq!(implicit(&["--balance", "0.2"]).unwrap().balance, Some(0.2));
        let given = implicit(&["--popularity-weight", "0.3"]).unwrap();
        assert_eq!(given.popularity_weight, 0.3);
        assert!(!train(&["--popularity-weight", "0.3"]).chooses_popularity_weight());
        assert!(!train(&["--no-bias"]).chooses_popularity_weight());
        for (flags, named) in [
            (&["--alpha", "4", "--balance", "0.2"][..], "--balance"),
            (&["--balance", "0"][..], "--balance 0"),
            (&["--popularity-weight", "-1"][..], "--popularity-weight -1"),
            (&["--popularity-weight", "1", "--no-bias"][..], "--no-bias"),
            (
                &["--objective", "explicit", "--balance", "1"][..],
                "--balance",
            ),
            (
                &["--rating-col", "r", "--popularity-weight", "1"][..],
                "--popularity-weight",
            ),
        ] {
            let err = implicit(flags).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{flags:?}");
            assert!(err.to_string().contains(named), "{flags:?}: {err}");
        }
    }

    #[test]
    fn syncs_per_epoch_is_accepted_and_does_nothing_whatever_its_value() {
        for n in ["0", "1", "8"] {
            let args = train(&["--syncs-per-epoch", n, "--objective", "explicit"]);
            assert_eq!(args.hyper().unwrap(), Hyper::DEFAULT, "{n}");
        }
    }

    #[test]
    fn input_flags_make_one_input_and_evaluate_overrides_its_parts() {
        let args = train(&["--aggregate", "sum", "--format", "csv", "--item-col", "sku"]);
        let input = args.input.input().unwrap();
        assert_eq!(input.settings.aggregate, Aggregate::Sum);
        assert_eq!(input.settings.format, Format::Csv);
        assert_eq!(input.settings.item_col.as_deref(), Some("sku"));
        let argv = [
            "funksvd",
            "evaluate",
            "--model",
            "m",
            "--data",
            "d",
            "--aggregate",
            "max",
            "--event-weights",
            "view=2",
        ];
        let Command::Evaluate(eval) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("not evaluate")
        };
        let read = eval.input.input(input.clone()).unwrap();
        assert_eq!(read.settings.aggregate, Aggregate::Max);
        assert_eq!(read.settings.item_col.as_deref(), Some("sku"), "kept");
        assert_eq!(read.weights.to_spec(), "view=2");
        assert!(Cli::try_parse_from(["funksvd", "train", "--aggregate", "mean"]).is_err());
    }
}
