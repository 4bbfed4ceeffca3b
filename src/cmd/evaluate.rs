//! `funksvd evaluate`: score a saved model on a dataset, metrics as JSON on stdout (rank 0).

use crate::cli::{EvaluateArgs, Split};
use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::Result;
use crate::exchange;
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::mf::meta::ModelMeta;
use crate::mf::tables::RowsTable;
use crate::mf::{Model, Objective};
use crate::model_io;
use crate::pipeline;
use crate::ranking;
use crate::ratings::OwnedRatings;
use crate::recommend::{share, Ranges};
use crate::store::{block_on, Location};
use crate::train::data::split_mask;
use crate::wire::{Reader, Writer};

pub fn run(comm: &dyn Collective, args: &EvaluateArgs) -> Result<()> {
    let model_loc = comm.agree(Location::parse(&args.model, "--model"))?;
    let mut data_loc = comm.agree(Location::parse(&args.data, "--data"))?;
    // A model kept inside its dataset's folder is not data.
    data_loc.skip_folder(&model_loc);
    let meta = comm.agree(block_on(model_io::load_meta(&model_loc)))?;
    let input = comm.agree(args.input.input(meta.input()))?;
    let (owned, _report) = pipeline::load_ratings(comm, &data_loc, &input)?;
    let model = users_of(comm, (&model_loc, meta), &owned.users)?;
    // Which pairs the model held out (the split by time sorts each user's pairs: once).
    let held = split_mask(&owned, &model.meta.hyperparameters);

    let Scores {
        errors,
        known,
        unknown,
        user_unknown,
        item_unknown,
    } = score(&model, &owned, &held, args.split);
    let mut sums = [&errors.to_array()[..], &unknown, &known.to_array()].concat();
    comm.reduce_f64(&mut sums, Op::Sum);
    let errors = ErrorSums::from_slice(&sums[..3]);
    let known = ErrorSums::from_slice(&sums[7..]);
    // Users live on one rank each, so their counts add up; items may repeat across ranks.
    let mut unknown_users = [user_unknown.iter().filter(|&&b| b).count() as u64];
    comm.reduce_u64(&mut unknown_users, Op::Sum);
    let unknown_item_ids: Vec<Id> = owned
        .items
        .iter()
        .zip(&item_unknown)
        .filter(|(_, &u)| u)
        .map(|(id, _)| id.clone())
        .collect();
    let unknown_items = exchange::agree_on_ids(comm, &unknown_item_ids)?.len();
    crate::memory::log(comm.rank(), "evaluate: scored");
    let ranking = ranking(comm, &model, &owned, &held, (&args.k, args.rank_users))?;
    crate::memory::log(comm.rank(), "evaluate: ranked");

    if comm.is_root() {
        warn_about(args, &model.meta, errors.n, sums[5], sums[6]);
        let report = serde_json::json!({
            "model": args.model,
            "data": args.data,
            "split": args.split.name(),
            "objective": model.meta.hyperparameters.objective.name(),
            "rmse": errors.rmse(),
            "mae": errors.mae(),
            "n_scored": errors.n as u64,
            "n_unknown_users": unknown_users[0],
            "n_unknown_items": unknown_items,
            "n_pairs_unknown_user": sums[3] as u64,
            "n_pairs_unknown_item": sums[4] as u64,
            "n_fallback_predictions": sums[5] as u64,
            "rmse_known_pairs": known.rmse(),
            "n_known_pairs": known.n as u64,
            "n_skipped_unknown_for_train_split": sums[6] as u64,
            "fallback": "a pair with an unknown user or item is predicted from the global mean plus the known bias",
            "target": match model.meta.hyperparameters.objective {
                Objective::Explicit => "the value (rating or event weight)",
                Objective::Implicit => "the preference: 1 for a positive value, else 0 (predictions clipped to [0, 1])",
            },
            "ranks": comm.size(),
            "ranking": ranking,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    Ok(())
}

/// The model with every item and the rows of `users` only (this rank's, after the exchange):
/// each rank reads its share of the id-sorted users table, as `recommend` does, and sends every
/// rank the rows of its users (two alltoalls), so that no rank holds every user's row: at 100M
/// events a whole model on every rank was most of `evaluate`'s memory. Collective.
fn users_of(
    comm: &dyn Collective,
    (loc, meta): (&Location, ModelMeta),
    users: &[Id],
) -> Result<Model> {
    let rows = share(meta.n_users as usize, comm.size(), comm.rank());
    let mine = comm.agree(model_io::load_share(
        loc,
        meta,
        rows.start as u64..rows.end as u64,
    ))?;
    crate::memory::log(comm.rank(), "evaluate: the model's share read");
    let ranges = Ranges::agree(comm, mine.user_ids.first())?;
    // Ask each rank for the rows of the users in its range.
    let mut asks: Vec<Writer> = (0..comm.size()).map(|_| Writer::new()).collect();
    for id in users {
        id.write(&mut asks[ranges.owner(id)]);
    }
    let asks: Vec<Vec<u8>> = asks.into_iter().map(Writer::finish).collect();
    let asked = comm.alltoall_bytes(&asks)?;
    drop(asks);
    // Answer with the ids the model knows and their rows, one message after the other.
    let stride = mine.meta.factors + 1;
    let mut answers = Writer::new();
    let lens = comm.agree(
        asked
            .iter()
            .map(|message| {
                let (mut r, before) = (Reader::new(message), answers.buf.len());
                while !r.is_empty() {
                    let id = Id::read(&mut r)?;
                    if let Some(u) = mine.user(&id) {
                        id.write(&mut answers);
                        answers.f32s(&mine.user_rows[u * stride..(u + 1) * stride]);
                    }
                }
                Ok((answers.buf.len() - before) as u64)
            })
            .collect::<Result<Vec<u64>>>(),
    )?;
    drop(asked);
    // The share's users are in the answers now: only its items are kept.
    let (meta, item_ids, item_rows, item_counts) = mine.into_items();
    let answers = answers.finish();
    let (answered, _) = comm.alltoall_flat(&answers, &lens)?;
    drop(answers);
    let mut found = RowsTable::default();
    let mut r = Reader::new(&answered);
    while !r.is_empty() {
        found.ids.push(Id::read(&mut r)?);
        found.rows.extend(r.f32s()?);
    }
    drop(answered);
    crate::memory::log(
        comm.rank(),
        "evaluate: the rows of this rank's users received",
    );
    let mut model = Model::new(meta, found.ids, found.rows, item_ids, item_rows);
    model.item_counts = item_counts;
    Ok(model)
}

/// The ranking figures on the model's hold-out (whatever `--split`), as JSON; `null` for a
/// model that held nothing out.
fn ranking(
    comm: &dyn Collective,
    model: &Model,
    owned: &OwnedRatings,
    held: &[bool],
    ks_most: (&[usize], u64),
) -> Result<serde_json::Value> {
    if model.meta.hyperparameters.holdout == 0.0 {
        return Ok(serde_json::Value::Null);
    }
    let figures = comm.agree(ranking::rank(comm, model, owned, held, ks_most))?;
    Ok(figures.to_json())
}

/// Say so when the figures do not measure what the user likely thinks they do.
fn warn_about(args: &EvaluateArgs, meta: &ModelMeta, scored: f64, fallback: f64, skipped: f64) {
    let other_data = meta.input.data != args.data;
    match args.split {
        Split::Train | Split::Holdout if other_data => log::warn!(
            "--split {}: the model trained on {}, not on {}: the split picks pairs by the model's seed and hold-out fraction, but the model never saw this data's pairs",
            args.split.name(),
            meta.input.data,
            args.data
        ),
        Split::Holdout if meta.hyperparameters.holdout == 0.0 => log::warn!(
            "--split holdout: the model held nothing out (trained with --holdout 0); nothing to score"
        ),
        _ => {}
    }
    if skipped > 0.0 {
        log::warn!(
            "--split train: {} pairs have a user or item the model does not know, so it never trained on them: left out",
            skipped as u64
        );
    }
    if scored > 0.0 && fallback == scored {
        log::warn!(
            "every scored pair has a user or item the model does not know: the RMSE measures only the fallback (global mean plus the known bias), not the model; is --data the kind of data the model was trained on (same ids)?"
        );
    } else if fallback > 0.5 * scored {
        log::warn!(
            "{:.0}% of the scored pairs have a user or item the model does not know and get the fallback prediction; rmse_known_pairs is the model's own figure",
            100.0 * fallback / scored
        );
    }
}

/// This rank's sums over the pairs of `split`.
struct Scores {
    errors: ErrorSums,
    /// Pairs of known users and items only: what the model itself predicts.
    known: ErrorSums,
    /// Pairs with an unknown user, an unknown item, either; and those left out of the training
    /// split for it (the model cannot have trained on a pair it does not know).
    unknown: [f64; 4],
    /// By this rank's user and item numbers: whether the model does not know them.
    user_unknown: Vec<bool>,
    item_unknown: Vec<bool>,
}

/// `held[t]`: whether triple t is held out by the model's split.
///
/// An implicit model predicts preferences: it is scored against them (1 for a positive value,
/// else 0), not against the values.
fn score(model: &Model, owned: &OwnedRatings, held: &[bool], split: Split) -> Scores {
    let implicit = model.meta.hyperparameters.objective == Objective::Implicit;
    let truth = |v: f32| match (implicit, v > 0.0) {
        (false, _) => v,
        (true, true) => 1.0,
        (true, false) => 0.0,
    };
    let mut errors = ErrorSums::default();
    let mut known = ErrorSums::default();
    let mut unknown = [0.0f64; 4];
    let mut user_unknown = vec![false; owned.users.len()];
    let mut item_unknown = vec![false; owned.items.len()];
    for (n, t) in owned.triples.iter().enumerate() {
        let (uid, iid) = (&owned.users[t.user as usize], &owned.items[t.item as usize]);
        let wanted = match split {
            Split::All => true,
            Split::Train => !held[n],
            Split::Holdout => held[n],
        };
        if !wanted {
            continue;
        }
        let (u, i) = (model.user(uid), model.item(iid));
        user_unknown[t.user as usize] |= u.is_none();
        item_unknown[t.item as usize] |= i.is_none();
        if split == Split::Train && (u.is_none() || i.is_none()) {
            unknown[3] += 1.0;
            continue;
        }
        let predicted = model.predict(u, i);
        errors.add(truth(t.value), predicted);
        if u.is_some() && i.is_some() {
            known.add(truth(t.value), predicted);
        }
        unknown[0] += u.is_none() as u8 as f64;
        unknown[1] += i.is_none() as u8 as f64;
        unknown[2] += (u.is_none() || i.is_none()) as u8 as f64;
    }
    Scores {
        errors,
        known,
        unknown,
        user_unknown,
        item_unknown,
    }
}
