//! Finding and reading the dataset: rank 0 lists it and reads every footer / CSV header once
//! (`discover`), the plan goes to every rank, and each rank reads only its own row groups or byte
//! ranges with column projection (`read_slice`), feeding columnar batches to `features`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::arrow::ProjectionMask;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::features::{ColumnNames, LocalRatings};
use crate::input::{Format, Input, ValueRule};
use crate::plan::{SourceShape, Task};
use crate::store::{FileRef, Location};
use crate::wire::{Reader, Writer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Parquet,
    Csv,
}

/// The columns of one file that we read: (position, name) for user, item, value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Columns {
    user: (usize, String),
    item: (usize, String),
    value: (usize, String),
    /// The event time, when the job reads it (a hold-out by time).
    #[serde(default)]
    time: Option<(usize, String)>,
    /// CSV only: how many fields the header has.
    csv_fields: usize,
    /// CSV only: the field separator.
    delimiter: u8,
}

/// One data file, as every rank needs to know it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct SourceFile {
    file: FileRef,
    kind: Kind,
    shape: SourceShape,
    columns: Columns,
}

/// What rank 0 found: the files with their footers, and each rank's share of the work.
pub struct Dataset {
    files: Vec<SourceFile>,
    /// Raw Parquet metadata (thrift bytes) per file, empty for CSV.
    footers: Vec<Bytes>,
    pub slices: Vec<Vec<Task>>,
}

impl Dataset {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file.size).sum()
    }

    /// A hash of every file's key and size.
    pub fn fingerprint(&self) -> String {
        let listing: String = self
            .files
            .iter()
            .map(|f| format!("{}\t{}\n", f.file.key, f.file.size))
            .collect();
        format!("{:016x}", crate::ids::hash_str(&listing))
    }

    /// Parquet rows in rank r's slice (CSV rows are not known before reading: 0).
    pub fn parquet_rows_of(&self, rank: usize) -> u64 {
        let shapes: Vec<SourceShape> = self.files.iter().map(|f| f.shape.clone()).collect();
        crate::plan::rows_per_rank(&shapes, &self.slices)
            .get(rank)
            .copied()
            .unwrap_or(0)
    }

    pub fn file_count(&self) -> usize {
        self.files.len()
    }

    pub fn row_groups(&self) -> usize {
        self.files
            .iter()
            .map(|f| match &f.shape {
                SourceShape::Parquet { row_groups } => row_groups.len(),
                SourceShape::Csv { .. } => 0,
            })
            .sum()
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut w = Writer::new();
        let header = serde_json::to_vec(&(&self.files, &self.slices))
            .map_err(|e| Error::runtime(format!("cannot encode the plan: {e}")))?;
        w.bytes(&header);
        for f in &self.footers {
            w.bytes(f);
        }
        Ok(w.finish())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Dataset> {
        let mut r = Reader::new(bytes);
        let (files, slices): (Vec<SourceFile>, Vec<Vec<Task>>) = serde_json::from_slice(r.bytes()?)
            .map_err(|e| Error::runtime(format!("cannot decode the plan: {e}")))?;
        let footers = files
            .iter()
            .map(|_| r.bytes().map(Bytes::copy_from_slice))
            .collect::<Result<Vec<_>>>()?;
        Ok(Dataset {
            files,
            footers,
            slices,
        })
    }
}

/// How many footers / headers rank 0 fetches at once.
const DISCOVERY_CONCURRENCY: usize = 16;
/// First guess of a Parquet footer's size; most fit, so a footer costs one request.
const FOOTER_GUESS: u64 = 64 * 1024;

