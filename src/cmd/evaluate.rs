//! `funksvd evaluate`: score a saved model on a dataset, metrics as JSON on stdout (rank 0).

use crate::cli::{EvaluateArgs, InputArgs, Split};
use crate::comm::Comm;
use crate::error::Result;
use crate::exchange;
use crate::funksvd::data::is_held_out;
use crate::funksvd::kernel::predict;
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::model_io::{self, Model};
use crate::pipeline;
use crate::store::Location;

pub fn run(comm: &Comm, args: &EvaluateArgs) -> Result<()> {
    let model_loc = comm.agree(Location::parse(&args.model, "--model"))?;
    let data_loc = comm.agree(Location::parse(&args.data, "--data"))?;
    // Every rank needs the item rows and its users' rows; the model is small next to the data.
    let model = comm.agree(model_io::load(&model_loc))?;
    let input = input_args(args, &model);
    let spec = comm.agree(input.spec())?;
    let (owned, _report) = pipeline::load_ratings(comm, &data_loc, &spec, input.aggregate)?;

    let hyper = &model.meta.hyperparameters;
    let holdout = model.meta.input.holdout;
    let users = model.user_index();
    let items = model.item_index();
    let stride = model.stride();
    let range = (model.meta.rating_min, model.meta.rating_max);
    let mut errors = ErrorSums::default();
    let mut unknown = [0.0f64; 3]; // pairs with an unknown user, an unknown item, either
    let mut user_unknown = vec![false; owned.users.len()];
    let mut item_unknown = vec![false; owned.items.len()];
    for t in &owned.triples {
        let (uid, iid) = (&owned.users[t.user as usize], &owned.items[t.item as usize]);
        let wanted = match args.split {
            Split::All => true,
            Split::Train => !is_held_out(uid, iid, hyper.seed, holdout),
            Split::Holdout => is_held_out(uid, iid, hyper.seed, holdout),
        };
        if !wanted {
            continue;
        }
        let u = users
            .get(uid)
            .map(|&u| &model.user_rows[u as usize * stride..(u as usize + 1) * stride]);
        let i = items
            .get(iid)
            .map(|&i| &model.item_rows[i as usize * stride..(i as usize + 1) * stride]);
        user_unknown[t.user as usize] |= u.is_none();
        item_unknown[t.item as usize] |= i.is_none();
        errors.add(
            t.value,
            predict(u, i, model.meta.global_mean, model.meta.biased, range),
        );
        unknown[0] += u.is_none() as u8 as f64;
        unknown[1] += i.is_none() as u8 as f64;
        unknown[2] += (u.is_none() || i.is_none()) as u8 as f64;
    }
    let mut sums = [errors.to_array(), unknown].concat();
    comm.allreduce_sum_f64(&mut sums);
    let errors = ErrorSums::from_slice(&sums[..3]);
    // Users live on one rank each, so their counts add up; items may repeat across ranks.
    let mut unknown_users = [user_unknown.iter().filter(|&&b| b).count() as u64];
    comm.allreduce_sum_u64(&mut unknown_users);
    let unknown_item_ids: Vec<Id> = owned
        .items
        .iter()
        .zip(&item_unknown)
        .filter(|(_, &u)| u)
        .map(|(id, _)| id.clone())
        .collect();
    let unknown_items = exchange::agree_on_ids(comm, &unknown_item_ids)?.len();

    if comm.is_root() {
        let report = serde_json::json!({
            "model": args.model,
            "data": args.data,
            "split": format!("{:?}", args.split).to_lowercase(),
            "rmse": errors.rmse(),
            "mae": errors.mae(),
            "n_scored": errors.n as u64,
            "n_unknown_users": unknown_users[0],
            "n_unknown_items": unknown_items,
            "n_pairs_unknown_user": sums[3] as u64,
            "n_pairs_unknown_item": sums[4] as u64,
            "n_fallback_predictions": sums[5] as u64,
            "fallback": "a pair with an unknown user or item is predicted from the global mean plus the known bias",
            "ranks": comm.size(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    }
    Ok(())
}

/// The model's input settings, overridden by any flag given.
fn input_args(args: &EvaluateArgs, model: &Model) -> InputArgs {
    let trained = &model.meta.input;
    let rating_col = args
        .rating_col
        .clone()
        .or_else(|| trained.rating_col.clone());
    let event_weights =
        args.event_weights
            .clone()
            .unwrap_or_else(|| match &model.meta.event_weights {
                Some(w) => w
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                None => crate::features::DEFAULT_EVENT_WEIGHTS.into(),
            });
    InputArgs {
        user_col: args
            .user_col
            .clone()
            .unwrap_or_else(|| trained.user_col.clone()),
        item_col: args.item_col.clone().or_else(|| trained.item_col.clone()),
        event_col: args
            .event_col
            .clone()
            .unwrap_or_else(|| trained.event_col.clone()),
        event_weights,
        rating_col,
        time_col: trained.time_col.clone(),
        aggregate: args.aggregate.unwrap_or(trained.aggregate),
        format: args.format.unwrap_or(trained.format),
    }
}
