//! Checkpoints as bytes: the full training state, so that `--resume` continues a killed run
//! and ends with the same model, bit for bit. Pure: the files' names and format, and whether a
//! checkpoint fits a run. Writing, reading and keeping them is `model_io`'s; which rank does
//! what, and when, is `train::checkpoint`'s.
//!
//! Layout under the model prefix: `_checkpoints/epoch-NNNNNN/rank-RRRRR.bin` (each rank's user
//! rows, written by that rank), `items.bin` (the item rows, rank 0) and `checkpoint.json`,
//! written last by rank 0 once every rank's file is in place: a checkpoint without it is
//! incomplete and ignored. Nothing else is needed: the visiting order and the item numbering
//! derive from (seed, rank, epoch) and the data.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{mix64, Id};
use crate::wire::{Reader, Writer};

use super::meta::EpochStats;
use super::Hyper;

pub const CHECKPOINTS_DIR: &str = "_checkpoints";
/// The file that makes a checkpoint complete.
pub const META_FILE: &str = "checkpoint.json";
pub const FORMAT: &str = "funksvd-checkpoint";
const MAGIC: &[u8] = b"FSVDCKP1";

/// `checkpoint.json`: what a run must match to continue from the checkpoint.
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

/// What a run resuming from a checkpoint is, to compare with the checkpoint's `CheckpointMeta`.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub ranks: usize,
    pub hyper: Hyper,
    pub fingerprint: String,
    /// `item_order` of the run's item ids in training-row order.
    pub item_order: String,
    pub n_items: usize,
}

impl CheckpointMeta {
    /// The description of a checkpoint of `run` after `epoch`.
    pub fn new(run: &Run, epoch: usize, history: &[EpochStats]) -> Self {
        CheckpointMeta {
            format: FORMAT.into(),
            epoch,
            ranks: run.ranks,
            hyperparameters: run.hyper.clone(),
            fingerprint: run.fingerprint.clone(),
            n_items: run.n_items,
            item_order: run.item_order.clone(),
            history: history.to_vec(),
        }
    }

    /// Whether `run` may continue from this checkpoint (`shown` names it in messages): the
    /// same rank count, data and input flags, hyperparameters (the epoch count aside: a run
    /// may train on) and item numbering.
    pub fn fits(&self, run: &Run, shown: &str) -> Result<()> {
        let epoch = self.epoch;
        if self.format != FORMAT {
            return Err(Error::usage(format!(
                "--resume: {shown} is not a funksvd checkpoint"
            )));
        }
        if self.ranks != run.ranks {
            return Err(Error::usage(format!(
                "--resume: the checkpoint after epoch {epoch} was made with {} ranks, this run has {}; run with -n {}",
                self.ranks, run.ranks, self.ranks
            )));
        }
        if epoch > run.hyper.epochs {
            return Err(Error::usage(format!(
                "--resume --epochs {}: the checkpoint is already after epoch {epoch}; give --epochs {epoch} or more (the total to reach, not the epochs to add)",
                run.hyper.epochs
            )));
        }
        if self.fingerprint != run.fingerprint {
            return Err(Error::usage(format!(
                "--resume: the checkpoint after epoch {epoch} was made with other data or input flags (the files, their sizes or the column/event flags differ)"
            )));
        }
        let same = Hyper {
            epochs: run.hyper.epochs,
            ..self.hyperparameters.clone()
        };
        if same != run.hyper {
            return Err(Error::usage(format!(
                "--resume: the checkpoint after epoch {epoch} was made with other hyperparameters ({}); this run has ({})",
                self.hyperparameters.flags(),
                run.hyper.flags()
            )));
        }
        if self.n_items != run.n_items {
            return Err(Error::usage(format!(
                "--resume: the checkpoint has {} items, this data has {} (other data?)",
                self.n_items, run.n_items
            )));
        }
        if self.item_order != run.item_order {
            return Err(Error::usage(format!(
                "--resume: the checkpoint after epoch {epoch} numbers the items differently from this run (written by another version of funksvd); train again without --resume"
            )));
        }
        Ok(())
    }
}

/// The folder of the checkpoint after `epoch`, relative to the model prefix.
pub fn epoch_dir(epoch: usize) -> String {
    format!("{CHECKPOINTS_DIR}/epoch-{epoch:06}")
}

