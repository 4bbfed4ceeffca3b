//! The saved model: `users.parquet`, `items.parquet` and `model.json` (written last) under a
//! model prefix, as SPEC "The model" describes; load and save.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int64Array, RecordBatch,
    StringArray,
};
use arrow::datatypes::{DataType, Field, Float32Type, Int64Type, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::funksvd::{EpochStats, Hyper};
use crate::ids::{FastMap, Id};
use crate::store::{Location, ReadStats};

pub const FORMAT: &str = "funksvd-model";
pub const VERSION: u32 = 1;
pub const MODEL_JSON: &str = "model.json";
pub const USERS_FILE: &str = "users.parquet";
pub const ITEMS_FILE: &str = "items.parquet";

/// How the input was read, so `evaluate` can read another dataset the same way.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct InputSettings {
    pub data: String,
    pub format: crate::ingest::Format,
    pub user_col: String,
    pub item_col: Option<String>,
    pub event_col: String,
    pub rating_col: Option<String>,
    pub time_col: String,
    pub aggregate: crate::features::Aggregate,
    pub holdout: f64,
}

/// Seconds per phase, and what each rank read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Phases {
    pub plan: f64,
    pub read: f64,
    pub features: f64,
    pub exchange: f64,
    pub train: f64,
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
    /// Where the ranks kept the item rows (`ItemRows::name`): "own" (one rank), "shared"
    /// (memory all ranks of one node map) or "passed" (round the ring).
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
    pub n_holdout: u64,
    pub history: Vec<EpochStats>,
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
    pub input: InputSettings,
    pub training: Training,
    pub metrics: Metrics,
    /// The tables of this model, relative to the model prefix (`_versions/<id>/...`); the
    /// top-level `users.parquet`/`items.parquet` are copies of them.
    pub files: BTreeMap<String, String>,
    pub created_by: String,
}

/// A loaded model: ids and rows (`[bias, factors...]`, factors + 1 floats each).
pub struct Model {
    pub meta: ModelMeta,
    pub user_ids: Vec<Id>,
    pub user_rows: Vec<f32>,
    pub item_ids: Vec<Id>,
    pub item_rows: Vec<f32>,
}

impl Model {
    pub fn stride(&self) -> usize {
        self.meta.factors + 1
    }

    pub fn user_index(&self) -> FastMap<Id, u32> {
        self.user_ids.iter().cloned().zip(0u32..).collect()
    }

    pub fn item_index(&self) -> FastMap<Id, u32> {
        self.item_ids.iter().cloned().zip(0u32..).collect()
    }
}

/// Encode rows as a Parquet file: `{id_col}`, `bias`, `factors` (fixed-size list of f32).
pub fn rows_to_parquet(id_col: &str, ids: &[Id], rows: &[f32], factors: usize) -> Result<Bytes> {
    let stride = factors + 1;
    let int_ids = ids.iter().all(|id| matches!(id, Id::Int(_)));
    let id_type = if int_ids {
        DataType::Int64
    } else {
        DataType::Utf8
    };
    let item_field = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new(id_col, id_type, false),
        Field::new("bias", DataType::Float32, false),
        Field::new(
            "factors",
            DataType::FixedSizeList(item_field.clone(), factors as i32),
            false,
        ),
    ]));
    // Trained floats never repeat and do not compress: dictionary encoding and compression
    // would only cost time and memory (the writer keeps a dictionary of every value it tries).
    // One row group per batch of ROWS_PER_GROUP: the writer holds one at a time.
    const ROWS_PER_GROUP: usize = 1 << 16;
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .set_created_by(format!("funksvd {}", env!("CARGO_PKG_VERSION")))
        .build();
    let failed = |e: &dyn std::fmt::Display| Error::runtime(format!("cannot write Parquet: {e}"));
    // About the file's size, so the buffer is not grown by doubling.
    let mut buf = Vec::with_capacity(rows.len() * 4 + ids.len() * 16 + (1 << 16));
    let mut writer =
        ArrowWriter::try_new(&mut buf, schema.clone(), Some(props)).map_err(|e| failed(&e))?;
    for (ids, rows) in ids
        .chunks(ROWS_PER_GROUP)
        .zip(rows.chunks(ROWS_PER_GROUP * stride))
    {
        let id_array: ArrayRef = if int_ids {
            Arc::new(Int64Array::from_iter_values(ids.iter().map(
                |id| match id {
                    Id::Int(v) => *v,
                    Id::Str(_) => 0,
                },
            )))
        } else {
            Arc::new(StringArray::from_iter_values(
                ids.iter().map(|id| id.to_string()),
            ))
        };
        let bias = Float32Array::from_iter_values(rows.chunks_exact(stride).map(|r| r[0]));
        let flat = Float32Array::from_iter_values(
            rows.chunks_exact(stride)
                .flat_map(|r| r[1..].iter().copied()),
        );
        let factors_array =
            FixedSizeListArray::try_new(item_field.clone(), factors as i32, Arc::new(flat), None)
                .map_err(|e| Error::runtime(format!("cannot build the factors column: {e}")))?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![id_array, Arc::new(bias), Arc::new(factors_array)],
        )
        .map_err(|e| Error::runtime(format!("cannot build the {id_col} table: {e}")))?;
        writer.write(&batch).map_err(|e| failed(&e))?;
    }
    writer.close().map_err(|e| failed(&e))?;
    Ok(Bytes::from(buf))
}

