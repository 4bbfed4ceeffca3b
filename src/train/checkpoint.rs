//! Checkpoints, the ranks' side: which rank writes and reads what, and the agreement after
//! each step, so that one rank's storage error stops every rank before the next collective.
//! The files' format and the compatibility rules are `mf::checkpoint`'s, the storage
//! `model_io`'s.

use crate::collective::{Collective, CollectiveExt};
use crate::error::{Error, Result};
use crate::ids::Id;
use crate::mf::checkpoint::{self, CheckpointMeta, Run, CHECKPOINTS_DIR};
use crate::mf::Params;
use crate::model_io;
use crate::store::Location;

use super::{Progress, TrainState};

/// The checkpoints of one run under its model location.
pub struct Checkpoints<'a> {
    pub loc: &'a Location,
    /// What a checkpoint must match to be resumed from.
    pub run: Run,
    /// This rank's users, in row order.
    pub user_ids: &'a [Id],
}

impl Checkpoints<'_> {
    /// Save the training state after `progress.epoch` (every rank calls this): each rank its
    /// user rows, rank 0 the item rows and then, once every file is in place, the description
    /// that makes the checkpoint complete.
    pub fn save(&self, comm: &dyn Collective, progress: &Progress) -> Result<()> {
        let epoch = progress.epoch;
        let stride = self.run.hyper.factors + 1;
        let mine = (|| {
            let users = checkpoint::encode_user_rows(
                epoch,
                self.user_ids,
                stride,
                &progress.params.users_packed(),
            );
            model_io::save_checkpoint_rows(
                self.loc,
                &checkpoint::rank_file(epoch, comm.rank()),
                users,
            )?;
            if comm.is_root() {
                let items = checkpoint::encode_item_rows(stride, &progress.params.items_packed());
                model_io::save_checkpoint_rows(self.loc, &checkpoint::items_file(epoch), items)?;
            }
            crate::fault::point("checkpoint", comm.rank())
        })();
        comm.agree(mine)?;
        let committed = if comm.is_root() {
            let meta = CheckpointMeta::new(&self.run, epoch, progress.history);
            model_io::commit_checkpoint(self.loc, &meta)
        } else {
            Ok(())
        };
        comm.agree(committed)?;
        if comm.is_root() {
            log::info!("checkpoint after epoch {epoch} saved");
        }
        Ok(())
    }

    /// The state of the newest complete checkpoint (every rank calls this), refused if it does
    /// not fit this run (see `CheckpointMeta::fits`).
    pub fn resume(&self, comm: &dyn Collective) -> Result<TrainState> {
        let chosen = if comm.is_root() {
            self.choose().and_then(|meta| {
                serde_json::to_vec(&meta).map_err(|e| Error::runtime(e.to_string()))
            })
        } else {
            Ok(Vec::new())
        };
        let bytes = comm.agree(chosen)?;
        let bytes = comm.broadcast_bytes(0, bytes)?;
        let meta: CheckpointMeta = serde_json::from_slice(&bytes)
            .map_err(|e| Error::runtime(format!("checkpoint description: {e}")))?;
        let state = comm.agree(self.read_state(comm.rank(), &meta))?;
        if comm.is_root() {
            log::info!(
                "resuming after epoch {} from {}",
                meta.epoch,
                self.loc
                    .display_key(&self.loc.child_key(&checkpoint::epoch_dir(meta.epoch)))
            );
        }
        Ok(state)
    }

    /// Rank 0: the newest complete checkpoint, if it fits this run.
    fn choose(&self) -> Result<CheckpointMeta> {
        let Some((meta, shown)) = model_io::newest_checkpoint(self.loc)? else {
            return Err(Error::usage(format!(
                "--resume: no complete checkpoint under {} (train with --checkpoint-every N first)",
                self.loc.display_key(&self.loc.child_key(CHECKPOINTS_DIR))
            )));
        };
        meta.fits(&self.run, &shown)?;
        Ok(meta)
    }

    /// This rank's user rows and the item rows of the checkpoint `meta` describes.
    fn read_state(&self, rank: usize, meta: &CheckpointMeta) -> Result<TrainState> {
        let factors = meta.hyperparameters.factors;
        let stride = factors + 1;
        let bad = |shown: &str, why: &str| Error::usage(format!("--resume: {shown}: {why}"));
        let relative = checkpoint::rank_file(meta.epoch, rank);
        let (bytes, shown) = model_io::read_checkpoint_file(self.loc, &relative)?;
        let users = checkpoint::decode_user_rows(&bytes, meta.epoch, self.user_ids, stride)
            .map_err(|why| bad(&shown, why))?;
        let relative = checkpoint::items_file(meta.epoch);
        let (bytes, shown) = model_io::read_checkpoint_file(self.loc, &relative)?;
        let items = checkpoint::decode_item_rows(&bytes, stride, meta.n_items)
            .map_err(|why| bad(&shown, why))?;
        Ok(TrainState {
            epoch: meta.epoch,
            params: Params::from_packed(factors, &users, &items),
            history: meta.history.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;
    use crate::mf::{EpochStats, Hyper};

    #[test]
    fn a_checkpoint_saved_under_solo_resumes_to_the_same_rows_and_refuses_other_runs() {
        let dir = std::env::temp_dir().join(format!("funksvd-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let loc = Location::parse(dir.to_str().unwrap(), "--model").unwrap();
        let users: Vec<Id> = (0..5).map(Id::Int).collect();
        let items: Vec<Id> = (10..13).map(Id::Int).collect();
        let hyper = Hyper {
            factors: 3,
            ..Hyper::default()
        };
        let params = Params::init(&users, &items, &hyper);
        let run = Run {
            ranks: 1,
            hyper: hyper.clone(),
            fingerprint: "data".into(),
            item_order: checkpoint::item_order(&items),
            n_items: items.len(),
        };
        let checkpoints = Checkpoints {
            loc: &loc,
            run: run.clone(),
            user_ids: &users,
        };
        let err = checkpoints.resume(&Solo).unwrap_err();
        assert!(err.to_string().contains("no complete checkpoint"), "{err}");
        let history = vec![
            EpochStats {
                epoch: 1,
                train_rmse: 1.0,
                holdout_rmse: None,
                loss: None,
                seconds: 0.1,
                sync_seconds: 0.0,
                ratings_per_second: 1.0,
            };
            2
        ];
        for epoch in 1..=3 {
            let progress = Progress {
                epoch,
                history: &history,
                params: params.view(),
            };
            checkpoints.save(&Solo, &progress).unwrap();
        }
        // The two newest are kept.
        let kept = std::fs::read_dir(dir.join(CHECKPOINTS_DIR))
            .unwrap()
            .count();
        assert_eq!(kept, 2);
        let state = checkpoints.resume(&Solo).unwrap();
        assert_eq!(state.epoch, 3);
        assert_eq!(state.params, params);
        assert_eq!(state.history, history);
        // Another run is refused, saying why.
        let other = Checkpoints {
            run: Run {
                hyper: Hyper {
                    reg: 0.5,
                    ..hyper.clone()
                },
                ..run.clone()
            },
            ..checkpoints
        };
        let err = other.resume(&Solo).unwrap_err();
        assert!(err.to_string().contains("other hyperparameters"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
