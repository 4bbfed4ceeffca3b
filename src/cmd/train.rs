//! `funksvd train`: plan, read, features, exchange, train, save (SPEC "What it is"). Each step
//! is a function of the modules that own it; this file puts them in order and says what
//! happened.

use std::time::Instant;

use crate::cli::TrainArgs;
use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::ids::Id;
use crate::input::{Input, InputSettings};
use crate::interrupt;
use crate::metrics::ErrorSums;
use crate::mf::checkpoint::{item_order, Run};
use crate::mf::meta::{
    InputRecord, Metrics, ModelMeta, Phases, ReadStats, Training, FORMAT, VERSION,
};
use crate::mf::params::{padded_width, Rows};
use crate::mf::tables::rows_to_parquet_with;
use crate::mf::{Globals, Hyper, Objective, Params, ParamsRef};
use crate::model_io::{self, Found, UsersTable};
use crate::pipeline::{self, IngestReport};
use crate::progress::Bar;
use crate::ratings::OwnedRatings;
use crate::store::Location;
use crate::train::checkpoint::Checkpoints;
use crate::train::data::{prepare, ItemBlocks, Prepared, RankData};
use crate::train::implicit::{self, preference_errors};
use crate::train::pass::{holdout_errors, train_errors};
use crate::train::popularity::{self, counts_by_row, Choice};
use crate::train::ranked::RankCheck;
use crate::train::user_table::{self, ForRanges};
use crate::train::{fit_objective, ControlFlow, ItemRows, Progress, TrainState};

/// The flags, checked (every rank checks them alike).
pub(crate) struct Settings {
    pub hyper: Hyper,
    pub input: Input,
    pub data: Location,
    pub model: Location,
    /// The most hold-out users a ranking scores (`--rank-users`; 0: all).
    pub rank_users: u64,
}

pub fn run(comm: &dyn Collective, args: &TrainArgs) -> Result<()> {
    run_as(comm, args, None)
}

/// `run`, recording in model.json where the flags came from (`tune`'s search and trial).
pub(crate) fn run_as(
    comm: &dyn Collective,
    args: &TrainArgs,
    tuned: Option<serde_json::Value>,
) -> Result<()> {
    let job_started = Instant::now();
    interrupt::catch();
    let mut settings = comm.agree(settings(comm, args))?;
    // Before any data is read: a model location that refuses writes fails now, not after hours
    // of training; and the model there now is the one this job's publication may replace.
    let found = comm.agree(match comm.is_root() {
        true => model_io::prepare_publish(&settings.model, "--model"),
        false => Ok(Found::default()),
    })?;
    let shared_model = user_table::seen_by_every_rank(comm, &settings.model)?;
    let (owned, report) = pipeline::load_ratings(comm, &settings.data, &settings.input)?;
    stop_if_interrupted(comm)?;
    let started = Instant::now();
    let choice = match args.chooses_popularity_weight() {
        true => Some(choose_popularity_weight(comm, &owned, &mut settings.hyper)?),
        false => None,
    };
    let choice_seconds = started.elapsed().as_secs_f64();
    stop_if_interrupted(comm)?;
    let started = Instant::now();
    let mut prepared = prepare(comm, owned, &settings.hyper)?;
    let totals = agree_totals(comm, &prepared.data, &report, &settings.hyper)?;
    let n_items = prepared.item_ids.len();
    implicit::balance_in_place(&mut prepared.data.ratings, n_items, &settings.hyper);
    let exchange_seconds = report.exchange_seconds + started.elapsed().as_secs_f64();
    log_memory(comm, "hold-out split, vocabulary and layout made");
    log_set_up(comm, &prepared, &totals);
    let users_in_parts = plan_save(comm, (&prepared, &totals), &settings.hyper, shared_model)?;

    let started = Instant::now();
    let (mut state, item_rows) = train(comm, args, &settings, &prepared, &report, totals.globals)?;
    let train_seconds = started.elapsed().as_secs_f64();
    log_memory(comm, "epochs done");
    let started = Instant::now();
    let mut metrics = match settings.hyper.objective {
        Objective::Explicit => final_metrics(comm, &prepared, &state, &settings, totals.globals),
        Objective::Implicit => implicit_metrics(comm, &prepared, &mut state, &settings),
    };
    metrics.popularity_weight = choice.map(|c| serde_json::to_value(c).expect("plain numbers"));
    let metrics_seconds = started.elapsed().as_secs_f64();
    log_memory(comm, "trained");
    let mut phases = [
        report.plan_seconds,
        report.read_seconds,
        report.features_seconds,
        exchange_seconds,
        train_seconds,
        choice_seconds,
        metrics_seconds,
    ];
    comm.reduce_f64(&mut phases, Op::Max);
    if comm.is_root() {
        log_final(&metrics, settings.hyper.objective);
    }
    let save = Save {
        args,
        settings: &settings,
        found: &found,
        report: &report,
        totals: &totals,
        metrics,
        phases,
        item_rows,
        ranks: comm.size(),
        job_started,
        tuned,
        users_in_parts,
    };
    save.publish(comm, prepared, state.params)?;
    log_memory(comm, "saved");
    Ok(())
}

