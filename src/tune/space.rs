//! The search space of `tune --space`: which flags of `train` vary, over what, and the trials'
//! configurations drawn from it (random with a seed, or the grid when every dimension is a
//! list). Pure: the same text, seed and trial number give the same configuration anywhere.

use std::fmt;

use crate::cli::TrainArgs;
use crate::error::{Error, Result};
use crate::mf::Objective;
use crate::rng::Rng;

/// One value of a dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Text(String),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Int(i) => (*i).into(),
            Value::Float(f) => (*f).into(),
            Value::Text(t) => t.as_str().into(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            // Short and exact enough to pass back as a flag: 6 significant digits.
            Value::Float(x) => write!(f, "{}", format_float(*x)),
            Value::Text(t) => f.write_str(t),
        }
    }
}

fn format_float(x: f64) -> String {
    let s = format!("{x:.6e}");
    s.parse::<f64>().map(|v| v.to_string()).unwrap_or(s)
}

/// What a flag takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// A switch: `true` sets it.
    Switch,
}

/// The flags of `train` a trial may vary, and what they take.
const TUNABLE: &[(&str, Kind)] = &[
    ("factors", Kind::Int),
    ("epochs", Kind::Int),
    ("lr", Kind::Float),
    ("reg", Kind::Float),
    ("objective", Kind::Choice(&["explicit", "implicit"])),
    ("alpha", Kind::Float),
    ("balance", Kind::Float),
    ("popularity-weight", Kind::Float),
    ("unobserved-weight", Kind::Float),
    ("cg-steps", Kind::Int),
    ("no-bias", Kind::Switch),
];

/// The flags of `train` that stay the same for every trial, and why.
pub const FIXED: &[(&str, &str)] = &[
    ("data", "every trial trains on the data read once per group"),
    ("model", "tune publishes the best trial's model there"),
    (
        "seed",
        "it also draws the hold-out split every trial is measured on; set it outside --space",
    ),
    (
        "holdout",
        "it changes the hold-out every trial is measured on; set it outside --space",
    ),
    (
        "holdout-by",
        "it changes the hold-out every trial is measured on; set it outside --space",
    ),
    (
        "checkpoint-every",
        "trials are not checkpointed; tune --resume reruns the unfinished ones",
    ),
    ("resume", "use tune --resume"),
    ("rank-metrics", "tune measures --metric at each rung"),
    (
        "rank-users",
        "it changes which users every trial's ranking metric scores; set it outside --space",
    ),
    ("syncs-per-epoch", "it has no effect"),
];

/// The flags of train that only the implicit objective takes (skipped for explicit trials).
const IMPLICIT_ONLY: &[&str] = &[
    "alpha",
    "balance",
    "popularity-weight",
    "unobserved-weight",
    "cg-steps",
];

/// Where a dimension's values come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Domain {
    List(Vec<Value>),
    /// Uniform between the bounds (both included for integers).
    Range {
        lo: f64,
        hi: f64,
        log: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    /// The flag of train, without `--`.
    pub name: String,
    kind: Kind,
    pub domain: Domain,
}

impl Dimension {
    /// Whether the values are numbers (the parameter plot puts them on an axis).
    pub fn is_numeric(&self) -> bool {
        matches!(self.kind, Kind::Int | Kind::Float)
    }

    pub fn is_log(&self) -> bool {
        matches!(self.domain, Domain::Range { log: true, .. })
    }

    fn draw(&self, rng: &mut Rng) -> Value {
        match &self.domain {
            Domain::List(values) => values[rng.below(values.len())].clone(),
            Domain::Range { lo, hi, log } => {
                let u = rng.next_f64();
                let x = match log {
                    true => (lo.ln() + u * (hi.ln() - lo.ln())).exp(),
                    false => lo + u * (hi - lo),
                };
                match self.kind {
                    // Each integer of [lo, hi] alike (on the log scale for log ranges).
                    Kind::Int if *log => {
                        let v = (lo.ln() + u * ((hi + 1.0).ln() - lo.ln())).exp();
                        Value::Int((v.floor() as i64).clamp(*lo as i64, *hi as i64))
                    }
                    Kind::Int => Value::Int(
                        ((lo + u * (hi - lo + 1.0)).floor() as i64).clamp(*lo as i64, *hi as i64),
                    ),
                    _ => Value::Float(x),
                }
            }
        }
    }

