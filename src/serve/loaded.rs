//! One model as the server answers from it: the model, the interactions of `--data` matched to
//! its users and items (what each user already has, the rows to fold in for users of the data
//! the model does not know, each item's popularity), and which publication it is.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::collective::Solo;
use crate::error::{Error, Result};
use crate::ids::{FastMap, Id};
use crate::input::Input;
use crate::mf::meta::{ModelMeta, MODEL_JSON};
use crate::mf::Model;
use crate::pipeline;
use crate::ratings::OwnedRatings;
use crate::recommend::{distinct_items, item_index, popularity_order, UNKNOWN};
use crate::store::{block_on, Location, Tag};

/// Where the server's models and data come from.
#[derive(Clone)]
pub struct Sources {
    pub model: Location,
    pub data: Option<Location>,
    /// How `--data` is read, given the model's own way (`TrainedInputArgs::input`).
    pub input: std::sync::Arc<dyn Fn(Input) -> Result<Input> + Send + Sync>,
}

/// A served model and everything matched to it.
pub struct Loaded {
    pub model: Model,
    pub seen: SeenIndex,
    /// model.json's tag when it was read: a different tag is a new publication.
    pub tag: Option<Tag>,
    /// The publication's name: its version folder (`_versions/<id>`), else "unversioned".
    pub version: String,
    /// Unix seconds when it was loaded, and how long loading took.
    pub loaded_at: f64,
    pub load_seconds: f64,
    /// The model's items, most popular first (`recommend::popularity_order` of `counts()`).
    pub popular: Vec<u32>,
}

/// A user's interactions: the model's item indices, ascending, and their values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interactions {
    pub items: Vec<u32>,
    pub values: Vec<f32>,
}

/// `--data` matched to one model.
#[derive(Default)]
pub struct SeenIndex {
    /// By the model's user index.
    known: Vec<Interactions>,
    /// Users of the data the model does not know.
    others: FastMap<Id, Interactions>,
    /// Distinct users per item of the model: popularity.
    pub counts: Vec<u64>,
    pub with_data: bool,
}

impl SeenIndex {
    /// The interactions of the model's user `u` (none without `--data`).
    pub fn of_known(&self, u: usize) -> &[u32] {
        self.known.get(u).map_or(&[], |s| s.items.as_slice())
    }

    /// The interactions of a user the model does not know, if the data has them.
    pub fn of_other(&self, id: &Id) -> Option<&Interactions> {
        self.others.get(id)
    }

    fn build(model: &Model, owned: &OwnedRatings) -> SeenIndex {
        let item_index = item_index(model, owned);
        let mut index = SeenIndex {
            known: vec![Interactions::default(); model.user_ids.len()],
            counts: vec![0; model.item_ids.len()],
            with_data: true,
            ..SeenIndex::default()
        };
        for run in owned.user_runs() {
            let mut pairs: Vec<(u32, f32)> = owned.triples[run.clone()]
                .iter()
                .map(|t| (item_index[t.item as usize], t.value))
                .filter(|&(i, _)| i != UNKNOWN)
                .collect();
            // Popularity counts the data's pairs, as `recommend` does.
            for &(i, _) in &pairs {
                index.counts[i as usize] += 1;
            }
            distinct_items(&mut pairs);
            let seen = Interactions {
                items: pairs.iter().map(|p| p.0).collect(),
                values: pairs.iter().map(|p| p.1).collect(),
            };
            let id = &owned.users[owned.triples[run.start].user as usize];
            match model.user(id) {
                Some(u) => index.known[u] = seen,
                None if !seen.items.is_empty() => {
                    index.others.insert(id.clone(), seen);
                }
                None => {}
            }
        }
        index
    }
}

impl Loaded {
    /// Read the model published at `sources.model` now (model.json, then the tables it names),
    /// and `--data` matched to it. Blocking: call it from a thread that runs no async runtime.
    pub fn load(sources: &Sources) -> Result<Loaded> {
        let started = Instant::now();
        let loc = &sources.model;
        let key = loc.child_key(MODEL_JSON);
        let shown = loc.display_key(&key);
        let Some((json, tag)) = block_on(loc.get_tagged(&key))? else {
            return Err(Error::usage(format!(
                "--model {}: no model there ({shown} does not exist)",
                loc.url()
            )));
        };
        let meta = ModelMeta::from_json(&json, &shown)?;
        let version = version_of(&meta);
        let model = block_on(crate::model_io::load_with_meta(loc, meta))?;
        if !model
            .user_rows
            .iter()
            .chain(&model.item_rows)
            .all(|x| x.is_finite())
        {
            return Err(Error::usage(format!(
                "{shown}: the model {version} has factors that are not finite numbers; refused"
            )));
        }
        let seen = match &sources.data {
            Some(data) => {
                let mut input = (sources.input)(model.meta.input())?;
                // Seen items need no times.
                input.read_time = false;
                let (owned, _report) = pipeline::load_ratings(&Solo, data, &input)?;
                SeenIndex::build(&model, &owned)
            }
            None => SeenIndex::default(),
        };
        let loaded_at = unix_now();
        let mut loaded = Loaded {
            model,
            seen,
            tag: Some(tag),
            version,
            loaded_at,
            load_seconds: 0.0,
            popular: Vec::new(),
        };
        loaded.popular = popularity_order(loaded.counts());
        loaded.load_seconds = started.elapsed().as_secs_f64();
        Ok(loaded)
    }

    /// Popularity: `--data`'s distinct users per item, else the training counts the model
    /// recorded, else none.
    pub fn counts(&self) -> &[u64] {
        match (&self.seen.with_data, &self.model.item_counts) {
            (true, _) => &self.seen.counts,
            (false, Some(c)) => c,
            (false, None) => &[],
        }
    }
}

/// The version folder a model's tables live in (`_versions/<id>/users.parquet` -> `<id>`).
fn version_of(meta: &ModelMeta) -> String {
    meta.files
        .values()
        .find_map(|path| {
            let mut parts = path.split('/');
            match (parts.next(), parts.next()) {
                (Some(crate::model_io::VERSIONS_DIR), Some(id)) => Some(id.to_string()),
                _ => None,
            }
        })
        .unwrap_or_else(|| "unversioned".to_string())
}

/// Seconds since the Unix epoch, now (as /metrics gives times).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
