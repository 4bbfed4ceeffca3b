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
use std::borrow::Cow;

use crate::mf::tables::{write_groups, RowGroup, ROWS_PER_GROUP};
use crate::mf::ParamsRef;
use crate::model_io::{new_version_id, user_part_file, VERSIONS_DIR};
use crate::store::Location;
use crate::wire::{Reader, Writer};

/// Above this size the users' table is written in parts (`FUNKSVD_USER_PARTS_ABOVE`, bytes,
/// changes it; 0 writes every table in parts). Gathered whole, the table is held twice on rank
/// 0 (the rows received, the file encoded): at most 128 MB, within the fixed 300 MB of the
/// memory bound (docs/SCALE.md); in parts, each rank holds its range once, streamed.
const PARTS_ABOVE: u64 = 64 << 20;

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
    let parts = bytes > above;
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

/// This rank's users and their rows, encoded for `gather` (the rows copied once, so that the
/// caller can free its own before the gather).
pub fn for_gather(user_ids: &[Id], params: ParamsRef) -> ForRanges {
    let mut w = Writer::new();
    encode_rows(
        &mut w,
        user_ids.iter(),
        (0..user_ids.len()).map(|u| params.user(u)),
    );
    ForRanges {
        lens: vec![w.buf.len() as u64],
        flat: w.finish(),
        stride: params.factors + 1,
    }
}

/// Every rank's users on rank 0 (`for_gather`'s messages), sorted by id; `None` elsewhere.
pub fn gather(comm: &dyn Collective, mine: ForRanges) -> Result<Option<SortedUsers>> {
    let Some((all, lens)) = comm.gather_flat(0, &mine.flat)? else {
        return Ok(None);
    };
    drop(mine.flat);
    SortedUsers::of(all, &lens, mine.stride).map(Some)
}

/// The whole users' table of `users` as a Parquet file in memory (the id column int64 when
/// every id is an integer), encoded a row group at a time from the received rows.
pub fn whole_table(users: &SortedUsers, factors: usize) -> Result<bytes::Bytes> {
    let buf = Vec::with_capacity(users.len() * ((factors + 1) * 4 + 16) + (1 << 16));
    let buf = write_groups(
        buf,
        "user_id",
        users.groups(),
        factors,
        (None, !users.any_text()),
    )?;
    Ok(bytes::Bytes::from(buf))
}

/// Each rank's range of this rank's users and their rows, encoded for `sort_across`: the users
/// of rank r all come before those of rank r + 1 (ranges cut at quantiles; collective). The
/// rows are copied once, so that the caller can free its own before the exchange.
pub struct ForRanges {
    flat: Vec<u8>,
    lens: Vec<u64>,
    stride: usize,
}

impl ForRanges {
    pub fn of(comm: &dyn Collective, user_ids: &[Id], params: ParamsRef) -> Result<ForRanges> {
        let mut order: Vec<u32> = (0..user_ids.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| user_ids[a as usize].cmp(&user_ids[b as usize]));
        let cuts = cuts(comm, user_ids, &order)?;
        // The users of each destination, in id order: a run of `order` between two cuts, one
        // message after the other in one buffer.
        let mut w = Writer::new();
        let mut lens = Vec::with_capacity(comm.size());
        let mut at = 0;
        for dest in 0..comm.size() {
            let end = match cuts.get(dest) {
                Some(cut) => at + order[at..].partition_point(|&u| user_ids[u as usize] < *cut),
                None => order.len(),
            };
            let run = &order[at..end];
            let before = w.buf.len();
            encode_rows(
                &mut w,
                run.iter().map(|&u| &user_ids[u as usize]),
                run.iter().map(|&u| params.user(u as usize)),
            );
            lens.push((w.buf.len() - before) as u64);
            at = end;
        }
        Ok(ForRanges {
            flat: w.finish(),
            lens,
            stride: params.factors + 1,
        })
    }
}

/// This rank's range of the users sorted by id across the job, with their rows: the users of
/// rank r all come before those of rank r + 1. One alltoall of `outgoing`.
pub fn sort_across(comm: &dyn Collective, outgoing: ForRanges) -> Result<SortedUsers> {
    let ForRanges { flat, lens, stride } = outgoing;
    let (received, lens) = comm.alltoall_flat(&flat, &lens)?;
    drop(flat);
    SortedUsers::of(received, &lens, stride)
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
    let n = ids.len();
    w.u64(n as u64);
    for id in ids {
        id.write(w);
    }
    let mut floats = 0u64;
    let count_at = w.buf.len();
    w.u64(0);
    for row in rows {
        for &x in row {
            w.f32(x);
        }
        floats += row.len() as u64;
    }
    w.buf[count_at..count_at + 8].copy_from_slice(&floats.to_le_bytes());
}