    /// The values a check of the space tries: each of a list, both ends of a range.
    fn extremes(&self) -> Vec<Value> {
        match &self.domain {
            Domain::List(values) => values.clone(),
            Domain::Range { lo, hi, .. } => [lo, hi]
                .iter()
                .map(|&&x| match self.kind {
                    Kind::Int => Value::Int(x as i64),
                    _ => Value::Float(x),
                })
                .collect(),
        }
    }
}

/// One trial's values, dimension by dimension (`None` where the dimension does not apply: the
/// implicit objective's flags on an explicit trial).
pub type Config = Vec<Option<Value>>;

/// `--space`: its dimensions in the order written.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    pub dimensions: Vec<Dimension>,
    /// The text it was parsed from, normalised (one space between terms).
    pub text: String,
}

impl Space {
    /// Parse `name=values` terms separated by spaces: `a,b,c` (a list), `lo..hi` (uniform),
    /// `log:lo..hi` (log-uniform). Errors name the term and say what was expected.
    pub fn parse(text: &str) -> Result<Space> {
        let mut dimensions: Vec<Dimension> = Vec::new();
        for term in text.split_whitespace() {
            let dim = parse_term(term)?;
            if dimensions.iter().any(|d| d.name == dim.name) {
                return Err(space_error(term, "each flag once"));
            }
            dimensions.push(dim);
        }
        if dimensions.is_empty() {
            return Err(Error::usage(
                "--space is empty: expected terms such as 'lr=log:0.001..0.05 factors=16,32,64'",
            ));
        }
        Ok(Space {
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
            dimensions,
        })
    }

    /// Whether every dimension is a list (then the search walks the grid).
    pub fn is_grid(&self) -> bool {
        self.dimensions
            .iter()
            .all(|d| matches!(d.domain, Domain::List(_)))
    }

    /// How many configurations the grid has (None if some dimension is a range).
    pub fn grid_size(&self) -> Option<usize> {
        self.dimensions
            .iter()
            .try_fold(1usize, |n, d| match &d.domain {
                Domain::List(v) => Some(n.saturating_mul(v.len())),
                Domain::Range { .. } => None,
            })
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.dimensions.iter().position(|d| d.name == name)
    }

    /// The configurations of `trials` trials: the whole grid (or a seeded choice of `trials`
    /// of its points, in grid order), or random draws, trial i from its own stream of `seed`.
    pub fn configs(&self, trials: Option<usize>, seed: u64, base: &TrainArgs) -> Vec<Config> {
        let raw: Vec<Vec<Value>> = match self.grid_size() {
            Some(size) => {
                let mut points: Vec<usize> = (0..size).collect();
                if let Some(n) = trials.filter(|&n| n < size) {
                    Rng::new(seed, 0x6772_6964).shuffle(&mut points);
                    points.truncate(n);
                    points.sort_unstable();
                }
                points.into_iter().map(|p| self.grid_point(p)).collect()
            }
            None => (0..trials.unwrap_or(DEFAULT_TRIALS))
                .map(|t| {
                    let mut rng = Rng::new(seed, 0x7472_6961_6c00_0000 | t as u64);
                    self.dimensions.iter().map(|d| d.draw(&mut rng)).collect()
                })
                .collect(),
        };
        raw.into_iter()
            .map(|values| self.applying(values, base))
            .collect()
    }

    fn grid_point(&self, mut p: usize) -> Vec<Value> {
        // The last dimension varies fastest.
        let mut values = vec![Value::Int(0); self.dimensions.len()];
        for (d, dim) in self.dimensions.iter().enumerate().rev() {
            let Domain::List(list) = &dim.domain else {
                unreachable!("a grid has lists only")
            };
            values[d] = list[p % list.len()].clone();
            p /= list.len();
        }
        values
    }

    /// `values`, with those the trial's objective does not take left out.
    fn applying(&self, values: Vec<Value>, base: &TrainArgs) -> Config {
        let objective = self.objective(&values, base);
        self.dimensions
            .iter()
            .zip(values)
            .map(|(d, v)| {
                let applies =
                    objective == Objective::Implicit || !IMPLICIT_ONLY.contains(&d.name.as_str());
                applies.then_some(v)
            })
            .collect()
    }

