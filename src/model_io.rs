//! Models and checkpoints in storage: publishing a model so no reader ever sees half of it,
//! loading one (async, and blocking for the rank commands), the checkpoint files, and the one
//! rule that keeps the newest model versions and checkpoints and deletes the rest. The bytes'
//! formats are the model core's (`mf::meta`, `mf::tables`, `mf::checkpoint`).

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::mf::checkpoint::{self, CheckpointMeta, CHECKPOINTS_DIR};
use crate::mf::meta::{ModelMeta, TablePart, ITEMS_FILE, MODEL_JSON, USERS_FILE};
use crate::mf::tables::{parquet_to_rows, RowsTable};
use crate::mf::Model;
use crate::store::{block_on, Location, Tag};

/// Where a model's versions live below its prefix (the `_` hides them from dataset listings).
pub const VERSIONS_DIR: &str = "_versions";
/// A picture of the training epochs, written beside model.json after each publication.
pub const TRAINING_SVG: &str = "training.svg";
/// Complete checkpoints kept: the newest and the one before it.
const CHECKPOINTS_KEPT: usize = 2;

/// The users' table as a job hands it to `publish`.
pub enum UsersTable {
    /// Encoded whole, by the rank that publishes.
    Whole(Bytes),
    /// Already written by the ranks, in parts, into the version folder `version` (each at
    /// `user_part_file(version, rank)`), in id order.
    Parts {
        version: String,
        parts: Vec<TablePart>,
    },
}

/// Where rank `rank` writes its part of a users table written in parts, relative to the model
/// prefix: `_versions/<version>/users/part-00000.parquet`.
pub fn user_part_file(version: &str, rank: usize) -> String {
    format!("{VERSIONS_DIR}/{version}/{USERS_DIR}/part-{rank:05}.parquet")
}

/// The folder of a users table written in parts, in its version folder.
const USERS_DIR: &str = "users";

/// What a job found at its model location when it started: the `model.json` (by its tag) its
/// publication will replace, and the version folder that model lives in.
#[derive(Clone, Debug, Default)]
pub struct Found {
    tag: Option<Tag>,
    version: Option<String>,
}

/// Before a job reads any data (rank 0): check that the model location takes writes, and note
/// which model is there, so that the publication replaces that model and no other.
pub fn prepare_publish(loc: &Location, flag: &str) -> Result<Found> {
    let io = loc.blocking();
    io.probe_write(&format!("{VERSIONS_DIR}/.probe-{}", new_version_id()), flag)?;
    let Some((json, tag)) = io.get_tagged(&loc.child_key(MODEL_JSON))? else {
        return Ok(Found::default());
    };
    // An unreadable model.json is replaced like any other; only its version folder is unknown.
    let version = ModelMeta::from_json(&json, MODEL_JSON)
        .ok()
        .and_then(|meta| version_of(&meta));
    Ok(Found {
        tag: Some(tag),
        version,
    })
}

