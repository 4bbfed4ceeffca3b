//! `train --rank-metrics K`: the hold-out ranking of the model in the making, on the epochs the
//! log shows. Every rank scores its own users (a `Model` over its rows and every item row, in
//! training-row order) against all items minus their training items; one allreduce sums.

use crate::collective::{Collective, Op};
use crate::ids::Id;
use crate::mf::meta::ModelMeta;
use crate::mf::{Globals, Model, ParamsRef};
use crate::ranking::{ndcg_by_user, rank_users, Ranking, Sample, UserLists};

use super::data::{RankData, UNKNOWN};

/// What scoring an epoch needs, built once before the first.
pub struct RankCheck {
    k: usize,
    /// The users scored, numbered by their place in `rows`.
    users: Vec<UserLists>,
    /// The training row of each user scored: the model scored holds these users' rows only
    /// (a copy of every user's row beside the trainer's was the largest allocation of a
    /// sampled ranking).
    rows: Vec<u32>,
    /// The job's training ratings per item row (the popularity baseline).
    counts: Vec<u64>,
    /// (0, the held-out pairs of this rank's users scored with items without training
    /// ratings).
    unknown: [u64; 2],
    sample: Sample,
}

impl RankCheck {
    /// The check of `data`'s hold-out at `k`, of a sample of about `most` of its users where
    /// it has more (0: every user; `ranking::Sample`). Collective.
    pub fn new(
        comm: &dyn Collective,
        data: &RankData,
        n_items: usize,
        (k, most): (usize, u64),
    ) -> RankCheck {
        let r = &data.ratings;
        let mut counts = vec![0u64; n_items];
        for &i in &r.items {
            counts[i as usize] += 1;
        }
        comm.reduce_u64(&mut counts, Op::Sum);
        let mut relevant: Vec<Vec<u32>> = vec![Vec::new(); r.n_users()];
        // Pairs of users without training ratings are left out (the model has no row for
        // them); items without training ratings count as relevant and are never found.
        for (n, h) in data.holdout.iter().enumerate() {
            if h.user == UNKNOWN {
                continue;
            }
            let item = match h.item {
                UNKNOWN => (n_items + n) as u32,
                row => row,
            };
            relevant[h.user as usize].push(item);
        }
        let with_holdout = relevant.iter().filter(|rel| !rel.is_empty()).count();
        let sample = Sample::agree(comm, with_holdout, most);
        let mut rows = Vec::new();
        let users: Vec<UserLists> = relevant
            .into_iter()
            .enumerate()
            .filter(|(u, rel)| !rel.is_empty() && sample.keeps(&r.user_ids[*u]))
            .map(|(u, mut rel)| {
                rel.sort_unstable();
                rows.push(u as u32);
                UserLists {
                    user: rows.len() as u32 - 1,
                    train: r.ratings_of(u).0.to_vec(),
                    relevant: rel,
                }
            })
            .collect();
        let unknown_items = users
            .iter()
            .map(|u| {
                u.relevant
                    .iter()
                    .filter(|&&i| i as usize >= n_items)
                    .count() as u64
            })
            .sum();
        RankCheck {
            k,
            users,
            rows,
            counts,
            unknown: [0, unknown_items],
            sample,
        }
    }

    /// The ranking of the model `params` describes (collective).
    pub fn rank(
        &self,
        comm: &dyn Collective,
        params: ParamsRef,
        user_ids: &[Id],
        item_ids: &[Id],
        biased: bool,
        globals: Globals,
    ) -> Ranking {
        let model = model_of(params, (&self.rows, user_ids), item_ids, biased, globals);
        rank_users(
            comm,
            &model,
            &self.users,
            &self.counts,
            &[self.k],
            (self.unknown, self.sample),
        )
    }

    /// Each of this rank's users' NDCG@K by the lists of the model `params` describes, in one
    /// order call after call (no collective: the paired comparison of two models).
    pub fn ndcg_by_user(
        &self,
        params: ParamsRef,
        user_ids: &[Id],
        item_ids: &[Id],
        biased: bool,
        globals: Globals,
    ) -> Vec<f64> {
        let model = model_of(params, (&self.rows, user_ids), item_ids, biased, globals);
        ndcg_by_user(&model, &self.users, self.k)
    }

    /// `NDCG@K 0.1234, recall@K 0.2345` of the model's lists (or of popularity's).
    pub fn describe(&self, ranking: &Ranking, popular: bool) -> String {
        let sums = if popular {
            &ranking.popular
        } else {
            &ranking.model
        };
        match sums.first().and_then(|s| s.means()) {
            Some(m) => format!("NDCG@{k} {:.4}, recall@{k} {:.4}", m[2], m[1], k = self.k),
            None => format!("NDCG@{} - (no held-out pairs)", self.k),
        }
    }
}

/// A `Model` of the users of training rows `rows` (in that order) and every item in training
/// order (the padding of `params`' rows dropped).
fn model_of(
    params: ParamsRef,
    (rows, user_ids): (&[u32], &[Id]),
    item_ids: &[Id],
    biased: bool,
    globals: Globals,
) -> Model {
    let f = params.factors;
    let unpadded = |all: &[f32], rows: &mut dyn Iterator<Item = usize>| -> Vec<f32> {
        rows.flat_map(|i| {
            all[i * params.width..i * params.width + f + 1]
                .iter()
                .copied()
        })
        .collect()
    };
    let meta = ModelMeta::minimal(
        rows.len() as u64,
        item_ids.len() as u64,
        f,
        biased,
        globals.global_mean,
    );
    Model::new(
        meta,
        rows.iter().map(|&u| user_ids[u as usize].clone()).collect(),
        unpadded(params.users, &mut rows.iter().map(|&u| u as usize)),
        item_ids.to_vec(),
        unpadded(params.items, &mut (0..item_ids.len())),
    )
}