/// Choose the implicit objective's popularity weight on a validation split of the training
/// pairs (`train::popularity`), set it in `hyper` and say what each weight scored.
fn choose_popularity_weight(
    comm: &dyn Collective,
    owned: &OwnedRatings,
    hyper: &mut Hyper,
) -> Result<Choice> {
    if comm.is_root() {
        log::info!(
            "popularity weight: fitting on {:.0}% of the training pairs to choose it on the rest ({} epochs; --popularity-weight W skips this)",
            (1.0 - popularity::VALIDATION_SHARE) * 100.0,
            popularity::choice_epochs(hyper.epochs)
        );
    }
    let choice = popularity::choose_weight(comm, owned, hyper)?;
    log_memory(comm, "popularity weight chosen");
    if let Some(implicit) = hyper.implicit.as_mut() {
        implicit.popularity_weight = choice.weight;
    }
    if comm.is_root() {
        let tried: Vec<String> = choice
            .ndcg
            .iter()
            .map(|(w, v)| format!("{w} {v:.4}"))
            .collect();
        let why = match choice.weight == choice.best {
            true => "the best".to_string(),
            false => format!(
                "the best, {}, beats it by less than one standard error: the best sellers' order",
                choice.best
            ),
        };
        log::info!(
            "popularity weight {} chosen in {:.1}s ({why}): validation NDCG@20 by weight {} (popularity list {:.4}, {} users)",
            choice.weight,
            choice.seconds,
            tried.join(", "),
            choice.popularity_ndcg,
            choice.validation_users
        );
    }
    Ok(choice)
}

fn log_memory(comm: &dyn Collective, when: &str) {
    crate::memory::log(comm.rank(), when);
}

/// Before training: whether the ranks will write the users' table in parts (`user_table`), and
/// that this rank's host can hold its part of the model (`fits_in_memory`).
fn plan_save(
    comm: &dyn Collective,
    (prepared, totals): (&Prepared, &Totals),
    hyper: &Hyper,
    shared_model: bool,
) -> Result<bool> {
    let parts = user_table::in_parts(comm, totals.n_users, hyper.factors + 1, shared_model);
    comm.agree(fits_in_memory(comm, prepared, totals, (hyper, parts)))?;
    Ok(parts)
}

/// A signal during reading ends the job once the data is in (every rank at once): nothing to
/// checkpoint yet.
fn stop_if_interrupted(comm: &dyn Collective) -> Result<()> {
    match interrupt::agreed(comm) {
        Some(signal) => Err(interrupt::stopped(
            comm,
            signal,
            "before training began: nothing was saved; run the same command again",
        )),
        None => Ok(()),
    }
}

pub(crate) fn settings(comm: &dyn Collective, args: &TrainArgs) -> Result<Settings> {
    if let (Some(n), true) = (args.syncs_per_epoch, comm.is_root()) {
        log::warn!(
            "--syncs-per-epoch {n} is ignored: ranks hand item blocks to each other at each step, which needs no tuning"
        );
    }
    let model = Location::parse(&args.model, "--model")?;
    let mut data = Location::parse(&args.data, "--data")?;
    if model.holds(&data) && data.holds(&model) {
        return Err(Error::usage(format!(
            "--data and --model are the same folder ({}): the model's own tables would be read as data; give the model a folder of its own",
            args.model
        )));
    }
    if data.skip_folder(&model) {
        log::debug!(
            "--model {} is inside --data: its files are left out of the dataset",
            args.model
        );
    }
    let hyper = args.hyper()?;
    let mut input = args.input.input()?;
    if comm.is_root() {
        log_objective(args, &hyper, &input);
    }
    // A hold-out by time needs each pair's latest time.
    input.read_time =
        !hyper.holdout_by.is_pair() && (hyper.holdout > 0.0 || args.chooses_popularity_weight());
    // Each implicit user's row has its own work (its steps' products with the Gram matrix).
    input.user_cost = match hyper.implicit {
        Some(_) => crate::train::implicit::row_cost(hyper.factors),
        None => 0,
    };
    Ok(Settings {
        hyper,
        input,
        data,
        model,
        rank_users: args.rank_users,
    })
}

