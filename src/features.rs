//! Feature engineering, pure: event type -> rating weight (or an explicit rating column, see
//! `input`), skipped rows counted by reason, ids numbered, and (user, item) pairs aggregated.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Float32Type};

use crate::error::{Error, Result};
use crate::ids::Interner;
use crate::input::{Aggregate, EventWeights, ValueRule};
use crate::ratings::{sort_by_user, Rated, Triple};

/// Rows dropped while reading, by reason; logged once as job totals by rank 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SkipCounts {
    pub null_user: u64,
    pub null_item: u64,
    pub null_value: u64,
    /// Event types not in the weight table, with their counts.
    pub unknown_events: BTreeMap<String, u64>,
}

impl SkipCounts {
    pub fn total(&self) -> u64 {
        self.null_user
            + self.null_item
            + self.null_value
            + self.unknown_events.values().sum::<u64>()
    }

    pub fn merge(&mut self, other: &SkipCounts) {
        self.null_user += other.null_user;
        self.null_item += other.null_item;
        self.null_value += other.null_value;
        for (k, v) in &other.unknown_events {
            *self.unknown_events.entry(k.clone()).or_default() += v;
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = crate::wire::Writer::new();
        w.u64(self.null_user);
        w.u64(self.null_item);
        w.u64(self.null_value);
        w.u64(self.unknown_events.len() as u64);
        for (k, v) in &self.unknown_events {
            w.bytes(k.as_bytes());
            w.u64(*v);
        }
        w.finish()
    }

    pub fn from_bytes(b: &[u8]) -> Result<SkipCounts> {
        let mut r = crate::wire::Reader::new(b);
        let mut s = SkipCounts {
            null_user: r.u64()?,
            null_item: r.u64()?,
            null_value: r.u64()?,
            ..Default::default()
        };
        for _ in 0..r.u64()? {
            let k = String::from_utf8_lossy(r.bytes()?).into_owned();
            s.unknown_events.insert(k, r.u64()?);
        }
        Ok(s)
    }

    /// One line for the log, or None when nothing was skipped.
    pub fn describe(&self) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let mut parts = Vec::new();
        if self.null_user > 0 {
            parts.push(format!("{} with a null user id", self.null_user));
        }
        if self.null_item > 0 {
            parts.push(format!("{} with a null item id", self.null_item));
        }
        if self.null_value > 0 {
            parts.push(format!("{} with a null rating or event", self.null_value));
        }
        if !self.unknown_events.is_empty() {
            let mut by_count: Vec<_> = self.unknown_events.iter().collect();
            by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let names: Vec<String> = by_count
                .iter()
                .take(10)
                .map(|(k, v)| format!("{k:?} x{v}"))
                .collect();
            let more = if by_count.len() > 10 { ", ..." } else { "" };
            parts.push(format!(
                "{} with event types not in --event-weights ({}{more})",
                self.unknown_events.values().sum::<u64>(),
                names.join(", ")
            ));
        }
        Some(format!(
            "skipped {} rows: {}",
            self.total(),
            parts.join("; ")
        ))
    }
}

/// What one rank extracted from its slice.
#[derive(Default)]
pub struct LocalRatings {
    pub users: Interner,
    pub items: Interner,
    pub triples: Vec<Triple>,
    /// With a hold-out by time: each triple's event time (see `set_times`), else empty.
    pub times: Vec<i64>,
    pub skipped: SkipCounts,
    pub rows_read: u64,
    /// Time spent turning batches into ratings (the rest of reading is I/O and decoding).
    pub feature_seconds: f64,
    // Reused per batch, so a batch costs no allocation once warmed up.
    user_scratch: Vec<u32>,
    item_scratch: Vec<u32>,
    value_scratch: Vec<f32>,
    /// The times of the batch `add_batch` takes next (empty: no times are read).
    time_scratch: Vec<i64>,
}

/// Marks a null id in the scratch vectors.
const NULL_ID: u32 = u32::MAX;
/// Marks a row whose event type is not in the table (NaN never equals a weight).
const UNKNOWN: f32 = f32::NAN;

impl LocalRatings {
    pub fn new() -> Self {
        Self::default()
    }