/// Rank 0: list the dataset, read every footer or CSV header, check the columns, plan `ranks`.
pub fn discover(loc: &Location, input: &Input, ranks: usize) -> Result<Dataset> {
    let started = std::time::Instant::now();
    let listed = loc.blocking().list_files()?;
    log::debug!(
        "listed {} files in {:.3}s",
        listed.len(),
        started.elapsed().as_secs_f64()
    );
    if listed.is_empty() {
        return Err(Error::usage(format!(
            "--data {}: no data files there (it does not exist, or holds only names starting with _ or .)",
            loc.url()
        )));
    }
    let kinds = listed
        .iter()
        .map(|f| kind_of(loc, f, input.settings.format))
        .collect::<Result<Vec<_>>>()?;
    let found: Vec<(SourceFile, Bytes)> = crate::store::block_on(
        futures::stream::iter(listed.into_iter().zip(kinds))
            .map(|(file, kind)| describe_file(loc, input, file, kind))
            .buffered(DISCOVERY_CONCURRENCY)
            .try_collect(),
    )?;
    log::debug!(
        "read footers and headers in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    let (files, footers): (Vec<SourceFile>, Vec<Bytes>) = found.into_iter().unzip();
    same_item_column(loc, &files)?;
    let shapes: Vec<SourceShape> = files.iter().map(|f| f.shape.clone()).collect();
    let slices = crate::plan::assign(&shapes, ranks);
    Ok(Dataset {
        files,
        footers,
        slices,
    })
}

/// Without `--item-col`, each file's item column is `product_id`, else `item_id`: the files of
/// one dataset must agree, or its items would be two vocabularies under one name.
fn same_item_column(loc: &Location, files: &[SourceFile]) -> Result<()> {
    let mut first_with: BTreeMap<&str, &SourceFile> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.columns.item.1.is_empty()) {
        first_with.entry(f.columns.item.1.as_str()).or_insert(f);
    }
    if first_with.len() < 2 {
        return Ok(());
    }
    let each: Vec<String> = first_with
        .iter()
        .map(|(col, f)| format!("{} has {col:?}", loc.display_key(&f.file.key)))
        .collect();
    Err(Error::usage(format!(
        "the files disagree on the item column ({}); give every file one item column name, or name it with --item-col",
        each.join(", ")
    )))
}

impl Dataset {
    /// The item column the files use (they agree: see `same_item_column`).
    pub fn item_col(&self) -> Option<&str> {
        self.files
            .iter()
            .map(|f| f.columns.item.1.as_str())
            .find(|c| !c.is_empty())
    }
}

/// The field separator of a CSV file: `--delimiter`, else a tab for `.tsv` names, else a comma.
pub(crate) fn delimiter_of(file: &FileRef, given: Option<u8>) -> u8 {
    given.unwrap_or_else(|| match file.key.to_ascii_lowercase().ends_with(".tsv") {
        true => b'\t',
        false => b',',
    })
}

pub(crate) fn kind_of(loc: &Location, file: &FileRef, format: Format) -> Result<Kind> {
    match format {
        Format::Parquet => Ok(Kind::Parquet),
        Format::Csv => Ok(Kind::Csv),
        Format::Auto => {
            let name = file
                .key
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
            match ext {
                "parquet" | "pq" | "parq" => Ok(Kind::Parquet),
                "csv" | "tsv" | "txt" => Ok(Kind::Csv),
                _ => Err(Error::usage(format!(
                    "{}: cannot tell the format from the name; use --format parquet or --format csv",
                    loc.display_key(&file.key)
                ))),
            }
        }
    }
}

async fn describe_file(
    loc: &Location,
    input: &Input,
    file: FileRef,
    kind: Kind,
) -> Result<(SourceFile, Bytes)> {
    let shown = loc.display_key(&file.key);
    match kind {
        Kind::Parquet => {
            let footer = fetch_footer(loc, &file).await?;
            let meta = ParquetMetaDataReader::decode_metadata(&footer)
                .map_err(|e| Error::usage(format!("{shown}: corrupt Parquet footer ({e})")))?;
            let names: Vec<String> = meta
                .file_metadata()
                .schema_descr()
                .root_schema()
                .get_fields()
                .iter()
                .map(|f| f.name().to_string())
                .collect();
            let columns = resolve_columns(&names, input, &shown, 0)?;
            let row_groups = meta
                .row_groups()
                .iter()
                .map(|g| g.num_rows().max(0) as u64)
                .collect();
            let sf = SourceFile {
                file,
                kind,
                shape: SourceShape::Parquet { row_groups },
                columns,
            };
            Ok((sf, footer))
        }
        Kind::Csv => {
            let delimiter = delimiter_of(&file, input.settings.delimiter.map(|c| c as u8));
            let (names, data_start) = fetch_csv_header(loc, &file, delimiter).await?;
            let columns = if file.size == 0 {
                // An empty file has no header and no rows: nothing to resolve.
                Columns {
                    user: (0, String::new()),
                    item: (0, String::new()),
                    value: (0, String::new()),
                    time: None,
                    csv_fields: 0,
                    delimiter,
                }
            } else {
                Columns {
                    delimiter,
                    ..resolve_columns(&names, input, &shown, names.len())?
                }
            };
            let sf = SourceFile {
                shape: SourceShape::Csv {
                    data_start,
                    size: file.size,
                },
                file,
                kind,
                columns,
            };
            Ok((sf, Bytes::new()))
        }
    }
}

