//! Requests that arrive together are scored together. Scoring one user against every item is a
//! matrix product with one row, and the product's set-up (packing the item matrix into the
//! kernel's panels, computing 8 rows to use 1) costs as much as the work: on the bench model
//! (20k items, 20 factors) a user alone takes 145 us, in a block of 8 about 23 us each. So a
//! request puts what it asks in a queue and yields once to the runtime, which runs every other
//! request that is ready (their bytes read while the last batch was scored) before it comes
//! back; then whichever request resumes first takes up to a block of asks from the queue,
//! scores them in one call and hands each its answer. Alone, a request waits for nothing but
//! that one turn of the runtime; under load, the batches grow with the requests waiting.
//!
//! The answers do not depend on the batching: a user's list from `Model::top_n_rows` is the
//! same whatever block it is scored in (the matrix product sums each score in the same order),
//! and asks are grouped by model, kind and `n`, so each is what it would be alone
//! (`tests/serve.rs` compares with `funksvd recommend`'s lists to the bit).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::loaded::Loaded;
use super::metrics::Metrics;
use crate::mf::topn::USER_BLOCK;
use crate::mf::Scored;

/// A user row to score.
pub enum Row {
    /// The model's user.
    User(usize),
    /// A row folded in.
    Given(Vec<f32>),
}

/// The items a list leaves out (item indices, ascending).
pub enum Exclude {
    /// What `--data` says the model's user has.
    SeenBy(usize),
    Given(Vec<u32>),
}

/// What a request asks for.
pub enum Ask {
    /// The best items for a row.
    Top { row: Row, exclude: Exclude },
    /// The items most similar to an item.
    Similar { item: u32 },
}

struct Job {
    loaded: Arc<Loaded>,
    n: usize,
    ask: Ask,
    answer: oneshot::Sender<Vec<Scored>>,
}

/// The queue of asks not yet scored.
#[derive(Default)]
pub struct Batcher {
    queue: Mutex<Vec<Job>>,
}

impl Batcher {
    /// The `n` best items for `ask` from `loaded`'s model, scored with whatever else is asked
    /// at the same moment; `None` if the scoring failed (a panic in the request that scored it).
    pub async fn score(
        &self,
        metrics: &Metrics,
        loaded: Arc<Loaded>,
        n: usize,
        ask: Ask,
    ) -> Option<Vec<Scored>> {
        // Declared first, dropped last: a request dropped while its ask waits (its client
        // gone) takes the ask out, so no queued ask keeps a replaced model alive.
        let _sweep = Sweep(self);
        let (answer, answered) = oneshot::channel();
        self.lock().push(Job {
            loaded,
            n,
            ask,
            answer,
        });
        // Tokio wakes a yielding task only after it has run every ready task and polled for
        // more: the requests that came in meanwhile queue their asks first.
        tokio::task::yield_now().await;
        let jobs: Vec<Job> = {
            let mut queue = self.lock();
            let take = queue.len().min(USER_BLOCK);
            queue.drain(..take).collect()
        };
        if !jobs.is_empty() {
            metrics.scored(jobs.len());
            score_all(jobs);
        }
        // Answered by now, unless another request took this ask and is still scoring it.
        answered.await.ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Job>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes the asks nobody waits for any more out of the queue when dropped.
struct Sweep<'a>(&'a Batcher);

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        self.0.lock().retain(|job| !job.answer.is_closed());
    }
}

/// Score `jobs`: one call per group of the same model, kind and `n`; each job's answer sent.
fn score_all(mut jobs: Vec<Job>) {
    let key = |j: &Job| {
        (
            Arc::as_ptr(&j.loaded) as usize,
            matches!(j.ask, Ask::Similar { .. }),
            j.n,
        )
    };
    jobs.sort_by_key(key);
    while !jobs.is_empty() {
        let first = key(&jobs[0]);
        let end = jobs
            .iter()
            .position(|j| key(j) != first)
            .unwrap_or(jobs.len());
        let group: Vec<Job> = jobs.drain(..end).collect();
        let lists = score_group(&group);
        for (job, list) in group.into_iter().zip(lists) {
            // The request may have timed out and gone: nobody to answer.
            let _ = job.answer.send(list);
        }
    }
}

