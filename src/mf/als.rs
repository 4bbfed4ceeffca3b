//! The implicit-feedback objective (iALS: Hu, Koren and Volinsky 2008) as pure arithmetic over
//! padded rows: Gram matrices, and conjugate-gradient steps on the normal equations of one row
//! (Takács, Pilászy and Tikk 2011), warm-started from the row's current value. The trainer
//! (`train::implicit`) decides which rows, on which rank, and how the ranks sum their parts.
//!
//! Every (user, item) pair is a preference `y` (1 for a positive value, else 0) with a weight:
//! `c = 1 + alpha |value|` where the pair was observed, `unobserved` everywhere else. The loss
//!
//! ```text
//!   sum_observed c (y - s)^2  +  unobserved * sum_unobserved s^2  +  reg (|users|^2 + |items|^2)
//! ```
//!
//! with `s = <x_u, x_i>` over the padded rows. During training a user row is `[1, p_u]` (the
//! constant meets the item's bias) and an item row `[b_i, q_i]`; a user's slot 0 is never
//! solved for (`Frozen`), nor an item's without biases. The unobserved pairs enter through the
//! Gram matrix of the other side, `G = sum_j x_j x_j^T`, so one row's normal equations are
//!
//! ```text
//!   (unobserved G + sum_obs (c - unobserved) x_j x_j^T + reg I) x = sum_obs c y x_j
//! ```
//!
//! and a conjugate-gradient step costs `dims^2 + 2 width` per observed pair of the row, not
//! a pass over every item. `solve_exact` (Cholesky, by LAPACK through `ndarray-linalg`) is the
//! reference the steps converge to, and what fold-in uses.

use ndarray::{Array1, Array2, ArrayView2};
use ndarray_linalg::cholesky::{FactorizeC, SolveC, UPLO};

use super::kernel::LANES;

/// A dot product of padded rows, in a fixed order: three interleaved accumulators of `LANES`
/// (three independent chains for the FMA units; rows of 72 floats, 64 factors, are three
/// rounds), then the lanes pairwise. Its own, not the SGD kernel's: changing that one's order
/// would change every explicit model.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const WIDE: usize = 3 * LANES;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; WIDE];
    let mut ca = a.chunks_exact(WIDE);
    let mut cb = b.chunks_exact(WIDE);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..WIDE {
            acc[l] += x[l] * y[l];
        }
    }
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut na = ra.chunks_exact(LANES);
    let mut nb = rb.chunks_exact(LANES);
    for (x, y) in (&mut na).zip(&mut nb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in na.remainder().iter().zip(nb.remainder()) {
        tail += x * y;
    }
    let mut lanes = [0.0f32; LANES];
    for l in 0..LANES {
        lanes[l] = (acc[l] + acc[LANES + l]) + acc[2 * LANES + l];
    }
    let half = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    ((half[0] + half[2]) + (half[1] + half[3])) + tail
}

/// The objective's weights, as the flags give them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// Confidence per unit of value: `c = 1 + alpha |value|` (`--alpha`).
    pub alpha: f32,
    /// The weight of every pair not observed (`--unobserved-weight`).
    pub unobserved: f32,
    /// L2 regularisation of every row (`--reg`).
    pub reg: f32,
}

impl Weights {
    /// Confidence and preference of an observed value.
    #[inline(always)]
    pub fn observed(&self, value: f32) -> (f32, f32) {
        (
            1.0 + self.alpha * value.abs(),
            if value > 0.0 { 1.0 } else { 0.0 },
        )
    }

    /// How much of the other side's row an observed pair with `value` and score `s` adds to
    /// `sum` (see `Observed`): one formula for every form of the loops, so they agree bit for
    /// bit.
    #[inline(always)]
    pub fn scale(&self, sum: Observed, value: f32, s: f32) -> f32 {
        let (c, y) = self.observed(value);
        match sum {
            Observed::Residual => c * y - (c - self.unobserved) * s,
            Observed::Product => (c - self.unobserved) * s,
        }
    }
}

/// Whether a row's slot 0 is solved for (an item's bias) or held (a user's constant 1, an
/// item's zero bias in a model without biases).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot0 {
    Free,
    Frozen,
}

