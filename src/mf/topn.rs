//! Top-N for many users at once (`recommend`, ranking metrics): the scores of a block of users
//! against a tile of items are one matrix product (ndarray's GEMM, `matrixmultiply`), and each
//! user keeps only its `n` best in a bounded selection. A tile of scores is at most
//! `USER_BLOCK` x `ITEM_TILE` floats (1 MB), whatever the catalogue's size: the full score
//! matrix is never built.
//!
//! A score is `offset + (item bias + dot(user, item))`, the formula of `Model::scores` (the
//! offset: the global mean and the user's bias in a biased model). The item bias rides in the
//! GEMM: a user row `[1, p]` against the stored item row `[b_i, q]` (no copy of the item
//! matrix); the offset, the same for all of a user's items, is added to the chosen few. The
//! GEMM sums in another order than `kernel::dot`, so a score may differ from `Model::scores` in
//! its last bit; it is the same for a user whatever block or rank scores it.
//!
//! Selection: once a user has `n` items, a score must beat the worst of them to matter, so the
//! scan of a tile is one comparison per score; the excluded items and the heap are visited only
//! for the rare score that passes (items come in ascending order, so an equal score never does).

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView1, ArrayView2, ShapeBuilder};

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
        let rows: Vec<&[f32]> = users.iter().map(|&u| self.user_row(u as usize)).collect();
        self.top_n_rows(&rows, n, exclude)
    }

    /// `top_n_many` for user rows given as they are (`[bias, factors...]`): rows of the
    /// model's users, or rows folded in (`Model::fold_in`).
    pub fn top_n_rows(&self, users: &[&[f32]], n: usize, exclude: &[&[u32]]) -> Vec<Vec<Scored>> {
        let stride = self.stride();
        let items = rows_view(&self.item_rows, self.item_ids.len(), stride, 0, stride);
        let mut out = Vec::with_capacity(users.len());
        for (b, block) in users.chunks(USER_BLOCK).enumerate() {
            // [1, p] (or [0, p] without biases) against [b_i, q].
            let mut left = Array2::<f32>::zeros((block.len(), stride));
            for (j, &row) in block.iter().enumerate() {
                left[(j, 0)] = if self.meta.biased { 1.0 } else { 0.0 };
                left.row_mut(j)
                    .slice_mut(s![1..])
                    .assign(&ArrayView1::from(&row[1..]));
            }
            let skip = |j: usize| exclude.get(b * USER_BLOCK + j).copied().unwrap_or(&[]);
            let lists = best_per_row(&left, &items, n, |j, item| {
                skip(j).binary_search(&item).is_err()
            });
            out.extend(block.iter().zip(lists).map(|(&row, mut list)| {
                if self.meta.biased {
                    let offset = self.meta.global_mean + row[0];
                    list.iter_mut().for_each(|s| s.score += offset);
                    // Adding the offset may make two scores equal: the lower item first.
                    list.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.item.cmp(&b.item)));
                }
                list
            }));
        }
        out
    }

    /// For each of `items` (item indices), the `n` items most similar to it by the cosine of
    /// their factors (biases left out), most similar first (equal: the lower index first), the
    /// item itself left out: `Model::similar` for many items, by blocks of GEMMs over the unit
    /// vectors of the factors (a copy of the item matrix made on the first call and kept with
    /// the model, so a server's requests do not each make it). An item whose factors are all
    /// zero has cosine 0 with every item.
    pub fn similar_many(&self, items: &[u32], n: usize) -> Vec<Vec<Scored>> {
        let k = self.meta.factors;
        let unit = self.unit_items.get_or_init(|| {
            let factors = rows_view(&self.item_rows, self.item_ids.len(), self.stride(), 1, k);
            let mut unit = factors.to_owned();
            for mut row in unit.rows_mut() {
                let norm = row.dot(&row).sqrt();
                if norm > 0.0 {
                    row.mapv_inplace(|v| v / norm);
                }
            }
            unit
        });
        let mut out = Vec::with_capacity(items.len());
        for block in items.chunks(USER_BLOCK) {
            let mut left = Array2::<f32>::zeros((block.len(), k));
            for (j, &i) in block.iter().enumerate() {
                left.row_mut(j).assign(&unit.row(i as usize));
            }
            out.extend(best_per_row(&left, &unit.view(), n, |j, item| {
                item != block[j]
            }));
        }
        out
    }
}

