//! Ranking quality on a hold-out, as a shop measures a recommender: for every user with
//! held-out interactions, the model's top k among all items minus the user's training items,
//! against the held-out items (binary relevance: each is a hit); the same for the popularity
//! baseline (the items with the most training interactions, minus the user's own); and the
//! share of the catalogue the lists cover. Each rank scores the users it owns; one allreduce
//! sums. Above `--rank-users` users with held-out interactions a uniform sample of about that
//! many is scored (`Sample`), its means given with their standard error: scoring a user costs
//! the whole catalogue, and a shop's millions of users would cost more than training.

use crate::collective::{Collective, Op};
use crate::error::{Error, Result};
use crate::ids::{mix64, Id};
use crate::metrics::RankSums;
use crate::mf::Model;
use crate::ratings::OwnedRatings;
use crate::recommend::{popular_for, popularity_order};

/// Users scored per block of top-N (bounds the lists held at once).
const USERS_PER_BLOCK: usize = 1024;

/// The users a ranking scores when there are more than `--rank-users` with held-out
/// interactions (the default).
pub const RANK_USERS: u64 = 50_000;

/// Which of the users with held-out interactions a ranking scores: all, or, above the most
/// asked for, those whose id hashes below a share (a uniform sample, the same users at any
/// count of ranks and in every run on the same data).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// The job's users with held-out interactions.
    pub of: u64,
    /// The share kept (1 = every user).
    pub share: f64,
}

impl Sample {
    /// The sample of at most about `most` users (0 = every user) of the job's, `here` of them
    /// this rank's (collective).
    pub fn agree(comm: &dyn Collective, here: usize, most: u64) -> Sample {
        let mut of = [here as u64];
        comm.reduce_u64(&mut of, Op::Sum);
        let share = match most {
            0 => 1.0,
            most => (most as f64 / of[0].max(1) as f64).min(1.0),
        };
        Sample { of: of[0], share }
    }

    /// Whether the user `id` is in the sample.
    pub fn keeps(&self, id: &Id) -> bool {
        self.share >= 1.0
            || crate::rng::unit_from_hash(mix64(id.stable_hash() ^ 0x4A5D_0C0E)) < self.share
    }
}

/// The job's ranking figures at each cut-off of `ks`.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranking {
    pub ks: Vec<usize>,
    /// By cut-off: the model's sums, the popularity baseline's.
    pub model: Vec<RankSums>,
    pub popular: Vec<RankSums>,
    /// By cut-off: the share of the model's items in at least one user's top k.
    pub model_coverage: Vec<f64>,
    pub popular_coverage: Vec<f64>,
    /// Users with held-out interactions the model does not know (left out of both).
    pub users_unknown: u64,
    /// Held-out interactions with items the model does not know (counted as relevant, never
    /// found: they lower recall honestly), of the users scored.
    pub relevant_unknown_items: u64,
    /// The users scored, of how many.
    pub sample: Sample,
}

/// One user's part: training items (the model's indices, sorted) and relevant items (sorted;
/// items the model does not know numbered from `n_items` up, so they count but never match).
pub struct UserLists {
    pub user: u32,
    pub train: Vec<u32>,
    pub relevant: Vec<u32>,
}

