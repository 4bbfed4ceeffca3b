//! Fold-in: a row for a user the model has not seen, from their interactions, against the
//! model's fixed item rows: the same equations training solves for a user, solved exactly
//! (Cholesky, LAPACK through `ndarray-linalg`). `recommend` uses it for users of `--data` the
//! model does not know; it needs nothing but the `Model`, so a server can call it per request.

use ndarray::{Array1, Array2};
use ndarray_linalg::cholesky::{FactorizeC, SolveC, UPLO};

use super::als::{gram_part, solve_exact, Gram, Slot0, Weights};
use super::model::Model;
use super::{ImplicitHyper, Objective};

/// The item rows an implicit model's users were solved against: the published rows less the
/// popularity term their biases carry (`None`: the published rows, without the term), and
/// their Gram matrix.
pub(super) struct FoldItems {
    rows: Option<Vec<f32>>,
    gram: Gram,
}

impl FoldItems {
    fn new(model: &Model, settings: &ImplicitHyper) -> FoldItems {
        let stride = model.stride();
        let rows = match (&model.item_counts, settings.popularity_weight > 0.0) {
            (Some(counts), true) => {
                let mut rows = model.item_rows.clone();
                for (row, &n) in rows.chunks_exact_mut(stride).zip(counts) {
                    row[0] -= settings.popularity_bonus(n);
                }
                Some(rows)
            }
            _ => None,
        };
        let trained = rows.as_deref().unwrap_or(&model.item_rows);
        let gram = Gram::from_parts(stride, stride, [&gram_part(trained, stride, stride)[..]]);
        FoldItems { rows, gram }
    }
}

impl Model {
    /// The row (`[bias, factors...]`, as `user_rows` holds them) of a user who interacted with
    /// `items` (item indices; unknown items left out by the caller) with `values` (ratings or
    /// event weights, as training aggregated them). `None` without interactions or when the
    /// equations have no unique solution.
    ///
    /// - Implicit model: the user's iALS equations (confidence `1 + alpha |value|` with the
    ///   values balanced as training balanced them, the unobserved weight, `reg`) against the
    ///   item rows training left (the popularity term taken out of their biases) and their Gram
    ///   matrix, the user's constant 1 meeting the item biases; the bias is 0, as for every
    ///   user of such a model.
    /// - Explicit model: the regularised least-squares fit of the ratings,
    ///   `sum (r - mean - b_i - b_u - <p, q_i>)^2 + reg n (b_u^2 + |p|^2)` over the user's n
    ///   ratings: SGD's objective, which regularises the user's row once per rating. Without
    ///   biases, `r - <p, q_i>` and no bias.
    pub fn fold_in(&self, items: &[u32], values: &[f32]) -> Option<Vec<f32>> {
        if items.is_empty() || items.len() != values.len() {
            return None;
        }
        let hyper = &self.meta.hyperparameters;
        match (hyper.objective, hyper.implicit) {
            (Objective::Implicit, Some(settings)) => {
                let weights = Weights {
                    alpha: settings.alpha,
                    unobserved: settings.unobserved_weight,
                    reg: hyper.reg,
                };
                let fold = self
                    .fold_items
                    .get_or_init(|| FoldItems::new(self, &settings));
                let rows = fold.rows.as_deref().unwrap_or(&self.item_rows);
                // The user's confidences, as training balanced them.
                let sum = values.iter().map(|v| v.abs() as f64).sum();
                let scale = settings.confidence_scale(self.item_ids.len(), sum);
                let values: Vec<f32> = values.iter().map(|v| v * scale).collect();
                // The constant that meets the item biases (none in a model without them).
                let mut row = vec![0.0f32; self.stride()];
                row[0] = if self.meta.biased { 1.0 } else { 0.0 };
                solve_exact(
                    &weights,
                    &fold.gram,
                    Slot0::Frozen,
                    &mut row,
                    rows,
                    items,
                    &values,
                )?;
                row[0] = 0.0;
                Some(row)
            }
            _ => self.fold_in_ratings(items, values),
        }
    }