/// The lists of a group of jobs of one model, kind and `n`.
fn score_group(group: &[Job]) -> Vec<Vec<Scored>> {
    let loaded = &group[0].loaded;
    let model = &loaded.model;
    let n = group[0].n;
    if let Ask::Similar { .. } = group[0].ask {
        let items: Vec<u32> = group
            .iter()
            .filter_map(|j| match j.ask {
                Ask::Similar { item } => Some(item),
                Ask::Top { .. } => None,
            })
            .collect();
        return model.similar_many(&items, n);
    }
    let mut rows: Vec<&[f32]> = Vec::with_capacity(group.len());
    let mut excludes: Vec<&[u32]> = Vec::with_capacity(group.len());
    for job in group {
        if let Ask::Top { row, exclude } = &job.ask {
            rows.push(match row {
                Row::User(u) => model.user_row(*u),
                Row::Given(r) => r,
            });
            excludes.push(match exclude {
                Exclude::SeenBy(u) => loaded.seen.of_known(*u),
                Exclude::Given(items) => items,
            });
        }
    }
    model.top_n_rows(&rows, n, &excludes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mf::Model;
    use crate::serve::loaded::SeenIndex;

    fn loaded(model: Model) -> Arc<Loaded> {
        Arc::new(Loaded {
            model,
            seen: SeenIndex::default(),
            tag: None,
            version: "test".into(),
            loaded_at: 0.0,
            load_seconds: 0.0,
            popular: Vec::new(),
        })
    }

    /// Requests ready at the same moment: one batch, each answer what the model gives that
    /// ask alone, across two models, both kinds and several `n`.
    #[test]
    fn asks_made_together_are_scored_together_and_answered_as_alone() {
        let models = [
            loaded(Model::random_for_tests(40, 700, 9, true)),
            loaded(Model::random_for_tests(40, 700, 5, false)),
        ];
        let batcher = Arc::new(Batcher::default());
        let metrics = Arc::new(Metrics::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let asks = 40;
        let answers = runtime.block_on(async {
            let tasks: Vec<_> = (0..asks)
                .map(|a| {
                    let (batcher, metrics) = (batcher.clone(), metrics.clone());
                    let m = models[a % 2].clone();
                    tokio::spawn(async move {
                        let n = 3 + a % 4;
                        let ask = if a % 5 == 4 {
                            Ask::Similar { item: a as u32 }
                        } else if a % 3 == 0 {
                            Ask::Top {
                                row: Row::Given(
                                    m.model.user_row(a).iter().map(|x| x * 0.5).collect(),
                                ),
                                exclude: Exclude::Given(vec![1, 5, a as u32]),
                            }
                        } else {
                            Ask::Top {
                                row: Row::User(a),
                                exclude: Exclude::SeenBy(a),
                            }
                        };
                        batcher.score(&metrics, m, n, ask).await
                    })
                })
                .collect();
            let mut answers = Vec::new();
            for t in tasks {
                answers.push(t.await.expect("a task").expect("an answer"));
            }
            answers
        });
        for (a, got) in answers.iter().enumerate() {
            let m = &models[a % 2].model;
            let n = 3 + a % 4;
            let want = if a % 5 == 4 {
                m.similar_many(&[a as u32], n)
            } else if a % 3 == 0 {
                let row: Vec<f32> = m.user_row(a).iter().map(|x| x * 0.5).collect();
                m.top_n_rows(&[&row], n, &[&[1, 5, a as u32]])
            } else {
                m.top_n_many(&[a as u32], n, &[])
            };
            assert_eq!(got, &want[0], "ask {a}");
        }
        let (batches, scored) = metrics.batches();
        assert_eq!(scored, asks as u64);
        // One turn of the runtime queued them all: one batch (at most USER_BLOCK each).
        assert_eq!(batches, 1, "{batches} batches for {asks} asks");
    }

    /// A request dropped while its ask waits in the queue (its client gone) takes the ask and
    /// its model out with it.
    #[test]
    fn a_dropped_request_leaves_nothing_queued() {
        let model = loaded(Model::random_for_tests(3, 10, 2, true));
        let (batcher, metrics) = (Batcher::default(), Metrics::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let ask = Ask::Similar { item: 1 };
            let request = batcher.score(&metrics, model.clone(), 2, ask);
            // Polled once: queued, then waiting for its turn; dropped there.
            assert!(futures::FutureExt::now_or_never(request).is_none());
        });
        assert!(batcher.lock().is_empty());
        assert_eq!(Arc::strong_count(&model), 1);
        assert_eq!(metrics.batches(), (0, 0));
    }
}