    /// The event times of the batch the next `add_batch` takes (a hold-out by time): each
    /// kept row's time then goes to `times`, beside its triple.
    pub fn set_times(&mut self, time: &dyn Array, file: &str, column: &str) -> Result<()> {
        let started = std::time::Instant::now();
        let mut out = std::mem::take(&mut self.time_scratch);
        let result = crate::times::column(time, &mut out, file, column);
        self.time_scratch = out;
        self.feature_seconds += started.elapsed().as_secs_f64();
        result
    }

    /// Add one batch of columns. `file` and the column names are for error messages.
    pub fn add_batch(
        &mut self,
        user: &dyn Array,
        item: &dyn Array,
        value: &dyn Array,
        rule: &ValueRule,
        names: &ColumnNames<'_>,
    ) -> Result<()> {
        let started = std::time::Instant::now();
        let result = self.add_batch_inner(user, item, value, rule, names);
        self.feature_seconds += started.elapsed().as_secs_f64();
        result
    }

    fn add_batch_inner(
        &mut self,
        user: &dyn Array,
        item: &dyn Array,
        value: &dyn Array,
        rule: &ValueRule,
        names: &ColumnNames<'_>,
    ) -> Result<()> {
        self.rows_read += user.len() as u64;
        let mut users = std::mem::take(&mut self.user_scratch);
        let mut items = std::mem::take(&mut self.item_scratch);
        let mut values = std::mem::take(&mut self.value_scratch);
        intern_column(user, &mut self.users, &mut users, names.file, names.user)?;
        intern_column(item, &mut self.items, &mut items, names.file, names.item)?;
        match rule {
            ValueRule::Events(weights) => {
                let present = |row: usize| users[row] != NULL_ID && items[row] != NULL_ID;
                event_weights_column(
                    value,
                    weights,
                    present,
                    &mut values,
                    &mut self.skipped,
                    names,
                )?
            }
            ValueRule::Rating => {
                let present = |row: usize| users[row] != NULL_ID && items[row] != NULL_ID;
                rating_column(value, present, &mut values, &mut self.skipped, names)?
            }
        }
        let times = std::mem::take(&mut self.time_scratch);
        for (row, ((&u, &i), &v)) in users.iter().zip(&items).zip(&values).enumerate() {
            if u == NULL_ID {
                self.skipped.null_user += 1;
            } else if i == NULL_ID {
                self.skipped.null_item += 1;
            } else if v.is_nan() {
                // Counted by the value decoder (unknown event or null value).
            } else {
                self.triples.push(Triple {
                    user: u,
                    item: i,
                    value: v,
                });
                if let Some(&time) = times.get(row) {
                    self.times.push(time);
                }
            }
        }
        self.user_scratch = users;
        self.item_scratch = items;
        self.value_scratch = values;
        Ok(())
    }
}

/// Names for error messages while decoding one file.
pub struct ColumnNames<'a> {
    pub file: &'a str,
    pub user: &'a str,
    pub item: &'a str,
    pub value: &'a str,
}

/// Ids of one column into `out` (NULL_ID for nulls). Dictionary columns are decoded once per
/// dictionary entry, not once per row.
pub(crate) fn intern_column(
    array: &dyn Array,
    interner: &mut Interner,
    out: &mut Vec<u32>,
    file: &str,
    column: &str,
) -> Result<()> {
    out.clear();
    let Some(dict) = array.as_any_dictionary_opt() else {
        return intern_values(array, interner, out, file, column);
    };
    let mut dict_ids = Vec::new();
    intern_values(
        dict.values().as_ref(),
        interner,
        &mut dict_ids,
        file,
        column,
    )?;
    let keys = dict.normalized_keys();
    let valid = array.logical_nulls();
    for (row, &k) in keys.iter().enumerate() {
        let is_null = valid.as_ref().is_some_and(|n| n.is_null(row));
        out.push(if is_null { NULL_ID } else { dict_ids[k] });
    }
    Ok(())
}

