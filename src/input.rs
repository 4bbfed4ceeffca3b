//! How a dataset's rows become ratings: the file format, the columns, the value rule (event
//! weights, or an explicit rating column) and how a pair's repeated values combine. Plain data:
//! the command line builds it once, `ingest` and `features` read by it, and model.json records
//! it (`input`, `event_weights`) so that `evaluate` reads other data the way the model was
//! trained.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const DEFAULT_EVENT_WEIGHTS: &str = "view=1,add_to_cart=3,purchase=5";
pub const DEFAULT_USER_COL: &str = "user_id";
pub const DEFAULT_EVENT_COL: &str = "event_type";
pub const DEFAULT_TIME_COL: &str = "timestamp";

/// Event type -> rating weight, from `--event-weights view=1,add_to_cart=3,purchase=5`.
#[derive(Clone, Debug, PartialEq)]
pub struct EventWeights(pub Vec<(String, f32)>);

impl EventWeights {
    pub fn parse(spec: &str) -> Result<EventWeights> {
        let bad = |why: String| Error::usage(format!("--event-weights {spec:?}: {why}"));
        let mut pairs: Vec<(String, f32)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not EVENT=WEIGHT")))?;
            let name = name.trim();
            if name.is_empty() {
                return Err(bad(format!("{part:?} has no event name")));
            }
            let weight: f32 = weight.trim().parse().map_err(|_| {
                bad(format!(
                    "weight {:?} of {name:?} is not a number",
                    weight.trim()
                ))
            })?;
            if !weight.is_finite() || weight <= 0.0 {
                return Err(bad(format!("weight of {name:?} must be a positive number")));
            }
            if pairs.iter().any(|(n, _)| n == name) {
                return Err(bad(format!("{name:?} appears twice")));
            }
            pairs.push((name.to_string(), weight));
        }
        if pairs.is_empty() {
            return Err(bad("no event weights given".into()));
        }
        Ok(EventWeights(pairs))
    }

    #[inline]
    pub fn weight(&self, event: &str) -> Option<f32> {
        self.0.iter().find(|(n, _)| n == event).map(|(_, w)| *w)
    }

    /// As `--event-weights` spells them.
    pub fn to_spec(&self) -> String {
        self.0
            .iter()
            .map(|(n, w)| format!("{n}={w}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// As model.json records them (`event_weights`).
    pub fn to_map(&self) -> BTreeMap<String, f32> {
        self.0.iter().cloned().collect()
    }

    pub fn from_map(map: &BTreeMap<String, f32>) -> EventWeights {
        EventWeights(map.iter().map(|(k, &v)| (k.clone(), v)).collect())
    }

    /// What to do about rows skipped for event types not in this table (`unknown`, the types
    /// with their row counts): advice for the log, and whether it is worth a warning. Removals
    /// (`remove_from_cart`) are no interest signal: noted, not warned about. Another shop's
    /// name for a weighted type (REES46's `cart`) gets the exact `--event-weights` that counts it.
    pub fn advice(&self, unknown: &BTreeMap<String, u64>) -> Option<(String, bool)> {
        if unknown.is_empty() {
            return None;
        }
        if unknown.keys().all(|name| is_removal(name)) {
            return Some(("removals are no interest signal".into(), false));
        }
        let mut added = self.clone();
        let mut meant = Vec::new();
        for name in unknown.keys() {
            let ours = SYNONYMS.iter().find(|(other, _)| other == name);
            if let Some((weight, ours)) = ours.and_then(|(_, o)| Some((self.weight(o)?, o))) {
                added.0.push((name.to_string(), weight));
                meant.push(format!("{name:?} as {ours}"));
            }
        }
        let advice = match meant.is_empty() {
            true => "to count them, add them to --event-weights with a weight each".to_string(),
            false => format!(
                "to count {}, run with --event-weights {}",
                meant.join(" and "),
                added.to_spec()
            ),
        };
        Some((advice, true))
    }
}

/// Event types that say a shopper lost interest; no weight table should count them.
const REMOVALS: &[&str] = &[
    "remove_from_cart",
    "removefromcart",
    "remove-from-cart",
    "remove_from_wishlist",
    "cart_remove",
];

/// Other shops' names for the default event types (REES46 says `cart`, RetailRocket
/// `addtocart` and `transaction`).
const SYNONYMS: &[(&str, &str)] = &[
    ("cart", "add_to_cart"),
    ("addtocart", "add_to_cart"),
    ("add-to-cart", "add_to_cart"),
    ("add_to_basket", "add_to_cart"),
    ("transaction", "purchase"),
    ("buy", "purchase"),
    ("order", "purchase"),
    ("checkout", "purchase"),
    ("click", "view"),
    ("page_view", "view"),
    ("pageview", "view"),
    ("detail", "view"),
];

fn is_removal(event: &str) -> bool {
    REMOVALS.contains(&event.to_ascii_lowercase().as_str())
}

impl Default for EventWeights {
    fn default() -> Self {
        EventWeights::parse(DEFAULT_EVENT_WEIGHTS).expect("the default weights parse")
    }
}

/// `--delimiter`: one ASCII character, or `tab` (also `\t`).
pub fn parse_delimiter(text: &str) -> Result<char> {
    let c = match text {
        "tab" | "\\t" | "\t" => '\t',
        _ => {
            let mut chars = text.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => c,
                _ => '\0',
            }
        }
    };
    if !c.is_ascii() || c == '\0' || c == '"' || c == '\n' || c == '\r' {
        return Err(Error::usage(format!(
            "--delimiter {text:?}: must be one ASCII character other than a quote or a line break (or `tab`)"
        )));
    }
    Ok(c)
}

/// How a (user, item) pair's repeated values combine (`--aggregate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The strongest signal: a purchase beats a view.
    Max,
    /// Every event counts.
    Sum,
}