/// `len` rows of `width` floats starting at `first` in each `stride`-float row of `rows`, as
/// a matrix over them.
fn rows_view(
    rows: &[f32],
    len: usize,
    stride: usize,
    first: usize,
    width: usize,
) -> ArrayView2<'_, f32> {
    let data = if len == 0 { &[][..] } else { &rows[first..] };
    ArrayView2::from_shape((len, width).strides((stride, 1)), data).expect("rows of stride floats")
}

/// Row j of `left` against every row of `right` (one GEMM per tile of `ITEM_TILE` rows): row j
/// keeps its `n` best dot products among the items `keep(j, item)` accepts, best first.
fn best_per_row(
    left: &Array2<f32>,
    right: &ArrayView2<'_, f32>,
    n: usize,
    mut keep: impl FnMut(usize, u32) -> bool,
) -> Vec<Vec<Scored>> {
    let n_items = right.nrows();
    let mut best: Vec<Best> = (0..left.nrows()).map(|_| Best::new(n)).collect();
    // The score to beat: the worst kept, once n are kept.
    let mut floors = vec![f32::NEG_INFINITY; left.nrows()];
    let mut scores = Array2::<f32>::zeros((left.nrows(), ITEM_TILE.min(n_items.max(1))));
    for start in (0..n_items).step_by(ITEM_TILE) {
        let end = (start + ITEM_TILE).min(n_items);
        let tile = right.slice(s![start..end, ..]);
        let mut c = scores.slice_mut(s![.., ..end - start]);
        general_mat_mul(1.0, left, &tile.t(), 0.0, &mut c);
        for (j, row) in c.rows().into_iter().enumerate() {
            let row = row.as_slice().expect("a row of the scores is contiguous");
            let mut floor = floors[j];
            // Sixteen scores at a time: one branch-free comparison each (vectorised), and a
            // look at them one by one only if one beats the floor.
            for (c, chunk) in row.chunks(16).enumerate() {
                if !chunk.iter().fold(false, |any, &s| any | (s > floor)) {
                    continue;
                }
                for (t, &score) in chunk.iter().enumerate() {
                    let item = (start + 16 * c + t) as u32;
                    // NaN never beats the floor.
                    if score > floor && keep(j, item) {
                        best[j].offer(score, item);
                        if best[j].len() == n {
                            floor = best[j].worst().unwrap_or(f32::NEG_INFINITY);
                        }
                    }
                }
            }
            floors[j] = floor;
        }
    }
    best.into_iter().map(Best::into_sorted).collect()
}

#[cfg(test)]
mod tests {
    use crate::mf::{Model, Scored};

    fn random_model(users: usize, items: usize, k: usize, biased: bool) -> Model {
        Model::random_for_tests(users, items, k, biased)
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
    fn similar_many_equals_the_one_item_cosines() {
        let mut m = random_model(3, 5000, 6, true);
        // An item with no direction: cosine 0 with everything, and nothing near it.
        let k = m.meta.factors;
        m.item_rows[17 * (k + 1) + 1..18 * (k + 1)].fill(0.0);
        let items: Vec<u32> = vec![0, 17, 4999, 70, 2048];
        let got = m.similar_many(&items, 15);
        for (j, &i) in items.iter().enumerate() {
            let want = m.similar(i as usize, 15);
            assert_eq!(got[j].len(), 15);
            assert!(got[j].iter().all(|s| s.item != i), "item {i} itself");
            for (g, w) in got[j].iter().zip(&want) {
                assert!((g.score - w.score).abs() < 1e-5, "item {i}: {g:?} vs {w:?}");
            }
            let close = want
                .windows(2)
                .any(|w| (w[0].score - w[1].score).abs() < 1e-5);
            if !close {
                let ids = |v: &[Scored]| v.iter().map(|s| s.item).collect::<Vec<_>>();
                assert_eq!(ids(&got[j]), ids(&want), "item {i}");
            }
        }
        assert!(got[1].iter().all(|s| s.score == 0.0));
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