/// `intern_column` of a column that is not dictionary-encoded.
fn intern_values(
    array: &dyn Array,
    interner: &mut Interner,
    out: &mut Vec<u32>,
    file: &str,
    column: &str,
) -> Result<()> {
    macro_rules! strings {
        ($a:expr) => {{
            let a = $a;
            for row in 0..a.len() {
                out.push(if a.is_null(row) {
                    NULL_ID
                } else {
                    interner.intern_str(a.value(row))
                });
            }
        }};
    }
    use arrow::datatypes::*;
    match array.data_type() {
        DataType::Int8 => intern_ints::<Int8Type>(array, interner, out),
        DataType::Int16 => intern_ints::<Int16Type>(array, interner, out),
        DataType::Int32 => intern_ints::<Int32Type>(array, interner, out),
        DataType::Int64 => intern_ints::<Int64Type>(array, interner, out),
        DataType::UInt8 => intern_ints::<UInt8Type>(array, interner, out),
        DataType::UInt16 => intern_ints::<UInt16Type>(array, interner, out),
        DataType::UInt32 => intern_ints::<UInt32Type>(array, interner, out),
        DataType::UInt64 => {
            let a = array.as_primitive::<UInt64Type>();
            for (row, &v) in a.values().iter().enumerate() {
                out.push(if a.is_null(row) {
                    NULL_ID
                } else if v <= i64::MAX as u64 {
                    interner.intern_int(v as i64)
                } else {
                    interner.intern_str(&v.to_string())
                });
            }
        }
        DataType::Utf8 => strings!(array.as_string::<i32>()),
        DataType::LargeUtf8 => strings!(array.as_string::<i64>()),
        DataType::Utf8View => strings!(array.as_string_view()),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let strings = strict_cast(array, &DataType::Utf8).map_err(|_| {
                Error::usage(format!(
                    "{file}: column {column:?} holds ids that are not valid UTF-8 text"
                ))
            })?;
            strings!(strings.as_string::<i32>())
        }
        other => {
            return Err(Error::usage(format!(
            "{file}: column {column:?} has type {other}, but an id must be an integer or a string"
        )))
        }
    }
    Ok(())
}

/// Integer ids of a column of integers that fit in an i64.
fn intern_ints<T>(array: &dyn Array, interner: &mut Interner, out: &mut Vec<u32>)
where
    T: arrow::datatypes::ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    // How many rows ahead of the one being interned its table slot is prefetched.
    const AHEAD: usize = 16;
    let a = array.as_primitive::<T>();
    let values = a.values();
    for (row, &v) in values.iter().enumerate() {
        if let Some(&ahead) = values.get(row + AHEAD) {
            interner.prefetch_int(ahead.into());
        }
        out.push(if a.is_null(row) {
            NULL_ID
        } else {
            interner.intern_int(v.into())
        });
    }
}

fn event_weights_column(
    array: &dyn Array,
    weights: &EventWeights,
    ids_present: impl Fn(usize) -> bool,
    out: &mut Vec<f32>,
    skipped: &mut SkipCounts,
    names: &ColumnNames<'_>,
) -> Result<()> {
    out.clear();
    // A row dropped for a null id is counted there, not here as well.
    let mut unknown: BTreeMap<&str, u64> = BTreeMap::new();
    if let Some(dict) = array.as_any_dictionary_opt() {
        // Weigh each dictionary entry once, not each row.
        let Some(entries) = string_values(dict.values().as_ref()) else {
            return Err(event_type_error(array, names));
        };
        let entry_weights: Vec<Option<f32>> = entries
            .iter()
            .map(|v| v.and_then(|s| weights.weight(s)))
            .collect();
        let nulls = array.logical_nulls();
        for (row, &k) in dict.normalized_keys().iter().enumerate() {
            let value = if nulls.as_ref().is_some_and(|n| n.is_null(row)) {
                None
            } else {
                entries[k]
            };
            let weight = if value.is_some() {
                entry_weights[k]
            } else {
                None
            };
            push_weight(value, weight, ids_present(row), out, skipped, &mut unknown);
        }
    } else {
        let Some(values) = string_values(array) else {
            return Err(event_type_error(array, names));
        };
        for (row, value) in values.into_iter().enumerate() {
            let weight = value.and_then(|s| weights.weight(s));
            push_weight(value, weight, ids_present(row), out, skipped, &mut unknown);
        }
    }
    for (name, count) in unknown {
        *skipped.unknown_events.entry(name.to_string()).or_default() += count;
    }
    Ok(())
}

