//! `funksvd evaluate`: score a saved model on a dataset, metrics as JSON on stdout (rank 0).

use crate::cli::{EvaluateArgs, Split};
use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::Result;
use crate::exchange;
use crate::ids::Id;
use crate::metrics::ErrorSums;
use crate::model_io;
use crate::pipeline;
use crate::store::Location;
use crate::train::data::is_held_out;

pub fn run(comm: &dyn Collective, args: &EvaluateArgs) -> Result<()> {
    let model_loc = comm.agree(Location::parse(&args.model, "--model"))?;
    let data_loc = comm.agree(Location::parse(&args.data, "--data"))?;
    // Every rank needs the item rows and its users' rows; the model is small next to the data.
    let model = comm.agree(model_io::load_blocking(&model_loc))?;
    let input = comm.agree(args.input(model.meta.input()))?;
    let (owned, _report) = pipeline::load_ratings(comm, &data_loc, &input)?;

    let hyper = &model.meta.hyperparameters;
    let mut errors = ErrorSums::default();
    let mut unknown = [0.0f64; 3]; // pairs with an unknown user, an unknown item, either
    let mut user_unknown = vec![false; owned.users.len()];
    let mut item_unknown = vec![false; owned.items.len()];
    for t in &owned.triples {
        let (uid, iid) = (&owned.users[t.user as usize], &owned.items[t.item as usize]);
        let wanted = match args.split {
            Split::All => true,
            Split::Train => !is_held_out(uid, iid, hyper.seed, hyper.holdout),
            Split::Holdout => is_held_out(uid, iid, hyper.seed, hyper.holdout),
        };
        if !wanted {
            continue;
        }
        let (u, i) = (model.user(uid), model.item(iid));
        user_unknown[t.user as usize] |= u.is_none();
        item_unknown[t.item as usize] |= i.is_none();
        errors.add(t.value, model.predict(u, i));
        unknown[0] += u.is_none() as u8 as f64;
        unknown[1] += i.is_none() as u8 as f64;
        unknown[2] += (u.is_none() || i.is_none()) as u8 as f64;
    }
    let mut sums = [errors.to_array(), unknown].concat();
    comm.reduce_f64(&mut sums, Op::Sum);
    let errors = ErrorSums::from_slice(&sums[..3]);
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