/// The ranking figures of `model` on `owned` (this rank's users after the exchange), `held[t]`
/// saying whether triple t is held out; above `most` users with held-out interactions (0: no
/// limit), of a sample of about that many.
pub fn rank(
    comm: &dyn Collective,
    model: &Model,
    owned: &OwnedRatings,
    held: &[bool],
    (ks, most): (&[usize], u64),
) -> Result<Ranking> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(Error::usage(
            "--k: give cut-offs of 1 or more, such as 10,20",
        ));
    }
    let n_items = model.item_ids.len();
    let item_index: Vec<u32> = owned
        .items
        .iter()
        .enumerate()
        .map(|(j, id)| match model.item(id) {
            Some(i) => i as u32,
            None => (n_items + j) as u32,
        })
        .collect();
    // Popularity on the training side of the split, over the whole job.
    let mut counts = vec![0u64; n_items];
    for (t, _) in owned.triples.iter().zip(held).filter(|(_, &h)| !h) {
        if let Some(c) = counts.get_mut(item_index[t.item as usize] as usize) {
            *c += 1;
        }
    }
    comm.reduce_u64(&mut counts, Op::Sum);
    // Counted as train counts them (users the model knows), so that both draw one sample.
    let with_holdout = owned
        .user_runs()
        .filter(|run| held[run.clone()].contains(&true))
        .filter(|run| {
            model
                .user(&owned.users[owned.triples[run.start].user as usize])
                .is_some()
        })
        .count();
    let sample = Sample::agree(comm, with_holdout, most);
    let (users, unknown) = user_lists(model, owned, held, (&item_index, &sample));
    Ok(rank_users(
        comm,
        model,
        &users,
        &counts,
        ks,
        (unknown, sample),
    ))
}

/// The ranking figures of `model` for `users` (this rank's), `counts` the job's training
/// interactions per item (for the popularity baseline), `unknown` this rank's (users, relevant
/// items) the model does not know, `sample` which users `users` are. Collective: every rank
/// calls it with the same `ks`.
pub fn rank_users(
    comm: &dyn Collective,
    model: &Model,
    users: &[UserLists],
    counts: &[u64],
    ks: &[usize],
    (unknown, sample): ([u64; 2], Sample),
) -> Ranking {
    let n_items = model.item_ids.len();
    let order = popularity_order(counts);
    let max_k = ks.iter().copied().max().unwrap_or(0);
    let mut sums = vec![RankSums::default(); 2 * ks.len()];
    // By list kind and cut-off: whether an item is in some user's top k.
    let mut covered = vec![0u64; 2 * ks.len() * n_items];
    for block in users.chunks(USERS_PER_BLOCK) {
        let ids: Vec<u32> = block.iter().map(|u| u.user).collect();
        let exclude: Vec<&[u32]> = block.iter().map(|u| u.train.as_slice()).collect();
        let scored = model.top_n_many(&ids, max_k, &exclude);
        for (u, list) in block.iter().zip(scored) {
            let from_model: Vec<u32> = list.iter().map(|s| s.item).collect();
            let popular: Vec<u32> = popular_for(&order, counts, &u.train, max_k)
                .iter()
                .map(|s| s.item)
                .collect();
            for (kind, list) in [from_model, popular].iter().enumerate() {
                for (j, &k) in ks.iter().enumerate() {
                    let slot = kind * ks.len() + j;
                    sums[slot].add(list, &u.relevant, k);
                    for &i in list.iter().take(k) {
                        covered[slot * n_items + i as usize] = 1;
                    }
                }
            }
        }
    }
    let mut flat: Vec<f64> = sums.iter().flat_map(|s| s.to_array()).collect();
    flat.extend(unknown.map(|n| n as f64));
    comm.reduce_f64(&mut flat, Op::Sum);
    comm.reduce_u64(&mut covered, Op::Max);
    let sums: Vec<RankSums> = flat[..RankSums::LEN * sums.len()]
        .chunks_exact(RankSums::LEN)
        .map(RankSums::from_slice)
        .collect();
    let coverage: Vec<f64> = covered
        .chunks(n_items.max(1))
        .map(|c| c.iter().sum::<u64>() as f64 / n_items.max(1) as f64)
        .collect();
    let tail = &flat[RankSums::LEN * sums.len()..];
    Ranking {
        ks: ks.to_vec(),
        model: sums[..ks.len()].to_vec(),
        popular: sums[ks.len()..].to_vec(),
        model_coverage: coverage.get(..ks.len()).unwrap_or_default().to_vec(),
        popular_coverage: coverage
            .get(ks.len()..2 * ks.len())
            .unwrap_or_default()
            .to_vec(),
        users_unknown: tail[0] as u64,
        relevant_unknown_items: tail[1] as u64,
        sample,
    }
}