#[inline]
fn push_weight<'a>(
    value: Option<&'a str>,
    weight: Option<f32>,
    counted: bool,
    out: &mut Vec<f32>,
    skipped: &mut SkipCounts,
    unknown: &mut BTreeMap<&'a str, u64>,
) {
    match (value, weight) {
        (_, Some(w)) => out.push(w),
        (None, None) => {
            skipped.null_value += counted as u64;
            out.push(UNKNOWN);
        }
        (Some(name), None) => {
            if counted {
                *unknown.entry(name).or_default() += 1;
            }
            out.push(UNKNOWN);
        }
    }
}

fn string_values(array: &dyn Array) -> Option<Vec<Option<&str>>> {
    match array.data_type() {
        DataType::Utf8 => Some(array.as_string::<i32>().iter().collect()),
        DataType::LargeUtf8 => Some(array.as_string::<i64>().iter().collect()),
        DataType::Utf8View => Some(array.as_string_view().iter().collect()),
        _ => None,
    }
}

fn event_type_error(array: &dyn Array, names: &ColumnNames<'_>) -> Error {
    Error::usage(format!(
        "{}: event column {:?} has type {}, expected strings such as \"view\" (use --rating-col for numeric ratings)",
        names.file,
        names.value,
        array.data_type()
    ))
}

fn rating_column(
    array: &dyn Array,
    ids_present: impl Fn(usize) -> bool,
    out: &mut Vec<f32>,
    skipped: &mut SkipCounts,
    names: &ColumnNames<'_>,
) -> Result<()> {
    out.clear();
    let numeric = match array.data_type() {
        DataType::Float32 => arrow::array::make_array(array.to_data()),
        t if t.is_numeric()
            || matches!(
                t,
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Dictionary(..)
            ) =>
        {
            strict_cast(array, &DataType::Float32).map_err(|e| {
                Error::usage(format!(
                    "{}: rating column {:?} holds a value that is not a number ({e})",
                    names.file, names.value
                ))
            })?
        }
        other => {
            return Err(Error::usage(format!(
                "{}: rating column {:?} has type {other}, expected numbers",
                names.file, names.value
            )))
        }
    };
    let a = numeric.as_primitive::<Float32Type>();
    for (row, &v) in a.values().iter().enumerate() {
        if a.is_null(row) {
            skipped.null_value += ids_present(row) as u64;
            out.push(UNKNOWN);
            continue;
        }
        if !v.is_finite() || v < 0.0 {
            return Err(Error::usage(format!(
                "{}: rating column {:?} holds {v} (row {row} of a batch); ratings must be finite and not negative",
                names.file, names.value
            )));
        }
        out.push(v);
    }
    Ok(())
}

/// Cast that fails on a value it cannot convert (arrow's default turns it into a null).
fn strict_cast(
    array: &dyn Array,
    to: &DataType,
) -> std::result::Result<arrow::array::ArrayRef, arrow::error::ArrowError> {
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(array, to, &options)
}

