//! A folder of parts, as Spark writes one: `part-RRRRR.parquet` per rank, then `_SUCCESS` (a
//! JSON manifest) written last by rank 0. A reader that sees `_SUCCESS` sees finished output; a
//! run that fails writes none, and the next run replaces whatever a failed one left.

use crate::error::{Error, Result};
use crate::store::Location;

/// The manifest's name (the Hadoop/Spark marker, with a JSON body).
pub const MANIFEST: &str = "_SUCCESS";

/// Rank `rank`'s part.
pub fn part_name(rank: usize) -> String {
    format!("part-{rank:05}.parquet")
}

/// Whether a name in an output folder is an earlier run's (a part, its upload staging file, the
/// manifest) or hidden bookkeeping (a write probe).
fn is_ours(name: &str) -> bool {
    let part = name.starts_with("part-") && name.contains(".parquet");
    name == MANIFEST || part || name.starts_with('.')
}

/// Rank 0, before any work: refuse a folder that holds anything but an earlier run's output
/// (never delete a user's files), delete the manifest first (the old output stops counting as
/// finished), then the old parts (a run with fewer ranks leaves fewer), and check that writes
/// work there.
pub fn clear(out: &Location, flag: &str) -> Result<()> {
    let listed = out.blocking().list_below("")?;
    let foreign: Vec<&str> = listed
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !is_ours(name))
        .collect();
    if !foreign.is_empty() {
        let shown: Vec<&str> = foreign.iter().take(5).copied().collect();
        return Err(Error::usage(format!(
            "{flag} {}: holds files that are not funksvd output ({}{}); give a new or empty folder (nothing there was changed)",
            out.url(),
            shown.join(", "),
            if foreign.len() > 5 { ", ..." } else { "" }
        )));
    }
    let (manifest, parts): (Vec<_>, Vec<_>) = listed
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .partition(|(name, _)| name == MANIFEST);
    for (_, key) in manifest.iter().chain(&parts) {
        out.blocking().delete(key)?;
    }
    out.blocking().probe_write(".funksvd-write-probe", flag)
}

/// Rank 0, once every part is written: the manifest, last.
pub fn finish(out: &Location, manifest: &serde_json::Value) -> Result<()> {
    let body = serde_json::to_vec_pretty(manifest)
        .map_err(|e| Error::runtime(format!("cannot encode the manifest: {e}")))?;
    out.blocking().put(&out.child_key(MANIFEST), body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_parts_the_manifest_and_hidden_names_are_ours() {
        for name in [
            "_SUCCESS",
            "part-00000.parquet",
            "part-00012.parquet#3",
            ".funksvd-write-probe",
        ] {
            assert!(is_ours(name), "{name}");
        }
        for name in [
            "model.json",
            "events.parquet",
            "sub/part-00000.parquet",
            "_metadata",
        ] {
            assert!(!is_ours(name), "{name}");
        }
        assert_eq!(part_name(3), "part-00003.parquet");
    }
}
