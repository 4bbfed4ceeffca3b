//! The parts of `recommend` that are not its flow: which rank answers for which users (equal
//! shares of a sorted list), the seen items routed to that rank, the popularity order for users
//! the model does not know, and the lists as Parquet rows.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::collective::{Collective, CollectiveExt};
use crate::error::{Error, Result};
use crate::ids::Id;
use crate::mf::{Model, Scored};
use crate::ratings::OwnedRatings;
use crate::store::ObjectWriter;
use crate::wire::{Reader, Writer};

/// Rank `rank`'s share of `n` sorted targets: a contiguous range, the shares about equal. The
/// parts, read in rank order, list the targets in id order whatever the rank count.
pub fn share(n: usize, ranks: usize, rank: usize) -> Range<usize> {
    n * rank / ranks..n * (rank + 1) / ranks
}

/// Which rank answers for which user ids: each rank loads an equal `share` of the model's
/// id-sorted users, and answers for the ids from its share's first to the next share's first
/// (ids the model does not know included). The ranks' parts, read in rank order, then list the
/// users in id order, and no rank holds more of the users' table than its share.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranges {
    /// Each rank's first id (`None`: an empty share).
    firsts: Vec<Option<Id>>,
}

impl Ranges {
    /// Every rank's first id, from each rank's own.
    pub fn agree(comm: &dyn Collective, first: Option<&Id>) -> Result<Ranges> {
        let mut w = Writer::new();
        if let Some(id) = first {
            id.write(&mut w);
        }
        let firsts = comm
            .allgather_bytes(&w.finish())?
            .iter()
            .map(|b| match b.is_empty() {
                true => Ok(None),
                false => Id::read(&mut Reader::new(b)).map(Some),
            })
            .collect::<Result<_>>()?;
        Ok(Ranges { firsts })
    }

    /// The rank that answers for `id`: the last whose first id is at or below it, else the
    /// first with any users (rank 0 when no rank has any).
    pub fn owner(&self, id: &Id) -> usize {
        let mut owner = None;
        for (r, first) in self.firsts.iter().enumerate() {
            match first {
                Some(f) if f <= id => owner = Some(r),
                Some(_) if owner.is_none() => return r,
                _ => {}
            }
        }
        owner.unwrap_or(0)
    }
}

/// Marks an item the model does not know.
pub const UNKNOWN: u32 = u32::MAX;

/// The model's index of each of `owned`'s items (`owned.items[i]`), `UNKNOWN` where it has none.
pub fn item_index(model: &Model, owned: &OwnedRatings) -> Vec<u32> {
    owned
        .items
        .iter()
        .map(|id| model.item(id).map_or(UNKNOWN, |i| i as u32))
        .collect()
}

/// One user's (item, value) pairs as distinct items, ascending, each with its largest value: two
/// ids of the data can name one item of the model, and a pair counts its strongest event.
pub fn distinct_items(pairs: &mut Vec<(u32, f32)>) {
    pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)));
    pairs.dedup_by_key(|p| p.0);
}

/// The items each user in `owned` (this rank's users after the exchange) has, as the model's
/// item indices (`item_index[i]` for `owned.items[i]`, UNKNOWN if the model lacks it),
/// delivered to the rank that answers for the user (`ranges`): returns the lists of this
/// rank's `targets` (sorted), by position, each sorted ascending.
pub fn route_seen(
    comm: &dyn Collective,
    owned: &OwnedRatings,
    item_index: &[u32],
    (ranges, targets): (&Ranges, &[Id]),
) -> Result<Vec<Seen>> {
    let ranks = comm.size();
    let mut outgoing: Vec<Writer> = (0..ranks).map(|_| Writer::new()).collect();
    let mut pairs: Vec<(u32, f32)> = Vec::new();
    for run in owned.user_runs() {
        let id = &owned.users[owned.triples[run.start].user as usize];
        pairs.clear();
        pairs.extend(
            owned.triples[run]
                .iter()
                .map(|t| (item_index[t.item as usize], t.value))
                .filter(|&(i, _)| i != UNKNOWN),
        );
        distinct_items(&mut pairs);
        let w = &mut outgoing[ranges.owner(id)];
        id.write(w);
        w.u32(pairs.len() as u32);
        for &(i, v) in &pairs {
            w.u32(i);
            w.f32(v);
        }
    }
    let messages: Vec<Vec<u8>> = outgoing.into_iter().map(Writer::finish).collect();
    let incoming = comm.alltoall_bytes(&messages)?;
    drop(messages);
    let decoded = decode_seen(&incoming, targets);
    comm.agree(decoded)
}