/// Sort triples by (user, item) and combine repeats with `agg`. Deterministic for a given input.
pub fn aggregate<R: Rated>(triples: &mut Vec<R>, agg: Aggregate) {
    sort_by_user(
        triples,
        |t| t.user,
        |t| ((t.user as u64) << 32) | t.item as u64,
    );
    let mut write = 0usize;
    for read in 0..triples.len() {
        let t = triples[read];
        if write > 0 {
            let last = &mut triples[write - 1];
            if last.user == t.user && last.item == t.item {
                last.absorb(&t, agg);
                continue;
            }
        }
        triples[write] = t;
        write += 1;
    }
    triples.truncate(write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::Int32Type;

    fn names() -> ColumnNames<'static> {
        ColumnNames {
            file: "f.parquet",
            user: "user_id",
            item: "product_id",
            value: "event_type",
        }
    }

    #[test]
    fn events_map_to_weights_and_unknown_or_null_rows_are_counted() {
        let mut local = LocalRatings::new();
        let users = Int64Array::from(vec![Some(1), Some(1), None, Some(2), Some(2), Some(3)]);
        let items = StringArray::from(vec![
            Some("a"),
            Some("b"),
            Some("a"),
            None,
            Some("a"),
            Some("c"),
        ]);
        let events = StringArray::from(vec![
            Some("view"),
            Some("purchase"),
            Some("view"),
            Some("view"),
            Some("remove"),
            None,
        ]);
        let weights = EventWeights::default();
        let rule = ValueRule::Events(&weights);
        local
            .add_batch(&users, &items, &events, &rule, &names())
            .unwrap();
        assert_eq!(local.rows_read, 6);
        assert_eq!(local.triples.len(), 2);
        assert_eq!(local.triples[0].value, 1.0);
        assert_eq!(local.triples[1].value, 5.0);
        assert_eq!(local.skipped.null_user, 1);
        assert_eq!(local.skipped.null_item, 1);
        assert_eq!(local.skipped.null_value, 1);
        assert_eq!(local.skipped.unknown_events.get("remove"), Some(&1));
        assert!(local.skipped.describe().unwrap().contains("\"remove\" x1"));
    }

    #[test]
    fn dictionary_columns_decode_like_plain_ones() {
        let keys = Int32Array::from(vec![0, 1, 0, 2]);
        let dict_events = DictionaryArray::<Int32Type>::try_new(
            keys.clone(),
            std::sync::Arc::new(StringArray::from(vec!["view", "purchase", "zzz"])),
        )
        .unwrap();
        let dict_users = DictionaryArray::<Int32Type>::try_new(
            keys,
            std::sync::Arc::new(StringArray::from(vec!["u1", "7", "u3"])),
        )
        .unwrap();
        let items = Int64Array::from(vec![10, 10, 11, 12]);
        let weights = EventWeights::default();
        let rule = ValueRule::Events(&weights);
        let mut local = LocalRatings::new();
        local
            .add_batch(&dict_users, &items, &dict_events, &rule, &names())
            .unwrap();
        let values: Vec<f32> = local.triples.iter().map(|t| t.value).collect();
        assert_eq!(values, vec![1.0, 5.0, 1.0]);
        assert_eq!(local.users.ids()[1], crate::ids::Id::Int(7));
        assert_eq!(local.skipped.unknown_events.get("zzz"), Some(&1));
    }

    #[test]
    fn ratings_accept_ints_and_floats_and_reject_nan_or_negative() {
        let users = Int64Array::from(vec![1, 2]);
        let items = Int64Array::from(vec![1, 1]);
        let mut local = LocalRatings::new();
        let n = ColumnNames {
            value: "rating",
            ..names()
        };
        local
            .add_batch(
                &users,
                &items,
                &Int32Array::from(vec![4, 5]),
                &ValueRule::Rating,
                &n,
            )
            .unwrap();
        local
            .add_batch(
                &users,
                &items,
                &Float64Array::from(vec![3.5, 0.5]),
                &ValueRule::Rating,
                &n,
            )
            .unwrap();
        let values: Vec<f32> = local.triples.iter().map(|t| t.value).collect();
        assert_eq!(values, vec![4.0, 5.0, 3.5, 0.5]);
        for bad in [f64::NAN, f64::INFINITY, -1.0] {
            let e = local
                .add_batch(
                    &users,
                    &items,
                    &Float64Array::from(vec![1.0, bad]),
                    &ValueRule::Rating,
                    &n,
                )
                .unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains("\"rating\""), "{e}");
        }
    }

    #[test]
    fn aggregation_takes_max_or_sum_per_pair() {
        let t = |user, item, value| Triple { user, item, value };
        let input = vec![
            t(1, 2, 1.0),
            t(0, 5, 3.0),
            t(1, 2, 5.0),
            t(1, 2, 1.0),
            t(0, 1, 1.0),
        ];
        let mut max = crate::ratings::plain(input.clone());
        aggregate(&mut max, Aggregate::Max);
        let max = crate::ratings::unplain(max);
        assert_eq!(max, vec![t(0, 1, 1.0), t(0, 5, 3.0), t(1, 2, 5.0)]);
        let mut sum = crate::ratings::plain(input.clone());
        aggregate(&mut sum, Aggregate::Sum);
        let sum = crate::ratings::unplain(sum);
        assert_eq!(sum, vec![t(0, 1, 1.0), t(0, 5, 3.0), t(1, 2, 7.0)]);
        // With times: the pair's latest time rides with its aggregated value.
        let times = vec![30, 10, 50, 20, 40];
        let mut timed = crate::ratings::timed(input, times);
        aggregate(&mut timed, Aggregate::Max);
        let (triples, times) = crate::ratings::untimed(timed);
        assert_eq!(triples, max);
        assert_eq!(times, vec![40, 10, 50]);
    }
}