/// Input file format (`--format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// By file name: `.parquet`/`.pq`/`.parq` are Parquet, `.csv`/`.tsv`/`.txt` are CSV.
    Auto,
    Parquet,
    Csv,
}

/// Where a row's value comes from.
#[derive(Clone, Copy, Debug)]
pub enum ValueRule<'a> {
    Events(&'a EventWeights),
    /// An explicit rating column.
    Rating,
}

/// The columns, the format and the aggregation: model.json's `input` (beside the dataset URL).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputSettings {
    pub format: Format,
    pub user_col: String,
    /// None: `product_id`, falling back to `item_id`.
    pub item_col: Option<String>,
    pub event_col: String,
    /// An explicit rating column: no event mapping.
    pub rating_col: Option<String>,
    /// The event time: read only for a hold-out by time.
    pub time_col: String,
    pub aggregate: Aggregate,
    /// CSV field separator (ASCII); None: a tab for `.tsv` files, else a comma.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<char>,
}

impl Default for InputSettings {
    /// The default columns (`--user-col` and the others without a flag), by file name.
    fn default() -> Self {
        InputSettings {
            format: Format::Auto,
            user_col: DEFAULT_USER_COL.into(),
            item_col: None,
            event_col: DEFAULT_EVENT_COL.into(),
            rating_col: None,
            time_col: DEFAULT_TIME_COL.into(),
            aggregate: Aggregate::Max,
            delimiter: None,
        }
    }
}

/// Everything reading a dataset needs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Input {
    pub settings: InputSettings,
    /// Used unless `settings.rating_col` names a rating column.
    pub weights: EventWeights,
    /// Read the time column too (a hold-out by time needs each pair's latest time).
    pub read_time: bool,
    /// What a user costs the trainer besides its pairs, in pairs, when the ranks are given
    /// equal work (`exchange::Owners::balance`): the implicit objective's work per row; 0
    /// elsewhere.
    pub user_cost: u64,
}