/// `--users`' ids (rank 0 read them: `mine` is empty elsewhere), each delivered to the rank
/// that answers for it: this rank's, sorted, each once.
pub fn route_targets(comm: &dyn Collective, ranges: &Ranges, mine: &[Id]) -> Result<Vec<Id>> {
    let mut outgoing: Vec<Writer> = (0..comm.size()).map(|_| Writer::new()).collect();
    for id in mine {
        id.write(&mut outgoing[ranges.owner(id)]);
    }
    let messages: Vec<Vec<u8>> = outgoing.into_iter().map(Writer::finish).collect();
    let incoming = comm.alltoall_bytes(&messages)?;
    let mut targets = Vec::new();
    for message in &incoming {
        let mut r = Reader::new(message);
        while !r.is_empty() {
            targets.push(Id::read(&mut r)?);
        }
    }
    targets.sort_unstable();
    targets.dedup();
    Ok(targets)
}

/// A target user's interactions in `--data`: the model's item indices, ascending, and their
/// values (as training aggregates them).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    pub items: Vec<u32>,
    pub values: Vec<f32>,
}

/// The seen items of `targets` among the messages of `route_seen` (those of other users, not
/// asked for, are passed over).
fn decode_seen(incoming: &[Vec<u8>], targets: &[Id]) -> Result<Vec<Seen>> {
    let mut seen = vec![Seen::default(); targets.len()];
    for message in incoming {
        let mut r = Reader::new(message);
        while !r.is_empty() {
            let id = Id::read(&mut r)?;
            let n = r.u32()? as usize;
            let mut list = targets.binary_search(&id).ok().map(|p| &mut seen[p]);
            for _ in 0..n {
                let (item, value) = (r.u32()?, r.f32()?);
                if let Some(list) = list.as_mut() {
                    list.items.push(item);
                    list.values.push(value);
                }
            }
        }
    }
    Ok(seen)
}

/// The model's items by popularity (`counts[i]`: interactions with item i), most popular first,
/// equal counts by item index; items without interactions are left out.
pub fn popularity_order(counts: &[u64]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..counts.len() as u32)
        .filter(|&i| counts[i as usize] > 0)
        .collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
    order
}

/// The `n` most popular items not in `seen` (sorted ascending), scored by their counts.
pub fn popular_for(order: &[u32], counts: &[u64], seen: &[u32], n: usize) -> Vec<Scored> {
    order
        .iter()
        .filter(|i| seen.binary_search(i).is_err())
        .take(n)
        .map(|&item| Scored {
            item,
            score: counts[item as usize] as f32,
        })
        .collect()
}

/// Where a list came from: the model's scores, or popularity (a user the model does not know).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// The user's row in the model.
    Model,
    /// A row folded in from the user's interactions in `--data` (`Model::fold_in`).
    Folded,
    /// The most popular items (a user without a row or known interactions).
    Popular,
}

/// The names of a lists table's columns: whose list, what is listed, and whether a `source`
/// column says where each list came from.
pub struct ListColumns {
    pub key: &'static str,
    pub value: &'static str,
    pub with_source: bool,
}

/// Recommendation lists as Parquet rows, one row per entry: `{key}`, `rank` (1..), `{value}`,
/// `score` (f32) and, for users, `source`. Ids are int64 when every id of their kind is an
/// integer, else strings (as in the model's tables), the same in every rank's part.
pub struct ListWriter<'a> {
    writer: ArrowWriter<ObjectWriter<'a>>,
    schema: SchemaRef,
    columns: ListColumns,
    /// Whether the keys and values are written as int64.
    ints: [bool; 2],
    rows: u64,
}

impl<'a> ListWriter<'a> {
    pub fn new(out: ObjectWriter<'a>, columns: ListColumns, ints: [bool; 2]) -> Result<Self> {
        let id_type = |int: bool| match int {
            true => DataType::Int64,
            false => DataType::Utf8,
        };
        let mut fields = vec![
            Field::new(columns.key, id_type(ints[0]), false),
            Field::new("rank", DataType::Int32, false),
            Field::new(columns.value, id_type(ints[1]), false),
            Field::new("score", DataType::Float32, false),
        ];
        if columns.with_source {
            fields.push(Field::new("source", DataType::Utf8, false));
        }
        let schema = Arc::new(Schema::new(fields));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20))
            .set_created_by(format!("funksvd {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer =
            ArrowWriter::try_new(out, schema.clone(), Some(props)).map_err(|e| failed(&e))?;
        Ok(ListWriter {
            writer,
            schema,
            columns,
            ints,
            rows: 0,
        })
    }

    /// Add lists: `(key id, its list, source)`; `values[i]` is the id of item i.
    pub fn add(&mut self, lists: &[(&Id, &[Scored], Source)], values: &[Id]) -> Result<()> {
        let rows: usize = lists.iter().map(|l| l.1.len()).sum();
        if rows == 0 {
            return Ok(());
        }
        let keys = lists
            .iter()
            .flat_map(|(id, list, _)| std::iter::repeat_n(*id, list.len()));
        let entries = || lists.iter().flat_map(|(_, list, _)| list.iter());
        let ranks = Int32Array::from_iter_values(
            lists.iter().flat_map(|(_, list, _)| 1..=list.len() as i32),
        );
        let value_ids = entries().map(|s| &values[s.item as usize]);
        let mut columns: Vec<ArrayRef> = vec![
            id_array(keys, self.ints[0]),
            Arc::new(ranks),
            id_array(value_ids, self.ints[1]),
            Arc::new(Float32Array::from_iter_values(entries().map(|s| s.score))),
        ];
        if self.columns.with_source {
            let names = lists.iter().flat_map(|(_, list, source)| {
                let name = match source {
                    Source::Model => "model",
                    Source::Folded => "folded",
                    Source::Popular => "popular",
                };
                std::iter::repeat_n(name, list.len())
            });
            columns.push(Arc::new(StringArray::from_iter_values(names)));
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| Error::runtime(format!("cannot build a batch of lists: {e}")))?;
        self.writer.write(&batch).map_err(|e| failed(&e))?;
        self.rows += rows as u64;
        Ok(())
    }

    /// Close the Parquet file and make the object visible; returns its rows and bytes.
    pub fn finish(self) -> Result<(u64, u64)> {
        let rows = self.rows;
        let out = self.writer.into_inner().map_err(|e| failed(&e))?;
        let bytes = out.written();
        out.finish()?;
        Ok((rows, bytes))
    }
}