    fn objective(&self, values: &[Value], base: &TrainArgs) -> Objective {
        match self.index("objective").map(|i| &values[i]) {
            Some(Value::Text(t)) if t == "implicit" => Objective::Implicit,
            Some(_) => Objective::Explicit,
            None => base.objective(),
        }
    }

    /// `base` with the trial's values set.
    pub fn trial_args(&self, config: &Config, base: &TrainArgs) -> TrainArgs {
        let mut args = base.clone();
        for (dim, value) in self.dimensions.iter().zip(config) {
            if let Some(value) = value {
                set_flag(&mut args, &dim.name, value);
            }
        }
        args
    }

    /// Refuse a space whose values `train` would refuse: every value of each list and both ends
    /// of each range, each with the others' first values, through train's own checks.
    pub fn check(&self, base: &TrainArgs) -> Result<()> {
        let implicit = self.objectives(base).contains(&Objective::Implicit);
        if let Some(dim) = self
            .dimensions
            .iter()
            .find(|d| !implicit && IMPLICIT_ONLY.contains(&d.name.as_str()))
        {
            return Err(Error::usage(format!(
                "--space {}: --{} applies to --objective implicit only: add objective=implicit (or objective=explicit,implicit) to the space, or give --objective implicit",
                dim.name, dim.name
            )));
        }
        let firsts: Vec<Value> = self
            .dimensions
            .iter()
            .map(|d| d.extremes()[0].clone())
            .collect();
        for (d, dim) in self.dimensions.iter().enumerate() {
            for value in dim.extremes() {
                let mut values = firsts.clone();
                values[d] = value.clone();
                let config = self.applying(values, base);
                if config[d].is_none() {
                    continue; // an implicit flag beside objective=explicit: not applied
                }
                if let Err(e) = self.trial_args(&config, base).hyper() {
                    return Err(Error::usage(format!("--space {}={value}: {e}", dim.name)));
                }
            }
        }
        Ok(())
    }

    /// The objectives the trials may train.
    pub fn objectives(&self, base: &TrainArgs) -> Vec<Objective> {
        match self.index("objective") {
            None => vec![base.objective()],
            Some(i) => self.dimensions[i]
                .extremes()
                .iter()
                .map(|v| match v {
                    Value::Text(t) if t == "implicit" => Objective::Implicit,
                    _ => Objective::Explicit,
                })
                .collect(),
        }
    }
}

/// Trials of a random search without `--trials`.
pub const DEFAULT_TRIALS: usize = 20;

fn set_flag(args: &mut TrainArgs, name: &str, value: &Value) {
    let float = || value.as_f64().expect("checked numeric") as f32;
    let int = || value.as_f64().expect("checked numeric") as usize;
    match name {
        "factors" => args.factors = int(),
        "epochs" => args.epochs = Some(int()),
        "lr" => args.lr = Some(float()),
        "reg" => args.reg = float(),
        "alpha" => args.alpha = Some(float()),
        "balance" => args.balance = Some(float()),
        "popularity-weight" => args.popularity_weight = Some(float()),
        "unobserved-weight" => args.unobserved_weight = Some(float()),
        "cg-steps" => args.cg_steps = Some(int()),
        "objective" => {
            args.objective = Some(match value {
                Value::Text(t) if t == "implicit" => Objective::Implicit,
                _ => Objective::Explicit,
            })
        }
        "no-bias" => args.no_bias = *value == Value::Text("true".into()),
        _ => unreachable!("parse_term accepts only TUNABLE flags"),
    }
}

fn space_error(term: &str, expected: &str) -> Error {
    Error::usage(format!("--space: '{term}': expected {expected}"))
}

fn parse_term(term: &str) -> Result<Dimension> {
    let Some((name, values)) = term.split_once('=') else {
        return Err(space_error(
            term,
            "name=values, e.g. lr=log:0.001..0.05, reg=0.01..0.1 or factors=16,32,64",
        ));
    };
    let name = name.trim_start_matches("--");
    let Some(&(_, kind)) = TUNABLE.iter().find(|(n, _)| *n == name) else {
        let tunable: Vec<&str> = TUNABLE.iter().map(|(n, _)| *n).collect();
        return Err(match FIXED.iter().find(|(n, _)| *n == name) {
            Some((_, why)) => Error::usage(format!(
                "--space: '{term}': --{name} is the same for every trial: {why}"
            )),
            None => Error::usage(format!(
                "--space: '{term}': train has no flag --{name} that tune can vary; these: {}",
                tunable.join(", ")
            )),
        });
    };
    let domain = match (values.strip_prefix("log:"), values.split_once("..")) {
        (Some(range), _) => parse_range(term, kind, range, true)?,
        (None, Some(_)) => parse_range(term, kind, values, false)?,
        (None, None) => parse_list(term, kind, values)?,
    };
    Ok(Dimension {
        name: name.to_string(),
        kind,
        domain,
    })
}

