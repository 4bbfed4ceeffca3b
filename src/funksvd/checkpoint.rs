//! Checkpoints: the full training state under the model prefix, written atomically, so that
//! `--resume` continues a killed run and ends with the same model, bit for bit.
//!
//! Layout: `_checkpoints/epoch-NNNNNN/rank-RRRRR.bin` (each rank's user rows, written by that
//! rank), `items.bin` (the shared item rows, rank 0) and `checkpoint.json`, written last by rank 0
//! once every rank's file is in place: a checkpoint without it is incomplete and ignored. The two
//! newest complete checkpoints are kept. Nothing else is needed: the visiting order and the
//! item numbering derive from (seed, rank, epoch) and the data.

use serde::{Deserialize, Serialize};

use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::ids::{mix64, Id};
use crate::store::Location;
use crate::wire::{Reader, Writer};

use super::train::{EpochStats, Hyper, Params, TrainState};

pub const CHECKPOINTS_DIR: &str = "_checkpoints";
const META: &str = "checkpoint.json";
const FORMAT: &str = "funksvd-checkpoint";
const KEPT: usize = 2;
const MAGIC: &[u8] = b"FSVDCKP1";

/// What a run must match to continue from a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointMeta {
    pub format: String,
    pub epoch: usize,
    pub ranks: usize,
    pub hyperparameters: Hyper,
    /// The dataset (files and sizes) and how it was read.
    pub fingerprint: String,
    pub n_items: usize,
    /// A hash of the item ids in training-row order (rows are numbered by item block): the
    /// item rows of `items.bin` mean nothing under another numbering.
    #[serde(default)]
    pub item_order: String,
    pub history: Vec<EpochStats>,
}

/// A hash of the ids in order: a resumed rank must own exactly the users it owned.
fn ids_hash(ids: &[Id]) -> u64 {
    ids.iter()
        .fold(0x243F_6A88_85A3_08D3, |h, id| mix64(h ^ id.stable_hash()))
}

fn epoch_dir(epoch: usize) -> String {
    format!("{CHECKPOINTS_DIR}/epoch-{epoch:06}")
}

/// Write a checkpoint of `state` (every rank calls this).
pub fn save(
    comm: &Comm,
    loc: &Location,
    state: &TrainState,
    hyper: &Hyper,
    fingerprint: &str,
    user_ids: &[Id],
    item_ids: &[Id],
) -> Result<()> {
    let dir = epoch_dir(state.epoch);
    let mine = (|| {
        let mut w = Writer::new();
        w.buf.extend_from_slice(MAGIC);
        w.u64(state.epoch as u64);
        w.u64(user_ids.len() as u64);
        w.u64(state.params.factors as u64 + 1);
        w.u64(ids_hash(user_ids));
        w.f32s(&state.params.users_packed());
        let key = loc.child_key(&format!("{dir}/rank-{:05}.bin", comm.rank()));
        loc.put(&key, w.finish().into())?;
        if comm.is_root() {
            let mut w = Writer::new();
            w.buf.extend_from_slice(MAGIC);
            w.u64(state.params.factors as u64 + 1);
            w.f32s(&state.params.items_packed());
            loc.put(
                &loc.child_key(&format!("{dir}/items.bin")),
                w.finish().into(),
            )?;
        }
        crate::fault::point("checkpoint", comm.rank())
    })();
    comm.agree(mine)?;
    let committed = if comm.is_root() {
        (|| {
            let meta = CheckpointMeta {
                format: FORMAT.into(),
                epoch: state.epoch,
                ranks: comm.size(),
                hyperparameters: hyper.clone(),
                fingerprint: fingerprint.into(),
                n_items: state.params.n_items(),
                item_order: item_order(item_ids),
                history: state.history.clone(),
            };
            let json = serde_json::to_vec_pretty(&meta)
                .map_err(|e| Error::runtime(format!("cannot encode {META}: {e}")))?;
            loc.put(&loc.child_key(&format!("{dir}/{META}")), json.into())?;
            remove_old(loc, KEPT)
        })()
    } else {
        Ok(())
    };
    comm.agree(committed)?;
    if comm.is_root() {
        log::info!("checkpoint after epoch {} saved", state.epoch);
    }
    Ok(())
}

