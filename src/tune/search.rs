//! The search's bookkeeping, kept by rank 0: which trial runs next, ASHA's rungs and its
//! decisions (Li et al. 2020, "A System for Massively Parallel Hyperparameter Tuning", the
//! asynchronous stopping variant Ray Tune's `ASHAScheduler` uses), every measurement, and the
//! best trial. Pure: the same calls in the same order give the same decisions.

use std::collections::BTreeMap;

/// Whether a smaller or a larger value of the metric is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    Minimise,
    Maximise,
}

impl Goal {
    /// `value` made "larger is better".
    fn score(self, value: f64) -> f64 {
        match self {
            Goal::Minimise => -value,
            Goal::Maximise => value,
        }
    }

    pub fn better(self, a: f64, b: f64) -> bool {
        self.score(a) > self.score(b)
    }
}

/// ASHA's settings: rungs at `grace x eta^i` epochs; at each rung a trial below the top
/// 1/eta of the values recorded there so far stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Asha {
    pub grace: usize,
    pub eta: usize,
}

impl Asha {
    /// The epochs where a trial of `epochs` epochs is measured before its end.
    pub fn rungs(&self, epochs: usize) -> Vec<usize> {
        let mut rungs = Vec::new();
        let mut at = self.grace.max(1);
        while at < epochs {
            rungs.push(at);
            at = at.saturating_mul(self.eta.max(2));
        }
        rungs
    }
}

/// How a measurement left its trial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Measured at a rung, and goes on.
    Continued,
    /// Stopped at a rung by ASHA.
    Stopped,
    /// Ran all its epochs.
    Completed,
    /// Failed (diverged, or a solve failed): `reason` says why.
    Failed,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Continued => "continued",
            Status::Stopped => "stopped",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Status> {
        [
            Status::Continued,
            Status::Stopped,
            Status::Completed,
            Status::Failed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    pub fn is_final(self) -> bool {
        self != Status::Continued
    }
}

/// One measurement of one trial (a row of trials.parquet, beside the trial's configuration).
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub trial: usize,
    pub epoch: usize,
    /// The metric on the hold-out after `epoch` (None for a failure).
    pub metric: Option<f64>,
    /// The trial's training seconds so far (measurements included).
    pub seconds: f64,
    pub status: Status,
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
}

/// The search in progress.
pub struct Search {
    /// Epochs of each trial (its configuration's).
    epochs: Vec<usize>,
    scheduler: Option<Asha>,
    /// Where trials are measured without early stopping (`measured_at`).
    measure: Asha,
    goal: Goal,
    /// By rung epoch: the scores recorded there (larger is better).
    rungs: BTreeMap<usize, Vec<f64>>,
    state: Vec<State>,
    /// Finished trials' measurements, in the order they finished.
    pub rows: Vec<Row>,
    /// Running trials' measurements so far.
    pending: BTreeMap<usize, Vec<Row>>,
    /// The time budget ended the search before every trial ran.
    pub out_of_time: bool,
}

impl Search {
    pub fn new(epochs: Vec<usize>, scheduler: Option<Asha>, goal: Goal) -> Search {
        Search {
            state: vec![State::Waiting; epochs.len()],
            epochs,
            scheduler,
            measure: DEFAULT_ASHA,
            goal,
            rungs: BTreeMap::new(),
            rows: Vec::new(),
            pending: BTreeMap::new(),
            out_of_time: false,
        }
    }

    /// A search that continues from `rows` (what an interrupted one saved): finished trials
    /// count as before and are not run again; the rest run from the start.
    pub fn resumed(
        epochs: Vec<usize>,
        scheduler: Option<Asha>,
        goal: Goal,
        rows: Vec<Row>,
    ) -> Search {
        let mut search = Search::new(epochs, scheduler, goal);
        let finished: Vec<usize> = rows
            .iter()
            .filter(|r| r.status.is_final() && r.trial < search.state.len())
            .map(|r| r.trial)
            .collect();
        for row in rows.into_iter().filter(|r| finished.contains(&r.trial)) {
            search.record_rung(&row);
            search.state[row.trial] = State::Done;
            search.rows.push(row);
        }
        search
    }

    /// Without early stopping, measure trials at `asha`'s rungs (with it, its own).
    pub fn measured_at(mut self, asha: Asha) -> Search {
        self.measure = asha;
        self
    }

    pub fn trials(&self) -> usize {
        self.state.len()
    }

    pub fn finished(&self) -> usize {
        self.state.iter().filter(|&&s| s == State::Done).count()
    }