fn parse_range(term: &str, kind: Kind, range: &str, log: bool) -> Result<Domain> {
    let expected = match kind {
        Kind::Int => "a range of whole numbers lo..hi with lo <= hi",
        Kind::Float => "a range of numbers lo..hi with lo <= hi",
        _ => return Err(space_error(term, &format!("a list: {}", words(kind)))),
    };
    let bounds = range
        .split_once("..")
        .and_then(|(lo, hi)| Some((parse_number(kind, lo)?, parse_number(kind, hi)?)));
    let Some((lo, hi)) = bounds.filter(|(lo, hi)| lo <= hi) else {
        return Err(space_error(term, expected));
    };
    if log && lo <= 0.0 {
        return Err(space_error(
            term,
            "log: ranges of positive numbers (log of 0 is not defined)",
        ));
    }
    Ok(Domain::Range { lo, hi, log })
}

fn parse_number(kind: Kind, text: &str) -> Option<f64> {
    match kind {
        Kind::Int => text.parse::<i64>().ok().map(|i| i as f64),
        _ => text.parse::<f64>().ok().filter(|x| x.is_finite()),
    }
}

fn parse_list(term: &str, kind: Kind, values: &str) -> Result<Domain> {
    let mut list = Vec::new();
    for v in values.split(',') {
        let value = match kind {
            Kind::Int => v.parse::<i64>().ok().map(Value::Int),
            Kind::Float => v
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(Value::Float),
            Kind::Choice(words) => words.contains(&v).then(|| Value::Text(v.into())),
            Kind::Switch => ["true", "false"]
                .contains(&v)
                .then(|| Value::Text(v.into())),
        };
        match value {
            Some(value) if !list.contains(&value) => list.push(value),
            Some(_) => return Err(space_error(term, "each value once")),
            None => return Err(space_error(term, &format!("a list of {}", words(kind)))),
        }
    }
    Ok(Domain::List(list))
}