/// Decode a rows file written by `rows_to_parquet`.
pub fn parquet_to_rows(
    bytes: Bytes,
    id_col: &str,
    factors: usize,
    shown: &str,
) -> Result<(Vec<Id>, Vec<f32>)> {
    let bad = |why: String| Error::usage(format!("{shown}: not a funksvd model file ({why})"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| bad(format!("no column {name:?}")))
        };
        let id = col(id_col)?;
        match id.data_type() {
            DataType::Int64 => ids.extend(
                id.as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .map(|&v| Id::Int(v)),
            ),
            DataType::Utf8 => ids.extend(
                id.as_string::<i32>()
                    .iter()
                    .map(|s| Id::from_str_value(s.unwrap_or(""))),
            ),
            t => return Err(bad(format!("column {id_col:?} has type {t}"))),
        }
        let bias = col("bias")?;
        let bias = bias
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| bad("bias is not f32".into()))?;
        let fac = col("factors")?;
        let fac = fac
            .as_fixed_size_list_opt()
            .ok_or_else(|| bad("factors is not a fixed-size list".into()))?;
        if fac.value_length() as usize != factors {
            return Err(bad(format!(
                "factors has length {}, model.json says {factors}",
                fac.value_length()
            )));
        }
        let values = fac
            .values()
            .as_primitive_opt::<Float32Type>()
            .ok_or_else(|| bad("factors are not f32".into()))?;
        let values = values.values();
        let offset = fac.offset() * factors;
        for r in 0..batch.num_rows() {
            rows.push(bias.value(r));
            rows.extend_from_slice(&values[offset + r * factors..offset + (r + 1) * factors]);
        }
    }
    Ok((ids, rows))
}

/// Where a model's versions live below its prefix (the `_` hides them from dataset listings).
pub const VERSIONS_DIR: &str = "_versions";
/// The current version and the one before it (a reader may have just read the old model.json).
const VERSIONS_KEPT: usize = 2;

/// A model's two tables, encoded.
pub struct Tables {
    pub users: Bytes,
    pub items: Bytes,
}

pub fn encode_tables(
    factors: usize,
    user_ids: &[Id],
    user_rows: &[f32],
    item_ids: &[Id],
    item_rows: &[f32],
) -> Result<Tables> {
    Ok(Tables {
        users: rows_to_parquet("user_id", user_ids, user_rows, factors)?,
        items: rows_to_parquet("item_id", item_ids, item_rows, factors)?,
    })
}