/// What the run fits and what each hyperparameter flag does under it; a flag given that does
/// nothing under it is a warning (job scripts written for the other objective keep running).
fn log_objective(args: &TrainArgs, hyper: &Hyper, input: &Input) {
    let values = match &input.settings.rating_col {
        Some(col) => format!("the ratings of --rating-col {col}"),
        None => "the event weights".into(),
    };
    let why = match (args.objective, hyper.objective) {
        (Some(_), _) => "as --objective asks",
        (None, Objective::Implicit) => {
            "the default for events; --objective explicit fits FunkSVD to the event weights"
        }
        (None, Objective::Explicit) => "the default for ratings (--rating-col)",
    };
    let Some(implicit) = hyper.implicit else {
        log::info!(
            "objective explicit (FunkSVD by SGD on {values}, {why}): --factors {}, --epochs {}, --lr {} (the SGD step), --reg {} (L2 per rating)",
            hyper.factors, hyper.epochs, hyper.lr, hyper.reg
        );
        return;
    };
    let confidence = match implicit.balance {
        Some(b) => format!(
            "each user's pairs together weigh {b} x the number of items beyond 1 each (--balance)"
        ),
        None => format!("1 + {} x |v| (--alpha)", implicit.alpha),
    };
    let popularity = match args.chooses_popularity_weight() {
        true => "chosen on a validation split".to_string(),
        false => implicit.popularity_weight.to_string(),
    };
    log::info!(
        "objective implicit (iALS on {values}, {why}): every pair a preference, 1 if its value v > 0; confidence {confidence}; every pair not observed weighs {}; --factors {}, --epochs {}, --reg {} (L2 on every row), --cg-steps {}; popularity weight {popularity}",
        implicit.unobserved_weight, hyper.factors, hyper.epochs, hyper.reg, implicit.cg_steps
    );
    if let Some(lr) = args.lr {
        log::warn!(
            "--lr {lr} has no effect: the implicit objective solves each row by conjugate gradient, with no learning rate (--objective explicit trains by SGD with it)"
        );
    }
}

/// The job's counts, the ratings' mean and range, and what the model records of them.
pub(crate) struct Totals {
    /// The training values' mean and range.
    pub values: Globals,
    /// The model's (`globals_for` the job's objective).
    pub globals: Globals,
    pub n_users: u64,
    pub n_ratings: u64,
    pub n_holdout: u64,
}

impl Totals {
    /// What a model of `objective` records: the values' mean and range for the explicit
    /// objective; for the implicit one no mean, and predictions (preferences) clipped to
    /// [0, 1].
    pub fn globals_for(&self, objective: Objective) -> Globals {
        match objective {
            Objective::Explicit => self.values,
            Objective::Implicit => Globals::PREFERENCES,
        }
    }
}

/// Job-wide mean and range of the training ratings, and the counts; refuses an empty job.
pub(crate) fn agree_totals(
    comm: &dyn Collective,
    data: &RankData,
    report: &IngestReport,
    hyper: &Hyper,
) -> Result<Totals> {
    let values = &data.ratings.values;
    let mut sums = [
        values.iter().map(|&v| v as f64).sum::<f64>(),
        values.len() as f64,
        data.holdout.len() as f64,
        data.ratings.n_users() as f64,
    ];
    comm.reduce_f64(&mut sums, Op::Sum);
    let mut lo = [values.iter().fold(f64::INFINITY, |a, &v| a.min(v as f64))];
    let mut hi = [values
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64))];
    comm.reduce_f64(&mut lo, Op::Min);
    comm.reduce_f64(&mut hi, Op::Max);
    if sums[1] == 0.0 {
        let why = match report.skipped.describe() {
            Some(skips) => format!("{} rows read, {skips}", report.rows_read),
            None if report.rows_read == 0 => "the dataset has no rows".to_string(),
            None => format!(
                "{} rows read, all held out (lower --holdout)",
                report.rows_read
            ),
        };
        return comm.agree(Err(Error::usage(format!("nothing to train on: {why}"))));
    }
    let values = Globals {
        global_mean: (sums[0] / sums[1]) as f32,
        rating_range: (lo[0] as f32, hi[0] as f32),
    };
    let mut totals = Totals {
        values,
        globals: values,
        n_users: sums[3] as u64,
        n_ratings: sums[1] as u64,
        n_holdout: sums[2] as u64,
    };
    totals.globals = totals.globals_for(hyper.objective);
    Ok(totals)
}

