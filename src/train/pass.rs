//! The SGD pass over a stretch of the schedule, and the scoring of a rank's ratings: the loops
//! around the kernel (`mf::kernel`), one copy per row width so the compiler unrolls the kernel
//! completely, through AVX2 where the CPU has it (the same arithmetic, the same bits).

use crate::metrics::ErrorSums;
use crate::mf::kernel::{predict, Portable, Step, Sums};
use crate::mf::{Globals, ParamsRef};
use crate::prefetch::prefetch_row;

#[cfg(target_arch = "x86_64")]
use crate::mf::kernel::Avx;

use super::data::{HeldOut, RankRatings, UNKNOWN};
use super::schedule::Rating;

/// How many steps ahead (a pair of ratings, or one rating alone) the SGD loop prefetches rows.
const PREFETCH_AHEAD: usize = 4;

/// Call `$generic::<W, _>(kernel, args...)` with the row width W as a constant, so the
/// compiler unrolls the kernel completely: widths up to 128 floats (127 factors) get their own
/// copy, through the AVX2 copy `$avx2::<W>` where the CPU has it; wider rows run
/// `$generic::<0, _>` (a loop).
macro_rules! by_width {
    ($width:expr, $generic:ident, $avx2:ident, $args:tt) => {
        by_width!(@ $width, $generic, $avx2, $args,
            8 16 24 32 40 48 56 64 72 80 88 96 104 112 120 128)
    };
    (@ $width:expr, $generic:ident, $avx2:ident, $args:tt, $($w:literal)*) => {
        match $width {
            $($w => {
                #[cfg(target_arch = "x86_64")]
                if let Some(avx) = Avx::detect() {
                    // SAFETY: `avx` exists, so the CPU has AVX2 (`Avx::detect`).
                    return unsafe { by_width!(@call $avx2::<$w>, avx, $args) };
                }
                by_width!(@call $generic::<$w, Portable>, Portable, $args)
            })*
            _ => by_width!(@call $generic::<0, Portable>, Portable, $args),
        }
    };
    (@call $f:expr, $kernel:expr, ($($arg:expr),*)) => {
        $f($kernel, $($arg),*)
    };
}

/// The rows an SGD pass updates: every user row of the rank and the rows of one group of
/// items, padded to `width` floats each.
pub struct PassRows<'a> {
    pub users: &'a mut [f32],
    pub items: &'a mut [f32],
    pub width: usize,
}

/// One SGD pass over `ratings`, a stretch of a schedule (see `schedule::schedule`; items
/// numbered from the group's first row, as `rows.items` starts there): the first `pairs` pairs
/// alternate between two independent chains of updates, the rest go one by one. Returns the sum
/// of squared errors before each update. `following` are the ratings of the next pass, if
/// known: the pass starts fetching their rows.
///
/// The item rows may not fit in L2 and the users come in runs of random order, so the loop
/// asks for the rows of the ratings a few places ahead.
pub fn sgd_pass(
    rows: PassRows,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    by_width!(
        rows.width,
        pass_rows,
        pass_avx2,
        (rows, ratings, pairs, following, step, mu)
    )
}

/// `pass_rows` compiled with AVX2's 8-lane registers; the arithmetic is identical (no FMA),
/// so the results are bit for bit those of the portable kernel.
///
/// # Safety
/// The CPU has AVX2 (the caller holds an `Avx`, which only `Avx::detect` makes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pass_avx2<const W: usize>(
    avx: Avx,
    rows: PassRows,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    pass_rows::<W, Avx>(avx, rows, ratings, pairs, following, step, mu)
}

/// `sgd_pass` for rows of `W` floats (`W == 0`: `rows.width`, known only at run time).
#[inline(always)]
fn pass_rows<const W: usize, S: Sums>(
    kernel: S,
    rows: PassRows,
    ratings: &[Rating],
    pairs: usize,
    following: &[Rating],
    step: Step,
    mu: f32,
) -> f64 {
    let width = if W == 0 { rows.width } else { W };
    let PassRows {
        users: user_rows,
        items: item_rows,
        ..
    } = rows;
    let pairs = pairs.min(ratings.len() / 2);
    let (both, alone) = ratings.split_at(2 * pairs);
    let mut sse = [0.0f64; 2];
    for (k, pair) in both.chunks_exact(2).enumerate() {
        let ahead = 2 * (k + PREFETCH_AHEAD);
        fetch(ratings, following, ahead, user_rows, item_rows, width);
        fetch(ratings, following, ahead + 1, user_rows, item_rows, width);
        sse[0] += update(kernel, user_rows, item_rows, width, pair[0], step, mu);
        sse[1] += update(kernel, user_rows, item_rows, width, pair[1], step, mu);
    }
    for (k, &r) in alone.iter().enumerate() {
        let ahead = both.len() + k + PREFETCH_AHEAD;
        fetch(ratings, following, ahead, user_rows, item_rows, width);
        sse[0] += update(kernel, user_rows, item_rows, width, r, step, mu);
    }
    sse[0] + sse[1]
}