/// Publish a model so that no reader ever sees half of it, and a failure at any step leaves
/// the previous model readable (S3 has no rename, so one PUT is the only atomic switch):
///
/// 1. the tables go to a new version folder `_versions/<id>/` (nothing is overwritten);
/// 2. `model.json`, naming that folder's files in `files`, replaces the old one in one PUT;
/// 3. the top-level `users.parquet` and `items.parquet` are refreshed as copies of the new
///    version, for readers that open them directly;
/// 4. versions older than the previous one are deleted.
///
/// `finish` fills in the last fields of `meta` (timings) just before the switch.
pub fn publish(
    loc: &Location,
    meta: &mut ModelMeta,
    tables: Tables,
    finish: impl FnOnce(&mut ModelMeta),
) -> Result<()> {
    let version = new_version_id();
    let users_key = format!("{VERSIONS_DIR}/{version}/{USERS_FILE}");
    let items_key = format!("{VERSIONS_DIR}/{version}/{ITEMS_FILE}");
    loc.put(&loc.child_key(&users_key), tables.users.clone())?;
    crate::fault::point("publish-tables", 0)?;
    loc.put(&loc.child_key(&items_key), tables.items.clone())?;
    meta.files = [("users", &users_key), ("items", &items_key)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    finish(meta);
    crate::fault::point("publish-switch", 0)?;
    write_meta(loc, meta)?;
    // Published. What follows only tidies up; a failure here is reported, the model stands.
    crate::fault::point("publish-copies", 0)?;
    loc.put(&loc.child_key(USERS_FILE), tables.users)?;
    loc.put(&loc.child_key(ITEMS_FILE), tables.items)?;
    remove_old_versions(loc)
}

/// Time-ordered and unique: seconds and nanoseconds since the epoch, and the process id.
fn new_version_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "v{:011}{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

fn remove_old_versions(loc: &Location) -> Result<()> {
    let objects = loc.list_below(VERSIONS_DIR)?;
    let mut versions: Vec<&str> = objects
        .iter()
        .filter_map(|(rel, _)| rel.split('/').next())
        .collect();
    versions.sort_unstable();
    versions.dedup();
    let old = &versions[..versions.len().saturating_sub(VERSIONS_KEPT)];
    for (rel, key) in &objects {
        if rel.split('/').next().is_some_and(|v| old.contains(&v)) {
            loc.delete(key)?;
        }
    }
    Ok(())
}

pub fn write_meta(loc: &Location, meta: &ModelMeta) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::runtime(format!("cannot encode model.json: {e}")))?;
    loc.put(&loc.child_key(MODEL_JSON), Bytes::from(json))
}

/// Read only `model.json`.
pub fn load_meta(loc: &Location) -> Result<ModelMeta> {
    let key = loc.child_key(MODEL_JSON);
    let shown = loc.display_key(&key);
    if !loc.exists(&key)? {
        return Err(Error::usage(format!(
            "--model {}: no model there ({shown} does not exist)",
            loc.url()
        )));
    }
    let bytes = loc.get(&key)?;
    let meta: ModelMeta = serde_json::from_slice(&bytes)
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
    Ok(meta)
}

/// Read a whole model.
pub fn load(loc: &Location) -> Result<Model> {
    let meta = load_meta(loc)?;
    let file = |name: &str| -> String {
        meta.files
            .get(name.trim_end_matches(".parquet"))
            .cloned()
            .unwrap_or_else(|| name.to_string())
    };
    let users_key = loc.child_key(&file(USERS_FILE));
    let items_key = loc.child_key(&file(ITEMS_FILE));
    let (user_ids, user_rows) = parquet_to_rows(
        loc.get(&users_key)?,
        "user_id",
        meta.factors,
        &loc.display_key(&users_key),
    )?;
    let (item_ids, item_rows) = parquet_to_rows(
        loc.get(&items_key)?,
        "item_id",
        meta.factors,
        &loc.display_key(&items_key),
    )?;
    Ok(Model {
        meta,
        user_ids,
        user_rows,
        item_ids,
        item_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_parquet_with_int_and_string_ids() {
        let rows: Vec<f32> = (0..9).map(|v| v as f32 * 0.5).collect();
        for ids in [
            vec![Id::Int(5), Id::Int(-1), Id::Int(9)],
            vec![Id::Int(5), Id::Str("b".into()), Id::Int(9)],
        ] {
            let bytes = rows_to_parquet("user_id", &ids, &rows, 2).unwrap();
            let (back_ids, back_rows) = parquet_to_rows(bytes, "user_id", 2, "t").unwrap();
            assert_eq!(back_ids, ids);
            assert_eq!(back_rows, rows);
        }
        let bytes = rows_to_parquet("user_id", &[Id::Int(1)], &[0.0, 1.0, 2.0], 2).unwrap();
        assert!(parquet_to_rows(bytes, "user_id", 3, "t").is_err());
    }
}
