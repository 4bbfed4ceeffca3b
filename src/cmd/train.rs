//! `funksvd train`: plan, read, features, exchange, train, save (SPEC "What it is").

use std::collections::BTreeMap;
use std::time::Instant;

use crate::cli::TrainArgs;
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exchange;
use crate::features::ValueRule;
use crate::funksvd::checkpoint;
use crate::funksvd::data::{
    holdout_mask, index, sorted_item_index, train_counts, train_item_ids, ItemBlocks, RankRatings,
};
use crate::funksvd::train::{blocks_per_rank, holdout_errors, train, train_errors, USER_RUN};
use crate::funksvd::{Globals, Params, TrainState};
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::model_io::{self, InputSettings, Metrics, ModelMeta, Phases, Training};
use crate::pipeline;
use crate::store::Location;
use crate::wire::{Reader, Writer};

pub fn run(comm: &Comm, args: &TrainArgs) -> Result<()> {
    let job_started = Instant::now();
    let hyper = comm.agree(args.hyper())?;
    let spec = comm.agree(args.input.spec())?;
    let data_loc = comm.agree(Location::parse(&args.data, "--data"))?;
    let model_loc = comm.agree(Location::parse(&args.model, "--model"))?;

    if let (Some(n), true) = (args.syncs_per_epoch, comm.is_root()) {
        log::warn!(
            "--syncs-per-epoch {n} is ignored: ranks hand item blocks to each other at each step, which needs no tuning"
        );
    }
    let (owned, report) = pipeline::load_ratings(comm, &data_loc, &spec, args.input.aggregate)?;

    // Hold-out split and the global item vocabulary (items with training ratings).
    let started = Instant::now();
    let held = holdout_mask(&owned, hyper.seed, args.holdout);
    let sorted_items = exchange::agree_on_ids(comm, &train_item_ids(&owned, &held))?;
    let by_sorted = sorted_item_index(&owned, &sorted_items);
    let mut counts = train_counts(&owned, &held, &by_sorted, sorted_items.len());
    comm.allreduce_sum_u64(&mut counts);
    // Item rows numbered block by block, a group of blocks per rank (see funksvd::train).
    let blocks = ItemBlocks::plan(&counts, comm.size(), blocks_per_rank(comm.size()));
    drop(counts);
    let item_ids: Vec<Id> = blocks
        .order
        .iter()
        .map(|&i| sorted_items[i as usize].clone())
        .collect();
    let mut data = index(owned, &held, &blocks.rows_of(&by_sorted));
    data.split_blocks(&blocks.starts, USER_RUN, blocks.per_rank);
    drop(by_sorted);
    let (globals, n_users, n_ratings, n_holdout) = agree_globals(comm, &data, &report)?;
    let exchange_seconds = report.exchange_seconds + started.elapsed().as_secs_f64();
    log::debug!(
        "rank {}: hold-out split, vocabulary and layout in {:.3}s; peak memory {:.0} MB",
        comm.rank(),
        started.elapsed().as_secs_f64(),
        crate::memory::peak_rss_mb().unwrap_or(0.0)
    );
    if comm.is_root() {
        log::info!(
            "ratings: {n_ratings} for training, {n_holdout} held out; {n_users} users, {} items; mean {:.4}, range {}..{}",
            item_ids.len(),
            globals.global_mean,
            globals.rating_range.0,
            globals.rating_range.1
        );
    }

    let started = Instant::now();
    let fingerprint = run_fingerprint(&report, args);
    let start = if args.resume {
        Some(checkpoint::load_latest(
            comm,
            &model_loc,
            &hyper,
            &fingerprint,
            &data.user_ids,
            &item_ids,
        )?)
    } else {
        None
    };
    if let Some(state) = &start {
        comm.agree(check_resumed_items(state, item_ids.len(), hyper.factors))?;
    }
    // A step waits for the busiest rank: say how even the users' spread left the work.
    let mut busiest = [data.n_ratings() as u64];
    comm.allreduce_max_u64(&mut busiest);
    if comm.is_root() && comm.size() > 1 {
        log::info!(
            "training: at most {} ratings per rank ({:+.2}% over an even share), {} item blocks",
            busiest[0],
            (busiest[0] as f64 * comm.size() as f64 / n_ratings.max(1) as f64 - 1.0) * 100.0,
            blocks.len(),
        );
    } else if comm.is_root() {
        log::info!("training: {} item blocks on one rank", blocks.len());
    }
    let epochs = hyper.epochs;
    let trained = train(
        comm,
        &data,
        &item_ids,
        &blocks,
        &hyper,
        globals,
        start,
        |state| {
            if let Some(s) = state.history.last().filter(|_| comm.is_root()) {
                let hold = s
                    .holdout_rmse
                    .map(|h| format!("{h:.4}"))
                    .unwrap_or_else(|| "-".into());
                log::info!(
                "epoch {}/{epochs}: train RMSE {:.4}, hold-out RMSE {hold}, {:.3}s (sync {:.3}s), {:.2}M ratings/s",
                s.epoch,
                s.train_rmse,
                s.seconds,
                s.sync_seconds,
                s.ratings_per_second / 1e6
            );
            }
            match args.checkpoint_every {
                Some(every) if state.epoch % every == 0 => checkpoint::save(
                    comm,
                    &model_loc,
                    state,
                    &hyper,
                    &fingerprint,
                    &data.user_ids,
                    &item_ids,
                ),
                _ => Ok(()),
            }
        },
    );
    // Divergence is seen by every rank at once (the sums are allreduced).
    let (
        TrainState {
            params, history, ..
        },
        item_rows,
    ) = comm.agree(trained)?;
    let train_seconds = started.elapsed().as_secs_f64();

    let mut errors = [0.0f64; 6];
    errors[..3].copy_from_slice(&train_errors(&data, &params, &hyper, globals).to_array());
    errors[3..].copy_from_slice(&holdout_errors(&data, &params, &hyper, globals).to_array());
    comm.allreduce_sum_f64(&mut errors);
    let (train, hold) = (
        ErrorSums::from_slice(&errors[..3]),
        ErrorSums::from_slice(&errors[3..]),
    );
    let metrics = Metrics {
        train_rmse: train.rmse().unwrap_or(f64::NAN),
        train_mae: train.mae().unwrap_or(f64::NAN),
        holdout_rmse: hold.rmse(),
        holdout_mae: hold.mae(),
        n_holdout: hold.n as u64,
        history,
    };

    // Rank 0 gathers every rank's users and publishes the model.
    let started = Instant::now();
    log::debug!(
        "rank {}: trained; peak memory {:.0} MB",
        comm.rank(),
        crate::memory::peak_rss_mb().unwrap_or(0.0)
    );
    // The ratings are done with: give their memory back before the model is assembled.
    let data = RankRatings {
        user_ids: data.user_ids,
        ..Default::default()
    };
    let users = gather_users(comm, &data, &params)?;
    let mut phases = [
        report.plan_seconds,
        report.read_seconds,
        report.features_seconds,
        exchange_seconds,
        train_seconds,
    ];
    comm.allreduce_max_f64(&mut phases);
    let saved = match users {
        Some((user_ids, user_rows)) => {
            let meta = ModelMeta {
                format: model_io::FORMAT.into(),
                version: model_io::VERSION,
                factors: hyper.factors,
                biased: hyper.biased,
                global_mean: globals.global_mean,
                rating_min: globals.rating_range.0,
                rating_max: globals.rating_range.1,
                n_users: user_ids.len() as u64,
                n_items: item_ids.len() as u64,
                n_ratings,
                hyperparameters: hyper.clone(),
                event_weights: match &spec.rule {
                    ValueRule::Events(w) => Some(w.0.iter().cloned().collect::<BTreeMap<_, _>>()),
                    ValueRule::Rating => None,
                },
                input: InputSettings {
                    data: args.data.clone(),
                    format: args.input.format,
                    user_col: args.input.user_col.clone(),
                    item_col: args.input.item_col.clone(),
                    event_col: args.input.event_col.clone(),
                    rating_col: args.input.rating_col.clone(),
                    time_col: args.input.time_col.clone(),
                    aggregate: args.input.aggregate,
                    holdout: args.holdout,
                },
                training: Training {
                    ranks: comm.size(),
                    epochs: hyper.epochs,
                    seconds: 0.0,
                    seconds_per_epoch: metrics.history.iter().map(|h| h.seconds).sum::<f64>()
                        / hyper.epochs as f64,
                    item_rows: item_rows.name().into(),
                    syncs_per_epoch: item_rows.syncs_per_epoch(comm.size()),
                    floats_per_sync: item_rows.floats_per_sync(&blocks, hyper.factors),
                    rows_read: report.rows_read,
                    rows_skipped: report.skipped.total(),
                    phases: Phases {
                        plan: phases[0],
                        read: phases[1],
                        features: phases[2],
                        exchange: phases[3],
                        train: phases[4],
                        save: 0.0,
                        read_per_rank: report.read_per_rank.clone(),
                    },
                },
                metrics,
                // Set by `publish` to the version it writes.
                files: BTreeMap::new(),
                created_by: format!("funksvd {}", env!("CARGO_PKG_VERSION")),
            };
            // The model file lists items by id, as users look them up.
            let mut item_rows = Vec::with_capacity(blocks.row_of.len() * (hyper.factors + 1));
            for &row in &blocks.row_of {
                item_rows.extend_from_slice(params.item(row as usize));
            }
            publish(
                &model_loc,
                meta,
                (&user_ids, &user_rows),
                (&sorted_items, &item_rows),
                started,
                job_started,
            )
        }
        None => Ok(()),
    };
    comm.agree(saved)?;
    log::debug!(
        "rank {}: saved; peak memory {:.0} MB",
        comm.rank(),
        crate::memory::peak_rss_mb().unwrap_or(0.0)
    );
    Ok(())
}

