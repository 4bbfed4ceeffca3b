//! `model.json`: what a published model says about itself (SPEC "The model"). Plain data, read
//! and written by `serde`; where the files live and how they are published is `model_io`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::{EventWeights, Input, InputSettings};

use super::Hyper;

pub const FORMAT: &str = "funksvd-model";
pub const VERSION: u32 = 1;
pub const MODEL_JSON: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";

/// One epoch's numbers, as logged and saved in `model.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// RMSE of the predictions made during the epoch's SGD pass (before each update).
    pub train_rmse: f64,
    /// RMSE on the hold-out pairs after the epoch (None without a hold-out, and for the
    /// implicit objective, whose hold-out figures are ranking metrics).
    pub holdout_rmse: Option<f64>,
    /// The implicit objective's loss after the epoch, per training pair (`mf::als`); its
    /// `train_rmse` is that of the observed preferences (1 for a positive value) after the
    /// epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    pub seconds: f64,
    /// Of `seconds`, the time this rank spent passing item blocks to the others (the messages,
    /// the read of the received rows, and waiting for slower ranks).
    #[serde(default)]
    pub sync_seconds: f64,
    /// Ratings processed per second by the whole job.
    pub ratings_per_second: f64,
}

/// The dataset and how it was read, so `evaluate` can read another dataset the same way.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputRecord {
    pub data: String,
    #[serde(flatten)]
    pub settings: InputSettings,
    /// The hold-out fraction, as `hyperparameters.holdout` (where version 1 files before it
    /// kept it alone).
    pub holdout: f64,
}

/// Bytes and requests one rank read from storage.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReadStats {
    pub bytes: u64,
    pub requests: u64,
}

/// Seconds per phase, and what each rank read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases {
    pub plan: f64,
    pub read: f64,
    pub features: f64,
    pub exchange: f64,
    pub train: f64,
    /// The implicit objective's choice of its popularity weight (a fit of its own).
    #[serde(default)]
    pub choice: f64,
    /// The final figures: the errors, the hold-out ranking.
    #[serde(default)]
    pub metrics: f64,
    pub save: f64,
    /// Bytes and requests each rank read from storage (index = rank).
    pub read_per_rank: Vec<ReadStats>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Training {
    pub ranks: usize,
    pub epochs: usize,
    pub seconds: f64,
    pub seconds_per_epoch: f64,
    /// Where the ranks kept the item rows: "own" (one rank), "shared" (memory all ranks of one
    /// node map) or "passed" (round the ring); for the implicit objective on several ranks,
    /// "gathered-shared" or "gathered-passed" (each item stepped by its owner from all its
    /// pairs and every user's row, the rows shared in memory the node's ranks map, or as
    /// messages), or "summed-shared" or "summed-passed" (the ranks' parts of every item's steps
    /// summed in that memory, or as messages).
    #[serde(default)]
    pub item_rows: String,
    /// Synchronisations of the item rows per epoch: for "passed", R - 1 block hand-overs
    /// between the steps and R - 1 to share the final rows; for "shared", R + 1 barriers; 0
    /// on one rank.
    pub syncs_per_epoch: usize,
    /// Floats one rank sends per synchronisation at most (for "passed", its largest item group,
    /// rows as stored: `padded_width(factors)` floats per item; never more than the item rows,
    /// items x (factors + 1), from 2 ranks on; 0 otherwise).
    #[serde(alias = "allreduce_floats")]
    pub floats_per_sync: usize,
    pub rows_read: u64,
    pub rows_skipped: u64,
    pub phases: Phases,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// RMSE of the final model on the training pairs (what `evaluate --split train` reports).
    pub train_rmse: f64,
    pub train_mae: f64,
    pub holdout_rmse: Option<f64>,
    pub holdout_mae: Option<f64>,
    /// Hold-out RMSE of the trivial model that predicts the training mean for every pair: the
    /// bar the model must clear (absent in files written before it was recorded).
    #[serde(default)]
    pub baseline_holdout_rmse: Option<f64>,
    pub n_holdout: u64,
    pub history: Vec<EpochStats>,
    /// The implicit objective's figures on the hold-out: the model's top 20 and the popularity
    /// list's, as `evaluate` reports them (`ranking::Ranking::to_json`). For that objective
    /// the RMSE and MAE above are of the predicted preference (1 for an interaction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ranking: Option<serde_json::Value>,
    /// How the implicit objective's popularity weight was chosen (`train::popularity::Choice`:
    /// each weight's validation NDCG@20), when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub popularity_weight: Option<serde_json::Value>,
}