/// `G = sum_j x_j x_j^T` over the first `dims` floats of rows of `width` floats, each row of `G`
/// padded to `width` with zeros so a product `G d` is `dims` padded dot products.
#[derive(Clone, Debug, PartialEq)]
pub struct Gram {
    pub dims: usize,
    pub width: usize,
    /// `dims` rows of `width` floats.
    pub g: Vec<f32>,
}

impl Gram {
    /// Sums of `G`'s parts, in the order given (f64: the order is the only rounding that
    /// depends on how the rows were split).
    pub fn from_parts<'p>(
        dims: usize,
        width: usize,
        parts: impl IntoIterator<Item = &'p [f64]>,
    ) -> Gram {
        let mut sum = vec![0.0f64; dims * dims];
        for part in parts {
            for (s, p) in sum.iter_mut().zip(part) {
                *s += p;
            }
        }
        let mut g = vec![0.0f32; dims * width];
        for (row, src) in g.chunks_exact_mut(width).zip(sum.chunks_exact(dims)) {
            for (v, s) in row.iter_mut().zip(src) {
                *v = *s as f32;
            }
        }
        Gram { dims, width, g }
    }

    /// `sum_ab G_ab H_ab`.
    pub fn inner(&self, other: &Gram) -> f64 {
        let rows = self
            .g
            .chunks_exact(self.width)
            .zip(other.g.chunks_exact(other.width));
        rows.map(|(a, b)| {
            a[..self.dims]
                .iter()
                .zip(&b[..self.dims])
                .map(|(x, y)| *x as f64 * *y as f64)
                .sum::<f64>()
        })
        .sum()
    }

    /// The sum of the diagonal from slot `first` on.
    pub fn trace(&self, first: usize) -> f64 {
        (first..self.dims)
            .map(|a| self.g[a * self.width + a] as f64)
            .sum()
    }
}

/// One part of a Gram matrix: `sum x x^T` over `rows` (the first `dims` floats of each), as
/// `dims x dims` f64, by a matrix product (f32, in blocks of rows summed in f64).
pub fn gram_part(rows: &[f32], width: usize, dims: usize) -> Vec<f64> {
    const BLOCK: usize = 4096;
    let mut sum = vec![0.0f64; dims * dims];
    let mut block = Array2::<f32>::zeros((dims, dims));
    for chunk in rows.chunks(BLOCK * width) {
        let n = chunk.len() / width;
        let x = ArrayView2::from_shape((n, width), chunk).expect("whole rows");
        let x = x.slice(ndarray::s![.., ..dims]);
        ndarray::linalg::general_mat_mul(1.0, &x.t(), &x, 0.0, &mut block);
        for (s, b) in sum.iter_mut().zip(block.iter()) {
            *s += *b as f64;
        }
    }
    sum
}

/// Which sum over a row's observed pairs `observed` adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Observed {
    /// `sum_obs (c y - (c - unobserved) <x, x_j>) x_j`: their part of the residual of the
    /// normal equations at `x` (the right-hand side minus their part of `A x`).
    Residual,
    /// `sum_obs (c - unobserved) <x, x_j> x_j`: their part of `A x` (`x` a direction).
    Product,
}

/// `out +=` the `sum` over the observed `pairs` (rows of `others`) with `values`.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn observed(
    sum: Observed,
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { observed_avx2(sum, w, x, others, width, pairs, values, out) };
    }
    observed_rows(sum, w, x, others, width, pairs, values, out)
}

