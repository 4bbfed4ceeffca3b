//! The users' table of a trained model, as its save writes it. A small one is gathered on rank
//! 0 and written whole (`users.parquet`, sorted by id). A large one (`in_parts`) is never held by
//! one rank: the ranks sort the users between them by id (each rank receives a contiguous range
//! of ids, cut at quantiles of the ranks' own ids, which hashing spread evenly) and each writes
//! its range as a part of its own (`model_io::user_part_file`). Read one after the other, the
//! parts are the table written whole, row for row.

use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::ids::Id;
use crate::mf::meta::TablePart;
use crate::mf::tables::write_rows;
use crate::mf::ParamsRef;
use crate::model_io::{new_version_id, user_part_file, VERSIONS_DIR};
use crate::store::Location;
use crate::wire::{Reader, Writer};

/// Above this size the users' table is written in parts (`FUNKSVD_USER_PARTS_ABOVE`, bytes,
/// changes it; 0 writes every table of a job of several ranks in parts).
const PARTS_ABOVE: u64 = 256 << 20;

/// Whether the job writes a users' table of `n_users` rows of `stride` floats
/// in parts: when it is larger than `PARTS_ABOVE` and every rank can write to the model's
/// location (`shared`: storage they all reach, not a folder local to rank 0's host; else a
/// warning says why the table is gathered). Rank 0 alone logs.
pub fn in_parts(comm: &dyn Collective, n_users: u64, stride: usize, shared: bool) -> bool {
    let above = std::env::var("FUNKSVD_USER_PARTS_ABOVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(PARTS_ABOVE);
    let bytes = table_bytes(n_users, stride);
    let parts = comm.size() > 1 && bytes > above;
    if parts && !shared && comm.is_root() {
        log::warn!(
            "the users' table ({:.0} MB) is gathered on rank 0 and written whole: the other ranks do not see --model's folder (a folder local to rank 0's host); with storage every rank reaches (S3, a shared filesystem) the ranks write it in parts",
            bytes as f64 / 1e6
        );
    }
    parts && shared
}

/// Whether every rank sees what rank 0 writes at the model's location `loc`: S3, always; a
/// folder, when a file rank 0 writes there is found by every rank (a folder local to rank 0's
/// host is not). Before any data is read, once per job.
pub fn seen_by_every_rank(comm: &dyn Collective, loc: &Location) -> Result<bool> {
    if comm.size() == 1 || loc.is_s3() {
        return Ok(true);
    }
    let name = format!("{VERSIONS_DIR}/.ranks-{}", new_version_id());
    let name = comm.broadcast_bytes(0, name.into_bytes())?;
    let key = loc.child_key(&String::from_utf8_lossy(&name));
    let io = loc.blocking();
    comm.agree(match comm.is_root() {
        true => io.put(
            &key,
            bytes::Bytes::from_static(b"funksvd: seen by every rank?"),
        ),
        false => Ok(()),
    })?;
    let mut seen = [io.exists(&key).unwrap_or(false) as u64];
    comm.reduce_u64(&mut seen, Op::Min);
    if comm.is_root() {
        if let Err(e) = io.delete(&key) {
            log::warn!("{e}");
        }
    }
    Ok(seen[0] == 1)
}

/// About the size of a users' table in memory: a row and an id (8 bytes, more for text ids).
pub fn table_bytes(n_users: u64, stride: usize) -> u64 {
    n_users * (stride as u64 * 4 + 8)
}

/// Every rank's users and rows on rank 0, sorted by id, rows packed; `None` elsewhere.
pub fn gather(
    comm: &dyn Collective,
    user_ids: &[Id],
    params: ParamsRef,
) -> Result<Option<(Vec<Id>, Vec<f32>)>> {
    let mut w = Writer::new();
    encode_rows(
        &mut w,
        user_ids.iter(),
        (0..user_ids.len()).map(|u| params.user(u)),
    );
    let Some((all, lens)) = comm.gather_flat(0, &w.finish())? else {
        return Ok(None);
    };
    sorted_rows(&all, &lens, params.factors + 1).map(Some)
}

/// This rank's range of the users sorted by id across the job, with their rows (packed): the
/// users of rank r all come before those of rank r + 1.
pub fn sort_across(
    comm: &dyn Collective,
    user_ids: &[Id],
    params: ParamsRef,
) -> Result<(Vec<Id>, Vec<f32>)> {
    let mut order: Vec<u32> = (0..user_ids.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| user_ids[a as usize].cmp(&user_ids[b as usize]));
    let cuts = cuts(comm, user_ids, &order)?;
    // The users of each destination, in id order: a run of `order` between two cuts.
    let mut outgoing: Vec<Writer> = (0..comm.size()).map(|_| Writer::new()).collect();
    let mut at = 0;
    for (dest, w) in outgoing.iter_mut().enumerate() {
        let end = match cuts.get(dest) {
            Some(cut) => at + order[at..].partition_point(|&u| user_ids[u as usize] < *cut),
            None => order.len(),
        };
        let run = &order[at..end];
        encode_rows(
            w,
            run.iter().map(|&u| &user_ids[u as usize]),
            run.iter().map(|&u| params.user(u as usize)),
        );
        at = end;
    }
    drop(order);
    let outgoing: Vec<Vec<u8>> = outgoing.into_iter().map(Writer::finish).collect();
    let lens: Vec<u64> = outgoing.iter().map(|o| o.len() as u64).collect();
    let flat = outgoing.concat();
    let (received, lens) = comm.alltoall_flat(&flat, &lens)?;
    drop(flat);
    sorted_rows(&received, &lens, params.factors + 1)
}

/// Where the ranks' ranges of ids meet: for each rank but the last, the id the next range
/// starts at (the median over the ranks of their own ids' quantile there). Users are spread
/// over the ranks by their ids' hash, so each rank's ids sample the job's evenly.
fn cuts(comm: &dyn Collective, ids: &[Id], order: &[u32]) -> Result<Vec<Id>> {
    let ranks = comm.size();
    let mut w = Writer::new();
    if !order.is_empty() {
        for r in 1..ranks {
            ids[order[order.len() * r / ranks] as usize].write(&mut w);
        }
    }
    let all = comm.allgather_bytes(&w.finish())?;
    let mut quantiles: Vec<Vec<Id>> = vec![Vec::new(); ranks - 1];
    for bytes in all.iter().filter(|b| !b.is_empty()) {
        let mut r = Reader::new(bytes);
        for q in quantiles.iter_mut() {
            q.push(Id::read(&mut r)?);
        }
    }
    Ok(quantiles
        .into_iter()
        .filter(|q| !q.is_empty())
        .map(|mut q| {
            q.sort_unstable();
            q.swap_remove(q.len() / 2)
        })
        .collect())
}

/// Users and their rows as one message: the count, the ids, then the rows packed.
fn encode_rows<'a>(
    w: &mut Writer,
    ids: impl ExactSizeIterator<Item = &'a Id>,
    rows: impl Iterator<Item = &'a [f32]>,
) {
    w.u64(ids.len() as u64);
    for id in ids {
        id.write(w);
    }
    let packed: Vec<f32> = rows.flat_map(|r| r.iter().copied()).collect();
    w.f32s(&packed);
}