/// Messages of `encode_rows` back to back, as one list of users sorted by id. The rows stay in
/// the received bytes, read out a row group at a time as the table is written: the rows are
/// never held twice.
pub struct SortedUsers {
    received: Vec<u8>,
    /// (id, message, row in message), sorted by id.
    order: Vec<(Id, u32, u32)>,
    /// Where each message's rows start in `received`.
    rows_at: Vec<usize>,
    stride: usize,
}

impl SortedUsers {
    /// `received`: messages of `lens` bytes each; rows of `stride` floats.
    fn of(received: Vec<u8>, lens: &[u64], stride: usize) -> Result<SortedUsers> {
        let mut order: Vec<(Id, u32, u32)> = Vec::new();
        let mut rows_at = Vec::with_capacity(lens.len());
        let mut at = 0usize;
        for (part, &len) in lens.iter().enumerate() {
            let message = &received[at..at + len as usize];
            let mut r = Reader::new(message);
            let n = r.u64()?;
            for row in 0..n {
                order.push((Id::read(&mut r)?, part as u32, row as u32));
            }
            let rows = r.f32_bytes()?;
            if rows.len() != n as usize * stride * 4 {
                return Err(Error::runtime("corrupt user rows received from a rank"));
            }
            rows_at.push(at + (rows.as_ptr() as usize - message.as_ptr() as usize));
            at += len as usize;
        }
        order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(SortedUsers {
            received,
            order,
            rows_at,
            stride,
        })
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Whether any id is text.
    fn any_text(&self) -> bool {
        self.order.iter().any(|(id, ..)| matches!(id, Id::Str(_)))
    }

    /// The users `range` of the order: ids and packed rows.
    fn rows(&self, range: std::ops::Range<usize>) -> (Vec<Id>, Vec<f32>) {
        let users = &self.order[range];
        let mut rows = Vec::with_capacity(users.len() * self.stride);
        for &(_, part, row) in users {
            let at = self.rows_at[part as usize] + row as usize * self.stride * 4;
            let bytes = &self.received[at..at + self.stride * 4];
            rows.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        (users.iter().map(|(id, ..)| id.clone()).collect(), rows)
    }

    /// Every user and row, in order.
    pub fn whole(&self) -> (Vec<Id>, Vec<f32>) {
        self.rows(0..self.len())
    }

    /// The users a row group at a time.
    fn groups(&self) -> impl Iterator<Item = RowGroup<'static>> + '_ {
        (0..self.len()).step_by(ROWS_PER_GROUP).map(|start| {
            let (ids, rows) = self.rows(start..(start + ROWS_PER_GROUP).min(self.len()));
            (Cow::Owned(ids), Cow::Owned(rows))
        })
    }
}

/// Write this rank's range of the sorted users as its part of version `version`'s users'
/// table, streamed to storage a row group at a time (the parts agree on the id column's type:
/// int64 when every id of the job is an integer); returns its rows.
pub fn write_part(
    comm: &dyn Collective,
    loc: &Location,
    version: &str,
    users: &SortedUsers,
    factors: usize,
) -> Result<u64> {
    let mut strings = [users.any_text() as u64];
    comm.reduce_u64(&mut strings, Op::Max);
    let file = user_part_file(version, comm.rank());
    let key = loc.child_key(&file);
    let written = write_groups(
        loc.writer(&key),
        "user_id",
        users.groups(),
        factors,
        (None, strings[0] == 0),
    )
    .and_then(|w| w.finish());
    crate::fault::point("user-part", comm.rank())?;
    written.map(|()| users.len() as u64)
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
        let outgoing = ForRanges::of(&Solo, &ids, params).unwrap();
        let (sorted, packed) = sort_across(&Solo, outgoing).unwrap().whole();
        assert_eq!(
            sorted,
            [-1i64, 3, 5, 9]
                .into_iter()
                .map(Id::Int)
                .collect::<Vec<_>>()
        );
        assert_eq!(packed, vec![2.0, 3.0, 4.0, 5.0, 0.0, 1.0, 6.0, 7.0]);
        let gathered = gather(&Solo, for_gather(&ids, params)).unwrap().unwrap();
        assert_eq!(gathered.whole(), (sorted, packed));
    }
}
