//! `funksvd recommend`: the top N items of every user (or of the users asked for), or the most
//! similar items of every item, distributed: each rank loads an equal, contiguous share of the
//! model's id-sorted users (and every item), answers for the ids of its share's range
//! (`Ranges`), scores them against every item in blocks (one GEMM per block of users and tile
//! of items, see `mf::topn`), and writes its part; rank 0 writes the manifest last.

use std::borrow::Cow;
use std::time::Instant;

use crate::cli::RecommendArgs;
use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::id_list;
use crate::ids::Id;
use crate::mf::tables::all_ints;
use crate::mf::{Model, Scored};
use crate::model_io;
use crate::output;
use crate::pipeline;
use crate::progress::Bar;
use crate::recommend::{
    item_index, popular_for, popularity_order, route_seen, route_targets, share, ListColumns,
    ListWriter, Ranges, Seen, Source, UNKNOWN,
};
use crate::store::{block_on, Location};

/// Users (or items) whose lists are built and written at a time: bounds the memory of the
/// lists, whatever the share.
const CHUNK: usize = 4096;

/// What a run produced, for the log and the manifest (summed over the ranks).
#[derive(Default)]
struct Produced {
    /// Lists from the model's rows, from rows folded in, from popularity; rows written.
    counts: [u64; 4],
    /// Each rank's part: rows and bytes.
    parts: Vec<(u64, u64)>,
    /// Seconds (the slowest rank's) to find the users and their seen items, and to score them
    /// and write the lists.
    phases: [f64; 2],
}

pub fn run(comm: &dyn Collective, args: &RecommendArgs) -> Result<()> {
    let started = Instant::now();
    comm.agree(args.check())?;
    let model_loc = comm.agree(Location::parse(&args.model, "--model"))?;
    let out =
        comm.agree(Location::parse(&args.out, "--out").and_then(|o| {
            match o.holds(&model_loc) || model_loc.holds(&o) {
                true => Err(Error::usage(format!(
                    "--out {}: the model's folder, or inside it or around it; give another folder",
                    args.out
                ))),
                false => Ok(o),
            }
        }))?;
    // Before the work: a folder that cannot take the output fails now.
    comm.agree(match comm.is_root() {
        true => output::clear(&out, "--out"),
        false => Ok(()),
    })?;
    let model = comm.agree(block_on(model_io::load_meta(&model_loc)).and_then(|meta| {
        let users = match args.similar_items {
            true => 0..0,
            false => share(meta.n_users as usize, comm.size(), comm.rank()),
        };
        model_io::load_share(&model_loc, meta, users.start as u64..users.end as u64)
    }))?;
    let loaded = started.elapsed().as_secs_f64();
    let top = clamp_top(comm, args.top, &model);
    let produced = match args.similar_items {
        true => similar_items(comm, &model, &out, top)?,
        false => user_lists(comm, args, &model, &out, top)?,
    };
    if comm.is_root() {
        let timing = [loaded, started.elapsed().as_secs_f64()];
        conclude(args, &model, &out, &produced, top, comm.size(), timing)?;
    }
    Ok(())
}

