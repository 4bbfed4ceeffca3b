//! Top-N for many users at once (`recommend`, ranking metrics): the scores of a block of users
//! against a tile of items are one matrix product (ndarray's GEMM, `matrixmultiply`), and each
//! user keeps only its `n` best in a bounded selection. A tile of scores is at most
//! `USER_BLOCK` x `ITEM_TILE` floats (1 MB), whatever the catalogue's size: the full score
//! matrix is never built.
//!
//! A score is `offset + item bias + dot(user, item)`, the formula of `Model::scores` (the
//! offset: the global mean and the user's bias in a biased model). The dot product is the
//! GEMM's, whose order of summation differs from `kernel::dot`'s, so a score may differ from
//! `Model::scores` in its last bit; it is the same for a user whatever block or rank scores it
//! (every score is summed over the factors in the same order).

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ShapeBuilder};

use super::model::{Best, Model, Scored};

/// Users per matrix product.
pub const USER_BLOCK: usize = 64;
/// Items per tile of scores.
pub const ITEM_TILE: usize = 4096;

impl Model {
    /// The `n` best items of each of `users` (user indices), best first (equal scores: the
    /// lower item index first), leaving out `exclude[j]` for `users[j]` (item indices, sorted
    /// ascending; `exclude` may be shorter than `users`: the others exclude nothing).
    pub fn top_n_many(&self, users: &[u32], n: usize, exclude: &[&[u32]]) -> Vec<Vec<Scored>> {
        let mut out = Vec::with_capacity(users.len());
        for (b, block) in users.chunks(USER_BLOCK).enumerate() {
            let skip =
                |j: usize| -> &[u32] { exclude.get(b * USER_BLOCK + j).copied().unwrap_or(&[]) };
            out.extend(self.top_n_block(block, n, &skip));
        }
        out
    }

