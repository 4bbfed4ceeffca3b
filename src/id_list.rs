//! A list of ids from a file or a prefix of files (`recommend --users`): one column of a
//! Parquet or CSV file, named as the model's user column, or the only column a file has.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use crate::error::{Error, Result};
use crate::features::intern_column;
use crate::ids::{Id, Interner};
use crate::ingest::{delimiter_of, kind_of, split_header, Kind};
use crate::input::Format;
use crate::store::Location;

/// Every id of column `column` in the files at `loc` (`flag` names the location in messages),
/// sorted, each once; nulls and empty files skipped.
pub fn read_ids(
    loc: &Location,
    column: &str,
    format: Format,
    delimiter: Option<char>,
    flag: &str,
) -> Result<Vec<Id>> {
    let files = loc.blocking().list_files()?;
    if files.is_empty() {
        return Err(Error::usage(format!(
            "{flag} {}: no files there (it does not exist, or holds only names starting with _ or .)",
            loc.url()
        )));
    }
    let mut interner = Interner::new();
    let mut scratch = Vec::new();
    for file in &files {
        let shown = loc.display_key(&file.key);
        if file.size == 0 {
            continue;
        }
        let bytes = loc.blocking().get(&file.key)?;
        let arrays = match kind_of(loc, file, format)? {
            Kind::Parquet => parquet_column(bytes, column, &shown)?,
            Kind::Csv => {
                let delimiter = delimiter_of(file, delimiter.map(|c| c as u8));
                csv_column(bytes, column, delimiter, &shown)?
            }
        };
        for array in arrays {
            intern_column(array.as_ref(), &mut interner, &mut scratch, &shown, column)?;
        }
    }
    let mut ids = interner.into_ids();
    ids.sort_unstable();
    Ok(ids)
}

/// Which of `names` holds the ids: `column`, or the only one there is.
fn pick(names: &[String], column: &str, shown: &str) -> Result<usize> {
    if let Some(i) = names.iter().position(|n| n == column) {
        return Ok(i);
    }
    if names.len() == 1 {
        return Ok(0);
    }
    let listed: Vec<&str> = names.iter().take(30).map(String::as_str).collect();
    Err(Error::usage(format!(
        "{shown}: no column {column:?} of user ids (columns: {}); give a file with one column, or one named {column:?} (the model's user column; --user-col names another)",
        listed.join(", ")
    )))
}

fn parquet_column(
    bytes: bytes::Bytes,
    column: &str,
    shown: &str,
) -> Result<Vec<arrow::array::ArrayRef>> {
    let bad =
        |e: &dyn std::fmt::Display| Error::usage(format!("{shown}: not a Parquet file ({e})"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| bad(&e))?;
    let names: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let at = pick(&names, column, shown)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [at]);
    let reader = builder.with_projection(mask).build().map_err(|e| bad(&e))?;
    reader
        .map(|batch| batch.map(|b| b.column(0).clone()).map_err(|e| bad(&e)))
        .collect()
}

fn csv_column(
    bytes: bytes::Bytes,
    column: &str,
    delimiter: u8,
    shown: &str,
) -> Result<Vec<arrow::array::ArrayRef>> {
    if bytes.starts_with(b"PAR1") {
        return Err(Error::usage(format!(
            "{shown}: this is a Parquet file (it starts with PAR1), read as CSV because of --format csv"
        )));
    }
    let header_end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let names = split_header(&String::from_utf8_lossy(&bytes[..header_end]), delimiter);
    let at = pick(&names, column, shown)?;
    let schema = Arc::new(Schema::new(
        (0..names.len())
            .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    arrow::csv::ReaderBuilder::new(schema)
        .with_header(true)
        .with_delimiter(delimiter)
        .with_projection(vec![at])
        .build(std::io::Cursor::new(bytes))
        .map_err(|e| Error::usage(format!("{shown}: {e}")))?
        .map(|b| {
            b.map(|b| b.column(0).clone())
                .map_err(|e| Error::usage(format!("{shown}: bad CSV ({e})")))
        })
        .collect()
}