/// Each user's NDCG@`k` by `model`'s lists, in `users`' order (this rank's users; no
/// collective).
pub fn ndcg_by_user(model: &Model, users: &[UserLists], k: usize) -> Vec<f64> {
    let mut ndcg = Vec::with_capacity(users.len());
    for block in users.chunks(USERS_PER_BLOCK) {
        let ids: Vec<u32> = block.iter().map(|u| u.user).collect();
        let exclude: Vec<&[u32]> = block.iter().map(|u| u.train.as_slice()).collect();
        for (u, list) in block.iter().zip(model.top_n_many(&ids, k, &exclude)) {
            let list: Vec<u32> = list.iter().map(|s| s.item).collect();
            let mut sums = RankSums::default();
            sums.add(&list, &u.relevant, k);
            ndcg.push(sums.ndcg);
        }
    }
    ndcg
}

/// Each user's training and relevant items (users the model knows, with something held out);
/// and the counts of (users with held-out items the model does not know, relevant items the
/// model does not know).
fn user_lists(
    model: &Model,
    owned: &OwnedRatings,
    held: &[bool],
    (item_index, sample): (&[u32], &Sample),
) -> (Vec<UserLists>, [u64; 2]) {
    let n_items = model.item_ids.len() as u32;
    let mut users = Vec::new();
    let mut unknown = [0u64; 2];
    for run in owned.user_runs() {
        let user = owned.triples[run.start].user;
        let (mut train, mut relevant) = (Vec::new(), Vec::new());
        for (t, &h) in owned.triples[run.clone()].iter().zip(&held[run]) {
            let i = item_index[t.item as usize];
            match h {
                true => relevant.push(i),
                false if i < n_items => train.push(i),
                false => {}
            }
        }
        let id = &owned.users[user as usize];
        if relevant.is_empty() || !sample.keeps(id) {
            continue;
        }
        let Some(u) = model.user(id) else {
            unknown[0] += 1;
            continue;
        };
        unknown[1] += relevant.iter().filter(|&&i| i >= n_items).count() as u64;
        train.sort_unstable();
        train.dedup();
        relevant.sort_unstable();
        relevant.dedup();
        users.push(UserLists {
            user: u as u32,
            train,
            relevant,
        });
    }
    (users, unknown)
}

impl Ranking {
    /// The figures as JSON: `{"model": {"ndcg@20": ...}, "popularity": {...}, ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let table = |sums: &[RankSums], coverage: &[f64]| {
            let mut m = serde_json::Map::new();
            for ((k, s), c) in self.ks.iter().zip(sums).zip(coverage) {
                let means = s.means();
                let names = ["precision", "recall", "ndcg", "map", "hit_rate"];
                for (n, name) in names.iter().enumerate() {
                    m.insert(format!("{name}@{k}"), means.map(|v| v[n]).into());
                }
                m.insert(
                    format!("ndcg_standard_error@{k}"),
                    s.ndcg_standard_error().into(),
                );
                m.insert(format!("coverage@{k}"), (*c).into());
            }
            serde_json::Value::Object(m)
        };
        serde_json::json!({
            "k": self.ks,
            "users": self.model.first().map_or(0, |s| s.users as u64),
            "users_with_holdout": self.sample.of,
            "sample": match self.sample.share < 1.0 {
                true => serde_json::json!({
                    "share": self.sample.share,
                    "rule": "the users whose id hashes below the share: uniform, the same users at any count of ranks; --rank-users sets the most scored (0: all)",
                }),
                false => serde_json::Value::Null,
            },
            "model": table(&self.model, &self.model_coverage),
            "popularity": table(&self.popular, &self.popular_coverage),
            "users_unknown_to_model": self.users_unknown,
            "relevant_items_unknown_to_model": self.relevant_unknown_items,
            "protocol": "each user with held-out interactions: top k of all items minus the user's training items, against the held-out items (each relevant); popularity = most training interactions",
        })
    }
}