    /// `top_n_many` for one block of at most `USER_BLOCK` users.
    fn top_n_block<'a>(
        &self,
        block: &[u32],
        n: usize,
        exclude: &dyn Fn(usize) -> &'a [u32],
    ) -> Vec<Vec<Scored>> {
        let k = self.meta.factors;
        let biased = self.meta.biased;
        // The block's factors, gathered into one dense matrix (users are anywhere in the model).
        let mut users = Array2::<f32>::zeros((block.len(), k));
        let mut offsets = Vec::with_capacity(block.len());
        for (j, &u) in block.iter().enumerate() {
            let row = self.user_row(u as usize);
            users.row_mut(j).assign(
                &ArrayView2::from_shape((1, k), &row[1..])
                    .expect("a row")
                    .row(0),
            );
            offsets.push(if biased {
                self.meta.global_mean + row[0]
            } else {
                0.0
            });
        }
        let items = self.item_factors();
        let n_items = self.item_ids.len();
        let mut best: Vec<Best> = block.iter().map(|_| Best::new(n)).collect();
        // Each user's next excluded item to pass (the tiles go up the item indices).
        let mut next_skip = vec![0usize; block.len()];
        let mut scores = Array2::<f32>::zeros((block.len(), ITEM_TILE.min(n_items.max(1))));
        for start in (0..n_items).step_by(ITEM_TILE) {
            let end = (start + ITEM_TILE).min(n_items);
            let tile = items.slice(s![start..end, ..]);
            let mut c = scores.slice_mut(s![.., ..end - start]);
            general_mat_mul(1.0, &users, &tile.t(), 0.0, &mut c);
            for (j, row) in c.rows().into_iter().enumerate() {
                let skip = exclude(j);
                let cursor = &mut next_skip[j];
                for (t, &product) in row.iter().enumerate() {
                    let item = (start + t) as u32;
                    while *cursor < skip.len() && skip[*cursor] < item {
                        *cursor += 1;
                    }
                    if skip.get(*cursor) == Some(&item) {
                        continue;
                    }
                    let bias = if biased {
                        self.item_rows[item as usize * (k + 1)]
                    } else {
                        0.0
                    };
                    best[j].offer(offsets[j] + bias + product, item);
                }
            }
        }
        best.into_iter().map(Best::into_sorted).collect()
    }

    /// The item factors (without the biases) as an items x factors matrix over the rows.
    fn item_factors(&self) -> ArrayView2<'_, f32> {
        let k = self.meta.factors;
        let n = self.item_ids.len();
        let rows = if n == 0 {
            &[][..]
        } else {
            &self.item_rows[1..]
        };
        ArrayView2::from_shape((n, k).strides((k + 1, 1)), rows)
            .expect("rows of factors + 1 floats")
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::Id;
    use crate::mf::meta::ModelMeta;
    use crate::mf::Model;
    use crate::rng::Rng;

    /// A random model of `users` x `items` with `k` factors.
    fn random_model(users: usize, items: usize, k: usize, biased: bool) -> Model {
        let mut rng = Rng::new(7, 1);
        let mut rows =
            |n: usize| -> Vec<f32> { (0..n * (k + 1)).map(|_| rng.normal() as f32).collect() };
        let (user_rows, item_rows) = (rows(users), rows(items));
        let mut meta = ModelMeta::for_tests(users as u64, items as u64, biased);
        meta.factors = k;
        let ids = |n: usize| (0..n as i64).map(Id::Int).collect::<Vec<_>>();
        Model::new(meta, ids(users), user_rows, ids(items), item_rows)
    }

    /// The naive reference: every item scored in f64, sorted.
    fn naive(m: &Model, u: usize, n: usize, exclude: &[u32]) -> Vec<(u32, f64)> {
        let user = m.user_row(u);
        let mut all: Vec<(u32, f64)> = (0..m.item_ids.len() as u32)
            .filter(|i| !exclude.contains(i))
            .map(|i| {
                let item = m.item_row(i as usize);
                let dot: f64 = user[1..]
                    .iter()
                    .zip(&item[1..])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                let offset = if m.meta.biased {
                    m.meta.global_mean as f64 + user[0] as f64 + item[0] as f64
                } else {
                    0.0
                };
                (i, offset + dot)
            })
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    #[test]
    fn block_top_n_equals_scoring_every_item_and_sorting() {
        // More items than a tile and users than a block, a factor count off the kernel's lanes.
        for (k, biased) in [(7, true), (20, false)] {
            let m = random_model(150, 5000, k, biased);
            let users: Vec<u32> = (0..150).rev().collect();
            let exclude: Vec<Vec<u32>> = users
                .iter()
                .map(|&u| (0..5000).filter(|i| (i + u) % 7 == 0).collect())
                .collect();
            let refs: Vec<&[u32]> = exclude.iter().map(Vec::as_slice).collect();
            let got = m.top_n_many(&users, 20, &refs);
            for (j, &u) in users.iter().enumerate() {
                let want = naive(&m, u as usize, 20, &exclude[j]);
                assert_eq!(got[j].len(), 20);
                for (g, w) in got[j].iter().zip(&want) {
                    assert!(
                        (g.score as f64 - w.1).abs() < 1e-4,
                        "user {u}: {g:?} vs {w:?}"
                    );
                    assert!(
                        !exclude[j].contains(&g.item),
                        "user {u}: excluded item {}",
                        g.item
                    );
                }
                // The same items, unless two scores are too close for f32 to order them alike.
                let close = want.windows(2).any(|w| (w[0].1 - w[1].1).abs() < 1e-4);
                if !close {
                    let items: Vec<u32> = got[j].iter().map(|s| s.item).collect();
                    assert_eq!(
                        items,
                        want.iter().map(|w| w.0).collect::<Vec<_>>(),
                        "user {u}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_users_list_does_not_depend_on_the_block_it_is_scored_in() {
        let m = random_model(100, 300, 9, true);
        let all: Vec<u32> = (0..100).collect();
        let together = m.top_n_many(&all, 10, &[]);
        for u in [0u32, 63, 64, 99] {
            let alone = m.top_n_many(&[u], 10, &[]);
            assert_eq!(alone[0], together[u as usize], "user {u}");
        }
        // More than there are items: every item, once.
        let everything = m.top_n_many(&[5], 1000, &[]);
        assert_eq!(everything[0].len(), 300);
        assert!(m.top_n_many(&[5], 0, &[])[0].is_empty());
    }
}
