//! A published model in memory, and what it answers: a prediction for a (user, item) pair,
//! scores of every item for a user, the top N items for a user (leaving out the ones given),
//! and the items most similar to an item. No MPI, files or runtime: `model_io` fetches the
//! bytes from any location, this turns them into a `Model`.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::ids::{FastMap, Id};

use super::kernel::{dot, predict};
use super::meta::ModelMeta;
use super::tables::{parquet_to_rows, RowsTable};

/// A loaded model: ids and rows (`[bias, factors...]`, `factors + 1` floats each), users and
/// items each in id order.
pub struct Model {
    pub meta: ModelMeta,
    pub user_ids: Vec<Id>,
    pub user_rows: Vec<f32>,
    pub item_ids: Vec<Id>,
    pub item_rows: Vec<f32>,
    /// Each item's training ratings, if the model recorded them (the popularity fallback).
    pub item_counts: Option<Vec<u64>>,
    users: FastMap<Id, u32>,
    items: FastMap<Id, u32>,
    /// The item rows fold-in solves against and their Gram matrix, made on the first fold-in
    /// of an implicit model.
    pub(super) fold_items: std::sync::OnceLock<super::fold_in::FoldItems>,
    /// The items' factors scaled to unit length, made on the first `similar_many`.
    pub(super) unit_items: std::sync::OnceLock<ndarray::Array2<f32>>,
}

/// An item and its score, as `top_n` and `similar` list them (best first).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub item: u32,
    pub score: f32,
}

impl Model {
    /// A model from `model.json`, its users table decoded (whole, or its parts in order) and
    /// the bytes of its items table (with its name for messages). Refused if the tables do not
    /// match `model.json`.
    pub fn from_tables(
        meta: ModelMeta,
        users: Vec<RowsTable>,
        items: (Bytes, String),
    ) -> Result<Model> {
        let users = match users.len() {
            1 => users.into_iter().next().expect("one table"),
            _ => {
                let mut all = RowsTable::default();
                for part in users {
                    all.ids.extend(part.ids);
                    all.rows.extend(part.rows);
                }
                all
            }
        };
        if meta.n_users != users.ids.len() as u64 {
            return Err(Error::usage(format!(
                "{}: {} rows, but model.json says {} (a model from two saves?)",
                meta.table("users"),
                users.ids.len(),
                meta.n_users
            )));
        }
        Model::from_share(meta, users, items)
    }

    /// `from_tables` with some of the users only (a rank's share): every item, as in the
    /// whole model.
    pub fn from_share(
        meta: ModelMeta,
        users: RowsTable,
        (items, shown): (Bytes, String),
    ) -> Result<Model> {
        let items = parquet_to_rows(items, "item_id", meta.factors, &shown)?;
        if meta.n_items != items.ids.len() as u64 {
            return Err(Error::usage(format!(
                "{shown}: {} rows, but model.json says {} (a model from two saves?)",
                items.ids.len(),
                meta.n_items
            )));
        }
        let mut model = Model::new(meta, users.ids, users.rows, items.ids, items.rows);
        model.item_counts = items.counts;
        Ok(model)
    }

    /// Its metadata, item ids, item rows and item counts, the users' rows and index dropped
    /// (what a rank keeps of its share once it has handed the rows on).
    pub fn into_items(self) -> (ModelMeta, Vec<Id>, Vec<f32>, Option<Vec<u64>>) {
        (self.meta, self.item_ids, self.item_rows, self.item_counts)
    }

    /// A model from its parts (rows packed, `factors + 1` floats each, in the ids' order).
    pub fn new(
        meta: ModelMeta,
        user_ids: Vec<Id>,
        user_rows: Vec<f32>,
        item_ids: Vec<Id>,
        item_rows: Vec<f32>,
    ) -> Model {
        let stride = meta.factors + 1;
        assert_eq!(user_rows.len(), user_ids.len() * stride, "a row per user");
        assert_eq!(item_rows.len(), item_ids.len() * stride, "a row per item");
        let index = |ids: &[Id]| ids.iter().cloned().zip(0u32..).collect();
        Model {
            users: index(&user_ids),
            items: index(&item_ids),
            meta,
            user_ids,
            user_rows,
            item_ids,
            item_rows,
            item_counts: None,
            fold_items: std::sync::OnceLock::new(),
            unit_items: std::sync::OnceLock::new(),
        }
    }

