//! `funksvd tune`: the world's ranks split into groups of `--ranks-per-trial`; each group reads,
//! featurises and exchanges the data once, then trains trials one after another, measuring
//! each at ASHA's rungs and asking rank 0 whether it goes on (`tune::coordinator`); rank 0
//! saves every finished trial in `MODEL/_tune/trials.parquet`. When no trial is left, the best
//! configuration is trained on all ranks and published like `train` (model.json `tuned` says
//! which search and trial it came from), and `best.json` is written.

use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::train::{agree_totals, fits_in_memory, log_set_up, run_as, settings, Settings, Totals};
use crate::cli::{Scheduler, TrainArgs, TuneArgs};
use crate::collective::{Collective, CollectiveExt};
use crate::error::{Error, Result};
use crate::mf::Objective;
use crate::model_io;
use crate::pipeline;
use crate::progress::Bar;
use crate::train::data::{prepare, Prepared};
use crate::train::{fit_objective, ControlFlow};
use crate::tune::charts::{params_svg, trials_svg};
use crate::tune::coordinator::{Coordinator, Director, Local, OnFinished, Remote};
use crate::tune::metric::{Measure, Metric};
use crate::tune::record::{
    config_flags, config_json, decode_trials, encode_trials, SearchRecord, BEST_JSON, FOLDER,
    PARAMS_SVG, SEARCH_JSON, TRIALS_PARQUET, TRIALS_SVG,
};
use crate::tune::search::{Asha, Search, Status};
use crate::tune::space::{Config, Space};

/// The search, as every rank understands it from the flags.
struct Plan {
    space: Space,
    configs: Vec<Config>,
    /// The flags every trial starts from.
    base: TrainArgs,
    settings: Settings,
    metric: Metric,
    scheduler: Option<Asha>,
    /// Where trials are measured: ASHA's rungs, with early stopping or without.
    measure: Asha,
    ranks_per_trial: usize,
    groups: usize,
    record: SearchRecord,
    resume: bool,
    /// `--max-seconds`, counted from `started`.
    max_seconds: Option<f64>,
    started: Instant,
    /// `--final-holdout`: the published model's hold-out, if not the trials'.
    final_holdout: Option<f64>,
}

impl Plan {
    fn trial_args(&self, trial: usize) -> TrainArgs {
        self.space.trial_args(&self.configs[trial], &self.base)
    }

    /// The flags the published model is trained with: trial `trial`'s, with `--final-holdout`.
    fn final_args(&self, trial: usize) -> TrainArgs {
        let mut args = self.trial_args(trial);
        args.holdout = self.final_holdout.unwrap_or(args.holdout);
        args
    }

    /// Where trial `trial` is measured: its rungs and its last epoch.
    fn checkpoints(&self, epochs: usize) -> Vec<usize> {
        let mut at = self.measure.rungs(epochs);
        at.push(epochs);
        at
    }

    fn describe(&self, trial: usize) -> String {
        // Numbered from 0 as in trials.parquet and best.json.
        format!(
            "trial {trial} of {} ({})",
            self.configs.len(),
            config_flags(&self.space, &self.configs[trial])
        )
    }
}

/// What a group trains every trial on.
struct GroupData {
    prepared: Prepared,
    totals: Totals,
    measure: Measure,
}

