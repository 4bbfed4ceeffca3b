//! A model's two tables as Parquet: `users.parquet` and `items.parquet`, one row per user /
//! item with its id (`user_id` / `item_id`, int64, or string when any id is a string), `bias`
//! (f32) and `factors` (a fixed-size list of f32), readable by pyarrow, pandas, polars, DuckDB;
//! `items.parquet` also has `n_ratings` (int64): the item's training ratings (pairs), the
//! popularity `recommend` falls back on (absent in models written before it was recorded).

use std::borrow::Cow;
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

use crate::error::{Error, Result};
use crate::ids::Id;

/// The name of the items' training ratings column.
pub const ITEM_COUNTS: &str = "n_ratings";

/// Encode rows as a Parquet file: `{id_col}`, `bias`, `factors` (fixed-size list of f32).
pub fn rows_to_parquet(id_col: &str, ids: &[Id], rows: &[f32], factors: usize) -> Result<Bytes> {
    rows_to_parquet_with(id_col, ids, rows, factors, None)
}

/// `rows_to_parquet`, with a `n_ratings` column of `counts` (one per row) if given.
pub fn rows_to_parquet_with(
    id_col: &str,
    ids: &[Id],
    rows: &[f32],
    factors: usize,
    counts: Option<&[u64]>,
) -> Result<Bytes> {
    // About the file's size, so the buffer is not grown by doubling.
    let buf = Vec::with_capacity(rows.len() * 4 + ids.len() * 16 + (1 << 16));
    let int_ids = all_ints(ids);
    let buf = write_rows(buf, id_col, (ids, rows), factors, (counts, int_ids))?;
    Ok(Bytes::from(buf))
}

/// Rows encoded as a Parquet file into `out` (a buffer, or an object written as a stream),
/// returned once the file is complete: the same bytes whatever `out` is.
/// `int_ids`: the id column as int64 (every id an integer), else as strings; the parts of one
/// table must agree on it.
pub fn write_rows<W: std::io::Write + Send>(
    out: W,
    id_col: &str,
    (ids, rows): (&[Id], &[f32]),
    factors: usize,
    (counts, int_ids): (Option<&[u64]>, bool),
) -> Result<W> {
    let stride = factors + 1;
    let groups = ids
        .chunks(ROWS_PER_GROUP)
        .zip(rows.chunks(ROWS_PER_GROUP * stride))
        .map(|(ids, rows)| (Cow::Borrowed(ids), Cow::Borrowed(rows)));
    write_groups(out, id_col, groups, factors, (counts, int_ids))
}

/// The ids and packed rows of one row group (of at most `ROWS_PER_GROUP` rows).
pub type RowGroup<'a> = (Cow<'a, [Id]>, Cow<'a, [f32]>);

/// Rows per Parquet row group: the writer holds one at a time.
pub const ROWS_PER_GROUP: usize = 1 << 16;

/// `write_rows` from the rows a group at a time (a table whose rows are not in one slice).
// Long: one Parquet writer set up and fed; splitting it would pass its parts around.
pub fn write_groups<'a, W: std::io::Write + Send>(
    out: W,
    id_col: &str,
    groups: impl Iterator<Item = RowGroup<'a>>,
    factors: usize,
    (counts, int_ids): (Option<&[u64]>, bool),
) -> Result<W> {
    let stride = factors + 1;
    let id_type = if int_ids {
        DataType::Int64
    } else {
        DataType::Utf8
    };
    let item_field = Arc::new(Field::new("item", DataType::Float32, false));
    let mut fields = vec![
        Field::new(id_col, id_type, false),
        Field::new("bias", DataType::Float32, false),
        Field::new(
            "factors",
            DataType::FixedSizeList(item_field.clone(), factors as i32),
            false,
        ),
    ];
    if counts.is_some() {
        fields.push(Field::new(ITEM_COUNTS, DataType::Int64, false));
    }
    let schema = Arc::new(Schema::new(fields));
    // Trained floats never repeat and do not compress: dictionary encoding and compression
    // would only cost time and memory (the writer keeps a dictionary of every value it tries).
    // One row group per batch of ROWS_PER_GROUP: the writer holds one at a time.
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_compression(Compression::UNCOMPRESSED)
        .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
        .set_created_by(format!("funksvd {}", env!("CARGO_PKG_VERSION")))
        .build();
    let failed = |e: &dyn std::fmt::Display| Error::runtime(format!("cannot write Parquet: {e}"));
    let mut writer =
        ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| failed(&e))?;
    let mut start = 0;
    for (ids, rows) in groups {
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
        let mut columns: Vec<ArrayRef> = vec![id_array, Arc::new(bias), Arc::new(factors_array)];
        if let Some(counts) = counts {
            let these = &counts[start..start + ids.len()];
            columns.push(Arc::new(Int64Array::from_iter_values(
                these.iter().map(|&c| c.min(i64::MAX as u64) as i64),
            )));
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)
            .map_err(|e| Error::runtime(format!("cannot build the {id_col} table: {e}")))?;
        writer.write(&batch).map_err(|e| failed(&e))?;
        start += ids.len();
    }
    writer.into_inner().map_err(|e| failed(&e))
}

/// Whether every id is an integer (the id column is then int64).
pub fn all_ints(ids: &[Id]) -> bool {
    ids.iter().all(|id| matches!(id, Id::Int(_)))
}

/// A rows file decoded: ids, packed rows (`[bias, factors...]`), and the `n_ratings` column if
/// the file has one.
#[derive(Default)]
pub struct RowsTable {
    pub ids: Vec<Id>,
    pub rows: Vec<f32>,
    pub counts: Option<Vec<u64>>,
}

/// Decode a rows file written by `rows_to_parquet`.
// Long: one pass over the batches, each column checked where it is read.
pub fn parquet_to_rows(
    bytes: Bytes,
    id_col: &str,
    factors: usize,
    shown: &str,
) -> Result<RowsTable> {
    let bad = |why: String| Error::usage(format!("{shown}: not a funksvd model file ({why})"));
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut ids = Vec::new();
    let mut rows = Vec::new();
    let mut counts: Option<Vec<u64>> = None;
    for (n, batch) in reader.enumerate() {
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
        if let Some(c) = batch.column_by_name(ITEM_COUNTS) {
            let c = c
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| bad(format!("{ITEM_COUNTS} is not int64")))?;
            if n == 0 {
                counts = Some(Vec::new());
            }
            if let Some(all) = counts.as_mut() {
                all.extend(c.values().iter().map(|&v| v.max(0) as u64));
            }
        }
    }
    Ok(RowsTable { ids, rows, counts })
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
            let back = parquet_to_rows(bytes, "user_id", 2, "t").unwrap();
            assert_eq!(back.ids, ids);
            assert_eq!(back.rows, rows);
            assert_eq!(back.counts, None);
            let counts = [3u64, 0, 7];
            let bytes = rows_to_parquet_with("item_id", &ids, &rows, 2, Some(&counts)).unwrap();
            let back = parquet_to_rows(bytes, "item_id", 2, "t").unwrap();
            assert_eq!((back.ids, back.rows), (ids.clone(), rows.clone()));
            assert_eq!(back.counts, Some(counts.to_vec()));
        }
        let bytes = rows_to_parquet("user_id", &[Id::Int(1)], &[0.0, 1.0, 2.0], 2).unwrap();
        assert!(parquet_to_rows(bytes, "user_id", 3, "t").is_err());
    }
}