    /// The epochs after which trial `trial` is measured: its rungs, and its last epoch.
    pub fn checkpoints(&self, trial: usize) -> Vec<usize> {
        let epochs = self.epochs[trial];
        let mut at = self.schedule().rungs(epochs);
        at.push(epochs);
        at
    }

    /// Where measurements are taken: ASHA's rungs, also without early stopping (so curves
    /// with and without it are measured alike).
    fn schedule(&self) -> Asha {
        self.scheduler.unwrap_or(self.measure)
    }

    /// The next trial to run, if any is left.
    pub fn take_next(&mut self) -> Option<usize> {
        let t = self.state.iter().position(|&s| s == State::Waiting)?;
        self.state[t] = State::Running;
        Some(t)
    }

    /// Record trial `trial`'s metric after `epoch` (one of its checkpoints); whether it goes
    /// on. A metric that is not a number fails the trial.
    pub fn report(&mut self, trial: usize, epoch: usize, metric: f64, seconds: f64) -> Status {
        if !metric.is_finite() {
            let reason = format!("the metric is {metric} after epoch {epoch}");
            self.fail(trial, epoch, seconds, reason);
            return Status::Failed;
        }
        let status = if epoch >= self.epochs[trial] {
            Status::Completed
        } else {
            match self.scheduler {
                Some(asha) if self.below_cutoff(asha, epoch, metric) => Status::Stopped,
                _ => Status::Continued,
            }
        };
        let row = Row {
            trial,
            epoch,
            metric: Some(metric),
            seconds,
            status,
            reason: (status == Status::Stopped)
                .then(|| format!("below the top 1/{} at epoch {epoch}", self.schedule().eta)),
        };
        self.record_rung(&row);
        self.pending.entry(trial).or_default().push(row);
        if status.is_final() {
            self.close(trial);
        }
        status
    }

    /// Trial `trial` failed after `epoch` epochs; the search goes on.
    pub fn fail(&mut self, trial: usize, epoch: usize, seconds: f64, reason: String) {
        self.pending.entry(trial).or_default().push(Row {
            trial,
            epoch,
            metric: None,
            seconds,
            status: Status::Failed,
            reason: Some(reason),
        });
        self.close(trial);
    }

    fn close(&mut self, trial: usize) {
        self.state[trial] = State::Done;
        self.rows
            .extend(self.pending.remove(&trial).unwrap_or_default());
    }

    /// ASHA's test, before recording `metric`: below the (1 - 1/eta) quantile of the values
    /// already at this rung (the first trials at a rung always go on).
    fn below_cutoff(&self, asha: Asha, epoch: usize, metric: f64) -> bool {
        let Some(recorded) = self.rungs.get(&epoch).filter(|r| !r.is_empty()) else {
            return false;
        };
        let cutoff = quantile(recorded, 1.0 - 1.0 / asha.eta as f64);
        self.goal.score(metric) < cutoff
    }

    fn record_rung(&mut self, row: &Row) {
        let (Some(metric), true) = (row.metric, row.epoch < self.epochs[row.trial]) else {
            return;
        };
        self.rungs
            .entry(row.epoch)
            .or_default()
            .push(self.goal.score(metric));
    }

    /// The best trial and its metric: of the trials that ran all their epochs, the best
    /// final metric (of all measurements if none did).
    pub fn best(&self) -> Option<(usize, f64)> {
        let pick = |completed_only: bool| {
            self.rows
                .iter()
                .filter(|r| !completed_only || r.status == Status::Completed)
                .filter_map(|r| Some((r.trial, r.metric?)))
                .fold(None, |best: Option<(usize, f64)>, (t, m)| match best {
                    Some((_, b)) if !self.goal.better(m, b) => best,
                    _ => Some((t, m)),
                })
        };
        pick(true).or_else(|| pick(false))
    }

    /// Trial `trial`'s measurements, finished or not.
    pub fn rows_of(&self, trial: usize) -> Vec<&Row> {
        let done = self.rows.iter().filter(|r| r.trial == trial);
        done.chain(self.pending.get(&trial).into_iter().flatten())
            .collect()
    }
}

/// ASHA without `--grace-epochs` / `--eta`: a first rung after 1 epoch, each next one 3 times
/// further.
pub const DEFAULT_ASHA: Asha = Asha { grace: 1, eta: 3 };