/// Job-wide mean and range of the training ratings, and the counts; refuses an empty job.
fn agree_globals(
    comm: &Comm,
    data: &RankRatings,
    report: &pipeline::IngestReport,
) -> Result<(Globals, u64, u64, u64)> {
    let mut sums = [
        data.values.iter().map(|&v| v as f64).sum::<f64>(),
        data.n_ratings() as f64,
        data.holdout.len() as f64,
        data.n_users() as f64,
    ];
    comm.allreduce_sum_f64(&mut sums);
    let mut lo = [data
        .values
        .iter()
        .fold(f64::INFINITY, |a, &v| a.min(v as f64))];
    let mut hi = [data
        .values
        .iter()
        .fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64))];
    comm.allreduce_min_f64(&mut lo);
    comm.allreduce_max_f64(&mut hi);
    if sums[1] == 0.0 {
        let why = match report.skipped.describe() {
            Some(skips) => format!("{} rows read, {skips}", report.rows_read),
            None if report.rows_read == 0 => "the dataset has no rows".to_string(),
            None => format!(
                "{} rows read, all held out (lower --holdout)",
                report.rows_read
            ),
        };
        return comm.agree(Err(Error::usage(format!("nothing to train on: {why}"))));
    }
    let globals = Globals {
        global_mean: (sums[0] / sums[1]) as f32,
        rating_range: (lo[0] as f32, hi[0] as f32),
    };
    Ok((globals, sums[3] as u64, sums[1] as u64, sums[2] as u64))
}

