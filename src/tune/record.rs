//! What a search leaves under `MODEL/_tune/`: `search.json` (what was asked, to refuse a
//! `--resume` with other settings), `trials.parquet` (one row per trial and measurement: the
//! trial's configuration, epoch, metric, seconds, status, reason), `best.json`, and the
//! pictures `trials.svg` and `params.svg` (`charts`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use serde::{Deserialize, Serialize};

use super::search::{Row, Status};
use super::space::{Config, Space, Value};
use crate::error::{Error, Result};

pub const FOLDER: &str = "_tune";
pub const SEARCH_JSON: &str = "_tune/search.json";
pub const TRIALS_PARQUET: &str = "_tune/trials.parquet";
pub const BEST_JSON: &str = "_tune/best.json";
pub const TRIALS_SVG: &str = "_tune/trials.svg";
pub const PARAMS_SVG: &str = "_tune/params.svg";

/// The settings a search is defined by (`search.json`): a `--resume` must repeat them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchRecord {
    pub space: String,
    pub trials: usize,
    pub seed: u64,
    pub metric: String,
    pub scheduler: String,
    pub grace_epochs: usize,
    pub eta: usize,
    pub data: String,
    /// The flags of train every trial starts from (`Hyper::flags`).
    pub base: String,
}

impl SearchRecord {
    /// Why `self` (a resumed run's settings) is not the search `saved`, naming the flag.
    pub fn differs_from(&self, saved: &SearchRecord) -> Option<String> {
        let fields = [
            ("--space", &self.space, &saved.space),
            ("--metric", &self.metric, &saved.metric),
            ("--scheduler", &self.scheduler, &saved.scheduler),
            ("--data", &self.data, &saved.data),
            ("the flags of train", &self.base, &saved.base),
        ];
        let numbers = [
            ("--trials", self.trials as u64, saved.trials as u64),
            ("--seed", self.seed, saved.seed),
            (
                "--grace-epochs",
                self.grace_epochs as u64,
                saved.grace_epochs as u64,
            ),
            ("--eta", self.eta as u64, saved.eta as u64),
        ];
        fields
            .iter()
            .find(|(_, now, then)| now != then)
            .map(|(flag, now, then)| format!("{flag} was '{then}', now '{now}'"))
            .or_else(|| {
                numbers
                    .iter()
                    .find(|(_, now, then)| now != then)
                    .map(|(flag, now, then)| format!("{flag} was {then}, now {now}"))
            })
    }
}

/// The rows as Parquet, each with its trial's configuration (a column per dimension, named
/// after its flag: int64, float64 or string; null where it does not apply).
pub fn encode_trials(space: &Space, configs: &[Config], rows: &[Row]) -> Result<Bytes> {
    let ints = |f: &dyn Fn(&Row) -> i64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(rows.iter().map(f)))
    };
    let mut fields = vec![
        Field::new("trial", DataType::Int64, false),
        Field::new("epoch", DataType::Int64, false),
        Field::new("metric", DataType::Float64, true),
        Field::new("seconds", DataType::Float64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
    ];
    let mut columns: Vec<ArrayRef> = vec![
        ints(&|r| r.trial as i64),
        ints(&|r| r.epoch as i64),
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.metric))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.seconds),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.status.name()),
        )),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.reason.as_deref()),
        )),
    ];
    for (d, dim) in space.dimensions.iter().enumerate() {
        let values: Vec<Option<&Value>> =
            rows.iter().map(|r| configs[r.trial][d].as_ref()).collect();
        let (data_type, column): (DataType, ArrayRef) =
            if values.iter().flatten().all(|v| matches!(v, Value::Int(_))) {
                let v = values
                    .iter()
                    .map(|v| v.and_then(Value::as_f64).map(|x| x as i64));
                (DataType::Int64, Arc::new(Int64Array::from_iter(v)))
            } else if dim.is_numeric() {
                let v = values.iter().map(|v| v.and_then(Value::as_f64));
                (DataType::Float64, Arc::new(Float64Array::from_iter(v)))
            } else {
                let v: Vec<Option<String>> =
                    values.iter().map(|v| v.map(|v| v.to_string())).collect();
                (DataType::Utf8, Arc::new(StringArray::from_iter(v)))
            };
        fields.push(Field::new(dim.name.as_str(), data_type, true));
        columns.push(column);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::runtime(format!("trials table: {e}")))?;
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, batch.schema(), None)
        .map_err(|e| Error::runtime(format!("trials table: {e}")))?;
    writer
        .write(&batch)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| Error::runtime(format!("trials table: {e}")))?;
    Ok(Bytes::from(out))
}