/// `observed_rows` compiled for AVX2: eight lanes per instruction instead of four, the same
/// operations in the same order (no fused multiply-add), so the same bits.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn observed_avx2(
    sum: Observed,
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
    out: &mut [f32],
) {
    if width % LANES != 0 || x.len() < width || out.len() < width {
        return observed_rows(sum, w, x, others, width, pairs, values, out);
    }
    let scale = |value: f32, s: f32| w.scale(sum, value, s);
    let row = |j: u32| others[j as usize * width..][..width].as_ptr();
    let vectors = width / LANES;
    // Four pairs at a time: their dots are independent, and `out` is read and written once for
    // the four (each float still adds the four terms in pair order, as `axpy` would).
    let quads = pairs.len() / 4;
    for q in 0..quads {
        let at = 4 * q;
        for a in 0..4 {
            ahead(others, width, pairs, at + a);
        }
        let o = [
            row(pairs[at]),
            row(pairs[at + 1]),
            row(pairs[at + 2]),
            row(pairs[at + 3]),
        ];
        let mut a = [0.0f32; 4];
        for p in 0..4 {
            a[p] = scale(values[at + p], wide::dot(x.as_ptr(), o[p], vectors));
        }
        wide::add_scaled(out.as_mut_ptr(), vectors, &a, &o);
    }
    for at in 4 * quads..pairs.len() {
        ahead(others, width, pairs, at);
        let o = row(pairs[at]);
        let a = scale(values[at], wide::dot(x.as_ptr(), o, vectors));
        wide::add_scaled(out.as_mut_ptr(), vectors, &[a], &[o]);
    }
}

/// AVX2 forms of `dot` and of `axpy`s into one row, the same operations in the same order (no
/// fused multiply-add), so the same bits: rows of whole `LANES`.
#[cfg(target_arch = "x86_64")]
mod wide {
    use std::arch::x86_64::*;

    /// `dot` of `vectors * LANES` floats at `x` and `y`: three accumulators taking the
    /// vectors in turn (the ones past the last whole three into the first), then the lanes.
    ///
    /// # Safety
    /// The CPU has AVX2; `x` and `y` point at `vectors * LANES` floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(x: *const f32, y: *const f32, vectors: usize) -> f32 {
        let product =
            |v: usize| _mm256_mul_ps(_mm256_loadu_ps(x.add(8 * v)), _mm256_loadu_ps(y.add(8 * v)));
        let zero = _mm256_setzero_ps();
        let mut acc = [zero; 3];
        let whole = vectors / 3 * 3;
        for v in (0..whole).step_by(3) {
            acc[0] = _mm256_add_ps(acc[0], product(v));
            acc[1] = _mm256_add_ps(acc[1], product(v + 1));
            acc[2] = _mm256_add_ps(acc[2], product(v + 2));
        }
        for v in whole..vectors {
            acc[0] = _mm256_add_ps(acc[0], product(v));
        }
        let lanes = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), acc[2]);
        // [l0 + l4, l1 + l5, l2 + l6, l3 + l7]
        let half = _mm_add_ps(
            _mm256_castps256_ps128(lanes),
            _mm256_extractf128_ps::<1>(lanes),
        );
        // [h0 + h2, h1 + h3, ..]
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let sum = _mm_add_ss(pairs, _mm_shuffle_ps::<0b01>(pairs, pairs));
        // `dot` adds its (here empty) tail last: -0 becomes +0 there too.
        _mm_cvtss_f32(sum) + 0.0
    }

    /// `out += a[p] * o[p]` for each `p` in turn, over `vectors * LANES` floats.
    ///
    /// # Safety
    /// The CPU has AVX2; `out` and every `o[p]` point at `vectors * LANES` floats.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub unsafe fn add_scaled<const N: usize>(
        out: *mut f32,
        vectors: usize,
        a: &[f32; N],
        o: &[*const f32; N],
    ) {
        let a = a.map(|a| _mm256_set1_ps(a));
        for v in 0..vectors {
            let mut sum = _mm256_loadu_ps(out.add(8 * v));
            for p in 0..N {
                sum = _mm256_add_ps(sum, _mm256_mul_ps(a[p], _mm256_loadu_ps(o[p].add(8 * v))));
            }
            _mm256_storeu_ps(out.add(8 * v), sum);
        }
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn observed_rows(
    sum: Observed,
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
    out: &mut [f32],
) {
    for (n, (&j, &value)) in pairs.iter().zip(values).enumerate() {
        ahead(others, width, pairs, n);
        let other = &others[j as usize * width..][..width];
        axpy(w.scale(sum, value, dot(x, other)), other, out);
    }
}

/// The observed pairs' part of the loss at row `x`, `sum c (y - s)^2 - unobserved s^2`, and
/// of the squared errors of their preferences, `sum (y - s)^2`.
pub fn observed_loss(
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { observed_loss_avx2(w, x, others, width, pairs, values) };
    }
    observed_loss_rows(w, x, others, width, pairs, values)
}