impl Input {
    pub fn rule(&self) -> ValueRule<'_> {
        match self.settings.rating_col {
            Some(_) => ValueRule::Rating,
            None => ValueRule::Events(&self.weights),
        }
    }

    /// The column the value comes from: the rating column, else the event column.
    pub fn value_col(&self) -> &str {
        self.settings
            .rating_col
            .as_deref()
            .unwrap_or(&self.settings.event_col)
    }

    /// The flag that names the value column.
    pub fn value_flag(&self) -> &'static str {
        match self.rule() {
            ValueRule::Events(_) => "--event-col",
            ValueRule::Rating => "--rating-col",
        }
    }

    /// The weights as model.json records them: none for a rating column.
    pub fn recorded_weights(&self) -> Option<BTreeMap<String, f32>> {
        match self.rule() {
            ValueRule::Events(w) => Some(w.to_map()),
            ValueRule::Rating => None,
        }
    }

    /// Every setting that changes what is read, as one line (for a checkpoint's fingerprint).
    pub fn describe(&self) -> String {
        let s = &self.settings;
        format!(
            "{}|{:?}|{}|{:?}|{}|{:?}|{:?}{}",
            s.user_col,
            s.item_col,
            s.event_col,
            s.rating_col,
            self.weights.to_spec(),
            s.aggregate,
            s.format,
            // Absent unless given, so checkpoints of earlier versions still fit.
            s.delimiter.map(|d| format!("|{d:?}")).unwrap_or_default(),
        ) + &match self.read_time {
            true => format!("|time={}", s.time_col),
            false => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_weights_parse_and_reject_malformed_specs() {
        let w = EventWeights::parse(DEFAULT_EVENT_WEIGHTS).unwrap();
        assert_eq!(w.weight("purchase"), Some(5.0));
        assert_eq!(w.weight("cart"), None);
        assert_eq!(w.to_spec(), DEFAULT_EVENT_WEIGHTS);
        assert_eq!(
            EventWeights::from_map(&w.to_map()).weight("view"),
            Some(1.0)
        );
        assert_eq!(
            EventWeights::parse(" view = 1 , cart=2.5")
                .unwrap()
                .weight("cart"),
            Some(2.5)
        );
        for bad in [
            "",
            "view",
            "view=x",
            "=3",
            "view=1,view=2",
            "view=-1",
            "view=nan",
        ] {
            let e = EventWeights::parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("--event-weights"), "{e}");
        }
    }

    #[test]
    fn skipped_event_types_get_the_exact_flag_and_removals_no_warning() {
        let w = EventWeights::default();
        let counts = |names: &[&str]| -> BTreeMap<String, u64> {
            names.iter().map(|&k| (k.to_string(), 1)).collect()
        };
        assert_eq!(w.advice(&counts(&[])), None);
        let (_, warn) = w.advice(&counts(&["remove_from_cart"])).unwrap();
        assert!(!warn);
        let (line, warn) = w.advice(&counts(&["cart", "remove_from_cart"])).unwrap();
        assert!(warn);
        assert_eq!(
            line,
            "to count \"cart\" as add_to_cart, run with --event-weights view=1,add_to_cart=3,purchase=5,cart=3"
        );
        let (line, warn) = w.advice(&counts(&["wishlist"])).unwrap();
        assert!(
            warn && line.contains("add them to --event-weights"),
            "{line}"
        );
    }

    #[test]
    fn delimiters_are_one_ascii_character_or_tab() {
        assert_eq!(parse_delimiter("tab").unwrap(), '\t');
        assert_eq!(parse_delimiter("\\t").unwrap(), '\t');
        assert_eq!(parse_delimiter(";").unwrap(), ';');
        for bad in ["", ";;", "\"", "é"] {
            assert!(parse_delimiter(bad)
                .unwrap_err()
                .to_string()
                .contains("--delimiter"));
        }
    }

    #[test]
    fn a_rating_column_replaces_the_event_weights() {
        let mut input = Input::default();
        assert!(matches!(input.rule(), ValueRule::Events(_)));
        assert_eq!(
            (input.value_col(), input.value_flag()),
            ("event_type", "--event-col")
        );
        assert!(input.recorded_weights().is_some());
        input.settings.rating_col = Some("rating".into());
        assert!(matches!(input.rule(), ValueRule::Rating));
        assert_eq!(
            (input.value_col(), input.value_flag()),
            ("rating", "--rating-col")
        );
        assert_eq!(input.recorded_weights(), None);
    }
}