fn words(kind: Kind) -> String {
    match kind {
        Kind::Int => "whole numbers (16,32,64), or a range (10..100, log:16..256)".into(),
        Kind::Float => "numbers (0.01,0.1), or a range (0.01..0.1, log:0.001..0.1)".into(),
        Kind::Choice(words) => words.join(","),
        Kind::Switch => "true,false".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn base(extra: &[&str]) -> TrainArgs {
        let mut argv = vec!["x", "--data", "d", "--model", "m"];
        argv.extend_from_slice(extra);
        Wrap::parse_from(argv).train
    }

    #[test]
    fn every_flag_of_train_is_either_tunable_or_fixed_with_a_reason() {
        use clap::CommandFactory;
        let command = Wrap::command();
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let known =
                TUNABLE.iter().any(|(n, _)| *n == long) || FIXED.iter().any(|(n, _)| *n == long);
            // The input flags (columns, formats, weights) shape the data read once per group.
            let input =
                <crate::cli::InputArgs as clap::Args>::augment_args(clap::Command::new("x"))
                    .get_arguments()
                    .any(|a| a.get_long() == Some(long));
            assert!(known || input, "--{long} is neither tunable nor fixed");
        }
    }

    #[test]
    fn terms_parse_into_lists_ranges_and_log_ranges() {
        let s = Space::parse("lr=log:0.001..0.05  factors=16,32 epochs=10..100 objective=implicit,explicit no-bias=true,false").unwrap();
        assert_eq!(s.text, "lr=log:0.001..0.05 factors=16,32 epochs=10..100 objective=implicit,explicit no-bias=true,false");
        assert_eq!(
            s.dimensions[0].domain,
            Domain::Range {
                lo: 0.001,
                hi: 0.05,
                log: true
            }
        );
        assert_eq!(
            s.dimensions[1].domain,
            Domain::List(vec![Value::Int(16), Value::Int(32)])
        );
        assert_eq!(
            s.dimensions[2].domain,
            Domain::Range {
                lo: 10.0,
                hi: 100.0,
                log: false
            }
        );
        assert!(!s.is_grid());
        assert!(Space::parse("factors=16,32 reg=0.01,0.1")
            .unwrap()
            .is_grid());
    }

    #[test]
    fn bad_terms_name_the_term_and_what_was_expected() {
        let cases = [
            ("lr", "name=values"),
            ("lr=0.1..0.01", "lo <= hi"),
            ("lr=log:0..1", "positive"),
            ("factors=16,abc", "whole numbers"),
            ("factors=1.5..4", "whole numbers"),
            ("objective=implicit,bpr", "explicit,implicit"),
            ("objective=1..2", "a list: explicit,implicit"),
            ("holdout=0.1,0.2", "same for every trial"),
            ("learning-rate=0.1", "train has no flag --learning-rate"),
            ("lr=0.1 lr=0.2", "each flag once"),
            ("reg=0.1,0.1", "each value once"),
        ];
        for (text, expected) in cases {
            let e = Space::parse(text).unwrap_err().to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(
                e.contains(text.split(' ').next_back().unwrap()),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn random_configs_stay_in_their_ranges_and_depend_only_on_the_seed_and_trial() {
        let s = Space::parse("lr=log:0.001..0.1 epochs=10..12 factors=16,32,64").unwrap();
        let b = base(&[]);
        let a = s.configs(Some(200), 7, &b);
        assert_eq!(a, s.configs(Some(200), 7, &b));
        assert_eq!(a[..50], s.configs(Some(50), 7, &b)[..]);
        assert_ne!(a, s.configs(Some(200), 8, &b));
        let lr: Vec<f64> = a
            .iter()
            .map(|c| c[0].as_ref().unwrap().as_f64().unwrap())
            .collect();
        assert!(lr.iter().all(|&x| (0.001..=0.1).contains(&x)));
        // Log-uniform: about half of the draws in each of the two decades.
        let low = lr.iter().filter(|&&x| x < 0.01).count();
        assert!((70..130).contains(&low), "{low}");
        for e in [10, 11, 12] {
            let n = a.iter().filter(|c| c[1] == Some(Value::Int(e))).count();
            assert!(n > 40, "epochs {e}: {n}");
        }
    }

    #[test]
    fn a_grid_is_walked_whole_or_a_seeded_part_of_it() {
        let s = Space::parse("factors=16,32 reg=0.01,0.1,1").unwrap();
        let b = base(&[]);
        let all = s.configs(None, 1, &b);
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], vec![Some(Value::Int(16)), Some(Value::Float(0.01))]);
        assert_eq!(all[5], vec![Some(Value::Int(32)), Some(Value::Float(1.0))]);
        let part = s.configs(Some(4), 1, &b);
        assert_eq!(part.len(), 4);
        assert!(part.iter().all(|c| all.contains(c)));
        assert_eq!(s.configs(Some(10), 1, &b).len(), 6);
    }

    #[test]
    fn implicit_flags_are_left_out_of_explicit_trials_and_set_on_implicit_ones() {
        let s = Space::parse("objective=explicit,implicit alpha=2,20 no-bias=true").unwrap();
        let b = base(&[]);
        let configs = s.configs(None, 1, &b);
        assert_eq!(configs[0][1], None);
        let implicit = s.trial_args(&configs[3], &b);
        assert_eq!(implicit.alpha, Some(20.0));
        assert!(implicit.no_bias);
        assert!(implicit.hyper().unwrap().implicit.is_some());
        assert!(s
            .trial_args(&configs[0], &b)
            .hyper()
            .unwrap()
            .implicit
            .is_none());
        s.check(&b).unwrap();
    }

    #[test]
    fn values_train_refuses_are_refused_before_any_trial() {
        let b = base(&[]);
        let e = Space::parse("factors=0,8")
            .unwrap()
            .check(&b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--space factors=0") && e.contains("--factors 0"),
            "{e}"
        );
        let e = Space::parse("lr=-1..0.1")
            .unwrap()
            .check(&b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--lr -1"), "{e}");
        let e = Space::parse("alpha=1,2")
            .unwrap()
            .check(&base(&["--objective", "explicit"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--alpha applies to --objective implicit only"),
            "{e}"
        );
        let implicit = base(&["--objective", "implicit"]);
        Space::parse("alpha=1,2").unwrap().check(&implicit).unwrap();
    }
}