/// `observed_loss_rows` compiled for AVX2 (see `observed_avx2`).
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn observed_loss_avx2(
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
) -> (f64, f64) {
    if width % LANES != 0 || x.len() < width {
        return observed_loss_rows(w, x, others, width, pairs, values);
    }
    let dot = |j: u32| {
        wide::dot(
            x.as_ptr(),
            others[j as usize * width..][..width].as_ptr(),
            width / LANES,
        )
    };
    add_losses(w, others, width, pairs, values, dot)
}

#[inline(always)]
fn observed_loss_rows(
    w: &Weights,
    x: &[f32],
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
) -> (f64, f64) {
    let dot = |j: u32| dot(x, &others[j as usize * width..][..width]);
    add_losses(w, others, width, pairs, values, dot)
}

/// The sums of `observed_loss`, given each pair's score.
#[inline(always)]
fn add_losses(
    w: &Weights,
    others: &[f32],
    width: usize,
    pairs: &[u32],
    values: &[f32],
    mut score: impl FnMut(u32) -> f32,
) -> (f64, f64) {
    let (mut loss, mut sse) = (0.0f64, 0.0f64);
    for (n, (&j, &value)) in pairs.iter().zip(values).enumerate() {
        ahead(others, width, pairs, n);
        let s = score(j) as f64;
        let (c, y) = w.observed(value);
        let e = (y as f64 - s).powi(2);
        sse += e;
        loss += c as f64 * e - w.unobserved as f64 * s * s;
    }
    (loss, sse)
}

/// Pairs ahead whose rows are asked for before they are needed (the rows of a pair's other
/// side are scattered over memory that does not fit in cache).
const AHEAD: usize = 8;

#[inline(always)]
fn ahead(others: &[f32], width: usize, pairs: &[u32], n: usize) {
    if let Some(&j) = pairs.get(n + AHEAD) {
        crate::prefetch::prefetch_row(others, j as usize * width, width);
    }
}

/// `y += a x`.
#[inline(always)]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// What one step of a row did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    /// The row moved along its direction.
    Moved,
    /// The residual is negligible: the row is solved.
    Converged,
    /// `<d, A d> <= 0` with a residual left: the system is singular.
    Singular,
    /// A value that is not a number appeared (weights too large for f32).
    Diverged,
}

/// Residuals below this (squared norm) count as solved.
pub const CONVERGED: f32 = 1e-20;

/// Starts a row's conjugate gradient from its residual `r` (slot 0 zeroed if frozen): the first
/// direction is `r`; returns `<r, r>`.
#[inline]
pub fn cg_start(r: &mut [f32], d: &mut [f32], slot0: Slot0) -> f32 {
    if slot0 == Slot0::Frozen {
        r[0] = 0.0;
    }
    d.copy_from_slice(r);
    dot(r, r)
}

/// One conjugate-gradient step of a row given `ad = A d`: moves `x`, updates the residual `r`,
/// its squared norm `rr` and the next direction `d`.
#[inline(always)]
pub fn cg_step(
    x: &mut [f32],
    r: &mut [f32],
    d: &mut [f32],
    ad: &mut [f32],
    rr: &mut f32,
    slot0: Slot0,
) -> Stepped {
    if *rr < CONVERGED {
        return Stepped::Converged;
    }
    if slot0 == Slot0::Frozen {
        ad[0] = 0.0;
    }
    let dad = dot(d, ad);
    if !dad.is_finite() || !rr.is_finite() {
        return Stepped::Diverged;
    }
    if dad <= 0.0 {
        return Stepped::Singular;
    }
    let a = *rr / dad;
    axpy(a, d, x);
    axpy(-a, ad, r);
    let next = dot(r, r);
    let beta = next / *rr;
    for (d, r) in d.iter_mut().zip(r.iter()) {
        *d = r + beta * *d;
    }
    *rr = next;
    Stepped::Moved
}