/// Publish a model so that no reader ever sees half of it, a failure at any step leaves the
/// previous model readable, and two jobs publishing to one location never leave a mix (S3 has
/// no rename, so one conditional PUT is the switch):
///
/// 1. the tables go to a new version folder `_versions/<id>/` (nothing is overwritten; a users
///    table in parts is there already);
/// 2. `model.json`, naming that folder's files in `files`, replaces the one `found` saw, in one
///    PUT that only succeeds if `model.json` is still that one: if another job published since
///    this one started, this publication is refused (and its folder deleted);
/// 3. the top-level `users.parquet` and `items.parquet` are refreshed as copies of the version
///    `model.json` names (see `refresh_copies`; a users table in parts has no top-level copy);
/// 4. the other version folders go, except the one `found` saw (a reader may have just read
///    the old model.json), the one `model.json` names now, and newer ones (another job may be
///    writing one).
///
/// `finish` fills in the last fields of `meta` (timings) just before the switch.
pub fn publish(
    loc: &Location,
    found: &Found,
    meta: &mut ModelMeta,
    (users, items): (UsersTable, Bytes),
    finish: impl FnOnce(&mut ModelMeta),
) -> Result<()> {
    let io = loc.blocking();
    let (version, whole_users) = match users {
        UsersTable::Whole(bytes) => (new_version_id(), Some(bytes)),
        UsersTable::Parts { version, parts } => {
            meta.user_parts = parts;
            (version, None)
        }
    };
    let written = write_version(loc, &version, whole_users.as_ref(), &items).and_then(|()| {
        let users = match whole_users {
            Some(_) => USERS_FILE.to_string(),
            None => format!("{USERS_DIR}/"),
        };
        meta.files = [("users", users.as_str()), ("items", ITEMS_FILE)]
            .into_iter()
            .map(|(k, file)| (k.to_string(), format!("{VERSIONS_DIR}/{version}/{file}")))
            .collect();
        finish(meta);
        crate::fault::point("publish-switch", 0)?;
        io.put_if(
            &loc.child_key(MODEL_JSON),
            Bytes::from(meta.to_json()?),
            found.tag.as_ref(),
        )
    });
    match written {
        Ok(true) => {}
        Ok(false) => {
            delete_version(loc, &version);
            return Err(Error::runtime(format!(
                "another job published a model to {} since this one started; this run's model was not published (the other job's stands; run this one again to replace it)",
                loc.url()
            )));
        }
        Err(e) => {
            delete_version(loc, &version);
            return Err(e);
        }
    }
    // Published. What follows only tidies up; a failure here is reported, the model stands.
    crate::fault::point("publish-copies", 0)?;
    let current = refresh_copies(loc, meta, (whole_users.as_ref(), &items))?;
    let keep = [
        Some(version.as_str()),
        found.version.as_deref(),
        current.as_deref(),
    ];
    for (rel, key) in io.list_below(VERSIONS_DIR)? {
        let Some(entry) = rel.split('/').next().filter(|e| is_version_id(e)) else {
            continue;
        };
        if entry < version.as_str() && !keep.contains(&Some(entry)) {
            io.delete(&key)?;
        }
    }
    Ok(())
}

/// Step 1 of `publish` (the users' table, if it is not in parts already).
fn write_version(
    loc: &Location,
    version: &str,
    users: Option<&Bytes>,
    items: &Bytes,
) -> Result<()> {
    let io = loc.blocking();
    let key = |file: &str| loc.child_key(&format!("{VERSIONS_DIR}/{version}/{file}"));
    if let Some(users) = users {
        io.put(&key(USERS_FILE), users.clone())?;
    }
    crate::fault::point("publish-tables", 0)?;
    io.put(&key(ITEMS_FILE), items.clone())
}

/// A version folder whose users' parts were written but that will not be published (a rank
/// failed): deleted (rank 0, once every rank is done writing).
pub fn abandon_version(loc: &Location, version: &str) {
    delete_version(loc, version)
}

/// A refused or failed publication's folder, deleted as far as storage lets us (the next
/// publication deletes what is left).
fn delete_version(loc: &Location, version: &str) {
    let io = loc.blocking();
    let folder = format!("{VERSIONS_DIR}/{version}");
    for (_, key) in io.list_below(&folder).unwrap_or_default() {
        if let Err(e) = io.delete(&key) {
            log::warn!("{e}");
        }
    }
}

/// Make the top-level tables copies of the version `model.json` names, even when another job
/// publishes meanwhile: copy what it names, then check that it still names that; if not, copy
/// again. The last copy of each table is then made by a job that saw `model.json` unchanged
/// after making it, so both tables come from the version it names (a later publication's copies
/// come after its switch, hence after ours). Returns the version `model.json` names now.
/// A users table in parts is not copied: the top-level `users.parquet` (an older model's) is
/// deleted instead, so that no reader takes it for this model's.
fn refresh_copies(
    loc: &Location,
    ours: &ModelMeta,
    (users, items): (Option<&Bytes>, &Bytes),
) -> Result<Option<String>> {
    const ROUNDS: usize = 20;
    let io = loc.blocking();
    let json_key = loc.child_key(MODEL_JSON);
    let top_users = loc.child_key(USERS_FILE);
    for _ in 0..ROUNDS {
        let Some((json, tag)) = io.get_tagged(&json_key)? else {
            return Ok(None);
        };
        let current = ModelMeta::from_json(&json, &loc.display_key(&json_key))?;
        let copied = if current.files == ours.files {
            match users {
                Some(users) => io.put(&top_users, users.clone()),
                None => io.delete(&top_users),
            }
            .and_then(|()| io.put(&loc.child_key(ITEMS_FILE), items.clone()))
        } else {
            // A newer publication: copy its tables (gone if a newer one still replaced it).
            let users = match current.user_parts.is_empty() {
                true => io
                    .get(&loc.child_key(&current.table("users")))
                    .and_then(|bytes| io.put(&top_users, bytes)),
                false => io.delete(&top_users),
            };
            users.and_then(|()| {
                let bytes = io.get(&loc.child_key(&current.table("items")))?;
                io.put(&loc.child_key(ITEMS_FILE), bytes)
            })
        };
        if copied.is_ok() && io.tag(&json_key)? == Some(tag) {
            return Ok(version_of(&current));
        }
    }
    Err(Error::runtime(format!(
        "the model at {} is published, but model.json kept changing while its users.parquet and items.parquet were copied to the top level; read the tables model.json names",
        loc.url()
    )))
}