/// Messages of `encode_rows` back to back (`lens` bytes each) as one list of users sorted by
/// id, rows packed (`stride` floats each).
fn sorted_rows(all: &[u8], lens: &[u64], stride: usize) -> Result<(Vec<Id>, Vec<f32>)> {
    // (id, message, row in message), sorted by id; the rows stay in the received bytes until
    // copied once into their sorted place.
    let mut ids: Vec<(Id, u32, u32)> = Vec::new();
    let mut rows_of: Vec<&[u8]> = Vec::with_capacity(lens.len());
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
            return Err(Error::runtime("corrupt user rows received from a rank"));
        }
        rows_of.push(rows);
    }
    ids.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut sorted = Vec::with_capacity(ids.len() * stride);
    for &(_, part, row) in &ids {
        let bytes = &rows_of[part as usize][row as usize * stride * 4..][..stride * 4];
        sorted.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok((ids.into_iter().map(|(id, ..)| id).collect(), sorted))
}

/// Write this rank's range of the sorted users as its part of version `version`'s users'
/// table, streamed to storage (the parts agree on the id column's type: int64 when every id of
/// the job is an integer); returns its rows.
pub fn write_part(
    comm: &dyn Collective,
    loc: &Location,
    version: &str,
    (ids, rows): (&[Id], &[f32]),
    factors: usize,
) -> Result<u64> {
    let mut strings = [ids.iter().any(|id| matches!(id, Id::Str(_))) as u64];
    comm.reduce_u64(&mut strings, Op::Max);
    let file = user_part_file(version, comm.rank());
    let key = loc.child_key(&file);
    let written = write_rows(
        loc.writer(&key),
        "user_id",
        (ids, rows),
        factors,
        (None, strings[0] == 0),
    )
    .and_then(|w| w.finish());
    crate::fault::point("user-part", comm.rank())?;
    written.map(|()| ids.len() as u64)
}

/// Every rank's part of version `version`'s users' table, in rank order, on every rank (after
/// each wrote its own, of `rows` rows).
pub fn agree_parts(comm: &dyn Collective, version: &str, rows: u64) -> Vec<TablePart> {
    let mut all = vec![0u64; comm.size()];
    all[comm.rank()] = rows;
    comm.reduce_u64(&mut all, Op::Sum);
    all.into_iter()
        .enumerate()
        .map(|(r, rows)| TablePart {
            file: user_part_file(version, r),
            rows,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;

    #[test]
    fn one_rank_sorts_its_users_and_keeps_every_row() {
        let ids: Vec<Id> = [5i64, -1, 3, 9].into_iter().map(Id::Int).collect();
        let rows: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let params = ParamsRef {
            factors: 1,
            width: 2,
            users: &rows,
            items: &[],
        };
        let (sorted, packed) = sort_across(&Solo, &ids, params).unwrap();
        assert_eq!(
            sorted,
            [-1i64, 3, 5, 9]
                .into_iter()
                .map(Id::Int)
                .collect::<Vec<_>>()
        );
        assert_eq!(packed, vec![2.0, 3.0, 4.0, 5.0, 0.0, 1.0, 6.0, 7.0]);
        let (gathered, rows) = gather(&Solo, &ids, params).unwrap().unwrap();
        assert_eq!((gathered, rows), (sorted, packed));
    }
}