/// Prefetch the rows of rating `k` of `ratings` then `following` (part of `pass_rows`; a
/// function, not a closure: closures are not inlined into `target_feature` functions).
#[inline(always)]
fn fetch(
    ratings: &[Rating],
    following: &[Rating],
    k: usize,
    user_rows: &[f32],
    item_rows: &[f32],
    width: usize,
) {
    let ahead = ratings.get(k).or_else(|| following.get(k - ratings.len()));
    if let Some(r) = ahead {
        prefetch_row(item_rows, r.item as usize * width, width);
        prefetch_row(user_rows, r.user as usize * width, width);
    }
}

/// One SGD step on rating `r`; its squared error (part of `pass_rows`).
#[inline(always)]
fn update<S: Sums>(
    kernel: S,
    user_rows: &mut [f32],
    item_rows: &mut [f32],
    width: usize,
    r: Rating,
    step: Step,
    mu: f32,
) -> f64 {
    let err = kernel.step(
        &mut user_rows[r.user as usize * width..][..width],
        &mut item_rows[r.item as usize * width..][..width],
        r.value - mu,
        step,
    );
    (err as f64) * (err as f64)
}

/// Errors of the current model on a rank's hold-out pairs (sorted by user, so user rows
/// stream; item rows are fetched ahead).
pub fn holdout_errors(
    holdout: &[HeldOut],
    params: ParamsRef,
    biased: bool,
    globals: Globals,
) -> ErrorSums {
    by_width!(
        params.width,
        holdout_rows,
        holdout_avx2,
        (holdout, params, biased, globals)
    )
}

/// `holdout_rows` compiled with AVX2 (the same arithmetic, see `pass_avx2`).
///
/// # Safety
/// The CPU has AVX2 (the caller holds an `Avx`, which only `Avx::detect` makes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn holdout_avx2<const W: usize>(
    avx: Avx,
    holdout: &[HeldOut],
    params: ParamsRef,
    biased: bool,
    globals: Globals,
) -> ErrorSums {
    holdout_rows::<W, Avx>(avx, holdout, params, biased, globals)
}

/// `holdout_errors` for rows of `W` floats (`W == 0`: known only at run time).
#[inline(always)]
fn holdout_rows<const W: usize, S: Sums>(
    kernel: S,
    holdout: &[HeldOut],
    params: ParamsRef,
    biased: bool,
    globals: Globals,
) -> ErrorSums {
    let width = if W == 0 { params.width } else { W };
    let (user_rows, item_rows) = (params.users, params.items);
    let mu = globals.offset(biased);
    let (lo, hi) = globals.rating_range;
    let mut sums = ErrorSums::default();
    for (n, h) in holdout.iter().enumerate() {
        if let Some(ahead) = holdout.get(n + PREFETCH_AHEAD) {
            if ahead.item != UNKNOWN {
                prefetch_row(item_rows, ahead.item as usize * width, width);
            }
        }
        let predicted = if h.user != UNKNOWN && h.item != UNKNOWN {
            let (u, i) = (h.user as usize * width, h.item as usize * width);
            (mu + kernel.score(&user_rows[u..u + width], &item_rows[i..i + width])).clamp(lo, hi)
        } else {
            let user = (h.user != UNKNOWN).then(|| params.user(h.user as usize));
            let item = (h.item != UNKNOWN).then(|| params.item(h.item as usize));
            predict(user, item, globals.global_mean, biased, (lo, hi))
        };
        sums.add(h.value, predicted);
    }
    sums
}

/// Errors of the final model on a rank's training ratings, with the same prediction rule as
/// `evaluate`.
pub fn train_errors(
    data: &RankRatings,
    params: ParamsRef,
    biased: bool,
    globals: Globals,
) -> ErrorSums {
    let mut sums = ErrorSums::default();
    for u in 0..data.n_users() {
        let (items, values) = data.ratings_of(u);
        for (&i, &r) in items.iter().zip(values) {
            let (user, item) = (params.user(u), params.item(i as usize));
            sums.add(
                r,
                predict(
                    Some(user),
                    Some(item),
                    globals.global_mean,
                    biased,
                    globals.rating_range,
                ),
            );
        }
    }
    sums
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// `pass_rows` with the portable kernel at width `W` (0: the loop of any width), for tests
    /// that compare the code paths.
    pub fn portable<const W: usize>(
        rows: PassRows,
        ratings: &[Rating],
        pairs: usize,
        step: Step,
        mu: f32,
    ) -> f64 {
        pass_rows::<W, Portable>(Portable, rows, ratings, pairs, &[], step, mu)
    }
}