/// Rank `rank`'s file of the checkpoint after `epoch`, relative to the model prefix.
pub fn rank_file(epoch: usize, rank: usize) -> String {
    format!("{}/rank-{rank:05}.bin", epoch_dir(epoch))
}

/// The item rows' file of the checkpoint after `epoch`, relative to the model prefix.
pub fn items_file(epoch: usize) -> String {
    format!("{}/items.bin", epoch_dir(epoch))
}

/// The description of the checkpoint after `epoch`, relative to the model prefix.
pub fn meta_file(epoch: usize) -> String {
    format!("{}/{META_FILE}", epoch_dir(epoch))
}

/// The epoch a checkpoint object belongs to, from its path relative to `CHECKPOINTS_DIR`
/// (`epoch-NNNNNN/...`).
pub fn epoch_of(relative: &str) -> Option<usize> {
    relative
        .strip_prefix("epoch-")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// A hash of ids in order: a resumed rank must own exactly the users it owned, and number the
/// items as the checkpoint did.
pub fn ids_hash(ids: &[Id]) -> u64 {
    ids.iter()
        .fold(0x243F_6A88_85A3_08D3, |h, id| mix64(h ^ id.stable_hash()))
}

/// `CheckpointMeta::item_order` of item ids in training-row order.
pub fn item_order(item_ids: &[Id]) -> String {
    format!("{:016x}", ids_hash(item_ids))
}

/// A rank's file: its users' rows after `epoch`, packed (`stride` floats each).
pub fn encode_user_rows(epoch: usize, user_ids: &[Id], stride: usize, rows: &[f32]) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf.extend_from_slice(MAGIC);
    w.u64(epoch as u64);
    w.u64(user_ids.len() as u64);
    w.u64(stride as u64);
    w.u64(ids_hash(user_ids));
    w.f32s(rows);
    w.finish()
}

/// The user rows of a rank's file, if it belongs to the checkpoint after `epoch` and to a
/// rank with exactly these users; else why not.
pub fn decode_user_rows(
    bytes: &[u8],
    epoch: usize,
    user_ids: &[Id],
    stride: usize,
) -> std::result::Result<Vec<f32>, &'static str> {
    let truncated = "truncated checkpoint";
    let mut r = Reader::new(bytes);
    if !magic(&mut r) || r.u64().map_err(|_| truncated)? != epoch as u64 {
        return Err("not this checkpoint's rank file");
    }
    let header = (r.u64().ok(), r.u64().ok(), r.u64().ok());
    let expected = (user_ids.len() as u64, stride as u64, ids_hash(user_ids));
    if header != (Some(expected.0), Some(expected.1), Some(expected.2)) {
        return Err("this rank's users differ from the checkpoint's (other data?)");
    }
    let rows = r.f32s().map_err(|_| truncated)?;
    if rows.len() != user_ids.len() * stride {
        return Err(truncated);
    }
    Ok(rows)
}

/// `items.bin`: the item rows, packed (`stride` floats each), in training-row order.
pub fn encode_item_rows(stride: usize, rows: &[f32]) -> Vec<u8> {
    let mut w = Writer::new();
    w.buf.extend_from_slice(MAGIC);
    w.u64(stride as u64);
    w.f32s(rows);
    w.finish()
}

/// The item rows of `items.bin`, if it holds `n_items` rows of `stride` floats; else why not.
pub fn decode_item_rows(
    bytes: &[u8],
    stride: usize,
    n_items: usize,
) -> std::result::Result<Vec<f32>, &'static str> {
    let mut r = Reader::new(bytes);
    if !magic(&mut r) || r.u64().ok() != Some(stride as u64) {
        return Err("items.bin does not belong to this checkpoint");
    }
    match r.f32s() {
        Ok(rows) if rows.len() == n_items * stride => Ok(rows),
        _ => Err("truncated checkpoint"),
    }
}