/// The Parquet metadata bytes (without the 8-byte tail), usually in one ranged read.
async fn fetch_footer(loc: &Location, file: &FileRef) -> Result<Bytes> {
    let shown = loc.display_key(&file.key);
    let not_parquet = |why: &str| Error::usage(format!("{shown}: not a Parquet file ({why})"));
    if file.size < 12 {
        return Err(not_parquet("too short"));
    }
    let guess = FOOTER_GUESS.min(file.size);
    let tail = loc
        .get_range(&file.key, file.size - guess..file.size)
        .await?;
    let n = tail.len();
    if &tail[n - 4..] != b"PAR1" {
        return Err(not_parquet(
            "no PAR1 magic at the end; truncated or another format",
        ));
    }
    let meta_len = u32::from_le_bytes([tail[n - 8], tail[n - 7], tail[n - 6], tail[n - 5]]) as u64;
    if meta_len + 8 > file.size - 4 {
        return Err(not_parquet("footer length points outside the file"));
    }
    if meta_len + 8 <= guess {
        let start = (guess - 8 - meta_len) as usize;
        return Ok(tail.slice(start..n - 8));
    }
    let start = file.size - 8 - meta_len;
    loc.get_range(&file.key, start..file.size - 8).await
}

/// The header fields and the offset where data starts.
async fn fetch_csv_header(
    loc: &Location,
    file: &FileRef,
    delimiter: u8,
) -> Result<(Vec<String>, u64)> {
    if file.size == 0 {
        return Ok((Vec::new(), 0));
    }
    let mut len = 64 * 1024u64;
    loop {
        let upto = len.min(file.size);
        let head = loc.get_range(&file.key, 0..upto).await?;
        if head.starts_with(b"PAR1") {
            return Err(Error::usage(format!(
                "{}: this is a Parquet file (it starts with PAR1), read as CSV because of --format csv; drop --format or give --format parquet",
                loc.display_key(&file.key)
            )));
        }
        if let Some(nl) = head.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&head[..nl]);
            return Ok((split_header(&line, delimiter), nl as u64 + 1));
        }
        if upto == file.size {
            let line = String::from_utf8_lossy(&head);
            return Ok((split_header(&line, delimiter), file.size));
        }
        if len >= 16 << 20 {
            return Err(Error::usage(format!(
                "{}: no end of line in the first 16 MiB; is this a CSV file?",
                loc.display_key(&file.key)
            )));
        }
        len *= 4;
    }
}

pub(crate) fn split_header(line: &str, delimiter: u8) -> Vec<String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    line.split(delimiter as char)
        .map(|f| f.trim().trim_matches('"').to_string())
        .collect()
}