    /// A model of `users` x `items` with `k` factors, every value drawn from N(0, 1) (seeded):
    /// for tests of what reads a model.
    #[cfg(test)]
    pub fn random_for_tests(users: usize, items: usize, k: usize, biased: bool) -> Model {
        let mut rng = crate::rng::Rng::new(7, 1);
        let mut rows =
            |n: usize| -> Vec<f32> { (0..n * (k + 1)).map(|_| rng.normal() as f32).collect() };
        let (user_rows, item_rows) = (rows(users), rows(items));
        let mut meta = ModelMeta::for_tests(users as u64, items as u64, biased);
        meta.factors = k;
        let ids = |n: usize| (0..n as i64).map(Id::Int).collect::<Vec<_>>();
        Model::new(meta, ids(users), user_rows, ids(items), item_rows)
    }

    /// Floats per row: the bias, then the factors.
    pub fn stride(&self) -> usize {
        self.meta.factors + 1
    }

    /// The index of a user the model knows.
    pub fn user(&self, id: &Id) -> Option<usize> {
        self.users.get(id).map(|&u| u as usize)
    }

    /// The index of an item the model knows.
    pub fn item(&self, id: &Id) -> Option<usize> {
        self.items.get(id).map(|&i| i as usize)
    }

    /// User `u`'s `[bias, factors...]`.
    pub fn user_row(&self, u: usize) -> &[f32] {
        &self.user_rows[u * self.stride()..(u + 1) * self.stride()]
    }

    /// Item `i`'s `[bias, factors...]`.
    pub fn item_row(&self, i: usize) -> &[f32] {
        &self.item_rows[i * self.stride()..(i + 1) * self.stride()]
    }

    /// The predicted rating of user `u` for item `i`, clipped to the training ratings' range;
    /// an unknown user or item (`None`) falls back to the global mean and the bias that is
    /// known, as Surprise does.
    pub fn predict(&self, u: Option<usize>, i: Option<usize>) -> f32 {
        let m = &self.meta;
        predict(
            u.map(|u| self.user_row(u)),
            i.map(|i| self.item_row(i)),
            m.global_mean,
            m.biased,
            (m.rating_min, m.rating_max),
        )
    }

    /// `predict` by ids.
    pub fn predict_ids(&self, user: &Id, item: &Id) -> f32 {
        self.predict(self.user(user), self.item(item))
    }

    /// User `u`'s score of every item, in item order: the prediction before clipping (clipping
    /// would make the best items tie).
    pub fn scores(&self, u: usize, out: &mut Vec<f32>) {
        let user = self.user_row(u);
        let offset = if self.meta.biased {
            self.meta.global_mean + user[0]
        } else {
            0.0
        };
        out.clear();
        out.extend(self.item_rows.chunks_exact(self.stride()).map(|item| {
            let bias = if self.meta.biased { item[0] } else { 0.0 };
            offset + bias + dot(&user[1..], &item[1..])
        }));
    }

    /// User `u`'s `n` best-scored items, best first, leaving out `exclude` (item indices, in
    /// any order: the items the user already interacted with, say). Equal scores: the lower
    /// item index first.
    pub fn top_n(&self, u: usize, n: usize, exclude: &[u32]) -> Vec<Scored> {
        let mut excluded = exclude.to_vec();
        excluded.sort_unstable();
        let mut scores = Vec::with_capacity(self.item_ids.len());
        self.scores(u, &mut scores);
        best(
            scores
                .into_iter()
                .zip(0u32..)
                .filter(|(_, i)| excluded.binary_search(i).is_err()),
            n,
        )
    }