/// The `q` quantile of `values`, interpolated linearly between the closest ranks (numpy's
/// default, which Ray Tune's cutoff uses).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let at = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (at.floor() as usize, at.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (at - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rungs_are_at_grace_times_powers_of_eta_before_the_last_epoch() {
        let asha = Asha { grace: 1, eta: 3 };
        assert_eq!(asha.rungs(30), vec![1, 3, 9, 27]);
        assert_eq!(asha.rungs(27), vec![1, 3, 9]);
        assert_eq!(Asha { grace: 2, eta: 4 }.rungs(100), vec![2, 8, 32]);
        assert_eq!(asha.rungs(1), Vec::<usize>::new());
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.5);
        assert!((quantile(&[4.0, 1.0, 3.0], 2.0 / 3.0) - 10.0 / 3.0).abs() < 1e-12);
        assert_eq!(quantile(&[5.0], 0.9), 5.0);
    }

    /// Trials report in turn at rung 1; with eta 2, a trial goes on only if at least as good
    /// as the median of those before it.
    #[test]
    fn asha_stops_a_trial_below_the_top_share_of_its_rung_and_lets_the_first_ones_on() {
        let mut s = Search::new(vec![4; 5], Some(Asha { grace: 1, eta: 2 }), Goal::Minimise);
        let mut decisions = Vec::new();
        for (t, rmse) in [1.0, 0.9, 1.2, 0.8, 1.1].into_iter().enumerate() {
            assert_eq!(s.take_next(), Some(t));
            decisions.push(s.report(t, 1, rmse, 0.1));
        }
        use Status::*;
        assert_eq!(
            decisions,
            vec![Continued, Continued, Stopped, Continued, Stopped]
        );
        assert_eq!(s.take_next(), None);
        assert_eq!(s.finished(), 2);
        // Trial 3 goes on: at rung 2 it is the first, then it completes.
        assert_eq!(s.report(3, 2, 0.7, 0.2), Continued);
        assert_eq!(s.report(3, 4, 0.6, 0.4), Completed);
        assert_eq!(s.best(), Some((3, 0.6)));
        assert_eq!(s.checkpoints(0), vec![1, 2, 4]);
    }

    #[test]
    fn without_a_scheduler_every_trial_runs_to_the_end_and_is_measured_at_the_same_epochs() {
        let mut s = Search::new(vec![10, 10], None, Goal::Maximise);
        assert_eq!(s.checkpoints(0), vec![1, 3, 9, 10]);
        for t in 0..2 {
            s.take_next();
            for e in [1, 3, 9] {
                assert_eq!(
                    s.report(t, e, 0.1 * (t + 1) as f64 / e as f64, 1.0),
                    Status::Continued
                );
            }
            assert_eq!(s.report(t, 10, 0.1 * t as f64, 2.0), Status::Completed);
        }
        assert_eq!(s.best(), Some((1, 0.1)));
    }

    #[test]
    fn failures_are_recorded_with_their_reason_and_the_search_goes_on() {
        let mut s = Search::new(vec![3, 3], Some(DEFAULT_ASHA), Goal::Minimise);
        s.take_next();
        s.fail(0, 2, 0.5, "diverged: lower --lr".into());
        assert_eq!(s.take_next(), Some(1));
        assert_eq!(s.report(1, 1, f64::NAN, 0.1), Status::Failed);
        assert_eq!(s.rows.len(), 2);
        assert!(s.rows[1].reason.as_deref().unwrap().contains("NaN"));
        assert_eq!(s.best(), None);
    }

    #[test]
    fn a_resumed_search_skips_finished_trials_and_keeps_their_rungs() {
        let asha = Some(Asha { grace: 1, eta: 2 });
        let mut s = Search::new(vec![4; 4], asha, Goal::Minimise);
        s.take_next();
        s.report(0, 1, 0.5, 0.1);
        s.report(0, 2, 0.4, 0.2);
        s.report(0, 4, 0.3, 0.3);
        s.take_next();
        s.report(1, 1, 0.45, 0.1); // running when the search stopped
        let mut saved = s.rows.clone();
        saved.extend(s.rows_of(1).into_iter().cloned());
        let mut r = Search::resumed(vec![4; 4], asha, Goal::Minimise, saved);
        assert_eq!(r.finished(), 1);
        assert_eq!(r.take_next(), Some(1));
        // Rung 1 holds trial 0's 0.5 only: trial 1 is judged against it alone.
        assert_eq!(r.report(1, 1, 0.6, 0.1), Status::Stopped);
        assert_eq!(r.best(), Some((0, 0.3)));
    }
}