/// The epoch a checkpoint path (`epoch-NNNNNN/...`) belongs to.
fn epoch_of(relative: &str) -> Option<usize> {
    relative
        .strip_prefix("epoch-")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Objects below a folder, as (path relative to it, key).
type Objects = Vec<(String, String)>;

/// Epochs of the complete checkpoints, and every checkpoint object.
fn list(loc: &Location) -> Result<(Vec<usize>, Objects)> {
    let objects = loc.list_below(CHECKPOINTS_DIR)?;
    let mut complete: Vec<usize> = objects
        .iter()
        .filter(|(rel, _)| rel.ends_with(&format!("/{META}")))
        .filter_map(|(rel, _)| epoch_of(rel))
        .collect();
    complete.sort_unstable();
    Ok((complete, objects))
}

/// Delete all but the `keep` (at least 1) newest complete checkpoints, and any incomplete one
/// older than those.
fn remove_old(loc: &Location, keep: usize) -> Result<()> {
    let (complete, objects) = list(loc)?;
    let oldest_kept = match complete.len().checked_sub(keep) {
        Some(first_kept) => complete[first_kept],
        None => return Ok(()),
    };
    for (rel, key) in &objects {
        if epoch_of(rel).is_some_and(|e| e < oldest_kept) {
            loc.delete(key)?;
        }
    }
    Ok(())
}

/// Load the newest complete checkpoint for this run, refusing one made with other data,
/// hyperparameters (the epoch count aside) or rank count.
pub fn load_latest(
    comm: &Comm,
    loc: &Location,
    hyper: &Hyper,
    fingerprint: &str,
    user_ids: &[Id],
    item_ids: &[Id],
) -> Result<TrainState> {
    let chosen = if comm.is_root() {
        choose(loc, comm.size(), hyper, fingerprint, &item_order(item_ids))
            .and_then(|m| serde_json::to_vec(&m).map_err(|e| Error::runtime(e.to_string())))
    } else {
        Ok(Vec::new())
    };
    let bytes = comm.agree(chosen)?;
    let bytes = comm.broadcast_bytes(0, bytes)?;
    let meta: CheckpointMeta = serde_json::from_slice(&bytes)
        .map_err(|e| Error::runtime(format!("checkpoint description: {e}")))?;
    let state = read_state(comm, loc, &meta, user_ids);
    let state = comm.agree(state)?;
    if comm.is_root() {
        log::info!(
            "resuming after epoch {} from {}",
            meta.epoch,
            loc.display_key(&loc.child_key(&epoch_dir(meta.epoch)))
        );
    }
    Ok(state)
}

fn choose(
    loc: &Location,
    ranks: usize,
    hyper: &Hyper,
    fingerprint: &str,
    item_order: &str,
) -> Result<CheckpointMeta> {
    let (complete, _) = list(loc)?;
    let Some(&epoch) = complete.last() else {
        return Err(Error::usage(format!(
            "--resume: no complete checkpoint under {} (train with --checkpoint-every N first)",
            loc.display_key(&loc.child_key(CHECKPOINTS_DIR))
        )));
    };
    let key = loc.child_key(&format!("{}/{META}", epoch_dir(epoch)));
    let shown = loc.display_key(&key);
    let meta: CheckpointMeta = serde_json::from_slice(&loc.get(&key)?).map_err(|e| {
        Error::usage(format!(
            "--resume: {shown} is not a funksvd checkpoint ({e})"
        ))
    })?;
    if meta.format != FORMAT {
        return Err(Error::usage(format!(
            "--resume: {shown} is not a funksvd checkpoint"
        )));
    }
    if meta.ranks != ranks {
        return Err(Error::usage(format!(
            "--resume: the checkpoint after epoch {epoch} was made with {} ranks, this run has {ranks}; run with -n {}",
            meta.ranks, meta.ranks
        )));
    }
    if meta.fingerprint != fingerprint {
        return Err(Error::usage(format!(
            "--resume: the checkpoint after epoch {epoch} was made with other data or input flags (the files, their sizes or the column/event flags differ)"
        )));
    }
    let same = Hyper {
        epochs: hyper.epochs,
        ..meta.hyperparameters.clone()
    };
    if &same != hyper {
        return Err(Error::usage(format!(
            "--resume: the checkpoint after epoch {epoch} was made with other hyperparameters ({}); this run has ({})",
            describe(&meta.hyperparameters),
            describe(hyper)
        )));
    }
    if meta.item_order != item_order {
        return Err(Error::usage(format!(
            "--resume: the checkpoint after epoch {epoch} numbers the items differently from this run (written by another version of funksvd); train again without --resume"
        )));
    }
    Ok(meta)
}

fn item_order(item_ids: &[Id]) -> String {
    format!("{:016x}", ids_hash(item_ids))
}

fn describe(h: &Hyper) -> String {
    format!(
        "--factors {} --lr {} --reg {} --seed {}{}",
        h.factors,
        h.lr,
        h.reg,
        h.seed,
        if h.biased { "" } else { " --no-bias" }
    )
}

fn read_state(
    comm: &Comm,
    loc: &Location,
    meta: &CheckpointMeta,
    user_ids: &[Id],
) -> Result<TrainState> {
    let dir = epoch_dir(meta.epoch);
    let stride = meta.hyperparameters.factors + 1;
    let key = loc.child_key(&format!("{dir}/rank-{:05}.bin", comm.rank()));
    let shown = loc.display_key(&key);
    let bad = |why: &str| Error::usage(format!("--resume: {shown}: {why}"));
    let bytes = loc.get(&key)?;
    let mut r = Reader::new(&bytes);
    let magic = (0..MAGIC.len())
        .map(|_| r.u8())
        .collect::<Result<Vec<u8>>>()?;
    if magic != MAGIC || r.u64()? != meta.epoch as u64 {
        return Err(bad("not this checkpoint's rank file"));
    }
    if r.u64()? != user_ids.len() as u64
        || r.u64()? != stride as u64
        || r.u64()? != ids_hash(user_ids)
    {
        return Err(bad(
            "this rank's users differ from the checkpoint's (other data?)",
        ));
    }
    let users = r.f32s()?;
    let key = loc.child_key(&format!("{dir}/items.bin"));
    let bytes = loc.get(&key)?;
    let mut r = Reader::new(&bytes);
    let magic = (0..MAGIC.len())
        .map(|_| r.u8())
        .collect::<Result<Vec<u8>>>()?;
    if magic != MAGIC || r.u64()? != stride as u64 {
        return Err(bad("items.bin does not belong to this checkpoint"));
    }
    let items = r.f32s()?;
    if users.len() != user_ids.len() * stride || items.len() != meta.n_items * stride {
        return Err(bad("truncated checkpoint"));
    }
    Ok(TrainState {
        epoch: meta.epoch,
        params: Params::from_packed(meta.hyperparameters.factors, &users, &items),
        history: meta.history.clone(),
    })
}
