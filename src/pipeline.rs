//! The steps `train` and `evaluate` share: plan, read + features, exchange. Each step ends with
//! the ranks agreeing that it succeeded everywhere before anyone enters the next collective.

use std::time::Instant;

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::Result;
use crate::exchange;
use crate::features::{LocalRatings, SkipCounts};
use crate::ingest::{self, Dataset};
use crate::input::{Input, ValueRule};
use crate::ratings::OwnedRatings;
use crate::store::{Location, Reads};

/// What reading the dataset cost, for logs and `model.json`.
#[derive(Clone, Debug, Default)]
pub struct IngestReport {
    pub plan_seconds: f64,
    pub read_seconds: f64,
    pub features_seconds: f64,
    pub exchange_seconds: f64,
    pub rows_read: u64,
    pub skipped: SkipCounts,
    /// Per rank (index = rank); filled on every rank.
    pub read_per_rank: Vec<Reads>,
    pub files: usize,
    pub bytes: u64,
    /// A hash of the dataset's files and sizes (what a checkpoint must match).
    pub dataset_fingerprint: String,
    /// The item column the files have (`--item-col`, or the one found without it).
    pub item_col: Option<String>,
}

/// Rank 0 plans and everyone gets the plan.
pub fn plan(comm: &dyn Collective, loc: &Location, input: &Input) -> Result<Dataset> {
    let planned = if comm.is_root() {
        ingest::discover(loc, input, comm.size()).and_then(|d| d.to_bytes())
    } else {
        Ok(Vec::new())
    };
    let bytes = comm.agree(planned)?;
    let bytes = comm.broadcast_bytes(0, bytes)?;
    let dataset = Dataset::from_bytes(&bytes);
    comm.agree(dataset)
}

/// Plan, read this rank's slice, extract ratings, and route them to their owners.
pub fn load_ratings(
    comm: &dyn Collective,
    loc: &Location,
    input: &Input,
) -> Result<(OwnedRatings, IngestReport)> {
    let mut report = IngestReport::default();
    let started = Instant::now();
    let dataset = plan(comm, loc, input)?;
    report.plan_seconds = started.elapsed().as_secs_f64();
    report.files = dataset.file_count();
    report.dataset_fingerprint = dataset.fingerprint();
    report.bytes = dataset.total_bytes();
    report.item_col = dataset.item_col().map(str::to_string);
    if comm.is_root() {
        log::info!(
            "plan: {} files, {} row groups, {:.1} MB over {} ranks ({:.2}s)",
            dataset.file_count(),
            dataset.row_groups(),
            dataset.total_bytes() as f64 / 1e6,
            comm.size(),
            report.plan_seconds
        );
    }
    let local = read(comm, loc, input, &dataset, &mut report)?;
    let started = Instant::now();
    let owned = comm.agree(exchange::route(
        comm,
        local,
        input.settings.aggregate,
        input.user_cost,
    ))?;
    report.exchange_seconds = started.elapsed().as_secs_f64();
    let what = format!("{} ratings after the exchange", owned.triples.len());
    crate::memory::log(comm.rank(), &what);
    Ok((owned, report))
}

/// Read this rank's slice of `dataset` into ratings, and add the job's totals (rows, skips,
/// bytes and requests of every rank) to `report`.
fn read(
    comm: &dyn Collective,
    loc: &Location,
    input: &Input,
    dataset: &Dataset,
    report: &mut IngestReport,
) -> Result<LocalRatings> {
    let started = Instant::now();
    let before = Reads::so_far();
    let mut local = LocalRatings::new();
    // Room for every row up front: growing by doubling would leave up to half of the largest
    // buffer of the run unused.
    local
        .triples
        .reserve_exact(dataset.parquet_rows_of(comm.rank()) as usize);
    let read = ingest::read_slice(
        loc,
        dataset,
        &dataset.slices[comm.rank()],
        input.rule(),
        &mut local,
    );
    comm.agree(read)?;
    let mine = Reads::so_far().since(before);
    report.features_seconds = local.feature_seconds;
    report.read_seconds = started.elapsed().as_secs_f64() - local.feature_seconds;
    let what = format!(
        "read {} rows, {} bytes in {} requests",
        local.rows_read, mine.bytes, mine.requests
    );
    crate::memory::log(comm.rank(), &what);
    let mut counts = [local.rows_read];
    comm.reduce_u64(&mut counts, Op::Sum);
    report.rows_read = counts[0];
    for bytes in comm.allgather_bytes(&local.skipped.to_bytes())? {
        report.skipped.merge(&SkipCounts::from_bytes(&bytes)?);
    }
    let mut stats = vec![0u64; 2 * comm.size()];
    stats[2 * comm.rank()] = mine.bytes;
    stats[2 * comm.rank() + 1] = mine.requests;
    comm.reduce_u64(&mut stats, Op::Sum);
    report.read_per_rank = stats
        .chunks_exact(2)
        .map(|c| Reads {
            bytes: c[0],
            requests: c[1],
        })
        .collect();
    if comm.is_root() {
        let seconds = report.read_seconds + report.features_seconds;
        log::info!(
            "read: {} rows in {seconds:.2}s ({:.1}M rows/s per rank)",
            report.rows_read,
            report.rows_read as f64 / comm.size() as f64 / seconds.max(1e-9) / 1e6
        );
        log_skipped(&report.skipped, input);
    }
    Ok(local)
}

/// The rows skipped, with what to do about them: a warning, unless only removal events
/// (`remove_from_cart`, no interest signal) were skipped.
fn log_skipped(skipped: &SkipCounts, input: &Input) {
    let Some(line) = skipped.describe() else {
        return;
    };
    let advice = match input.rule() {
        ValueRule::Events(weights) => weights.advice(&skipped.unknown_events),
        ValueRule::Rating => None,
    };
    let only_events = skipped.total() == skipped.unknown_events.values().sum::<u64>();
    match advice {
        Some((advice, false)) if only_events => log::info!("{line}; {advice}"),
        Some((advice, _)) => log::warn!("{line}; {advice}"),
        None => log::warn!("{line}"),
    }
}