pub fn run(world: &dyn Collective, args: &TuneArgs) -> Result<()> {
    let started = Instant::now();
    let plan = world.agree(plan(world, args))?;
    let saved = world.agree(match world.is_root() {
        true => open_search(&plan),
        false => Ok(Vec::new()),
    })?;
    let group = world.split(world.rank() / plan.ranks_per_trial);
    let data = world.agree(load(world, &*group, &plan))?;
    let searched = search(world, &*group, &plan, &data, saved);
    let search = match searched {
        Ok(search) => search,
        // Another group may be deep in a trial: only ending the job reaches it in seconds.
        // Finished trials are in trials.parquet for --resume.
        Err(e) => {
            if !matches!(e, Error::PeerFailed { .. }) {
                crate::comm::say(&format!("funksvd: error (rank {}): {e}; the trials finished so far are kept: run the same command with --resume to go on\n", world.rank()));
            }
            world.abort(e.exit_code())
        }
    };
    world.wait_for_all();
    drop(data);
    drop(group);
    let best = search.as_ref().and_then(|s| s.best());
    let best: Option<(usize, f64)> = shared(world, world.is_root().then_some(Ok(best)))?;
    let Some((trial, value)) = best else {
        return Err(Error::usage(format!(
            "every trial failed: nothing was published; the reasons are in {}",
            plan.settings
                .model
                .display_key(&plan.settings.model.child_key(TRIALS_PARQUET))
        )));
    };
    if let Some(search) = &search {
        log_summary(&plan, search, started);
    }
    let final_args = plan.final_args(trial);
    let tuned = serde_json::json!({
        "search": plan.settings.model.display_key(&plan.settings.model.child_key(FOLDER)),
        "trial": trial,
        "metric": plan.metric.name(),
        "value": value,
        "config": config_json(&plan.space, &plan.configs[trial]),
        "space": plan.space.text,
        "final_holdout": final_args.holdout,
    });
    if world.is_root() {
        log::info!(
            "tune: training {} on all {} ranks{}, to publish at {}",
            plan.describe(trial),
            world.size(),
            match plan.final_holdout {
                Some(0.0) => " on all of the data (--final-holdout 0)".to_string(),
                Some(h) => format!(" with --holdout {h} (--final-holdout)"),
                None => String::new(),
            },
            plan.settings.model.url()
        );
    }
    run_as(world, &final_args, Some(tuned.clone()))?;
    let written = match (world.is_root(), &search) {
        (true, Some(search)) => write_best(&plan, search, tuned, started),
        _ => Ok(()),
    };
    world.agree(written)
}

/// The flags checked, the space parsed and its configurations drawn.
fn plan(world: &dyn Collective, args: &TuneArgs) -> Result<Plan> {
    let mut base = args.train.clone();
    base.resume = false;
    check_flags(world, args)?;
    let space = Space::parse(&args.space)?;
    space.check(&base)?;
    let implicit = space.objectives(&base).contains(&Objective::Implicit);
    let metric = match &args.metric {
        Some(name) => Metric::parse(name)?,
        None if implicit => Metric::Ranked { which: 2, k: 20 },
        None => Metric::HoldoutRmse,
    };
    if metric.is_error() && implicit {
        return Err(Error::usage(format!("--metric {}: implicit models predict preferences, not ratings; judge them by a ranking metric such as ndcg@20", metric.name())));
    }
    let k = args.ranks_per_trial;
    let configs = space.configs(args.trials, base.seed, &base);
    let longest = configs
        .iter()
        .map(|c| space.trial_args(c, &base).epochs())
        .max()
        .unwrap_or(1);
    let measure = Asha {
        grace: args
            .grace_epochs
            .unwrap_or_else(|| default_grace(longest, args.eta)),
        eta: args.eta,
    };
    let scheduler = (args.scheduler == Scheduler::Asha).then_some(measure);
    let settings = settings(world, &base)?;
    let record = SearchRecord {
        space: space.text.clone(),
        trials: configs.len(),
        seed: base.seed,
        metric: metric.name(),
        scheduler: format!("{:?}", args.scheduler).to_lowercase(),
        grace_epochs: measure.grace,
        eta: args.eta,
        data: base.data.clone(),
        base: settings.hyper.flags(),
    };
    Ok(Plan {
        space,
        configs,
        base,
        settings,
        metric,
        scheduler,
        measure,
        ranks_per_trial: k,
        groups: world.size() / k,
        record,
        resume: args.train.resume,
        max_seconds: args.max_seconds,
        started: Instant::now(),
        final_holdout: args.final_holdout,
    })
}