/// `model.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    pub format: String,
    pub version: u32,
    pub factors: usize,
    pub biased: bool,
    pub global_mean: f32,
    /// Predictions are clipped to [min, max] of the training ratings.
    pub rating_min: f32,
    pub rating_max: f32,
    pub n_users: u64,
    pub n_items: u64,
    pub n_ratings: u64,
    pub hyperparameters: Hyper,
    /// Event type -> weight; null when trained on an explicit rating column.
    pub event_weights: Option<BTreeMap<String, f32>>,
    pub input: InputRecord,
    pub training: Training,
    pub metrics: Metrics,
    /// The tables of this model, relative to the model prefix (`_versions/<id>/...`); the
    /// top-level `users.parquet`/`items.parquet` are copies of them. A users table written in
    /// parts is a folder here (`.../users/`), its files in `user_parts`.
    pub files: BTreeMap<String, String>,
    /// The users table's parts, when the ranks wrote it in parts (a large table): in id order,
    /// every id of a part below every id of the next, so that read one after the other they
    /// are the table written whole.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_parts: Vec<TablePart>,
    pub created_by: String,
    /// For a model `tune` published: the search (its folder, metric, space) and the trial
    /// whose configuration it was trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tuned: Option<serde_json::Value>,
}

/// One file of a table written in parts: its path relative to the model prefix, and its rows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TablePart {
    pub file: String,
    pub rows: u64,
}

impl ModelMeta {
    /// `model.json`'s bytes read back (`shown` names the file in messages): refused if it is
    /// not a funksvd model or newer than this funksvd.
    pub fn from_json(bytes: &[u8], shown: &str) -> Result<ModelMeta> {
        let mut meta: ModelMeta = serde_json::from_slice(bytes)
            .map_err(|e| Error::usage(format!("{shown}: not a funksvd model.json ({e})")))?;
        if meta.format != FORMAT {
            return Err(Error::usage(format!(
                "{shown}: format is {:?}, not {FORMAT:?}",
                meta.format
            )));
        }
        if meta.version > VERSION {
            return Err(Error::usage(format!(
                "{shown}: model version {} is newer than this funksvd understands ({VERSION})",
                meta.version
            )));
        }
        // Files written before `hyperparameters.holdout` keep the fraction in `input` only.
        meta.hyperparameters.holdout = meta.input.holdout;
        Ok(meta)
    }

    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self)
            .map_err(|e| Error::runtime(format!("cannot encode {MODEL_JSON}: {e}")))
    }

    /// How the model's dataset was read (the default weights where it had a rating column).
    pub fn input(&self) -> Input {
        Input {
            settings: self.input.settings.clone(),
            weights: self
                .event_weights
                .as_ref()
                .map(EventWeights::from_map)
                .unwrap_or_default(),
            // The split by time needs the times again to tell the pairs apart.
            read_time: !self.hyperparameters.holdout_by.is_pair(),
            user_cost: 0,
        }
    }

    /// The table of `name` (`users` or `items`) relative to the model prefix: the version
    /// folder's, else (a model published before versions) the top-level one.
    pub fn table(&self, name: &str) -> String {
        self.files
            .get(name)
            .cloned()
            .unwrap_or_else(|| format!("{name}.parquet"))
    }
}

#[cfg(test)]
impl ModelMeta {
    /// A model.json for unit tests: 2 factors, mean 3, ratings 1..5, hold-out 0.2, no training
    /// record to speak of.
    pub(crate) fn for_tests(n_users: u64, n_items: u64, biased: bool) -> ModelMeta {
        let mut meta = ModelMeta::minimal(n_users, n_items, 2, biased, 3.0);
        meta.hyperparameters.holdout = 0.2;
        meta
    }
}

impl ModelMeta {
    /// A model.json with what scoring needs and nothing else to speak of (a model in the
    /// making, scored during training; unit tests): ratings 1..5, no hold-out.
    pub fn minimal(
        n_users: u64,
        n_items: u64,
        factors: usize,
        biased: bool,
        global_mean: f32,
    ) -> ModelMeta {
        serde_json::from_value(serde_json::json!({
            "format": FORMAT, "version": VERSION, "factors": factors, "biased": biased,
            "global_mean": global_mean, "rating_min": 1.0, "rating_max": 5.0,
            "n_users": n_users, "n_items": n_items, "n_ratings": 0,
            "hyperparameters": {"factors": factors, "epochs": 1, "lr": 0.01, "reg": 0.02, "seed": 1,
                                "biased": biased, "init_std": 0.1, "holdout": 0.0},
            "event_weights": null,
            "input": {"data": "d", "format": "auto", "user_col": "u", "item_col": null,
                      "event_col": "e", "rating_col": "r", "time_col": "t",
                      "aggregate": "max", "holdout": 0.0},
            "training": {"ranks": 1, "epochs": 1, "seconds": 0.0, "seconds_per_epoch": 0.0,
                         "syncs_per_epoch": 0, "floats_per_sync": 0, "rows_read": 0,
                         "rows_skipped": 0, "phases": {"plan": 0.0, "read": 0.0,
                         "features": 0.0, "exchange": 0.0, "train": 0.0, "save": 0.0,
                         "read_per_rank": []}},
            "metrics": {"train_rmse": 0.0, "train_mae": 0.0, "holdout_rmse": null,
                        "holdout_mae": null, "n_holdout": 0, "history": []},
            "files": {}, "created_by": "test"
        }))
        .expect("a model.json")
    }
}