fn magic(r: &mut Reader) -> bool {
    MAGIC.iter().all(|&m| r.u8().ok() == Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            ranks: 2,
            hyper: Hyper::default(),
            fingerprint: "f00d".into(),
            item_order: item_order(&[Id::Int(3), Id::Int(1)]),
            n_items: 2,
        }
    }

    fn refusal(meta: &CheckpointMeta, run: &Run) -> String {
        let err = meta.fits(run, "m/_checkpoints/x").unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        err.to_string()
    }

    #[test]
    fn a_checkpoint_fits_only_the_same_ranks_data_hyperparameters_and_item_order() {
        let made = run();
        let meta = CheckpointMeta::new(&made, 4, &[]);
        meta.fits(&made, "x").unwrap();
        let with_epochs = |epochs: usize| Run {
            hyper: Hyper {
                epochs,
                ..made.hyper.clone()
            },
            ..made.clone()
        };
        // More epochs: a run may train on; as many: nothing to train, the model is published
        // again (a publication interrupted); fewer: refused.
        meta.fits(&with_epochs(30), "x").unwrap();
        meta.fits(&with_epochs(4), "x").unwrap();
        let fewer = refusal(&meta, &with_epochs(3));
        assert!(
            fewer.contains("--resume --epochs 3") && fewer.contains("--epochs 4 or more"),
            "{fewer}"
        );
        let other = |f: &dyn Fn(&mut Run)| {
            let mut r = made.clone();
            f(&mut r);
            refusal(&meta, &r)
        };
        assert!(
            other(&|r| r.ranks = 3).contains("made with 2 ranks, this run has 3; run with -n 2")
        );
        assert!(other(&|r| r.fingerprint = "beef".into()).contains("other data or input flags"));
        let lr = other(&|r| r.hyper.lr = 0.05);
        assert!(
            lr.contains("other hyperparameters") && lr.contains("--lr 0.05"),
            "{lr}"
        );
        assert!(other(&|r| r.hyper.biased = false).contains("--no-bias"));
        assert!(other(&|r| r.hyper.holdout = 0.1).contains("--holdout 0.1"));
        assert!(other(&|r| r.n_items = 3).contains("the checkpoint has 2 items, this data has 3"));
        assert!(
            other(&|r| r.item_order = item_order(&[Id::Int(1), Id::Int(3)]))
                .contains("numbers the items differently")
        );
        let mut foreign = meta.clone();
        foreign.format = "something-else".into();
        assert!(refusal(&foreign, &made).contains("is not a funksvd checkpoint"));
    }

    #[test]
    fn checkpoint_meta_reads_back_and_files_are_named_by_epoch_and_rank() {
        let meta = CheckpointMeta::new(&run(), 12, &[]);
        let json = serde_json::to_vec(&meta).unwrap();
        assert_eq!(
            serde_json::from_slice::<CheckpointMeta>(&json).unwrap(),
            meta
        );
        assert_eq!(rank_file(12, 3), "_checkpoints/epoch-000012/rank-00003.bin");
        assert_eq!(items_file(7), "_checkpoints/epoch-000007/items.bin");
        assert_eq!(meta_file(7), "_checkpoints/epoch-000007/checkpoint.json");
        assert_eq!(epoch_of("epoch-000012/rank-00003.bin"), Some(12));
        assert_eq!(epoch_of("epoch-x/items.bin"), None);
        assert_eq!(epoch_of("other"), None);
    }

    #[test]
    fn row_files_round_trip_and_refuse_other_epochs_users_and_truncation() {
        let users = [Id::Int(1), Id::Str("b".into())];
        let rows: Vec<f32> = (0..6).map(|v| v as f32 * 0.5).collect();
        let bytes = encode_user_rows(4, &users, 3, &rows);
        assert_eq!(decode_user_rows(&bytes, 4, &users, 3), Ok(rows.clone()));
        assert_eq!(
            decode_user_rows(&bytes, 5, &users, 3),
            Err("not this checkpoint's rank file")
        );
        let other = [Id::Int(1), Id::Int(2)];
        assert!(decode_user_rows(&bytes, 4, &other, 3)
            .unwrap_err()
            .contains("users differ"));
        assert!(decode_user_rows(&bytes, 4, &users, 2).is_err());
        assert_eq!(
            decode_user_rows(&bytes[..bytes.len() - 4], 4, &users, 3),
            Err("truncated checkpoint")
        );
        let bytes = encode_item_rows(3, &rows);
        assert_eq!(decode_item_rows(&bytes, 3, 2), Ok(rows));
        assert_eq!(decode_item_rows(&bytes, 3, 3), Err("truncated checkpoint"));
        assert!(decode_item_rows(&bytes, 2, 3).is_err());
        assert!(decode_item_rows(b"FSVD", 3, 2).is_err());
    }
}