/// The rows of a trials.parquet (its configuration columns aside); `shown` names the file in
/// errors.
pub fn decode_trials(bytes: Bytes, shown: &str) -> Result<Vec<Row>> {
    let bad = |what: String| {
        Error::usage(format!(
            "{shown}: {what}; move it away to start the search anew"
        ))
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| bad(format!("not a trials table ({e})")))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("unreadable ({e})")))?;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("no column '{name}'")))
        };
        let (trial, epoch) = (column("trial")?, column("epoch")?);
        let (metric, seconds) = (column("metric")?, column("seconds")?);
        let (status, reason) = (column("status")?, column("reason")?);
        let typed = (
            trial.as_primitive_opt::<Int64Type>(),
            epoch.as_primitive_opt::<Int64Type>(),
            metric.as_primitive_opt::<Float64Type>(),
            seconds.as_primitive_opt::<Float64Type>(),
            status.as_string_opt::<i32>(),
            reason.as_string_opt::<i32>(),
        );
        let (Some(trial), Some(epoch), Some(metric), Some(seconds), Some(status), Some(reason)) =
            typed
        else {
            return Err(bad("a column of another type than tune writes".into()));
        };
        for i in 0..batch.num_rows() {
            let status = Status::from_name(status.value(i))
                .ok_or_else(|| bad(format!("unknown status '{}'", status.value(i))))?;
            rows.push(Row {
                trial: trial.value(i) as usize,
                epoch: epoch.value(i) as usize,
                metric: metric.is_valid(i).then(|| metric.value(i)),
                seconds: seconds.value(i),
                status,
                reason: reason.is_valid(i).then(|| reason.value(i).to_string()),
            });
        }
    }
    Ok(rows)
}

/// A configuration as `{"lr": 0.01, "factors": 32}` (dimensions that apply only).
pub fn config_json(space: &Space, config: &Config) -> serde_json::Value {
    let map = space
        .dimensions
        .iter()
        .zip(config)
        .filter_map(|(d, v)| Some((d.name.clone(), v.as_ref()?.to_json())))
        .collect();
    serde_json::Value::Object(map)
}

/// A configuration as the flags of train (`--lr 0.01 --factors 32`).
pub fn config_flags(space: &Space, config: &Config) -> String {
    let flags: Vec<String> = space
        .dimensions
        .iter()
        .zip(config)
        .filter_map(|(d, v)| match v.as_ref()? {
            Value::Text(t) if d.name == "no-bias" => (t == "true").then(|| "--no-bias".to_string()),
            v => Some(format!("--{} {v}", d.name)),
        })
        .collect();
    flags.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_round_trip_through_parquet_with_their_configuration_columns() {
        let space = Space::parse("lr=0.01,0.1 factors=8,16 objective=explicit,implicit").unwrap();
        let configs = vec![
            vec![
                Some(Value::Float(0.01)),
                Some(Value::Int(8)),
                Some(Value::Text("explicit".into())),
            ],
            vec![
                None,
                Some(Value::Int(16)),
                Some(Value::Text("implicit".into())),
            ],
        ];
        let rows = vec![
            Row {
                trial: 0,
                epoch: 1,
                metric: Some(0.9),
                seconds: 0.5,
                status: Status::Continued,
                reason: None,
            },
            Row {
                trial: 0,
                epoch: 3,
                metric: Some(0.8),
                seconds: 1.5,
                status: Status::Completed,
                reason: None,
            },
            Row {
                trial: 1,
                epoch: 2,
                metric: None,
                seconds: 0.7,
                status: Status::Failed,
                reason: Some("diverged".into()),
            },
        ];
        let bytes = encode_trials(&space, &configs, &rows).unwrap();
        assert_eq!(decode_trials(bytes.clone(), "t").unwrap(), rows);
        let batch = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let lr = batch
            .column_by_name("lr")
            .unwrap()
            .as_primitive::<Float64Type>();
        assert_eq!((lr.value(0), lr.is_null(2)), (0.01, true));
        let factors = batch
            .column_by_name("factors")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(factors.value(2), 16);
        let objective = batch
            .column_by_name("objective")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(objective.value(2), "implicit");
        assert_eq!(
            config_flags(&space, &configs[1]),
            "--factors 16 --objective implicit"
        );
        assert_eq!(config_json(&space, &configs[0])["lr"], 0.01);
    }

    #[test]
    fn a_file_that_is_not_a_trials_table_is_refused_by_name() {
        let e = decode_trials(Bytes::from_static(b"nope"), "m/_tune/trials.parquet").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("m/_tune/trials.parquet: not a trials table"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn a_resume_with_other_settings_names_the_first_that_changed() {
        let a = SearchRecord {
            space: "lr=0.1,0.2".into(),
            trials: 10,
            seed: 1,
            metric: "holdout_rmse".into(),
            scheduler: "asha".into(),
            grace_epochs: 1,
            eta: 3,
            data: "d".into(),
            base: "--factors 8".into(),
        };
        assert_eq!(a.differs_from(&a), None);
        let b = SearchRecord {
            seed: 2,
            ..a.clone()
        };
        assert_eq!(b.differs_from(&a).unwrap(), "--seed was 1, now 2");
        let c = SearchRecord {
            space: "lr=0.1".into(),
            ..a.clone()
        };
        assert!(c
            .differs_from(&a)
            .unwrap()
            .starts_with("--space was 'lr=0.1,0.2'"));
    }
}