fn resolve_columns(
    names: &[String],
    input: &Input,
    shown: &str,
    csv_fields: usize,
) -> Result<Columns> {
    let find = |name: &str| names.iter().position(|n| n == name);
    let missing = |col: &str, flag: &str| {
        // Names as text a terminal shows (a binary file's "header" is not).
        let available = names
            .iter()
            .take(30)
            .map(|n| match n.chars().any(char::is_control) || n.len() > 64 {
                true => format!("{:?}", n.chars().take(64).collect::<String>()),
                false => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let hint = match names.len() == 1 && (names[0].contains('\t') || names[0].contains(';')) {
            true => " (one column: is the separator not a comma? give --delimiter)",
            false => "",
        };
        Error::usage(format!(
            "{shown}: no column {col:?} (columns: {available}){hint}; name the right one with {flag}"
        ))
    };
    let s = &input.settings;
    let user = find(&s.user_col).ok_or_else(|| missing(&s.user_col, "--user-col"))?;
    let item = match &s.item_col {
        Some(col) => (
            find(col).ok_or_else(|| missing(col, "--item-col"))?,
            col.clone(),
        ),
        None => match (find("product_id"), find("item_id")) {
            (Some(i), _) => (i, "product_id".into()),
            (None, Some(i)) => (i, "item_id".into()),
            (None, None) => return Err(missing("product_id", "--item-col")),
        },
    };
    let value_col = input.value_col();
    let value = find(value_col).ok_or_else(|| missing(value_col, input.value_flag()))?;
    let time = match input.read_time {
        true => Some((
            find(&s.time_col).ok_or_else(|| missing(&s.time_col, "--time-col"))?,
            s.time_col.clone(),
        )),
        false => None,
    };
    // `find` takes the first of equal names: a second one would be ignored without a word.
    let time_name = time.as_ref().map(|t| t.1.as_str());
    for name in [s.user_col.as_str(), item.1.as_str(), value_col]
        .into_iter()
        .chain(time_name)
    {
        let copies = names.iter().filter(|n| *n == name).count();
        if copies > 1 {
            return Err(Error::usage(format!(
                "{shown}: column {name:?} appears {copies} times; rename the copies so each column name is unique"
            )));
        }
    }
    Ok(Columns {
        user: (user, s.user_col.clone()),
        item,
        value: (value, value_col.to_string()),
        time,
        csv_fields,
        delimiter: b',',
    })
}

/// One piece of a rank's work that is fetched and decoded on its own.
#[derive(Clone, Debug)]
enum Unit {
    RowGroup { file: usize, row_group: usize },
    Csv { file: usize, range: Range<u64> },
}

impl Unit {
    fn file(&self) -> usize {
        match self {
            Unit::RowGroup { file, .. } | Unit::Csv { file, .. } => *file,
        }
    }
}

/// Rows per batch handed to feature engineering.
const BATCH_ROWS: usize = 64 * 1024;
/// Units fetched ahead of the one being turned into ratings: overlaps storage latency (ranged
/// GETs to S3) with decoding, while bounding memory to a few row groups.
const READ_AHEAD: usize = 4;

/// A file's decoded footer, ready for the Parquet reader.
struct ParquetFile {
    metadata: Arc<ParquetMetaData>,
    arrow: ArrowReaderMetadata,
}

/// Read this rank's tasks into `sink`, in plan order (so the result never depends on timing).
pub fn read_slice(
    loc: &Location,
    dataset: &Dataset,
    tasks: &[Task],
    rule: ValueRule,
    sink: &mut LocalRatings,
) -> Result<()> {
    let mut units = Vec::new();
    let mut parquet: BTreeMap<usize, ParquetFile> = BTreeMap::new();
    for task in tasks {
        match task {
            Task::RowGroups { file, row_groups } => {
                if !parquet.contains_key(file) {
                    parquet.insert(*file, decode_footer(loc, dataset, *file)?);
                }
                units.extend(row_groups.iter().map(|&g| Unit::RowGroup {
                    file: *file,
                    row_group: g,
                }));
            }
            Task::CsvRange { file, start, end } => units.push(Unit::Csv {
                file: *file,
                range: *start..*end,
            }),
        }
    }
    crate::store::block_on(async {
        let mut loaded = futures::stream::iter(units)
            .map(|unit| load_unit(loc, dataset, &parquet, unit))
            .buffered(READ_AHEAD);
        while let Some(unit) = loaded.next().await {
            let (file, batches) = unit?;
            let source = &dataset.files[file];
            let shown = loc.display_key(&source.file.key);
            let c = &source.columns;
            let names = ColumnNames {
                file: &shown,
                user: &c.user.1,
                item: &c.item.1,
                value: &c.value.1,
            };
            let time_col = c.time.as_ref().map_or("", |t| t.1.as_str());
            for batch in batches {
                if let Some(time) = batch.columns().get(3) {
                    sink.set_times(time.as_ref(), &shown, time_col)?;
                }
                let (u, i, v) = (batch.column(0), batch.column(1), batch.column(2));
                sink.add_batch(u.as_ref(), i.as_ref(), v.as_ref(), &rule, &names)?;
            }
        }
        Ok(())
    })
}

fn decode_footer(loc: &Location, dataset: &Dataset, file: usize) -> Result<ParquetFile> {
    let shown = loc.display_key(&dataset.files[file].file.key);
    let bad = |e: parquet::errors::ParquetError| {
        Error::usage(format!("{shown}: cannot read Parquet data ({e})"))
    };
    let metadata =
        Arc::new(ParquetMetaDataReader::decode_metadata(&dataset.footers[file]).map_err(bad)?);
    let arrow = ArrowReaderMetadata::try_new(Arc::clone(&metadata), ArrowReaderOptions::new())
        .map_err(bad)?;
    Ok(ParquetFile { metadata, arrow })
}

/// Fetch and decode one unit: batches of exactly [user, item, value] columns.
async fn load_unit(
    loc: &Location,
    dataset: &Dataset,
    parquet: &BTreeMap<usize, ParquetFile>,
    unit: Unit,
) -> Result<(usize, Vec<RecordBatch>)> {
    let file = unit.file();
    let source = &dataset.files[file];
    let shown = loc.display_key(&source.file.key);
    let c = &source.columns;
    let batches = match unit {
        Unit::RowGroup { row_group, .. } => {
            let Some(pf) = parquet.get(&file) else {
                return Err(Error::runtime(format!(
                    "{shown}: footer missing from the plan"
                )));
            };
            let mask =
                ProjectionMask::roots(pf.metadata.file_metadata().schema_descr(), c.positions());
            let reader = StoreFileReader {
                loc: loc.clone(),
                key: source.file.key.clone(),
                metadata: Arc::clone(&pf.metadata),
            };
            let mut stream =
                ParquetRecordBatchStreamBuilder::new_with_metadata(reader, pf.arrow.clone())
                    .with_row_groups(vec![row_group])
                    .with_projection(mask)
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(|e| read_error(&shown, e))?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(|e| read_error(&shown, e))?;
                // The projection keeps the file's column order; put them in ours.
                let index = |name: &str| {
                    batch.schema().index_of(name).map_err(|_| {
                        Error::usage(format!("{shown}: column {name:?} vanished while reading"))
                    })
                };
                let mut order = vec![index(&c.user.1)?, index(&c.item.1)?, index(&c.value.1)?];
                if let Some((_, time)) = &c.time {
                    order.push(index(time)?);
                }
                batches.push(
                    batch
                        .project(&order)
                        .map_err(|e| Error::runtime(format!("{shown}: {e}")))?,
                );
            }
            batches
        }
        Unit::Csv { range, .. } => {
            let SourceShape::Csv { data_start, size } = source.shape else {
                return Err(Error::runtime(format!(
                    "{shown}: planned as CSV but described otherwise"
                )));
            };
            let text = fetch_lines(loc, &source.file.key, data_start, size, range).await?;
            parse_csv(text, c.csv_fields, c.positions(), c.delimiter, &shown)?
        }
    };
    Ok((file, batches))
}

impl Columns {
    /// The positions read, in the order of the batches: user, item, value (and time).
    fn positions(&self) -> Vec<usize> {
        let mut p = vec![self.user.0, self.item.0, self.value.0];
        p.extend(self.time.as_ref().map(|t| t.0));
        p
    }
}

/// CSV lines (no header) into batches of the projected columns, as text.
fn parse_csv(
    text: Bytes,
    fields: usize,
    columns: Vec<usize>,
    delimiter: u8,
    shown: &str,
) -> Result<Vec<RecordBatch>> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let schema = Arc::new(Schema::new(
        (0..fields)
            .map(|i| Field::new(format!("c{i}"), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    // The projection yields the columns in the order asked: user, item, value.
    arrow::csv::ReaderBuilder::new(schema)
        .with_header(false)
        .with_delimiter(delimiter)
        .with_batch_size(BATCH_ROWS)
        .with_projection(columns)
        .build(std::io::Cursor::new(text))
        .map_err(|e| Error::usage(format!("{shown}: {e}")))?
        .map(|b| b.map_err(|e| Error::usage(format!("{shown}: bad CSV ({e})"))))
        .collect()
}

/// A storage error stays a runtime error (exit 1); a decoding error is bad input (exit 2).
fn read_error(shown: &str, e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => match inner.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(other) => Error::runtime(format!("{shown}: {other}")),
        },
        e => Error::usage(format!("{shown}: cannot read Parquet data ({e})")),
    }
}

/// Serves the Parquet reader's byte-range requests from our storage layer (which counts them),
/// with the footer already decoded from the plan, so ranks never re-read it.
struct StoreFileReader {
    loc: Location,
    key: String,
    metadata: Arc<ParquetMetaData>,
}

impl AsyncFileReader for StoreFileReader {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            self.loc
                .get_range(&self.key, range)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            self.loc
                .get_ranges(&self.key, &ranges)
                .await
                .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        let metadata = Arc::clone(&self.metadata);
        async move { Ok(metadata) }.boxed()
    }
}

/// How far past the end of its range a rank reads at a time to finish its last line.
const LINE_TAIL: u64 = 64 * 1024;

/// The whole lines that start inside `range` (a line starts at `data_start` or after a `\n`).
async fn fetch_lines(
    loc: &Location,
    key: &str,
    data_start: u64,
    size: u64,
    range: Range<u64>,
) -> Result<Bytes> {
    // Start one byte early to see whether `range.start` begins a line.
    let from = if range.start <= data_start {
        data_start
    } else {
        range.start - 1
    };
    let mut buf = loc
        .get_range(key, from..range.end.min(size))
        .await?
        .to_vec();
    let skip = if range.start <= data_start {
        0
    } else {
        match buf.iter().position(|&b| b == b'\n') {
            Some(nl) => nl + 1,
            None => buf.len(), // no line starts in this range
        }
    };
    // A line that starts before `range.end` is ours to finish.
    let mut end = range.end.min(size);
    if skip < buf.len() {
        while end < size && buf.last() != Some(&b'\n') {
            let more = loc.get_range(key, end..(end + LINE_TAIL).min(size)).await?;
            match more.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    buf.extend_from_slice(&more[..=nl]);
                    break;
                }
                None => {
                    buf.extend_from_slice(&more);
                    end += more.len() as u64;
                }
            }
        }
    }
    let mut lines = buf.split_off(skip);
    // Blank trailing lines would read as ragged rows.
    while lines.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        lines.pop();
    }
    Ok(Bytes::from(lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_trimmed_and_unquoted() {
        assert_eq!(
            split_header("\u{feff}userId,\"movieId\", rating,timestamp\r", b','),
            vec!["userId", "movieId", "rating", "timestamp"]
        );
        assert_eq!(split_header("a\tb", b'\t'), vec!["a", "b"]);
    }

    #[test]
    fn csv_ranges_split_at_line_starts() {
        let dir = std::env::temp_dir().join(format!("funksvd-lines-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.csv");
        let text = "h\naa\nbbb\nc\ndddd\n";
        std::fs::write(&path, text).unwrap();
        let loc = Location::parse(path.to_str().unwrap(), "--data").unwrap();
        let key = loc.blocking().list_files().unwrap()[0].key.clone();
        let size = text.len() as u64;
        for cuts in [
            vec![2, 17],
            vec![2, 5, 17],
            vec![2, 3, 4, 9, 10, 11, 17],
            vec![2, 6, 7, 8, 17],
        ] {
            let mut all = String::new();
            for w in cuts.windows(2) {
                let got =
                    crate::store::block_on(fetch_lines(&loc, &key, 2, size, w[0]..w[1])).unwrap();
                let got = String::from_utf8(got.to_vec()).unwrap();
                if !got.is_empty() {
                    all.push_str(&got);
                    all.push('\n');
                }
            }
            assert_eq!(all, "aa\nbbb\nc\ndddd\n", "cuts {cuts:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