/// Rank 0, once every part is written: the log line, then the manifest (last).
fn conclude(
    args: &RecommendArgs,
    model: &Model,
    out: &Location,
    produced: &Produced,
    top: usize,
    ranks: usize,
    timing: [f64; 2],
) -> Result<()> {
    let [loaded, seconds] = timing;
    let [from_model, folded, popular, rows] = produced.counts;
    let lists = from_model + folded + popular;
    let what = if args.similar_items { "items" } else { "users" };
    let scoring = produced.phases[1].max(1e-9);
    log::info!(
        "recommend: {lists} {what} ({from_model} scored by the model, {folded} folded in from their interactions in --data, {popular} given popular items), top {top}: {rows} rows in {seconds:.2}s; scoring and writing {scoring:.2}s ({:.0} {what}/s, {:.3e} scores/s)",
        lists as f64 / scoring,
        (from_model + folded) as f64 * model.item_ids.len() as f64 / scoring
    );
    let manifest = serde_json::json!({
        "format": "funksvd-recommendations",
        "kind": if args.similar_items { "similar-items" } else { "users" },
        "model": args.model,
        "model_tables": model.meta.files,
        "data": args.data,
        "users": args.users,
        "top": top,
        "seen_items_excluded": args.data.is_some() && !args.include_seen,
        "lists": lists,
        "lists_from_model": from_model,
        "lists_folded": folded,
        "lists_popular": popular,
        "rows": rows,
        "parts": produced.parts.iter().enumerate().map(|(r, (rows, bytes))| serde_json::json!({
            "name": output::part_name(r), "rows": rows, "bytes": bytes,
        })).collect::<Vec<_>>(),
        "ranks": ranks,
        "seconds": seconds,
        "phases": {
            "model": loaded,
            "read": produced.phases[0],
            "score_and_write": produced.phases[1],
        },
    });
    output::finish(out, &manifest)
}

/// `--top` above the model's items gives every item: said once, not refused.
fn clamp_top(comm: &dyn Collective, top: usize, model: &Model) -> usize {
    let items = model.item_ids.len();
    if top > items && comm.is_root() {
        log::warn!(
            "--top {top}: the model knows {items} items; each list has at most {items} (fewer once the seen items are left out)"
        );
    }
    top.min(items)
}

/// Every user's (or `--users`') list, each rank its share.
fn user_lists(
    comm: &dyn Collective,
    args: &RecommendArgs,
    model: &Model,
    out: &Location,
    top: usize,
) -> Result<Produced> {
    let started = Instant::now();
    let ranges = Ranges::agree(comm, model.user_ids.first())?;
    let targets = targets(comm, args, model, &ranges)?;
    let mine = 0..targets.len();
    let (seen, counts) = match &args.data {
        Some(data) => {
            let (seen, counts) = seen_and_counts(comm, args, model, (&ranges, &targets), data)?;
            (seen, Some(counts))
        }
        None => (vec![Seen::default(); mine.len()], None),
    };
    let unknown = targets.iter().filter(|id| model.user(id).is_none()).count();
    let mut missing = [unknown as u64];
    comm.reduce_u64(&mut missing, Op::Sum);
    // Popularity: the interactions in --data, else the training ratings the model recorded.
    let counts = comm.agree(match (counts, &model.item_counts, missing[0]) {
        (Some(c), _, _) => Ok(c),
        (None, Some(c), _) => Ok(c.clone()),
        (None, None, 0) => Ok(Vec::new()),
        (None, None, n) => Err(Error::usage(format!(
            "--users: {n} of the users are not in the model, and their popular items come from the interactions: give --data (this model was trained before models recorded their items' popularity)"
        ))),
    })?;
    let order = popularity_order(&counts);
    // The parts agree on the user column's type: int64 when every rank's ids are integers.
    let mut strings = [!all_ints(&targets) as u64];
    comm.reduce_u64(&mut strings, Op::Max);
    let int_ids = [strings[0] == 0, all_ints(&model.item_ids)];
    let columns = ListColumns {
        key: "user_id",
        value: "item_id",
        with_source: true,
    };
    let key = out.child_key(&output::part_name(comm.rank()));
    let read_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let written = (|| {
        let mut writer = ListWriter::new(out.writer(&key), columns, int_ids)?;
        let mut made = [0u64; 3];
        let bar = Bar::new(comm.rank(), mine.len() as u64, "users (rank 0's share)");
        for start in (mine.start..mine.end).step_by(CHUNK) {
            bar.set((start - mine.start) as u64, String::new);
            let chunk = start..(start + CHUNK).min(mine.end);
            let lists = chunk_lists(
                model,
                &targets[chunk.clone()],
                &seen[chunk.clone()],
                top,
                args.include_seen,
                (&order, &counts),
            );
            for (n, source) in [Source::Model, Source::Folded, Source::Popular]
                .iter()
                .enumerate()
            {
                made[n] += lists.iter().filter(|l| l.1 == *source).count() as u64;
            }
            let rows: Vec<(&Id, &[Scored], Source)> = chunk
                .clone()
                .zip(&lists)
                .map(|(p, (list, source))| (&targets[p], list.as_slice(), *source))
                .collect();
            writer.add(&rows, &model.item_ids)?;
        }
        crate::fault::point("recommend-part", comm.rank())?;
        let (rows, bytes) = writer.finish()?;
        Ok::<_, Error>(([made[0], made[1], made[2], rows], bytes))
    })();
    let phases = [read_seconds, started.elapsed().as_secs_f64()];
    produced(comm, comm.agree(written)?, phases)
}