/// The flags that do not depend on the space, checked.
fn check_flags(world: &dyn Collective, args: &TuneArgs) -> Result<()> {
    let base = &args.train;
    if let Some(n) = base.checkpoint_every {
        return Err(Error::usage(format!("--checkpoint-every {n}: tune does not checkpoint trials (a search resumes by trials: --resume)")));
    }
    if base.rank_metrics.is_some() {
        return Err(Error::usage(
            "--rank-metrics: tune measures --metric instead (e.g. --metric ndcg@20)",
        ));
    }
    if base.holdout <= 0.0 {
        return Err(Error::usage(format!("--holdout {}: tune judges every trial on the hold-out; give a fraction above 0 (the default is 0.2)", base.holdout)));
    }
    let k = args.ranks_per_trial;
    if k == 0 || world.size() % k != 0 {
        return Err(Error::usage(format!(
            "--ranks-per-trial {k}: the job's {} ranks must split into groups of that many; give a divisor of {} (or launch a multiple of {k} ranks)",
            world.size(),
            world.size()
        )));
    }
    if let Some(h) = args.final_holdout.filter(|h| !(0.0..1.0).contains(h)) {
        return Err(Error::usage(format!(
            "--final-holdout {h}: must be at least 0 (all of the data) and below 1"
        )));
    }
    if let Some(s) = args.max_seconds.filter(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(Error::usage(format!(
            "--max-seconds {s}: give a number of seconds above 0"
        )));
    }
    if args.trials == Some(0) {
        return Err(Error::usage("--trials 0: give at least 1"));
    }
    if args.grace_epochs == Some(0) || args.eta < 2 {
        return Err(Error::usage(format!("--grace-epochs {} --eta {}: ASHA needs a first rung of at least 1 epoch and eta of at least 2", args.grace_epochs.unwrap_or(1), args.eta)));
    }
    Ok(())
}

/// ASHA's first rung without `--grace-epochs`: the longest trial's epochs / eta^3 (at least 1),
/// so the longest trials pass 3 rungs before their end. A first rung after 1 epoch judges
/// learning rates by their first step: in bench_tune it stopped the slow, long trials that
/// win (lr 0.005, 137 epochs) and found a worse best than no early stopping.
fn default_grace(longest: usize, eta: usize) -> usize {
    (longest / eta.saturating_pow(3)).max(1)
}

/// Rank 0: start the search's folder, or read what a resumed one finished.
fn open_search(plan: &Plan) -> Result<Vec<crate::tune::search::Row>> {
    let loc = &plan.settings.model;
    model_io::prepare_publish(loc, "--model")?;
    let io = loc.blocking();
    let (search_key, trials_key) = (loc.child_key(SEARCH_JSON), loc.child_key(TRIALS_PARQUET));
    let write_record = || {
        let bytes = serde_json::to_vec_pretty(&plan.record).expect("the search record encodes");
        io.put(&search_key, bytes.into())
    };
    let exists = io.exists(&search_key)?;
    match (plan.resume, exists) {
        (false, true) => Err(Error::usage(format!(
            "--model {}: a search is there already ({}): add --resume to continue it, or remove {} to start anew",
            loc.url(),
            loc.display_key(&search_key),
            loc.display_key(&loc.child_key(FOLDER))
        ))),
        (false, false) | (true, false) => {
            if plan.resume {
                log::warn!("--resume: no search at {} yet; starting one", loc.display_key(&search_key));
            }
            write_record()?;
            Ok(Vec::new())
        }
        (true, true) => {
            let shown = loc.display_key(&search_key);
            let saved: SearchRecord = serde_json::from_slice(&io.get(&search_key)?)
                .map_err(|e| Error::usage(format!("{shown}: not a tune search record ({e})")))?;
            if let Some(change) = plan.record.differs_from(&saved) {
                return Err(Error::usage(format!("--resume: {change}: a search resumes with the flags it started with ({shown})")));
            }
            let rows = match io.exists(&trials_key)? {
                true => decode_trials(io.get(&trials_key)?, &loc.display_key(&trials_key))?,
                false => Vec::new(),
            };
            Ok(rows)
        }
    }
}

/// The group's data, read, featurised and exchanged once for all its trials.
fn load(world: &dyn Collective, group: &dyn Collective, plan: &Plan) -> Result<GroupData> {
    let settings = &plan.settings;
    let (owned, report) = pipeline::load_ratings(group, &settings.data, &settings.input)?;
    let prepared = prepare(group, owned, &settings.hyper)?;
    let totals = agree_totals(group, &prepared.data, &report, &settings.hyper)?;
    if world.is_root() {
        log::info!(
            "tune: {} trials, {} groups of {} rank(s), each read the data once; judged by hold-out {} ({}); {}",
            plan.configs.len(),
            plan.groups,
            plan.ranks_per_trial,
            plan.metric.name(),
            match plan.metric.goal() {
                crate::tune::search::Goal::Minimise => "smaller is better",
                crate::tune::search::Goal::Maximise => "larger is better",
            },
            match plan.scheduler {
                Some(a) => format!("ASHA: rungs at {} x {}^i epochs", a.grace, a.eta),
                None => "no early stopping".into(),
            }
        );
    }
    log_set_up(group, &prepared, &totals);
    let measure = Measure::new(group, &prepared, (plan.metric.clone(), settings.rank_users));
    Ok(GroupData {
        prepared,
        totals,
        measure,
    })
}