/// Every rank's users and rows on rank 0, sorted by id; `None` elsewhere.
fn gather_users(
    comm: &Comm,
    data: &RankRatings,
    params: &Params,
) -> Result<Option<(Vec<Id>, Vec<f32>)>> {
    let mut w = Writer::new();
    w.u64(data.n_users() as u64);
    for id in &data.user_ids {
        id.write(&mut w);
    }
    w.f32s(&params.users_packed());
    let Some((all, lens)) = comm.gather_flat(0, &w.finish())? else {
        return Ok(None);
    };
    // (id, part, row in part), sorted by id; the rows stay in the received bytes until copied
    // once into their sorted place.
    let stride = params.factors + 1;
    let mut ids: Vec<(Id, u32, u32)> = Vec::new();
    let mut rows_of_part: Vec<&[u8]> = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for (part, &len) in lens.iter().enumerate() {
        let mut r = Reader::new(&all[at..at + len as usize]);
        at += len as usize;
        let n = r.u64()?;
        for row in 0..n {
            ids.push((Id::read(&mut r)?, part as u32, row as u32));
        }
        let rows = r.f32_bytes()?;
        if rows.len() != n as usize * stride * 4 {
            return Err(Error::runtime("corrupt user rows gathered from a rank"));
        }
        rows_of_part.push(rows);
    }
    ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut sorted_rows = Vec::with_capacity(ids.len() * stride);
    for &(_, part, row) in &ids {
        let bytes = &rows_of_part[part as usize][row as usize * stride * 4..][..stride * 4];
        sorted_rows.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    drop(rows_of_part);
    drop(all);
    Ok(Some((
        ids.into_iter().map(|(id, ..)| id).collect(),
        sorted_rows,
    )))
}

/// Write the model: `(ids, rows)` of users and items, rows packed and in id order.
fn publish(
    loc: &Location,
    mut meta: ModelMeta,
    users: (&[Id], &[f32]),
    items: (&[Id], &[f32]),
    save_started: Instant,
    job_started: Instant,
) -> Result<()> {
    let tables = model_io::encode_tables(meta.factors, users.0, users.1, items.0, items.1)?;
    model_io::publish(loc, &mut meta, tables, |meta| {
        meta.training.phases.save = save_started.elapsed().as_secs_f64();
        meta.training.seconds = job_started.elapsed().as_secs_f64();
    })?;
    log::info!(
        "model saved to {} ({} users, {} items, hold-out RMSE {}) in {:.2}s total",
        loc.url(),
        meta.n_users,
        meta.n_items,
        meta.metrics
            .holdout_rmse
            .map(|v| format!("{v:.4}"))
            .unwrap_or_else(|| "-".into()),
        job_started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a checkpoint must match: the dataset (files and sizes) and every flag that changes how
/// it is read.
fn run_fingerprint(report: &pipeline::IngestReport, args: &TrainArgs) -> String {
    let input = &args.input;
    let text = format!(
        "{}|{}|{:?}|{}|{:?}|{}|{:?}|{:?}|{:?}|{}",
        report.dataset_fingerprint,
        input.user_col,
        input.item_col,
        input.event_col,
        input.rating_col,
        input.event_weights,
        input.aggregate,
        input.format,
        args.data,
        args.holdout
    );
    format!("{:016x}", crate::ids::hash_str(&text))
}

fn check_resumed_items(state: &TrainState, n_items: usize, factors: usize) -> Result<()> {
    if state.params.n_items() != n_items || state.params.factors != factors {
        return Err(Error::usage(format!(
            "--resume: the checkpoint has {} items, this data has {n_items} (other data?)",
            state.params.n_items()
        )));
    }
    Ok(())
}