    /// The explicit model's fold-in (see `fold_in`).
    fn fold_in_ratings(&self, items: &[u32], values: &[f32]) -> Option<Vec<f32>> {
        let stride = self.stride();
        let biased = self.meta.biased;
        // Unknowns [b_u, p] (or p alone); features [1, q_i] (or q_i).
        let first = if biased { 0 } else { 1 };
        let dims = stride - first;
        let mut a = Array2::<f64>::zeros((dims, dims));
        let mut b = Array1::<f64>::zeros(dims);
        let mut feature = vec![0.0f64; dims];
        for (&i, &r) in items.iter().zip(values) {
            let row = self.item_row(i as usize);
            let mut target = r as f64;
            if biased {
                feature[0] = 1.0;
                target -= (self.meta.global_mean + row[0]) as f64;
            }
            for (f, q) in feature[1 - first..].iter_mut().zip(&row[1..]) {
                *f = *q as f64;
            }
            for x in 0..dims {
                b[x] += target * feature[x];
                for y in 0..dims {
                    a[(x, y)] += feature[x] * feature[y];
                }
            }
        }
        let reg = self.meta.hyperparameters.reg as f64 * items.len() as f64;
        for x in 0..dims {
            a[(x, x)] += reg;
        }
        let solved = a.factorizec(UPLO::Lower).ok()?.solvec(&b).ok()?;
        if solved.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut out = vec![0.0f32; stride];
        for (o, v) in out[first..].iter_mut().zip(solved.iter()) {
            *o = *v as f32;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::ids::Id;
    use crate::mf::meta::ModelMeta;
    use crate::mf::{Hyper, ImplicitHyper, Model, Objective};
    use crate::rng::Rng;

    fn model(k: usize, objective: Objective, biased: bool) -> Model {
        let (users, items) = (3, 40);
        let mut rng = Rng::new(11, 12);
        let mut row = |_| (rng.normal() * 0.5) as f32;
        let user_rows: Vec<f32> = (0..users * (k + 1)).map(&mut row).collect();
        let item_rows: Vec<f32> = (0..items * (k + 1)).map(&mut row).collect();
        let mut meta = ModelMeta::minimal(users as u64, items as u64, k, biased, 3.0);
        meta.hyperparameters = Hyper {
            factors: k,
            reg: 0.05,
            biased,
            objective,
            implicit: (objective == Objective::Implicit).then_some(ImplicitHyper {
                alpha: 3.0,
                unobserved_weight: 0.5,
                cg_steps: 3,
                balance: None,
                popularity_weight: 0.0,
            }),
            ..Hyper::default()
        };
        let ids = |n: usize| (0..n).map(|i| Id::Int(i as i64)).collect();
        Model::new(meta, ids(users), user_rows, ids(items), item_rows)
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + x.abs()),
                "{what}: {a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn fold_in_balances_the_values_and_takes_the_popularity_term_out_as_training_did() {
        let items = [2u32, 7, 19, 33];
        let values = [4.0f32, 1.0, 5.0, 2.0];
        let with = |balance: Option<f32>, weight: f32| {
            let mut m = model(5, Objective::Implicit, true);
            let implicit = m.meta.hyperparameters.implicit.as_mut().unwrap();
            implicit.balance = balance;
            implicit.popularity_weight = weight;
            let settings = *implicit;
            let counts: Vec<u64> = (0..40u64).map(|i| i * 7 % 13).collect();
            let stride = m.stride();
            for (row, &n) in m.item_rows.chunks_exact_mut(stride).zip(&counts) {
                row[0] += settings.popularity_bonus(n);
            }
            m.item_counts = Some(counts);
            m
        };
        let balanced = with(Some(0.1), 0.0);
        let row = balanced.fold_in(&items, &values).unwrap();
        // Balanced: the user's confidences do not depend on the values' scale...
        let doubled: Vec<f32> = values.iter().map(|v| v * 2.0).collect();
        assert_close(&row, &balanced.fold_in(&items, &doubled).unwrap(), "scale");
        // ... and are the fixed rule's on values scaled to 0.1 x 40 items in all.
        let scaled: Vec<f32> = values.iter().map(|v| v * 0.1 * 40.0 / 12.0).collect();
        let fixed = with(None, 0.0).fold_in(&items, &scaled).unwrap();
        assert_close(&row, &fixed, "fixed rule");
        // The popularity term in the published biases changes nothing the user is solved from.
        let blended = with(Some(0.1), 0.7).fold_in(&items, &values).unwrap();
        assert_close(&row, &blended, "popularity term");
        assert_ne!(row, with(None, 0.0).fold_in(&items, &values).unwrap());
    }

    /// The loss the fold-in minimises, written out pair by pair, at `row`.
    fn loss(m: &Model, row: &[f32], items: &[u32], values: &[f32]) -> f64 {
        let h = &m.meta.hyperparameters;
        let score = |i: usize| -> f64 {
            let q = m.item_row(i);
            let bias = if m.meta.biased { q[0] as f64 } else { 0.0 };
            bias + row[1..]
                .iter()
                .zip(&q[1..])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum::<f64>()
        };
        let norm: f64 = row[1..].iter().map(|v| (*v as f64).powi(2)).sum();
        match h.implicit {
            Some(s) => {
                let mut l = h.reg as f64 * norm;
                for i in 0..m.item_ids.len() {
                    let at = items.iter().position(|&j| j as usize == i);
                    l += match at {
                        Some(n) => {
                            let c = 1.0 + s.alpha as f64 * values[n].abs() as f64;
                            c * (1.0 - score(i)).powi(2)
                        }
                        None => s.unobserved_weight as f64 * score(i).powi(2),
                    };
                }
                l
            }
            None => {
                let offset = if m.meta.biased {
                    3.0 + row[0] as f64
                } else {
                    0.0
                };
                let reg = h.reg as f64 * items.len() as f64;
                let sq: f64 = items
                    .iter()
                    .zip(values)
                    .map(|(&i, &r)| (r as f64 - offset - score(i as usize)).powi(2))
                    .sum();
                sq + reg * (norm + (row[0] as f64).powi(2))
            }
        }
    }

    #[test]
    fn a_folded_row_minimises_the_objective_written_out_pair_by_pair() {
        let items = [2u32, 7, 19, 33];
        let values = [4.0f32, 1.0, 5.0, 2.0];
        for (objective, biased) in [
            (Objective::Implicit, true),
            (Objective::Implicit, false),
            (Objective::Explicit, true),
            (Objective::Explicit, false),
        ] {
            let m = model(5, objective, biased);
            let row = m.fold_in(&items, &values).unwrap();
            assert_eq!(row.len(), 6);
            if objective == Objective::Implicit || !biased {
                assert_eq!(row[0], 0.0, "{objective:?} {biased}");
            }
            let at = loss(&m, &row, &items, &values);
            let first = if objective == Objective::Explicit && biased {
                0
            } else {
                1
            };
            for s in first..row.len() {
                for h in [-1e-2f32, 1e-2] {
                    let mut nudged = row.clone();
                    nudged[s] += h;
                    let l = loss(&m, &nudged, &items, &values);
                    assert!(
                        l > at,
                        "{objective:?} biased {biased} slot {s}: {l} <= {at}"
                    );
                }
            }
        }
        assert!(model(5, Objective::Explicit, true)
            .fold_in(&[], &[])
            .is_none());
    }
}