/// Every group runs trials until none is left; rank 0 keeps the search (returned there).
fn search(
    world: &dyn Collective,
    group: &dyn Collective,
    plan: &Plan,
    data: &GroupData,
    saved: Vec<crate::tune::search::Row>,
) -> Result<Option<Search>> {
    let mut coordinator = world.is_root().then(|| {
        let epochs = (0..plan.configs.len())
            .map(|t| plan.trial_args(t).epochs())
            .collect();
        let search = Search::resumed(epochs, plan.scheduler, plan.metric.goal(), saved)
            .measured_at(plan.measure);
        let done = search.finished();
        if plan.resume {
            log::info!(
                "--resume: {done} of {} trials finished before; running the rest",
                plan.configs.len()
            );
        }
        let deadline = plan
            .max_seconds
            .map(|s| plan.started + Duration::from_secs_f64(s));
        let mut recorder = Recorder::new(plan, done);
        let on_finished: OnFinished =
            Box::new(move |search, trial| recorder.finished(search, trial));
        Coordinator::new(world, search, plan.groups, deadline, on_finished)
    });
    {
        let mut local;
        let mut remote;
        let director: Option<&mut dyn Director> = match (group.is_root(), coordinator.as_mut()) {
            (true, Some(c)) => {
                local = Local(c);
                Some(&mut local)
            }
            (true, None) => {
                remote = Remote { world };
                Some(&mut remote)
            }
            (false, _) => None,
        };
        run_trials(group, plan, data, director)?;
    }
    match coordinator {
        Some(mut c) => {
            c.serve_until_released()?;
            c.conclude()?;
            Ok(Some(c.search))
        }
        None => Ok(None),
    }
}

/// Rank 0 saves the trials table (and redraws the pictures) after a trial finishes unless
/// the last save was less than this many times its own duration ago: saving takes at most
/// about 1/20 of the search, short searches save after every trial, and a rank failing loses
/// little (`--resume` reruns the trials finished since).
const SAVE_SHARE: u32 = 20;
/// How often the log states the search as a whole.
const STATUS_EVERY: Duration = Duration::from_secs(30);

/// When something was last done and how long it took.
struct Paced {
    at: Instant,
    took: Duration,
}

impl Paced {
    fn new() -> Paced {
        Paced {
            at: Instant::now(),
            took: Duration::ZERO,
        }
    }

    fn due(&self) -> bool {
        self.at.elapsed() >= self.took * SAVE_SHARE
    }

    fn run(&mut self, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let started = Instant::now();
        work()?;
        (self.at, self.took) = (Instant::now(), started.elapsed());
        Ok(())
    }
}

/// What rank 0 does as trials finish: the table and pictures saved as often as they are cheap
/// enough (rewriting them after each of thousands of short trials would cost more than the
/// trials), a log line for each trial that ran all its epochs, failed or became the best, a
/// status line now and then, and the bar.
struct Recorder<'p> {
    plan: &'p Plan,
    bar: Bar,
    saved: Paced,
    drawn: Paced,
    told: Instant,
    best: Option<usize>,
}