/// `out_j = scale G x_j + reg x_j` for every row `x_j` of `rows`: one matrix product for all.
pub fn gram_apply_rows(gram: &Gram, scale: f32, reg: f32, rows: &[f32], out: &mut [f32]) {
    let (dims, width) = (gram.dims, gram.width);
    let n = rows.len() / width;
    let x = ArrayView2::from_shape((n, width), rows).expect("whole rows");
    let g = ArrayView2::from_shape((dims, width), &gram.g[..]).expect("dims rows");
    let mut o =
        ndarray::ArrayViewMut2::from_shape((n, width), &mut out[..n * width]).expect("whole rows");
    // G is symmetric: the rows of X G^T are the products G x_j.
    ndarray::linalg::general_mat_mul(
        scale,
        &x.slice(ndarray::s![.., ..dims]),
        &g.slice(ndarray::s![.., ..dims]).t(),
        0.0,
        &mut o.slice_mut(ndarray::s![.., ..dims]),
    );
    for (o, x) in out.iter_mut().zip(rows) {
        *o += reg * x;
    }
}

/// The conjugate-gradient state of a block of rows stepped side by side, so the Gram matrix's
/// part of every row's product is one matrix product per step.
#[derive(Clone, Debug, Default)]
pub struct CgRows {
    width: usize,
    /// Residuals, directions and products `A d`, `width` floats per row.
    pub r: Vec<f32>,
    pub d: Vec<f32>,
    pub ad: Vec<f32>,
    rr: Vec<f32>,
}

/// Rows whose steps stopped on a system that is singular or that overflowed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failed {
    pub singular: usize,
    pub diverged: usize,
}

impl Failed {
    pub fn count(&mut self, stepped: Stepped) {
        match stepped {
            Stepped::Singular => self.singular += 1,
            Stepped::Diverged => self.diverged += 1,
            Stepped::Moved | Stepped::Converged => {}
        }
    }

    pub fn add(&mut self, other: Failed) {
        self.singular += other.singular;
        self.diverged += other.diverged;
    }
}

impl CgRows {
    /// Room for `n` rows of `width` floats (contents undefined until `start`).
    pub fn resize(&mut self, n: usize, width: usize) {
        self.width = width;
        for v in [&mut self.r, &mut self.d, &mut self.ad] {
            v.resize(n * width, 0.0);
        }
        self.rr.resize(n, 0.0);
    }

    /// Every row's first direction from its residual in `r`.
    pub fn start(&mut self, slot0: Slot0) {
        let w = self.width;
        for ((r, d), rr) in self
            .r
            .chunks_exact_mut(w)
            .zip(self.d.chunks_exact_mut(w))
            .zip(&mut self.rr)
        {
            *rr = cg_start(r, d, slot0);
        }
    }

    /// Every row's step, `ad` holding its `A d`.
    pub fn step(&mut self, rows: &mut [f32], slot0: Slot0) -> Failed {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.step_avx2(rows, slot0) };
        }
        self.step_rows(rows, slot0)
    }

    /// `step_rows` compiled for AVX2 (see `observed_avx2`).
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn step_avx2(&mut self, rows: &mut [f32], slot0: Slot0) -> Failed {
        self.step_rows(rows, slot0)
    }

    #[inline(always)]
    fn step_rows(&mut self, rows: &mut [f32], slot0: Slot0) -> Failed {
        let w = self.width;
        let mut failed = Failed::default();
        for ((((x, r), d), ad), rr) in rows
            .chunks_exact_mut(w)
            .zip(self.r.chunks_exact_mut(w))
            .zip(self.d.chunks_exact_mut(w))
            .zip(self.ad.chunks_exact_mut(w))
            .zip(&mut self.rr)
        {
            failed.count(cg_step(x, r, d, ad, rr, slot0));
        }
        failed
    }
}

/// Rows stepped side by side (see `CgRows`).
pub const BLOCK_ROWS: usize = 64;