/// The lists of one chunk of target users, in order: the model's top N for the users it
/// knows, and for those it does not but who have interactions with its items in `--data`, from
/// a row folded in from them (`Model::fold_in`), without their seen items unless
/// `include_seen`; popular items for the others.
fn chunk_lists(
    model: &Model,
    users: &[Id],
    seen: &[Seen],
    top: usize,
    include_seen: bool,
    (order, counts): (&[u32], &[u64]),
) -> Vec<(Vec<Scored>, Source)> {
    let folded: Vec<Option<Vec<f32>>> = users
        .iter()
        .zip(seen)
        .map(|(id, s)| match model.user(id) {
            Some(_) => None,
            None => model.fold_in(&s.items, &s.values),
        })
        .collect();
    // (position in the chunk, row, source) of every user with a row.
    let rows: Vec<(usize, &[f32], Source)> = users
        .iter()
        .enumerate()
        .filter_map(|(j, id)| match (model.user(id), &folded[j]) {
            (Some(u), _) => Some((j, model.user_row(u), Source::Model)),
            (None, Some(row)) => Some((j, row.as_slice(), Source::Folded)),
            (None, None) => None,
        })
        .collect();
    let exclude: Vec<&[u32]> = match include_seen {
        true => Vec::new(),
        false => rows.iter().map(|r| seen[r.0].items.as_slice()).collect(),
    };
    let row_slices: Vec<&[f32]> = rows.iter().map(|r| r.1).collect();
    let mut scored = model.top_n_rows(&row_slices, top, &exclude).into_iter();
    let mut next = rows.iter().peekable();
    (0..users.len())
        .map(|j| match next.next_if(|r| r.0 == j) {
            Some(r) => (scored.next().unwrap_or_default(), r.2),
            None => {
                let skip: &[u32] = if include_seen { &[] } else { &seen[j].items };
                (popular_for(order, counts, skip, top), Source::Popular)
            }
        })
        .collect()
}

/// This rank's users to recommend for, sorted: those of `--users`' ids in its range (rank 0
/// reads them and hands each to the rank that answers for it), or the model's users it loaded.
fn targets<'m>(
    comm: &dyn Collective,
    args: &RecommendArgs,
    model: &'m Model,
    ranges: &Ranges,
) -> Result<Cow<'m, [Id]>> {
    let Some(users) = &args.users else {
        return Ok(Cow::Borrowed(&model.user_ids));
    };
    let input = comm.agree(args.input.input(model.meta.input()))?;
    let read = match comm.is_root() {
        true => Location::parse(users, "--users").and_then(|loc| {
            let s = &input.settings;
            id_list::read_ids(&loc, &s.user_col, s.format, s.delimiter, "--users")
        }),
        false => Ok(Vec::new()),
    };
    let mine = comm.agree(read)?;
    let targets = route_targets(comm, ranges, &mine)?;
    drop(mine);
    let mut counts = [
        targets.len() as u64,
        targets.iter().filter(|id| model.user(id).is_some()).count() as u64,
    ];
    comm.reduce_u64(&mut counts, Op::Sum);
    if comm.is_root() {
        let [all, known] = counts;
        log::info!(
            "--users: {all} users, {known} known to the model, {} not (with interactions in --data they get a row folded in from them, else popular items)",
            all - known
        );
    }
    Ok(Cow::Owned(targets))
}