/// Refuse a model this rank's host cannot hold before allocating it: the rows of its users and
/// of every item, twice (training, and the copy a checkpoint or the save makes), and on rank 0
/// every user's row once more unless the ranks write the users' table in parts (`in_parts`:
/// else the table is assembled there). The implicit objective also holds two sums the size of
/// the item rows and its pairs by item.
pub(crate) fn fits_in_memory(
    comm: &dyn Collective,
    prepared: &Prepared,
    totals: &Totals,
    (hyper, in_parts): (&Hyper, bool),
) -> Result<()> {
    let factors = hyper.factors;
    let width = padded_width(factors);
    let rows = prepared.data.ratings.n_users() + prepared.item_ids.len();
    let mut bytes = 2 * rows as u64 * width as u64 * 4;
    if hyper.objective == Objective::Implicit {
        bytes += 2 * prepared.item_ids.len() as u64 * width as u64 * 4;
        bytes += prepared.data.ratings.n_ratings() as u64 * 8;
    }
    if comm.is_root() && !in_parts {
        bytes += totals.n_users * (factors as u64 + 1) * 4;
    }
    match crate::memory::available_bytes() {
        Some(free) if bytes > free => Err(Error::usage(format!(
            "--factors {factors}: rank {}'s part of the model needs {:.1} GB ({rows} users and items x {width} floats, and a copy to save them), more than the {:.1} GB free on its host; lower --factors or run on more hosts",
            comm.rank(),
            bytes as f64 / 1e9,
            free as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// What the job trains on, and how evenly the users' spread left the work (a step waits for
/// the busiest rank).
pub(crate) fn log_set_up(comm: &dyn Collective, prepared: &Prepared, totals: &Totals) {
    let g = &totals.values;
    if comm.is_root() {
        log::info!(
            "ratings: {} for training, {} held out; {} users, {} items; mean {:.4}, range {}..{}",
            totals.n_ratings,
            totals.n_holdout,
            totals.n_users,
            prepared.item_ids.len(),
            g.global_mean,
            g.rating_range.0,
            g.rating_range.1
        );
    }
    let mut busiest = [prepared.data.ratings.n_ratings() as u64];
    comm.reduce_u64(&mut busiest, Op::Max);
    let blocks = prepared.blocks.len();
    if comm.is_root() && comm.size() > 1 {
        let share = totals.n_ratings.max(1) as f64 / comm.size() as f64;
        log::info!(
            "training: at most {} ratings per rank ({:+.2}% over an even share), {blocks} item blocks",
            busiest[0],
            (busiest[0] as f64 / share - 1.0) * 100.0,
        );
    } else if comm.is_root() {
        log::info!("training: {blocks} item blocks on one rank");
    }
}

/// The epochs, from the newest checkpoint with `--resume`, logging each and checkpointing
/// every `--checkpoint-every`.
fn train(
    comm: &dyn Collective,
    args: &TrainArgs,
    settings: &Settings,
    prepared: &Prepared,
    report: &IngestReport,
    globals: Globals,
) -> Result<(TrainState, ItemRows)> {
    let hyper = &settings.hyper;
    let checkpoints = Checkpoints {
        loc: &settings.model,
        run: Run {
            ranks: comm.size(),
            hyper: hyper.clone(),
            fingerprint: run_fingerprint(report, args, &settings.input),
            item_order: item_order(&prepared.item_ids),
            n_items: prepared.item_ids.len(),
        },
        user_ids: &prepared.data.ratings.user_ids,
    };
    let start = match args.resume {
        true => Some(checkpoints.resume(comm)?),
        false => None,
    };
    let ranked = args
        .rank_metrics
        .map(|k| ranked_epochs(comm, prepared, (k, settings.rank_users), hyper));
    let bar = Bar::new(comm.rank(), hyper.epochs as u64, "epochs");
    let after_epoch = |progress: &Progress| {
        let (epoch, epochs) = (progress.epoch, hyper.epochs);
        bar.set(epoch as u64, || bar_message(progress));
        // A signal after the last epoch changes nothing: the model is about to be published.
        let signal = interrupt::agreed(comm).filter(|_| epoch < epochs);
        let shown = shows_epoch(epoch, epochs) || signal.is_some();
        // Collective: every rank shows the same epochs.
        let ranking = match (&ranked, shown) {
            (Some(check), true) => {
                let r = check.rank(
                    comm,
                    progress.params,
                    &prepared.data.ratings.user_ids,
                    &prepared.item_ids,
                    hyper.biased,
                    globals,
                );
                format!(", hold-out {}", check.describe(&r, false))
            }
            _ => String::new(),
        };
        if comm.is_root() && shown {
            log_epoch(progress, epochs, &ranking);
        }
        let every = args.checkpoint_every.is_some_and(|n| epoch % n == 0);
        if every || signal.is_some() {
            checkpoints.save(comm, progress)?;
        }
        match signal {
            Some(signal) => Err(interrupt::stopped(
                comm,
                signal,
                &format!("after epoch {epoch} of {epochs}; run the same command with --resume to continue"),
            )),
            None => Ok(ControlFlow::Continue(())),
        }
    };
    let trained = fit_objective(comm, prepared, hyper, globals, start, after_epoch);
    // Divergence is seen by every rank at once (the sums are allreduced).
    let (state, item_rows) = comm.agree(trained)?;
    if comm.is_root() {
        let (blocks, factors) = (&prepared.blocks, hyper.factors);
        let how = item_rows.describe(comm.size(), blocks, factors);
        log::info!("item rows: {how}");
    }
    Ok((state, item_rows))
}

/// `--rank-metrics K`: what scoring the epochs needs, and the popularity baseline's figures,
/// logged once (they do not change).
fn ranked_epochs(
    comm: &dyn Collective,
    prepared: &Prepared,
    k_most: (usize, u64),
    hyper: &Hyper,
) -> RankCheck {
    let check = RankCheck::new(comm, &prepared.data, prepared.item_ids.len(), k_most);
    // The baseline's lists do not depend on the factors: score a model of zeros once.
    let zeros = |n: usize| vec![0.0f32; n * padded_width(hyper.factors)];
    let (users, items) = (
        zeros(prepared.data.ratings.n_users()),
        zeros(prepared.item_ids.len()),
    );
    let params = ParamsRef {
        factors: hyper.factors,
        width: padded_width(hyper.factors),
        users: &users,
        items: &items,
    };
    let globals = Globals {
        global_mean: 0.0,
        rating_range: (0.0, 0.0),
    };
    let r = check.rank(
        comm,
        params,
        &prepared.data.ratings.user_ids,
        &prepared.item_ids,
        hyper.biased,
        globals,
    );
    if comm.is_root() {
        log::info!("--rank-metrics: the popularity baseline's hold-out {} (the most training interactions, minus each user's own)", check.describe(&r, true));
    }
    check
}

/// What the epochs' bar says beside the count: the epoch's figures.
fn bar_message(progress: &Progress) -> String {
    let Some(s) = progress.history.last() else {
        return String::new();
    };
    match (s.loss, s.holdout_rmse) {
        (Some(loss), _) => format!("loss {loss:.5}"),
        (None, Some(h)) => format!("hold-out RMSE {h:.4}"),
        (None, None) => format!("train RMSE {:.4}", s.train_rmse),
    }
}

/// Epoch lines a person can read: every epoch up to `ALWAYS_SHOWN`, then about
/// `SHOWN_AFTER` more evenly spaced, and always the last.
fn shows_epoch(epoch: usize, epochs: usize) -> bool {
    const ALWAYS_SHOWN: usize = 20;
    const SHOWN_AFTER: usize = 30;
    let every = (epochs.saturating_sub(ALWAYS_SHOWN))
        .div_ceil(SHOWN_AFTER)
        .max(1);
    epoch <= ALWAYS_SHOWN || epoch == epochs || (epoch - ALWAYS_SHOWN) % every == 0
}

fn log_epoch(progress: &Progress, epochs: usize, ranking: &str) {
    let Some(s) = progress.history.last() else {
        return;
    };
    if let Some(loss) = s.loss {
        log::info!(
            "epoch {}/{epochs}: loss {loss:.5}, preference RMSE {:.4} (training pairs){ranking}, {:.3}s (sync {:.3}s), {:.2}M pairs/s",
            s.epoch,
            s.train_rmse,
            s.seconds,
            s.sync_seconds,
            s.ratings_per_second / 1e6
        );
        return;
    }
    let hold = s
        .holdout_rmse
        .map(|h| format!("{h:.4}"))
        .unwrap_or_else(|| "-".into());
    log::info!(
        "epoch {}/{epochs}: train RMSE {:.4} (during the epoch), hold-out RMSE {hold}{ranking}, {:.3}s (sync {:.3}s), {:.2}M ratings/s",
        s.epoch,
        s.train_rmse,
        s.seconds,
        s.sync_seconds,
        s.ratings_per_second / 1e6
    );
}

/// The final figures, each saying what it measures, beside the bar the model must clear: the
/// hold-out ranking beside the popularity list's for every model, and for the explicit
/// objective its RMSE beside predicting the training mean.
fn log_final(m: &Metrics, objective: Objective) {
    let ranking = m.ranking.as_ref().and_then(ranking_line);
    let line = match (objective, m.holdout_rmse, m.baseline_holdout_rmse) {
        (Objective::Implicit, _, _) => {
            format!("preference RMSE {:.4} on the training pairs", m.train_rmse)
        }
        (Objective::Explicit, Some(model), Some(baseline)) => {
            let change = (model / baseline - 1.0) * 100.0;
            let side = if change < 0.0 { "below" } else { "above" };
            format!(
                "train RMSE {:.4} (after the last epoch; the epoch lines measure it during each epoch), hold-out RMSE {model:.4} ({:.1}% {side} the {baseline:.4} of predicting the training mean)",
                m.train_rmse,
                change.abs()
            )
        }
        (Objective::Explicit, _, _) => format!(
            "train RMSE {:.4} (after the last epoch; the epoch lines measure it during each epoch)",
            m.train_rmse
        ),
    };
    match ranking {
        Some(figures) => log::info!("final model: hold-out {figures}; {line}"),
        None => log::info!("final model: {line}; no hold-out pairs (--holdout 0)"),
    }
    if let (Some(model), Some(baseline)) = (m.holdout_rmse, m.baseline_holdout_rmse) {
        if model >= baseline {
            log::warn!(
                "the model does not beat predicting the training mean on the hold-out pairs: try more --epochs, another --lr or a larger --reg"
            );
        }
    }
    let ndcg = |side: &str| {
        let ranking = m.ranking.as_ref()?;
        ranking[side][format!("ndcg@{RANKING_K}")].as_f64()
    };
    if let (Some(model), Some(popular)) = (ndcg("model"), ndcg("popularity")) {
        if model < popular {
            let advice = match objective {
                Objective::Implicit if model >= 0.99 * popular => "by less than 1%: where which items a user picks hardly depends on the user, nothing ranks better than the best-seller list, and a model can only tie it",
                Objective::Implicit => "try more --factors or --epochs, another --reg or --balance, or leave --popularity-weight to the validation split",
                Objective::Explicit => "for clicks, views and purchases train --objective implicit (the default without --rating-col)",
            };
            log::warn!(
                "the model ranks the hold-out below the popularity list (NDCG@{RANKING_K} {model:.4} < {popular:.4}): {advice}"
            );
        }
    }
}

/// The final model's errors on the training and the hold-out pairs, job-wide.
fn final_metrics(
    comm: &dyn Collective,
    prepared: &Prepared,
    state: &TrainState,
    settings: &Settings,
    globals: Globals,
) -> Metrics {
    let (data, hyper) = (&prepared.data, &settings.hyper);
    let params = state.params.view();
    let mut baseline = ErrorSums::default();
    for h in &data.holdout {
        baseline.add(h.value, globals.global_mean);
    }
    let mut errors = [0.0f64; 9];
    errors[..3]
        .copy_from_slice(&train_errors(&data.ratings, params, hyper.biased, globals).to_array());
    errors[3..6]
        .copy_from_slice(&holdout_errors(&data.holdout, params, hyper.biased, globals).to_array());
    errors[6..].copy_from_slice(&baseline.to_array());
    comm.reduce_f64(&mut errors, Op::Sum);
    let (train, hold, baseline) = (
        ErrorSums::from_slice(&errors[..3]),
        ErrorSums::from_slice(&errors[3..6]),
        ErrorSums::from_slice(&errors[6..]),
    );
    Metrics {
        train_rmse: train.rmse().unwrap_or(f64::NAN),
        train_mae: train.mae().unwrap_or(f64::NAN),
        holdout_rmse: hold.rmse(),
        holdout_mae: hold.mae(),
        baseline_holdout_rmse: baseline.rmse(),
        n_holdout: hold.n as u64,
        history: state.history.clone(),
        ranking: holdout_ranking(comm, prepared, state, settings, globals),
        popularity_weight: None,
    }
}

/// The final model's hold-out ranking at 20 beside the popularity list's, as `evaluate`
/// reports it (`None` without hold-out pairs; collective).
fn holdout_ranking(
    comm: &dyn Collective,
    prepared: &Prepared,
    state: &TrainState,
    settings: &Settings,
    globals: Globals,
) -> Option<serde_json::Value> {
    let data = &prepared.data;
    let k_most = (RANKING_K, settings.rank_users);
    let mut held = [data.holdout.len() as u64];
    comm.reduce_u64(&mut held, Op::Sum);
    (held[0] > 0).then(|| {
        let check = RankCheck::new(comm, data, prepared.item_ids.len(), k_most);
        let ranking = check.rank(
            comm,
            state.params.view(),
            &data.ratings.user_ids,
            &prepared.item_ids,
            settings.hyper.biased,
            globals,
        );
        ranking.to_json()
    })
}

/// The implicit objective's final figures: the errors of the predicted preferences (the
/// model's own, before its popularity term is added to the item biases), and the hold-out
/// ranking at 20 beside the popularity list's (what the objective is judged by), with it.
fn implicit_metrics(
    comm: &dyn Collective,
    prepared: &Prepared,
    state: &mut TrainState,
    settings: &Settings,
) -> Metrics {
    let (data, hyper) = (&prepared.data, &settings.hyper);
    let [train, hold] = preference_errors(data, state.params.view());
    let mut sums = [train.to_array(), hold.to_array()].concat();
    comm.reduce_f64(&mut sums, Op::Sum);
    let (train, hold) = (
        ErrorSums::from_slice(&sums[..3]),
        ErrorSums::from_slice(&sums[3..]),
    );
    if let Some(implicit) = hyper.implicit {
        popularity::add_term(&mut state.params, &counts_by_row(prepared), &implicit);
    }
    let ranking = holdout_ranking(comm, prepared, state, settings, Globals::PREFERENCES);
    Metrics {
        train_rmse: train.rmse().unwrap_or(f64::NAN),
        train_mae: train.mae().unwrap_or(f64::NAN),
        holdout_rmse: hold.rmse(),
        holdout_mae: hold.mae(),
        baseline_holdout_rmse: None,
        n_holdout: hold.n as u64,
        history: state.history.clone(),
        ranking,
        popularity_weight: None,
    }
}

/// The cut-off of the final hold-out ranking (every model's, beside the popularity list's).
const RANKING_K: usize = 20;

/// `NDCG@20 0.1234 (popularity 0.0987), recall@20 0.2345 (popularity 0.3456)` from a
/// recorded ranking, and where it scored a sample of the users, how many of how many and the
/// standard errors of the NDCGs.
fn ranking_line(ranking: &serde_json::Value) -> Option<String> {
    let get = |side: &str, metric: &str| ranking[side][format!("{metric}@{RANKING_K}")].as_f64();
    let line = format!(
        "NDCG@{RANKING_K} {:.4} (popularity {:.4}), recall@{RANKING_K} {:.4} (popularity {:.4})",
        get("model", "ndcg")?,
        get("popularity", "ndcg")?,
        get("model", "recall")?,
        get("popularity", "recall")?
    );
    if ranking["sample"].is_null() {
        return Some(line);
    }
    let error = |side: &str| get(side, "ndcg_standard_error").unwrap_or(f64::NAN);
    Some(format!(
        "{line}; of a sample of {} of the {} users with held-out pairs (--rank-users), NDCG@{RANKING_K} standard errors {:.4} and {:.4}",
        ranking["users"],
        ranking["users_with_holdout"],
        error("model"),
        error("popularity")
    ))
}

/// Everything the model's publication records.
struct Save<'a> {
    args: &'a TrainArgs,
    settings: &'a Settings,
    /// The model this job found at `--model` when it started: the one it may replace.
    found: &'a Found,
    report: &'a IngestReport,
    totals: &'a Totals,
    metrics: Metrics,
    /// Seconds of plan, read, features, exchange, train, the popularity weight's choice and
    /// the final metrics (the slowest rank's).
    phases: [f64; 7],
    item_rows: ItemRows,
    ranks: usize,
    job_started: Instant,
    /// `ModelMeta::tuned`.
    tuned: Option<serde_json::Value>,
    /// Whether the ranks write the users' table in parts (`user_table::in_parts`).
    users_in_parts: bool,
}

impl Save<'_> {
    /// Publish the model: rank 0 gathers every rank's users and writes the table whole, or (a
    /// large table) each rank writes its range of the users sorted by id as a part of it
    /// (`train::user_table`); rank 0 then writes the items and switches `model.json`.
    fn publish(self, comm: &dyn Collective, prepared: Prepared, mut params: Params) -> Result<()> {
        let started = Instant::now();
        let Prepared {
            mut data,
            blocks,
            sorted_items,
            item_counts,
            ..
        } = prepared;
        // The ratings are done with: give their memory back before the model is assembled.
        let user_ids = std::mem::take(&mut data.ratings.user_ids);
        drop(data);
        let items = (sorted_items.as_slice(), item_counts.as_slice());
        if !self.users_in_parts {
            // Rank 0 writes; every rank hears how that went (no `?` before the agreement). The
            // users' rows are in the messages once encoded: only the item rows are still needed.
            let mine = user_table::for_gather(&user_ids, params.view());
            drop(user_ids);
            params.users = Rows::zeros(0);
            let saved = user_table::gather(comm, mine).and_then(|users| {
                let Some(users) = users else {
                    return Ok(());
                };
                let table = user_table::whole_table(&users, params.factors)?;
                let users = (UsersTable::Whole(table), users.len() as u64);
                self.write(users, items, &blocks, &params, started)
            });
            return comm.agree(saved);
        }
        let loc = &self.settings.model;
        let version = comm.broadcast_bytes(0, model_io::new_version_id().into_bytes())?;
        let version = String::from_utf8_lossy(&version).into_owned();
        // Agreed before writing: `write_part` begins with a collective no rank may miss.
        let outgoing = comm.agree(ForRanges::of(comm, &user_ids, params.view()))?;
        // The users' rows and ids are in the messages now: only the item rows are still needed.
        drop(user_ids);
        params.users = Rows::zeros(0);
        let users = comm.agree(user_table::sort_across(comm, outgoing))?;
        let written = user_table::write_part(comm, loc, &version, &users, params.factors);
        drop(users);
        let written = comm.agree(written);
        if written.is_err() && comm.is_root() {
            model_io::abandon_version(loc, &version);
        }
        let parts = user_table::agree_parts(comm, &version, written?);
        let saved = match comm.is_root() {
            true => {
                let users = (UsersTable::Parts { version, parts }, self.totals.n_users);
                self.write(users, items, &blocks, &params, started)
            }
            false => Ok(()),
        };
        comm.agree(saved)
    }

    /// Rank 0: encode the items and publish the model, its users' table (of `n_users` rows)
    /// ready.
    fn write(
        &self,
        (users, n_users): (UsersTable, u64),
        (sorted_items, item_counts): (&[Id], &[u64]),
        blocks: &ItemBlocks,
        params: &Params,
        started: Instant,
    ) -> Result<()> {
        let mut meta = self.meta(n_users as usize, sorted_items.len(), blocks);
        // The model file lists items by id, as users look them up.
        let mut item_rows = Vec::with_capacity(blocks.row_of.len() * (params.factors + 1));
        for &row in &blocks.row_of {
            item_rows.extend_from_slice(params.item(row as usize));
        }
        let items = rows_to_parquet_with(
            "item_id",
            sorted_items,
            &item_rows,
            params.factors,
            Some(item_counts),
        )?;
        model_io::publish(
            &self.settings.model,
            self.found,
            &mut meta,
            (users, items),
            |meta| {
                meta.training.phases.save = started.elapsed().as_secs_f64();
                meta.training.seconds = self.job_started.elapsed().as_secs_f64();
            },
        )?;
        // The epochs as a picture beside the model; the model stands if it cannot be written.
        let loc = &self.settings.model;
        let picture = crate::plot::training_svg(&meta.metrics.history).and_then(|svg| {
            let key = loc.child_key(model_io::TRAINING_SVG);
            loc.blocking().put(&key, svg.into_bytes().into())
        });
        if let Err(e) = picture {
            log::warn!("{} not written: {e}", model_io::TRAINING_SVG);
        }
        self.log_saved(&meta);
        Ok(())
    }

    /// `model.json` of this run (`files` and the save's timings come at publication).
    fn meta(&self, n_users: usize, n_items: usize, blocks: &ItemBlocks) -> ModelMeta {
        let ranks = self.ranks;
        let (hyper, input, report) = (&self.settings.hyper, &self.settings.input, self.report);
        let p = self.phases;
        ModelMeta {
            format: FORMAT.into(),
            version: VERSION,
            factors: hyper.factors,
            biased: hyper.biased,
            global_mean: self.totals.globals.global_mean,
            rating_min: self.totals.globals.rating_range.0,
            rating_max: self.totals.globals.rating_range.1,
            n_users: n_users as u64,
            n_items: n_items as u64,
            n_ratings: self.totals.n_ratings,
            hyperparameters: hyper.clone(),
            event_weights: input.recorded_weights(),
            input: InputRecord {
                data: self.args.data.clone(),
                settings: InputSettings {
                    // The column found, so `evaluate` reads other data the same way.
                    item_col: report.item_col.clone().or(input.settings.item_col.clone()),
                    ..input.settings.clone()
                },
                holdout: hyper.holdout,
            },
            training: Training {
                ranks,
                epochs: hyper.epochs,
                seconds: 0.0,
                seconds_per_epoch: self.metrics.history.iter().map(|h| h.seconds).sum::<f64>()
                    / hyper.epochs as f64,
                item_rows: self.item_rows.name().into(),
                syncs_per_epoch: self.item_rows.syncs_per_epoch(ranks),
                floats_per_sync: self.item_rows.floats_per_sync(blocks, hyper.factors),
                rows_read: report.rows_read,
                rows_skipped: report.skipped.total(),
                phases: Phases {
                    plan: p[0],
                    read: p[1],
                    features: p[2],
                    exchange: p[3],
                    train: p[4],
                    choice: p[5],
                    metrics: p[6],
                    save: 0.0,
                    read_per_rank: report
                        .read_per_rank
                        .iter()
                        .map(|r| ReadStats {
                            bytes: r.bytes,
                            requests: r.requests,
                        })
                        .collect(),
                },
            },
            metrics: self.metrics.clone(),
            files: Default::default(),
            user_parts: Vec::new(),
            created_by: format!("funksvd {}", env!("CARGO_PKG_VERSION")),
            tuned: self.tuned.clone(),
        }
    }

    fn log_saved(&self, meta: &ModelMeta) {
        let m = &meta.metrics;
        let rmse = match meta.hyperparameters.objective {
            Objective::Explicit => m.holdout_rmse.map(|v| format!("hold-out RMSE {v:.4}")),
            Objective::Implicit => None,
        };
        let ranking = m.ranking.as_ref().and_then(ranking_line);
        let figure = match (rmse, ranking) {
            (Some(rmse), Some(ranking)) => Some(format!("{rmse}, {ranking}")),
            (Some(rmse), None) => Some(rmse),
            (None, Some(ranking)) => Some(format!("hold-out {ranking}")),
            (None, None) => None,
        };
        log::info!(
            "model saved to {} ({} users, {} items, {}) in {:.2}s total",
            self.settings.model.url(),
            meta.n_users,
            meta.n_items,
            figure.unwrap_or_else(|| "no hold-out".into()),
            self.job_started.elapsed().as_secs_f64()
        );
    }
}

/// What a checkpoint must match: the dataset (files and sizes) and every flag that changes how
/// it is read.
fn run_fingerprint(report: &IngestReport, args: &TrainArgs, input: &Input) -> String {
    let text = format!(
        "{}|{}|{}|{}",
        report.dataset_fingerprint,
        input.describe(),
        args.data,
        args.holdout
    );
    format!("{:016x}", crate::ids::hash_str(&text))
}

#[cfg(test)]
mod tests {
    use super::shows_epoch;

    #[test]
    fn the_log_shows_every_early_epoch_then_about_thirty_more_and_always_the_last() {
        let shown = |epochs: usize| {
            (1..=epochs)
                .filter(|&e| shows_epoch(e, epochs))
                .collect::<Vec<_>>()
        };
        assert_eq!(shown(10), (1..=10).collect::<Vec<_>>());
        assert_eq!(shown(20).len(), 20);
        for epochs in [21, 49, 50, 51, 77, 1000, 100_000] {
            let lines = shown(epochs);
            assert!(lines.len() <= 51, "{epochs}: {}", lines.len());
            assert!(lines.len() >= 21.min(epochs), "{epochs}");
            assert_eq!(lines.last(), Some(&epochs), "{epochs}");
            assert_eq!(&lines[..20], &(1..=20).collect::<Vec<_>>()[..]);
        }
        // Evenly spaced after the first twenty.
        let lines = shown(320);
        let gaps: Vec<usize> = lines[20..].windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|&g| g == 10), "{gaps:?}");
    }
}