impl<'p> Recorder<'p> {
    fn new(plan: &'p Plan, done: usize) -> Recorder<'p> {
        let bar = Bar::new(0, plan.configs.len() as u64, "trials");
        bar.set(done as u64, String::new);
        Recorder {
            plan,
            bar,
            saved: Paced::new(),
            drawn: Paced::new(),
            told: Instant::now(),
            best: None,
        }
    }

    /// `trial` finished (`None`: the search is over, save everything).
    fn finished(&mut self, search: &Search, trial: Option<usize>) -> Result<()> {
        let metric = self.plan.metric.name();
        let best = search.best();
        if let Some(trial) = trial {
            self.log_trial(search, trial, best);
        }
        let (plan, last) = (self.plan, trial.is_none());
        if last || self.saved.due() {
            self.saved.run(|| save_table(plan, search))?;
        }
        if last || self.drawn.due() {
            self.drawn.run(|| draw(plan, search))?;
        }
        if trial.is_some() && self.told.elapsed() >= STATUS_EVERY {
            self.told = Instant::now();
            let [completed, stopped, failed] = counts(search);
            log::info!(
                "tune: {} of {} trials finished ({completed} completed, {stopped} stopped early, {failed} failed){}",
                search.finished(),
                search.trials(),
                best.map(|(t, m)| format!("; best: trial {t}, {metric} {m:.4}")).unwrap_or_default()
            );
        }
        let said = best
            .map(|(t, m)| format!("best: trial {t}, {metric} {m:.4}"))
            .unwrap_or_default();
        self.bar.set(search.finished() as u64, || said);
        Ok(())
    }

    fn log_trial(&mut self, search: &Search, trial: usize, best: Option<(usize, f64)>) {
        let metric = self.plan.metric.name();
        let rows = search.rows_of(trial);
        let last = rows.last().expect("a finished trial has a row");
        let new_best = best.is_some_and(|(t, _)| t == trial) && self.best != Some(trial);
        if new_best {
            self.best = Some(trial);
        }
        let what = match (last.status, last.metric) {
            (Status::Failed, _) => format!(
                "failed after epoch {}: {}",
                last.epoch,
                last.reason.as_deref().unwrap_or("")
            ),
            (status, Some(m)) => format!(
                "{metric} {m:.4} after epoch {}, {}",
                last.epoch,
                status.name()
            ),
            (status, None) => status.name().to_string(),
        };
        let line = format!(
            "{}: {what} in {:.1}s{}",
            self.plan.describe(trial),
            last.seconds,
            if new_best { " (the best so far)" } else { "" }
        );
        match last.status {
            Status::Stopped | Status::Continued if !new_best => log::debug!("{line}"),
            _ => log::info!("{line}"),
        }
    }
}

fn save_table(plan: &Plan, search: &Search) -> Result<()> {
    let loc = &plan.settings.model;
    let bytes = encode_trials(&plan.space, &plan.configs, &search.rows)?;
    loc.blocking().put(&loc.child_key(TRIALS_PARQUET), bytes)
}

fn draw(plan: &Plan, search: &Search) -> Result<()> {
    let loc = &plan.settings.model;
    let (metric, best) = (plan.metric.name(), search.best().map(|b| b.0));
    let trials = trials_svg(&metric, &search.rows, best)?;
    let params = params_svg(&metric, &plan.space, &plan.configs, &search.rows, best)?;
    loc.blocking()
        .put(&loc.child_key(TRIALS_SVG), trials.into_bytes().into())?;
    loc.blocking()
        .put(&loc.child_key(PARAMS_SVG), params.into_bytes().into())
}

/// A group's trials, one after another, until the director has none left.
fn run_trials<'d>(
    group: &dyn Collective,
    plan: &Plan,
    data: &GroupData,
    mut director: Option<&mut (dyn Director + 'd)>,
) -> Result<()> {
    loop {
        let next = shared(group, director.as_deref_mut().map(|d| d.next()))?;
        let Some(trial) = next else {
            return Ok(());
        };
        run_trial(group, plan, data, trial, director.as_deref_mut())?;
    }
}

/// Train trial `trial`, measured at its checkpoints, until it completes, is stopped or fails.
fn run_trial<'d>(
    group: &dyn Collective,
    plan: &Plan,
    data: &GroupData,
    trial: usize,
    mut director: Option<&mut (dyn Director + 'd)>,
) -> Result<()> {
    let hyper = plan.trial_args(trial).hyper()?;
    let globals = data.totals.globals_for(hyper.objective);
    let checkpoints = plan.checkpoints(hyper.epochs);
    let started = Instant::now();
    let mut reached = 0;
    let fits = crate::fault::point(&format!("trial-{trial}"), group.rank())
        .and_then(|_| fits_in_memory(group, &data.prepared, &data.totals, (&hyper, false)));
    let trained = fits.and_then(|_| {
        fit_objective(group, &data.prepared, &hyper, globals, None, |progress| {
            reached = progress.epoch;
            if let Some(d) = director.as_deref_mut() {
                d.between_epochs()?;
            }
            if !checkpoints.contains(&progress.epoch) {
                return Ok(ControlFlow::Continue(()));
            }
            let metric = data.measure.of(
                group,
                &data.prepared,
                progress.params,
                hyper.biased,
                globals,
            );
            let seconds = started.elapsed().as_secs_f64();
            let decided = director.as_deref_mut().map(|d| {
                d.report(trial, progress.epoch, metric, seconds)
                    .map(|s| s.name().to_string())
            });
            let status: String = shared(group, decided)?;
            Ok(match status == Status::Continued.name() {
                true => ControlFlow::Continue(()),
                false => ControlFlow::Break(()),
            })
        })
    });
    match group.agree(trained) {
        Ok(_) => Ok(()),
        // Diverged, a singular solve, too big for the host: this trial's flags are at fault.
        Err(e) if e.exit_code() == 2 => {
            let seconds = started.elapsed().as_secs_f64();
            let noted = director.map(|d| d.fail(trial, reached, seconds, e.to_string()));
            shared(group, noted)
        }
        Err(e) => Err(e),
    }
}

/// The group leader's answer (`Some` on the leader only) on every rank of `group`; a failure
/// of the leader's reaches every rank.
fn shared<T: Serialize + DeserializeOwned>(
    group: &dyn Collective,
    asked: Option<Result<T>>,
) -> Result<T> {
    let mine = match asked {
        Some(result) => result.map(Some),
        None => Ok(None),
    };
    let mine = group.agree(mine)?;
    let bytes = mine
        .map(|v| serde_json::to_vec(&v).expect("tune's answers encode"))
        .unwrap_or_default();
    let bytes = group.broadcast_bytes(0, bytes)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::runtime(format!("tune: the group leader's answer is garbled ({e})")))
}