/// `steps` conjugate-gradient steps on each row of `rows`, warm-started from it, row `j`'s
/// observed pairs `pairs_of(j)` (rows of `others`, values). Blocks of `BLOCK_ROWS` rows step
/// side by side.
#[allow(clippy::too_many_arguments)]
pub fn cg_rows<'p>(
    w: &Weights,
    gram: &Gram,
    slot0: Slot0,
    steps: usize,
    rows: &mut [f32],
    others: &[f32],
    pairs_of: impl Fn(usize) -> (&'p [u32], &'p [f32]),
    cg: &mut CgRows,
) -> Failed {
    let width = gram.width;
    let mut failed = Failed::default();
    for (b, block) in rows.chunks_mut(BLOCK_ROWS * width).enumerate() {
        let first = b * BLOCK_ROWS;
        cg.resize(block.len() / width, width);
        gram_apply_rows(gram, -w.unobserved, -w.reg, block, &mut cg.r);
        for (j, (x, r)) in block
            .chunks_exact(width)
            .zip(cg.r.chunks_exact_mut(width))
            .enumerate()
        {
            let (pairs, values) = pairs_of(first + j);
            observed(Observed::Residual, w, x, others, width, pairs, values, r);
        }
        cg.start(slot0);
        for _ in 0..steps {
            gram_apply_rows(gram, w.unobserved, w.reg, &cg.d, &mut cg.ad);
            for (j, (d, ad)) in
                cg.d.chunks_exact(width)
                    .zip(cg.ad.chunks_exact_mut(width))
                    .enumerate()
            {
                let (pairs, values) = pairs_of(first + j);
                observed(Observed::Product, w, d, others, width, pairs, values, ad);
            }
            failed.add(cg.step(block, slot0));
        }
    }
    failed
}

/// `cg_rows` for one row: what it did.
#[allow(clippy::too_many_arguments)]
pub fn cg_row(
    w: &Weights,
    gram: &Gram,
    slot0: Slot0,
    steps: usize,
    x: &mut [f32],
    others: &[f32],
    pairs: &[u32],
    values: &[f32],
) -> Stepped {
    let mut cg = CgRows::default();
    let failed = cg_rows(
        w,
        gram,
        slot0,
        steps,
        x,
        others,
        |_| (pairs, values),
        &mut cg,
    );
    if failed.diverged > 0 {
        Stepped::Diverged
    } else if failed.singular > 0 {
        Stepped::Singular
    } else {
        Stepped::Converged
    }
}