/// From `--data`, read as the model was trained: the items each of this rank's target users
/// already has (the model's item indices, sorted), and every item's interactions (distinct
/// users) over the whole job, for popularity.
fn seen_and_counts(
    comm: &dyn Collective,
    args: &RecommendArgs,
    model: &Model,
    targets: (&Ranges, &[Id]),
    data: &str,
) -> Result<(Vec<Seen>, Vec<u64>)> {
    let mut data_loc = comm.agree(Location::parse(data, "--data"))?;
    if let Ok(model_loc) = Location::parse(&args.model, "--model") {
        data_loc.skip_folder(&model_loc);
    }
    let mut input = comm.agree(args.input.input(model.meta.input()))?;
    // Seen items need no times.
    input.read_time = false;
    let (owned, _report) = pipeline::load_ratings(comm, &data_loc, &input)?;
    let item_index = item_index(model, &owned);
    let mut counts = vec![0u64; model.item_ids.len()];
    for t in &owned.triples {
        if let Some(&i) = item_index.get(t.item as usize).filter(|&&i| i != UNKNOWN) {
            counts[i as usize] += 1;
        }
    }
    comm.reduce_u64(&mut counts, Op::Sum);
    let seen = route_seen(comm, &owned, &item_index, targets)?;
    Ok((seen, counts))
}

/// Every item's most similar items, each rank its share of the items.
fn similar_items(
    comm: &dyn Collective,
    model: &Model,
    out: &Location,
    top: usize,
) -> Result<Produced> {
    let mine = share(model.item_ids.len(), comm.size(), comm.rank());
    let int_ids = all_ints(&model.item_ids);
    let columns = ListColumns {
        key: "item_id",
        value: "similar_item_id",
        with_source: false,
    };
    let key = out.child_key(&output::part_name(comm.rank()));
    let started = Instant::now();
    let written = (|| {
        let mut writer = ListWriter::new(out.writer(&key), columns, [int_ids, int_ids])?;
        let bar = Bar::new(comm.rank(), mine.len() as u64, "items (rank 0's share)");
        for start in (mine.start..mine.end).step_by(CHUNK) {
            bar.set((start - mine.start) as u64, String::new);
            let items: Vec<u32> = (start as u32..(start + CHUNK).min(mine.end) as u32).collect();
            let lists = model.similar_many(&items, top);
            let rows: Vec<(&Id, &[Scored], Source)> = items
                .iter()
                .zip(&lists)
                .map(|(&i, list)| (&model.item_ids[i as usize], list.as_slice(), Source::Model))
                .collect();
            writer.add(&rows, &model.item_ids)?;
        }
        let (rows, bytes) = writer.finish()?;
        Ok::<_, Error>(([mine.len() as u64, 0, 0, rows], bytes))
    })();
    let phases = [0.0, started.elapsed().as_secs_f64()];
    produced(comm, comm.agree(written)?, phases)
}

/// The job's totals from each rank's `(counts, part bytes)`.
fn produced(
    comm: &dyn Collective,
    (counts, bytes): ([u64; 4], u64),
    mut phases: [f64; 2],
) -> Result<Produced> {
    comm.reduce_f64(&mut phases, Op::Max);
    let mut totals = counts;
    comm.reduce_u64(&mut totals, Op::Sum);
    let mut parts = vec![0u64; 2 * comm.size()];
    parts[2 * comm.rank()] = counts[3];
    parts[2 * comm.rank() + 1] = bytes;
    comm.reduce_u64(&mut parts, Op::Sum);
    Ok(Produced {
        counts: totals,
        parts: parts.chunks_exact(2).map(|c| (c[0], c[1])).collect(),
        phases,
    })
}