fn counts(search: &Search) -> [usize; 3] {
    let finals: Vec<Status> = search
        .rows
        .iter()
        .map(|r| r.status)
        .filter(|s| s.is_final())
        .collect();
    [Status::Completed, Status::Stopped, Status::Failed]
        .map(|s| finals.iter().filter(|&&f| f == s).count())
}

fn log_summary(plan: &Plan, search: &Search, started: Instant) {
    let [completed, stopped, failed] = counts(search);
    let best = search
        .best()
        .map(|(t, m)| format!("best: {}, {} {m:.4}", plan.describe(t), plan.metric.name()))
        .unwrap_or_default();
    log::info!(
        "tune: {} of {} trials run in {:.1}s: {completed} completed, {stopped} stopped early, {failed} failed; {best}",
        search.finished(),
        search.trials(),
        started.elapsed().as_secs_f64()
    );
}

/// `_tune/best.json`: the best trial, its configuration as values and as flags, the counts.
fn write_best(
    plan: &Plan,
    search: &Search,
    tuned: serde_json::Value,
    started: Instant,
) -> Result<()> {
    let [completed, stopped, failed] = counts(search);
    let trial = tuned["trial"].as_u64().unwrap_or(0) as usize;
    let best = serde_json::json!({
        "trial": trial,
        "metric": plan.metric.name(),
        "goal": match plan.metric.goal() {
            crate::tune::search::Goal::Minimise => "minimise",
            crate::tune::search::Goal::Maximise => "maximise",
        },
        "value": tuned["value"],
        "config": tuned["config"],
        "flags": config_flags(&plan.space, &plan.configs[trial]),
        "trials": {"total": search.trials(), "run": search.finished(), "completed": completed, "stopped": stopped, "failed": failed, "out_of_time": search.out_of_time},
        "seconds": started.elapsed().as_secs_f64(),
        "model": plan.settings.model.url(),
        "space": plan.space.text,
        "scheduler": plan.record.scheduler,
    });
    let loc = &plan.settings.model;
    let bytes = serde_json::to_vec_pretty(&best).expect("best.json encodes");
    loc.blocking().put(&loc.child_key(BEST_JSON), bytes.into())
}