    /// The `n` items most similar to item `i` by the cosine of their factors (biases left
    /// out), most similar first, `i` itself left out.
    pub fn similar(&self, i: usize, n: usize) -> Vec<Scored> {
        let factors = |row: &[f32]| row[1..].to_vec();
        let norm = |v: &[f32]| dot(v, v).sqrt();
        let target = factors(self.item_row(i));
        let target_norm = norm(&target);
        let cosines = self
            .item_rows
            .chunks_exact(self.stride())
            .zip(0u32..)
            .filter(|&(_, j)| j as usize != i)
            .map(|(row, j)| {
                let v = &row[1..];
                let denominator = target_norm * norm(v);
                let cosine = if denominator > 0.0 {
                    dot(&target, v) / denominator
                } else {
                    0.0
                };
                (cosine, j)
            });
        best(cosines, n)
    }
}

/// The `n` best of (score, item) pairs, best first (ties: lower item first), keeping no more
/// than `n` of them at a time.
fn best(scored: impl Iterator<Item = (f32, u32)>, n: usize) -> Vec<Scored> {
    let mut best = Best::new(n);
    for (score, item) in scored {
        best.offer(score, item);
    }
    best.into_sorted()
}

/// The `n` best scored items seen so far (a bounded selection: never more than `n` kept).
pub(crate) struct Best {
    n: usize,
    /// A min-heap of the best so far: its top is the worst of them, the one to beat.
    heap: BinaryHeap<Worst>,
}

impl Best {
    pub(crate) fn new(n: usize) -> Best {
        Best {
            n,
            heap: BinaryHeap::with_capacity(n + 1),
        }
    }

    #[inline]
    pub(crate) fn offer(&mut self, score: f32, item: u32) {
        let candidate = Worst(Scored { item, score });
        if self.heap.len() < self.n {
            self.heap.push(candidate);
        } else if self.heap.peek().is_some_and(|w| candidate < *w) {
            self.heap.pop();
            self.heap.push(candidate);
        }
    }

    /// How many are kept (at most `n`).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The score of the worst kept, the one to beat.
    pub(crate) fn worst(&self) -> Option<f32> {
        self.heap.peek().map(|w| w.0.score)
    }

    /// Best first; equal scores, the lower item first.
    pub(crate) fn into_sorted(self) -> Vec<Scored> {
        let mut out: Vec<Scored> = self.heap.into_iter().map(|w| w.0).collect();
        out.sort_by_key(|s| Worst(*s));
        out
    }
}

/// Orders `Scored` so that the worse one is greater: a lower score, or at equal scores the
/// higher item index.
#[derive(Clone, Copy, Debug)]
struct Worst(Scored);

impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .0
            .score
            .total_cmp(&self.0.score)
            .then(self.0.item.cmp(&other.0.item))
    }
}

impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Worst {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mf::tables::rows_to_parquet;

    /// A model of 2 users and 4 items with 2 factors, and its model.json.
    fn model(biased: bool) -> Model {
        let meta = ModelMeta::for_tests(2, 4, biased);
        let users = [Id::Int(10), Id::Str("anna".into())];
        let user_rows = vec![0.5, 1.0, 0.0, /* anna */ -0.5, 0.0, 1.0];
        let items = [Id::Int(1), Id::Int(2), Id::Int(3), Id::Int(4)];
        #[rustfmt::skip]
        let item_rows = vec![
            0.0, 1.0, 0.0,   // 1: like user 10
            0.2, 0.5, 0.5,   // 2
            0.1, 2.0, 0.0,   // 3: user 10's favourite, same direction as 1
            0.0, 0.0, -1.0,  // 4: anna's least
        ];
        let users = rows_to_parquet("user_id", &users, &user_rows, 2).unwrap();
        let users = parquet_to_rows(users, "user_id", 2, "u").unwrap();
        let items = rows_to_parquet("item_id", &items, &item_rows, 2).unwrap();
        Model::from_tables(meta, vec![users], (items, "i".into())).unwrap()
    }

    #[test]
    fn predictions_fall_back_to_what_is_known_and_are_clipped() {
        let m = model(true);
        let (u10, i3) = (m.user(&Id::Int(10)).unwrap(), m.item(&Id::Int(3)).unwrap());
        // 3 + 0.5 + 0.1 + 2.0 = 5.6, clipped to 5.
        assert_eq!(m.predict(Some(u10), Some(i3)), 5.0);
        assert_eq!(
            m.predict_ids(&Id::Int(10), &Id::Int(2)),
            3.0 + 0.5 + 0.2 + 0.5
        );
        assert_eq!(m.predict_ids(&Id::Int(99), &Id::Int(2)), 3.2);
        assert_eq!(m.predict_ids(&Id::Int(10), &Id::Int(99)), 3.5);
        assert_eq!(m.predict_ids(&Id::Int(99), &Id::Int(99)), 3.0);
        let mut scores = Vec::new();
        m.scores(u10, &mut scores);
        assert_eq!(scores.len(), 4);
        assert!((scores[2] - 5.6).abs() < 1e-6, "scores are not clipped");
        let plain = model(false);
        plain.scores(u10, &mut scores);
        assert_eq!(scores, vec![1.0, 0.5, 2.0, 0.0]);
    }

    #[test]
    fn top_n_is_the_best_scored_items_without_the_excluded_ones() {
        let m = model(false);
        let u10 = m.user(&Id::Int(10)).unwrap();
        let items = |v: Vec<Scored>| v.iter().map(|s| s.item).collect::<Vec<_>>();
        assert_eq!(items(m.top_n(u10, 2, &[])), vec![2, 0]);
        assert_eq!(items(m.top_n(u10, 10, &[])), vec![2, 0, 1, 3]);
        assert_eq!(items(m.top_n(u10, 2, &[2])), vec![0, 1]);
        assert_eq!(items(m.top_n(u10, 3, &[3, 0, 2])), vec![1]);
        assert!(m.top_n(u10, 0, &[]).is_empty());
        // anna: items 1 and 3 tie at 0: the lower index first.
        let anna = m.user(&Id::Str("anna".into())).unwrap();
        let top = m.top_n(anna, 4, &[]);
        assert_eq!(items(top.clone()), vec![1, 0, 2, 3]);
        assert_eq!(top[0].score, 0.5);
    }

    #[test]
    fn the_most_similar_items_point_the_same_way_and_exclude_the_item_itself() {
        let m = model(true);
        let similar = m.similar(0, 3);
        assert_eq!(
            similar[0],
            Scored {
                item: 2,
                score: 1.0
            }
        );
        assert_eq!(
            similar.iter().map(|s| s.item).collect::<Vec<_>>(),
            vec![2, 1, 3]
        );
        assert_eq!(similar[2].score, 0.0, "orthogonal");
        let opposite = m.similar(1, 3)[2];
        assert_eq!(opposite.item, 3);
        assert!(opposite.score < -0.7, "{opposite:?}");
        // Item 4 is orthogonal to items 1 and 3 (cosine 0): a tie, the lower index first.
        assert_eq!(
            m.similar(3, 1),
            vec![Scored {
                item: 0,
                score: 0.0
            }]
        );
    }

    #[test]
    fn tables_that_do_not_match_model_json_are_refused() {
        let m = model(true);
        let mut meta = m.meta.clone();
        meta.n_users = 3;
        let users = rows_to_parquet("user_id", &m.user_ids, &m.user_rows, 2).unwrap();
        let items = rows_to_parquet("item_id", &m.item_ids, &m.item_rows, 2).unwrap();
        let users = parquet_to_rows(users, "user_id", 2, "users.parquet").unwrap();
        let err = Model::from_tables(meta, vec![users], (items, "i".into()))
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .contains("users.parquet: 2 rows, but model.json says 3"));
    }
}