/// The exact solution of one row's normal equations (Cholesky), slot 0 held at its value in
/// `x` when frozen; `None` when the system is not positive definite. The reference the
/// conjugate-gradient steps converge to, and how fold-in computes a row.
#[allow(clippy::too_many_arguments)]
pub fn solve_exact(
    w: &Weights,
    gram: &Gram,
    slot0: Slot0,
    x: &mut [f32],
    others: &[f32],
    pairs: &[u32],
    values: &[f32],
) -> Option<()> {
    let (dims, width) = (gram.dims, gram.width);
    let mut a = Array2::<f64>::zeros((dims, dims));
    let mut b = Array1::<f64>::zeros(dims);
    for r in 0..dims {
        for c in 0..dims {
            a[(r, c)] = w.unobserved as f64 * gram.g[r * width + c] as f64;
        }
        a[(r, r)] += w.reg as f64;
    }
    for (&j, &value) in pairs.iter().zip(values) {
        let o = &others[j as usize * width..][..dims];
        let (c, y) = w.observed(value);
        let extra = (c - w.unobserved) as f64;
        for r in 0..dims {
            b[r] += (c * y) as f64 * o[r] as f64;
            for s in 0..dims {
                a[(r, s)] += extra * o[r] as f64 * o[s] as f64;
            }
        }
    }
    // A frozen slot 0 is a known: move its column to the right-hand side, solve the rest.
    let first = match slot0 {
        Slot0::Free => 0,
        Slot0::Frozen => 1,
    };
    if first == 1 {
        let held = x[0] as f64;
        for r in 1..dims {
            b[r] -= a[(r, 0)] * held;
        }
    }
    let a = a.slice(ndarray::s![first.., first..]).to_owned();
    let b = b.slice(ndarray::s![first..]).to_owned();
    let factor = a.factorizec(UPLO::Lower).ok()?;
    let solved = factor.solvec(&b).ok()?;
    if solved.iter().any(|v| !v.is_finite()) {
        return None;
    }
    for (v, s) in x[first..dims].iter_mut().zip(solved.iter()) {
        *v = *s as f32;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    const W: Weights = Weights {
        alpha: 4.0,
        unobserved: 1.0,
        reg: 0.05,
    };

    /// `n` random rows of `dims` floats (slot 0 set to `lead` when given) padded to `width`.
    fn rows(rng: &mut Rng, n: usize, dims: usize, width: usize, lead: Option<f32>) -> Vec<f32> {
        let mut out = vec![0.0f32; n * width];
        for row in out.chunks_exact_mut(width) {
            for v in &mut row[..dims] {
                *v = (rng.normal() * 0.3) as f32;
            }
            if let Some(l) = lead {
                row[0] = l;
            }
        }
        out
    }

    /// The AVX2 sums and losses are `dot` and `axpy` bit for bit: pairs in fours and alone, every row
    /// width, signed zeros and values of every scale.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_observed_sums_are_the_plain_ones_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut rng = Rng::new(5, 6);
        for width in (8..=104).step_by(8) {
            let mut others = rows(&mut rng, 40, width, width, None);
            for v in others.iter_mut().step_by(7) {
                *v *= 1e4;
            }
            others[..width].fill(-0.0);
            let x = rows(&mut rng, 1, width, width, Some(0.7));
            let zero = vec![0.0f32; width];
            for (a, b) in [(&x, &others[width..2 * width]), (&zero, &others[..width])] {
                // SAFETY: AVX2 is there (checked above); both rows have `width` floats.
                let wide = unsafe { wide::dot(a.as_ptr(), b.as_ptr(), width / LANES) };
                assert_eq!(wide.to_bits(), dot(a, b).to_bits(), "width {width}");
            }
            for n in [0, 1, 3, 4, 5, 11, 40] {
                let pairs: Vec<u32> = (0..n).map(|p| (p * 7 % 40) as u32).collect();
                let values: Vec<f32> = (0..n).map(|p| (p % 5) as f32 - 1.0).collect();
                for sum in [Observed::Residual, Observed::Product] {
                    let (mut fast, mut plain) = (vec![0.25f32; width], vec![0.25f32; width]);
                    // SAFETY: as above.
                    unsafe {
                        observed_avx2(sum, &W, &x, &others, width, &pairs, &values, &mut fast)
                    };
                    observed_rows(sum, &W, &x, &others, width, &pairs, &values, &mut plain);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fast), bits(&plain), "width {width}, {n} pairs");
                }
                // SAFETY: as above.
                let fast = unsafe { observed_loss_avx2(&W, &x, &others, width, &pairs, &values) };
                let plain = observed_loss_rows(&W, &x, &others, width, &pairs, &values);
                assert_eq!(fast.0.to_bits(), plain.0.to_bits());
                assert_eq!(fast.1.to_bits(), plain.1.to_bits());
            }
        }
    }

    fn naive_gram(rows: &[f32], width: usize, dims: usize) -> Vec<f64> {
        let mut g = vec![0.0f64; dims * dims];
        for row in rows.chunks_exact(width) {
            for r in 0..dims {
                for c in 0..dims {
                    g[r * dims + c] += row[r] as f64 * row[c] as f64;
                }
            }
        }
        g
    }

    /// The loss of one row against every other row (naive: every pair, observed or not).
    fn naive_loss(x: &[f32], others: &[f32], width: usize, pairs: &[u32], values: &[f32]) -> f64 {
        let mut loss = W.reg as f64 * x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>();
        for (j, other) in others.chunks_exact(width).enumerate() {
            let s: f64 = x
                .iter()
                .zip(other)
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            loss += match pairs.iter().position(|&p| p as usize == j) {
                Some(at) => {
                    let (c, y) = W.observed(values[at]);
                    c as f64 * (y as f64 - s).powi(2)
                }
                None => W.unobserved as f64 * s * s,
            };
        }
        loss
    }

    #[test]
    fn gram_parts_match_the_naive_sum() {
        let mut rng = Rng::new(3, 4);
        let (dims, width) = (9, 16);
        let r = rows(&mut rng, 5000, dims, width, None);
        let part = gram_part(&r, width, dims);
        let naive = naive_gram(&r, width, dims);
        for (a, b) in part.iter().zip(&naive) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
        }
        let (front, back) = r.split_at(1234 * width);
        let whole = Gram::from_parts(dims, width, [&part[..]]);
        let (p1, p2) = (gram_part(front, width, dims), gram_part(back, width, dims));
        let split = Gram::from_parts(dims, width, [&p1[..], &p2[..]]);
        for (a, b) in whole.g.iter().zip(&split.g) {
            assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()));
        }
        assert!(whole
            .g
            .chunks_exact(width)
            .all(|row| row[dims..] == [0.0; 7]));
    }

    #[test]
    fn conjugate_gradient_converges_to_the_exact_minimum_of_the_naive_loss() {
        let mut rng = Rng::new(5, 6);
        let (dims, width) = (7, 8);
        for slot0 in [Slot0::Free, Slot0::Frozen] {
            let others = rows(&mut rng, 60, dims, width, Some(1.0));
            let gram = Gram::from_parts(dims, width, [&naive_gram(&others, width, dims)[..]]);
            let pairs = [3u32, 17, 18, 40, 59];
            let values = [1.0f32, 5.0, -2.0, 3.0, 0.0];
            let start = rows(&mut rng, 1, dims, width, Some(0.5));
            let mut exact = start.clone();
            solve_exact(&W, &gram, slot0, &mut exact, &others, &pairs, &values).unwrap();
            if slot0 == Slot0::Frozen {
                assert_eq!(exact[0], 0.5);
            }
            // The exact row is a minimum of the loss written out pair by pair: a nudge of any
            // solved slot raises it.
            let at = naive_loss(&exact, &others, width, &pairs, &values);
            let first = if slot0 == Slot0::Frozen { 1 } else { 0 };
            for s in first..dims {
                for h in [-1e-2f32, 1e-2] {
                    let mut nudged = exact.clone();
                    nudged[s] += h;
                    assert!(naive_loss(&nudged, &others, width, &pairs, &values) > at);
                }
            }
            // Three warm-started steps get most of the way; dims steps all of it.
            let mut few = start.clone();
            cg_row(&W, &gram, slot0, 3, &mut few, &others, &pairs, &values);
            let loss = |x: &[f32]| naive_loss(x, &others, width, &pairs, &values);
            assert!(loss(&few) < loss(&start));
            assert!(loss(&few) - at < 0.2 * (loss(&start) - at));
            let mut all = start.clone();
            cg_row(&W, &gram, slot0, dims, &mut all, &others, &pairs, &values);
            for (a, b) in all.iter().zip(&exact) {
                assert!((a - b).abs() < 1e-3, "{all:?} vs {exact:?}");
            }
            assert!(all[dims..].iter().all(|&v| v == 0.0), "padding stays zero");
        }
    }

    #[test]
    fn a_rank_deficient_system_still_steps_and_an_indefinite_one_is_reported() {
        let (dims, width) = (3, 8);
        let mut others = vec![0.0f32; 2 * width];
        others[..3].copy_from_slice(&[1.0, 0.0, 0.0]);
        // No weight on the unobserved pairs, no regularisation, one observed pair: a rank-one
        // system. The steps stay in its range (the solution nearest the start); only the
        // exact solve refuses it.
        let w = Weights {
            alpha: 1.0,
            unobserved: 0.0,
            reg: 0.0,
        };
        let gram = Gram::from_parts(dims, width, [&naive_gram(&others, width, dims)[..]]);
        let mut x = vec![0.0f32; width];
        x[1] = 0.3;
        let stepped = cg_row(&w, &gram, Slot0::Free, 3, &mut x, &others, &[0], &[1.0]);
        assert_eq!(stepped, Stepped::Converged);
        assert_eq!(&x[..3], &[1.0, 0.3, 0.0]);
        assert!(solve_exact(&w, &gram, Slot0::Free, &mut x, &others, &[0], &[1.0]).is_none());
        // A Gram matrix that misses the observed row, with a heavy unobserved weight: the
        // observed pair's term is negative, the system indefinite.
        let w = Weights {
            unobserved: 5.0,
            ..w
        };
        let zeros = Gram::from_parts(dims, width, [&[0.0f64; 9][..]]);
        let mut x = vec![0.0f32; width];
        x[0] = 0.3;
        let stepped = cg_row(&w, &zeros, Slot0::Free, 3, &mut x, &others, &[0], &[0.0]);
        assert_eq!(stepped, Stepped::Singular);
    }
}