fn failed(e: &dyn std::fmt::Display) -> Error {
    Error::runtime(format!("cannot write Parquet: {e}"))
}

/// Ids as an int64 column (`int`: every id is an integer) or a string column.
fn id_array<'a>(ids: impl Iterator<Item = &'a Id>, int: bool) -> ArrayRef {
    match int {
        true => Arc::new(Int64Array::from_iter_values(ids.map(|id| match id {
            Id::Int(v) => *v,
            Id::Str(_) => 0,
        }))),
        false => Arc::new(StringArray::from_iter_values(ids.map(|id| id.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_about_equal_and_each_id_answered_by_its_share() {
        for (n, ranks) in [(10, 3), (0, 2), (2, 4), (1000, 8), (7, 1)] {
            let ids: Vec<Id> = (0..n as i64).map(|v| Id::Int(3 * v)).collect();
            let shares: Vec<Range<usize>> = (0..ranks).map(|r| share(n, ranks, r)).collect();
            let ranges = Ranges {
                firsts: shares
                    .iter()
                    .map(|s| ids.get(s.start).filter(|_| !s.is_empty()).cloned())
                    .collect(),
            };
            let mut next = 0;
            for (r, s) in shares.iter().enumerate() {
                assert_eq!(s.start, next);
                assert!(s.len() <= n / ranks + 1);
                for p in s.clone() {
                    assert_eq!(ranges.owner(&ids[p]), r, "n {n} ranks {ranks} p {p}");
                    // An id between two of the model's goes with the one below it.
                    assert_eq!(ranges.owner(&Id::Int(3 * p as i64 + 1)), r);
                }
                next = s.end;
            }
            assert_eq!(next, n);
            // Below every id of the model: the first rank with users.
            let first = shares.iter().position(|s| !s.is_empty()).unwrap_or(0);
            assert_eq!(ranges.owner(&Id::Int(-5)), first);
        }
    }

    #[test]
    fn popular_items_come_by_count_then_index_without_the_seen_ones() {
        let counts = [3, 0, 5, 3, 1];
        let order = popularity_order(&counts);
        assert_eq!(order, vec![2, 0, 3, 4]);
        let items = |v: Vec<Scored>| v.iter().map(|s| s.item).collect::<Vec<_>>();
        assert_eq!(items(popular_for(&order, &counts, &[], 2)), vec![2, 0]);
        assert_eq!(items(popular_for(&order, &counts, &[0, 2], 5)), vec![3, 4]);
        assert_eq!(popular_for(&order, &counts, &[], 1)[0].score, 5.0);
    }

    #[test]
    fn seen_lists_decode_into_the_targets_and_pass_over_other_users() {
        let mut w = Writer::new();
        for (id, items) in [(11i64, vec![1u32, 4]), (10, vec![]), (12, vec![7])] {
            Id::Int(id).write(&mut w);
            w.u32(items.len() as u32);
            items.iter().for_each(|&i| {
                w.u32(i);
                w.f32(i as f32 / 2.0);
            });
        }
        let message = w.finish();
        let targets = [Id::Int(10), Id::Int(11)];
        let seen = decode_seen(std::slice::from_ref(&message), &targets).unwrap();
        let four = Seen {
            items: vec![1, 4],
            values: vec![0.5, 2.0],
        };
        assert_eq!(
            seen,
            vec![Seen::default(), four],
            "user 12 is not asked for"
        );
    }
}