/// The version folder a model's tables are in (`None`: tables at the top level, version 1).
fn version_of(meta: &ModelMeta) -> Option<String> {
    let users = meta.files.get("users")?;
    let rest = users.strip_prefix(VERSIONS_DIR)?.strip_prefix('/')?;
    rest.split('/')
        .next()
        .filter(|v| is_version_id(v))
        .map(str::to_string)
}

/// A new version folder's name: time-ordered and unique (seconds and nanoseconds since the
/// epoch, and the process id).
pub fn new_version_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "v{:011}{:09}-{}",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

/// Whether `name` is a version folder's name (not a probe, not something a person put there).
fn is_version_id(name: &str) -> bool {
    name.len() > 21 && name.starts_with('v') && name[1..21].bytes().all(|b| b.is_ascii_digit())
}

/// Delete every object below `folder` that belongs to an entry (a model version, a checkpoint)
/// older than the `keep` newest complete entries. `entry_of` names the entry of an object by
/// its path relative to `folder`; an entry is complete when `completes` holds for one of its
/// objects. Entries newer than the oldest one kept stay, complete or not (one may be being
/// written).
fn keep_newest<K: Ord + Clone>(
    loc: &Location,
    folder: &str,
    keep: usize,
    entry_of: impl Fn(&str) -> Option<K>,
    completes: impl Fn(&str) -> bool,
) -> Result<()> {
    let objects = loc.blocking().list_below(folder)?;
    let mut complete: Vec<K> = objects
        .iter()
        .filter(|(rel, _)| completes(rel))
        .filter_map(|(rel, _)| entry_of(rel))
        .collect();
    complete.sort_unstable();
    complete.dedup();
    let Some(oldest_kept) = complete.len().checked_sub(keep).map(|at| &complete[at]) else {
        return Ok(());
    };
    for (rel, key) in &objects {
        if entry_of(rel).is_some_and(|entry| entry < *oldest_kept) {
            loc.blocking().delete(key)?;
        }
    }
    Ok(())
}

/// Read only `model.json`.
pub async fn load_meta(loc: &Location) -> Result<ModelMeta> {
    let key = loc.child_key(MODEL_JSON);
    let shown = loc.display_key(&key);
    if !loc.exists(&key).await? {
        return Err(Error::usage(format!(
            "--model {}: no model there ({shown} does not exist)",
            loc.url()
        )));
    }
    ModelMeta::from_json(&loc.get(&key).await?, &shown)
}

/// Read a whole model: `model.json`, then the tables it names.
pub async fn load(loc: &Location) -> Result<Model> {
    load_with_meta(loc, load_meta(loc).await?).await
}

/// Read the tables `meta` (a `model.json` read from `loc`) names.
pub async fn load_with_meta(loc: &Location, meta: ModelMeta) -> Result<Model> {
    let parts = user_files(&meta);
    let users = futures::future::try_join_all(parts.iter().map(|(file, _)| table(loc, file)));
    let items = meta.table("items");
    let (users, items) = futures::try_join!(users, table(loc, &items))?;
    let factors = meta.factors;
    let users = users
        .into_iter()
        .zip(&parts)
        .map(|((bytes, shown), (_, rows))| user_rows(bytes, factors, &shown, *rows))
        .collect::<Result<Vec<_>>>()?;
    Model::from_tables(meta, users, items)
}

