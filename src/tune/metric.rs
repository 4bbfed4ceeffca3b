//! `tune --metric`: what a trial is judged by on the hold-out, whether smaller or larger is
//! better, and its measurement (collective over the trial's group).

use crate::collective::{Collective, Op};
use crate::error::{Error, Result};
use crate::metrics::ErrorSums;
use crate::mf::{Globals, ParamsRef};
use crate::train::data::Prepared;
use crate::train::pass::holdout_errors;
use crate::train::ranked::RankCheck;

use super::search::Goal;

/// The ranking figures at K, in `RankSums::means` order.
const RANKED: [&str; 5] = ["precision", "recall", "ndcg", "map", "hit_rate"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metric {
    HoldoutRmse,
    HoldoutMae,
    /// One of `RANKED` (its index) at K.
    Ranked {
        which: usize,
        k: usize,
    },
}

impl Metric {
    pub fn parse(name: &str) -> Result<Metric> {
        let expected = || {
            Error::usage(format!(
                "--metric {name}: expected holdout_rmse, holdout_mae, or one of {} at K (e.g. ndcg@20)",
                RANKED.join(", ")
            ))
        };
        match name {
            "holdout_rmse" => return Ok(Metric::HoldoutRmse),
            "holdout_mae" => return Ok(Metric::HoldoutMae),
            _ => {}
        }
        let (figure, k) = name.split_once('@').ok_or_else(expected)?;
        let which = RANKED
            .iter()
            .position(|&r| r == figure)
            .ok_or_else(expected)?;
        let k: usize = k
            .parse()
            .ok()
            .filter(|&k| (1..=10_000).contains(&k))
            .ok_or_else(expected)?;
        Ok(Metric::Ranked { which, k })
    }

    pub fn name(&self) -> String {
        match self {
            Metric::HoldoutRmse => "holdout_rmse".into(),
            Metric::HoldoutMae => "holdout_mae".into(),
            Metric::Ranked { which, k } => format!("{}@{k}", RANKED[*which]),
        }
    }

    pub fn goal(&self) -> Goal {
        match self {
            Metric::HoldoutRmse | Metric::HoldoutMae => Goal::Minimise,
            Metric::Ranked { .. } => Goal::Maximise,
        }
    }

    /// Whether it compares predicted ratings (meaningless for implicit models, which predict
    /// preferences).
    pub fn is_error(&self) -> bool {
        matches!(self, Metric::HoldoutRmse | Metric::HoldoutMae)
    }
}

/// A metric measured on one group's hold-out, set up once for every trial.
pub struct Measure {
    metric: Metric,
    check: Option<RankCheck>,
}

impl Measure {
    /// Collective over `comm`.
    /// `rank_users`: the most hold-out users a ranking metric scores (`--rank-users`).
    pub fn new(
        comm: &dyn Collective,
        prepared: &Prepared,
        (metric, rank_users): (Metric, u64),
    ) -> Measure {
        let check = match metric {
            Metric::Ranked { k, .. } => Some(RankCheck::new(
                comm,
                &prepared.data,
                prepared.item_ids.len(),
                (k, rank_users),
            )),
            _ => None,
        };
        Measure { metric, check }
    }

    /// The metric of the model `params` holds (collective; NaN without held-out pairs).
    pub fn of(
        &self,
        comm: &dyn Collective,
        prepared: &Prepared,
        params: ParamsRef,
        biased: bool,
        globals: Globals,
    ) -> f64 {
        let data = &prepared.data;
        match (&self.metric, &self.check) {
            (Metric::Ranked { which, .. }, Some(check)) => {
                let ranking = check.rank(
                    comm,
                    params,
                    &data.ratings.user_ids,
                    &prepared.item_ids,
                    biased,
                    globals,
                );
                ranking.model[0].means().map_or(f64::NAN, |m| m[*which])
            }
            (metric, _) => {
                let mut sums = holdout_errors(&data.holdout, params, biased, globals).to_array();
                comm.reduce_f64(&mut sums, Op::Sum);
                let errors = ErrorSums::from_slice(&sums);
                let value = match metric {
                    Metric::HoldoutMae => errors.mae(),
                    _ => errors.rmse(),
                };
                value.unwrap_or(f64::NAN)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_parse_with_their_direction() {
        assert_eq!(
            Metric::parse("holdout_rmse").unwrap().goal(),
            Goal::Minimise
        );
        let ndcg = Metric::parse("ndcg@20").unwrap();
        assert_eq!(
            (ndcg.goal(), ndcg.name()),
            (Goal::Maximise, "ndcg@20".to_string())
        );
        assert_eq!(
            Metric::parse("hit_rate@10").unwrap(),
            Metric::Ranked { which: 4, k: 10 }
        );
        for bad in ["rmse", "ndcg", "ndcg@0", "ndcg@x", "auc@10"] {
            let e = Metric::parse(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--metric {bad}: expected")), "{e}");
        }
    }
}