/// The model `meta` names at `loc` with only the users at positions `share` of the id-sorted
/// users table (every item): what a rank of `recommend` needs, whatever the table's size.
/// Only the parts that hold the share are read, one at a time.
pub fn load_share(loc: &Location, meta: ModelMeta, share: std::ops::Range<u64>) -> Result<Model> {
    let mut users = RowsTable::default();
    let stride = meta.factors + 1;
    let mut start = 0u64;
    for (file, rows) in user_files(&meta) {
        let end = start + rows.unwrap_or(meta.n_users);
        let (from, to) = (share.start.max(start), share.end.min(end));
        if from < to {
            let (bytes, shown) = block_on(table(loc, &file))?;
            let part = user_rows(bytes, meta.factors, &shown, rows)?;
            let (a, b) = ((from - start) as usize, (to - start) as usize);
            if users.ids.is_empty() && a == 0 && b >= part.ids.len() {
                // The whole part, the first: taken as it is, not copied.
                users = part;
                users.counts = None;
            } else {
                users
                    .ids
                    .extend_from_slice(&part.ids[a..b.min(part.ids.len())]);
                users
                    .rows
                    .extend_from_slice(&part.rows[a * stride..(b * stride).min(part.rows.len())]);
            }
        }
        start = end;
    }
    let items = block_on(table(loc, &meta.table("items")))?;
    Model::from_share(meta, users, items)
}

/// The users table's files, relative to the model prefix, with their rows where `model.json`
/// records them (the parts of a table written in parts).
fn user_files(meta: &ModelMeta) -> Vec<(String, Option<u64>)> {
    match meta.user_parts.is_empty() {
        true => vec![(meta.table("users"), None)],
        false => meta
            .user_parts
            .iter()
            .map(|p| (p.file.clone(), Some(p.rows)))
            .collect(),
    }
}

/// A table's bytes, and how to name it in messages.
async fn table(loc: &Location, file: &str) -> Result<(Bytes, String)> {
    let key = loc.child_key(file);
    Ok((loc.get(&key).await?, loc.display_key(&key)))
}

/// A users file decoded, checked against the rows `model.json` gives it.
fn user_rows(bytes: Bytes, factors: usize, shown: &str, rows: Option<u64>) -> Result<RowsTable> {
    let table = parquet_to_rows(bytes, "user_id", factors, shown)?;
    match rows {
        Some(n) if n != table.ids.len() as u64 => Err(Error::usage(format!(
            "{shown}: {} rows, but model.json says {n} (a model from two saves?)",
            table.ids.len()
        ))),
        _ => Ok(table),
    }
}

/// `load`, for the rank commands.
pub fn load_blocking(loc: &Location) -> Result<Model> {
    block_on(load(loc))
}

/// Write this rank's file of the checkpoint after `epoch`.
pub fn save_checkpoint_rows(loc: &Location, relative: &str, bytes: Vec<u8>) -> Result<()> {
    loc.blocking().put(&loc.child_key(relative), bytes.into())
}

/// Make the checkpoint after `meta.epoch` complete (its `checkpoint.json`, written once every
/// rank's file is in place), then delete the checkpoints older than the ones kept.
pub fn commit_checkpoint(loc: &Location, meta: &CheckpointMeta) -> Result<()> {
    let json = serde_json::to_vec_pretty(meta)
        .map_err(|e| Error::runtime(format!("cannot encode {}: {e}", checkpoint::META_FILE)))?;
    loc.blocking().put(
        &loc.child_key(&checkpoint::meta_file(meta.epoch)),
        json.into(),
    )?;
    keep_newest(
        loc,
        CHECKPOINTS_DIR,
        CHECKPOINTS_KEPT,
        checkpoint::epoch_of,
        |rel| rel.ends_with(&format!("/{}", checkpoint::META_FILE)),
    )
}

/// The newest complete checkpoint's description, and where it is (for messages); `None` when
/// there is none.
pub fn newest_checkpoint(loc: &Location) -> Result<Option<(CheckpointMeta, String)>> {
    let io = loc.blocking();
    let newest = io
        .list_below(CHECKPOINTS_DIR)?
        .iter()
        .filter(|(rel, _)| rel.ends_with(&format!("/{}", checkpoint::META_FILE)))
        .filter_map(|(rel, _)| checkpoint::epoch_of(rel))
        .max();
    let Some(epoch) = newest else {
        return Ok(None);
    };
    let key = loc.child_key(&checkpoint::meta_file(epoch));
    let shown = loc.display_key(&key);
    let meta: CheckpointMeta = serde_json::from_slice(&io.get(&key)?).map_err(|e| {
        Error::usage(format!(
            "--resume: {shown} is not a funksvd checkpoint ({e})"
        ))
    })?;
    Ok(Some((meta, shown)))
}

/// A checkpoint file's bytes, and its name for messages.
pub fn read_checkpoint_file(loc: &Location, relative: &str) -> Result<(Bytes, String)> {
    let key = loc.child_key(relative);
    Ok((loc.blocking().get(&key)?, loc.display_key(&key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> (std::path::PathBuf, Location) {
        let dir = std::env::temp_dir().join(format!("funksvd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let loc = Location::parse(dir.to_str().unwrap(), "--model").unwrap();
        (dir, loc)
    }

    fn files_below(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                out.extend(
                    files_below(&path)
                        .into_iter()
                        .map(|f| format!("{name}/{f}")),
                );
            } else {
                out.push(name);
            }
        }
        out.sort();
        out
    }

    /// A model of `n` users and items whose rows are `[0, u, 1]` / `[0, 2i, 1]`, published.
    fn published(loc: &Location, n: usize, seed: u64) -> ModelMeta {
        let ids: Vec<crate::ids::Id> = (0..n as i64).map(crate::ids::Id::Int).collect();
        let rows = |k: usize| -> Vec<f32> {
            (0..n)
                .flat_map(|x| [0.0, x as f32 * k as f32, 1.0])
                .collect()
        };
        let users = crate::mf::tables::rows_to_parquet("user_id", &ids, &rows(1), 2).unwrap();
        let items = crate::mf::tables::rows_to_parquet_with(
            "item_id",
            &ids,
            &rows(2),
            2,
            Some(&vec![1; ids.len()]),
        )
        .unwrap();
        let mut meta = ModelMeta::for_tests(n as u64, n as u64, false);
        meta.hyperparameters.seed = seed;
        meta.input.holdout = 0.1;
        meta.rating_max = 100.0;
        let found = prepare_publish(loc, "--model").unwrap();
        publish(
            loc,
            &found,
            &mut meta,
            (UsersTable::Whole(users), items),
            |_| {},
        )
        .unwrap();
        meta
    }

    #[test]
    fn a_published_model_loads_from_async_code_and_from_the_rank_commands_alike() {
        let (dir, loc) = folder("load");
        let err = load_blocking(&loc).err().unwrap();
        assert!(err.to_string().contains("no model there"), "{err}");
        for seed in 1..=3 {
            published(&loc, 5, seed);
        }
        // The current and the previous versions stay.
        assert_eq!(
            std::fs::read_dir(dir.join(VERSIONS_DIR)).unwrap().count(),
            2
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let from_async = runtime.block_on(load(&loc)).unwrap();
        let from_ranks = load_blocking(&loc).unwrap();
        assert_eq!(from_async.meta, from_ranks.meta);
        assert_eq!(from_async.meta.hyperparameters.seed, 3);
        assert_eq!(
            from_async.meta.hyperparameters.holdout, 0.1,
            "from input.holdout"
        );
        assert_eq!(from_async.item_rows, from_ranks.item_rows);
        // User 4 scores item i as 4 * 2i + 1: the highest items first, item 3 left out.
        let top: Vec<u32> = from_async
            .top_n(4, 3, &[3])
            .iter()
            .map(|s| s.item)
            .collect();
        assert_eq!(top, vec![4, 2, 1]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_newest_complete_entries_are_kept_and_older_ones_deleted() {
        let (dir, loc) = folder("retention");
        let put = |rel: &str| {
            loc.blocking()
                .put(
                    &loc.child_key(&format!("_c/{rel}")),
                    Bytes::from_static(b"x"),
                )
                .unwrap()
        };
        // Epochs 1, 2 and 4 complete; 3 and 5 not (5 may be being written).
        for (epoch, complete) in [(1, true), (2, true), (3, false), (4, true), (5, false)] {
            put(&format!("epoch-{epoch}/rank.bin"));
            if complete {
                put(&format!("epoch-{epoch}/done"));
            }
        }
        let epoch = |rel: &str| checkpoint::epoch_of(rel);
        keep_newest(&loc, "_c", 2, epoch, |rel| rel.ends_with("/done")).unwrap();
        assert_eq!(
            files_below(&dir.join("_c")),
            vec![
                "epoch-2/done",
                "epoch-2/rank.bin",
                "epoch-3/rank.bin",
                "epoch-4/done",
                "epoch-4/rank.bin",
                "epoch-5/rank.bin"
            ],
            "kept 2 and 4 (complete), 3 and 5 (newer than 2); deleted 1"
        );
        // Fewer complete entries than kept: nothing goes.
        keep_newest(&loc, "_c", 5, epoch, |rel| rel.ends_with("/done")).unwrap();
        assert_eq!(files_below(&dir.join("_c")).len(), 6);
        // Nothing there at all: nothing to do.
        keep_newest(&loc, "_none", 2, epoch, |_| true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
