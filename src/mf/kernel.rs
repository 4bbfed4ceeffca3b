//! The numeric kernel: one SGD step of biased FunkSVD over two parameter rows, and prediction.
//! Pure functions over `&mut [f32]`; scheduling lives in the trainer (`train`).
//!
//! Training rows are padded: `[bias, f_0, ..., f_{k-1}, 0, ...]`, a whole number of `LANES`
//! floats (see `params`). The kernel runs every lane through the same arithmetic (the padding
//! stays zero) and fixes the bias lane afterwards, so bias and factors are updated in one pass
//! over one slice per side and the loops vectorise with no remainder.

/// Lanes of the partial sums; 8 f32 fill one AVX register and let the compiler vectorise.
pub const LANES: usize = 8;

/// The dot product of two factor vectors, summed in a fixed lane order (deterministic).
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    sum_lanes(acc) + tail
}

/// The lanes summed pairwise, in a fixed order.
#[inline(always)]
fn sum_lanes(acc: [f32; LANES]) -> f32 {
    let a = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (a[0] + a[2]) + (a[1] + a[3])
}

/// `bias_u + bias_i + <p_u, q_i>` of two padded rows of the same width.
#[inline(always)]
pub fn score(user: &[f32], item: &[f32]) -> f32 {
    Portable.score(user, item)
}

/// How the kernel does its arithmetic: `Portable` (plain Rust, any CPU) or `Avx` (x86-64 AVX
/// intrinsics). Both do the same operations in the same order, so results are bit for bit the
/// same; `Avx` exists because the compiler builds this dot product from 2-lane vectors when left
/// to itself (it vectorises along the horizontal sum's tree), and because it keeps the error in
/// a register from the dot product to the update.
///
/// The order: the products of chunks 0, 2, 4, ... are summed lane by lane in one accumulator,
/// those of chunks 1, 3, ... in another (two short chains instead of one long one), the two
/// added, then the eight lanes pairwise (`sum_lanes`).
///
/// A value of the type is needed to call the kernel: `Portable` is free, an `Avx` comes only
/// from `Avx::detect` on a CPU that has AVX2.
pub trait Sums: Copy {
    /// `bias_u + bias_i + <p_u, q_i>` of two padded rows of the same width.
    fn score(self, user: &[f32], item: &[f32]) -> f32;
    /// One SGD step (see `sgd_step`).
    fn step(self, user: &mut [f32], item: &mut [f32], target: f32, step: Step) -> f32;
}

/// The kernel in plain Rust.
#[derive(Clone, Copy, Debug)]
pub struct Portable;

impl Sums for Portable {
    #[inline(always)]
    fn score(self, user: &[f32], item: &[f32]) -> f32 {
        let n = user.len().min(item.len()) / LANES * LANES;
        let (user, item) = (&user[..n], &item[..n]);
        let mut acc = [[0.0f32; LANES]; 2];
        for (c, (x, y)) in user
            .chunks_exact(LANES)
            .zip(item.chunks_exact(LANES))
            .enumerate()
        {
            let mut x: [f32; LANES] = x.try_into().expect("a whole chunk");
            let y: [f32; LANES] = y.try_into().expect("a whole chunk");
            // The bias lane takes no part in the dot product.
            if c == 0 {
                x[0] = 0.0;
            }
            for l in 0..LANES {
                // The first product of each accumulator is its value (no 0 + first).
                acc[c % 2][l] = if c < 2 {
                    x[l] * y[l]
                } else {
                    acc[c % 2][l] + x[l] * y[l]
                };
            }
        }
        let mut sum = [0.0f32; LANES];
        for l in 0..LANES {
            sum[l] = acc[0][l] + acc[1][l];
        }
        user[0] + item[0] + sum_lanes(sum)
    }

    #[inline(always)]
    fn step(self, user: &mut [f32], item: &mut [f32], target: f32, step: Step) -> f32 {
        let n = user.len().min(item.len()) / LANES * LANES;
        let (user, item) = (&mut user[..n], &mut item[..n]);
        let (bu, bi) = (user[0], item[0]);
        let err = target - self.score(user, item);
        let (lr, reg) = (step.lr, step.reg);
        let g = lr * err;
        let keep = 1.0 - lr * reg;
        let (new_bu, new_bi) = new_biases(bu, bi, err, step);
        for (c, (p, q)) in user
            .chunks_exact_mut(LANES)
            .zip(item.chunks_exact_mut(LANES))
            .enumerate()
        {
            // Whole chunks in locals: the compiler then needs no proof that the rows are apart
            // to update eight lanes at once.
            let old_p: [f32; LANES] = p.try_into().expect("a whole chunk");
            let old_q: [f32; LANES] = q.try_into().expect("a whole chunk");
            let mut new_p = [0.0f32; LANES];
            let mut new_q = [0.0f32; LANES];
            for l in 0..LANES {
                new_p[l] = keep * old_p[l] + g * old_q[l];
                new_q[l] = keep * old_q[l] + g * old_p[l];
            }
            if c == 0 {
                (new_p[0], new_q[0]) = (new_bu, new_bi);
            }
            p.copy_from_slice(&new_p);
            q.copy_from_slice(&new_q);
        }
        err
    }
}

/// The bias lanes after a step: their partner is 1, not the other side's bias.
#[inline(always)]
fn new_biases(bu: f32, bi: f32, err: f32, step: Step) -> (f32, f32) {
    if step.biased {
        (
            bu + step.lr * (err - step.reg * bu),
            bi + step.lr * (err - step.reg * bi),
        )
    } else {
        (bu, bi)
    }
}

/// The kernel with AVX intrinsics; a value of it is the proof that the CPU has AVX2
/// (`Avx::detect`), so its safe methods never run an instruction the CPU lacks. Fast only inside
/// code compiled with AVX enabled (the trainer's `*_avx2` functions): elsewhere the intrinsics
/// are not inlined.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Avx(());

#[cfg(target_arch = "x86_64")]
impl Avx {
    /// The AVX kernel, if this CPU has AVX2.
    #[inline(always)]
    pub fn detect() -> Option<Avx> {
        std::arch::is_x86_feature_detected!("avx2").then_some(Avx(()))
    }

    /// The widest row `step` keeps in registers, in chunks (wider rows: `Portable`).
    const MAX_CHUNKS: usize = 16;

    /// The dot product of the chunks `p` and `q` without the bias lane, in every lane of the
    /// result (`Sums`' order).
    ///
    /// # Safety
    /// AVX is available; `p` and `q` have the same, non-zero length.
    #[inline(always)]
    unsafe fn dot_all_lanes(
        p: &[std::arch::x86_64::__m256],
        q: &[std::arch::x86_64::__m256],
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let product = |c: usize| {
            let x = if c == 0 {
                _mm256_blend_ps::<1>(p[0], _mm256_setzero_ps())
            } else {
                p[c]
            };
            _mm256_mul_ps(x, q[c])
        };
        let mut acc = [product(0), _mm256_setzero_ps()];
        if p.len() > 1 {
            acc[1] = product(1);
        }
        for c in 2..p.len() {
            acc[c % 2] = _mm256_add_ps(acc[c % 2], product(c));
        }
        let sum = _mm256_add_ps(acc[0], acc[1]);
        // sum_lanes' order in every lane: a_l = sum_l + sum_{l+4}, then (a0 + a2) + (a1 + a3)
        // (each lane adds the same two numbers, in one order or the other: the same bits).
        let a = _mm256_add_ps(sum, _mm256_permute2f128_ps::<0x01>(sum, sum));
        let b = _mm256_add_ps(a, _mm256_permute_ps::<0b01_00_11_10>(a));
        _mm256_add_ps(b, _mm256_permute_ps::<0b10_11_00_01>(b))
    }

    /// Chunks of a row in registers.
    ///
    /// # Safety
    /// AVX is available; `row` has at least `out.len() * LANES` floats.
    #[inline(always)]
    unsafe fn load(row: *const f32, out: &mut [std::arch::x86_64::__m256]) {
        for (c, chunk) in out.iter_mut().enumerate() {
            *chunk = std::arch::x86_64::_mm256_loadu_ps(row.add(c * LANES));
        }
    }
}

#[cfg(target_arch = "x86_64")]
impl Sums for Avx {
    #[inline(always)]
    fn score(self, user: &[f32], item: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let chunks = user.len().min(item.len()) / LANES;
        if chunks > Self::MAX_CHUNKS {
            return Portable.score(user, item);
        }
        // SAFETY: AVX is available (`self` exists: see `Avx::detect`); both slices have
        // chunks * LANES floats, and chunks > 0 (rows are never empty).
        let dot = unsafe {
            let mut p = [_mm256_setzero_ps(); Self::MAX_CHUNKS];
            let mut q = [_mm256_setzero_ps(); Self::MAX_CHUNKS];
            Self::load(user.as_ptr(), &mut p[..chunks]);
            Self::load(item.as_ptr(), &mut q[..chunks]);
            _mm256_cvtss_f32(Self::dot_all_lanes(&p[..chunks], &q[..chunks]))
        };
        user[0] + item[0] + dot
    }

    #[inline(always)]
    fn step(self, user: &mut [f32], item: &mut [f32], target: f32, step: Step) -> f32 {
        use std::arch::x86_64::*;
        let chunks = user.len().min(item.len()) / LANES;
        if chunks > Self::MAX_CHUNKS {
            return Portable.step(user, item, target, step);
        }
        let (bu, bi) = (user[0], item[0]);
        let (up, ip) = (user.as_mut_ptr(), item.as_mut_ptr());
        // SAFETY: AVX is available (`self` exists: see `Avx::detect`); every load and store is of
        // LANES floats at c * LANES < chunks * LANES, inside both slices, which do not overlap
        // (two `&mut`).
        unsafe {
            // Both rows in registers once: the dot product and the update read them there.
            let mut p = [_mm256_setzero_ps(); Self::MAX_CHUNKS];
            let mut q = [_mm256_setzero_ps(); Self::MAX_CHUNKS];
            Self::load(up, &mut p[..chunks]);
            Self::load(ip, &mut q[..chunks]);
            let dot = Self::dot_all_lanes(&p[..chunks], &q[..chunks]);
            // As Portable, in every lane: err = target - ((bu + bi) + dot), g = lr * err.
            let (bu_v, bi_v) = (_mm256_set1_ps(bu), _mm256_set1_ps(bi));
            let score = _mm256_add_ps(_mm256_set1_ps(bu + bi), dot);
            let err = _mm256_sub_ps(_mm256_set1_ps(target), score);
            let (lr, reg) = (_mm256_set1_ps(step.lr), _mm256_set1_ps(step.reg));
            let g = _mm256_mul_ps(lr, err);
            let keep = _mm256_set1_ps(1.0 - step.lr * step.reg);
            // The new biases, as `new_biases` computes them.
            let (new_bu, new_bi) = if step.biased {
                let new = |b| {
                    _mm256_add_ps(
                        b,
                        _mm256_mul_ps(lr, _mm256_sub_ps(err, _mm256_mul_ps(reg, b))),
                    )
                };
                (new(bu_v), new(bi_v))
            } else {
                (bu_v, bi_v)
            };
            for c in 0..chunks {
                let mut new_p = _mm256_add_ps(_mm256_mul_ps(keep, p[c]), _mm256_mul_ps(g, q[c]));
                let mut new_q = _mm256_add_ps(_mm256_mul_ps(keep, q[c]), _mm256_mul_ps(g, p[c]));
                if c == 0 {
                    // The bias lane goes in with its chunk: one store per chunk, so the next
                    // step's load of the row is forwarded from it.
                    new_p = _mm256_blend_ps::<1>(new_p, new_bu);
                    new_q = _mm256_blend_ps::<1>(new_q, new_bi);
                }
                _mm256_storeu_ps(up.add(c * LANES), new_p);
                _mm256_storeu_ps(ip.add(c * LANES), new_q);
            }
            _mm256_cvtss_f32(err)
        }
    }
}

/// Hyperparameters the step needs.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub lr: f32,
    pub reg: f32,
    pub biased: bool,
}

/// One SGD step on rating `target` (the rating minus the global mean when biased) over two
/// padded rows of the same width. Updates both rows in place and returns the error before the
/// update.
#[inline(always)]
pub fn sgd_step(user: &mut [f32], item: &mut [f32], target: f32, step: Step) -> f32 {
    Portable.step(user, item, target, step)
}

/// A prediction from two rows (either may be unknown), clipped to the rating range.
#[inline]
pub fn predict(
    user: Option<&[f32]>,
    item: Option<&[f32]>,
    global_mean: f32,
    biased: bool,
    range: (f32, f32),
) -> f32 {
    let raw = match (user, item) {
        (Some(u), Some(i)) => {
            let d = dot(&u[1..], &i[1..]);
            if biased {
                global_mean + u[0] + i[0] + d
            } else {
                d
            }
        }
        // Unknown user or item: fall back to what is known (biases), as Surprise does.
        (Some(u), None) if biased => global_mean + u[0],
        (None, Some(i)) if biased => global_mean + i[0],
        _ => global_mean,
    };
    raw.clamp(range.0, range.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook update (Funk 2006, Koren 2009), in f64, one operation per line.
    fn naive_step(
        user: &mut [f64],
        item: &mut [f64],
        target: f64,
        lr: f64,
        reg: f64,
        biased: bool,
    ) -> f64 {
        let k = user.len() - 1;
        let mut pred = user[0] + item[0];
        for f in 0..k {
            pred += user[1 + f] * item[1 + f];
        }
        let err = target - pred;
        if biased {
            user[0] += lr * (err - reg * user[0]);
            item[0] += lr * (err - reg * item[0]);
        }
        for f in 0..k {
            let pu = user[1 + f];
            let qi = item[1 + f];
            user[1 + f] += lr * (err * qi - reg * pu);
            item[1 + f] += lr * (err * pu - reg * qi);
        }
        err
    }

    /// Two padded rows with k factors: `[bias, factors..., 0...]`.
    fn rows(k: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let width = (k + 1).div_ceil(LANES) * LANES;
        let mut rng = crate::rng::Rng::new(seed, 0);
        let mut row = |bias: f32| {
            let mut r = vec![0.0f32; width];
            r[0] = bias;
            for v in &mut r[1..=k] {
                *v = (rng.normal() * 0.3) as f32;
            }
            r
        };
        (row(0.1), row(-0.2))
    }

    #[test]
    fn sgd_step_matches_the_naive_reference() {
        for k in [1, 3, 8, 20, 33, 100] {
            for biased in [true, false] {
                let (mut u, mut i) = rows(k, k as u64);
                let mut ud: Vec<f64> = u[..=k].iter().map(|&x| x as f64).collect();
                let mut id: Vec<f64> = i[..=k].iter().map(|&x| x as f64).collect();
                let step = Step {
                    lr: 0.01,
                    reg: 0.02,
                    biased,
                };
                // Many steps on the same pair amplify any difference in the update rule.
                for s in 0..200 {
                    let target = 1.5 + (s % 5) as f32 * 0.5;
                    let e = sgd_step(&mut u, &mut i, target, step);
                    let ed = naive_step(&mut ud, &mut id, target as f64, 0.01, 0.02, biased);
                    assert!((e as f64 - ed).abs() < 1e-4, "k={k} step {s}: {e} vs {ed}");
                }
                for (a, b) in u[..=k].iter().chain(&i[..=k]).zip(ud.iter().chain(&id)) {
                    assert!((*a as f64 - b).abs() < 1e-4, "k={k}: {a} vs {b}");
                }
                assert!(
                    u[k + 1..].iter().chain(&i[k + 1..]).all(|&v| v == 0.0),
                    "k={k}: the padding stays zero"
                );
                let s = score(&u, &i) as f64;
                let plain = ud[0] + id[0] + (1..=k).map(|f| ud[f] * id[f]).sum::<f64>();
                assert!((s - plain).abs() < 1e-4, "k={k}: score {s} vs {plain}");
                if !biased {
                    assert_eq!(
                        (u[0], i[0]),
                        (0.1, -0.2),
                        "biases untouched without --no-bias"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx_kernel_gives_the_bits_of_the_portable_one() {
        let Some(avx) = Avx::detect() else {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        };
        for k in [1, 7, 8, 20, 33, 100] {
            for biased in [true, false] {
                let (mut u, mut i) = rows(k, 3 + k as u64);
                let (mut u2, mut i2) = (u.clone(), i.clone());
                let step = Step {
                    lr: 0.01,
                    reg: 0.02,
                    biased,
                };
                for s in 0..50 {
                    assert_eq!(
                        avx.score(&u, &i).to_bits(),
                        Portable.score(&u2, &i2).to_bits()
                    );
                    let target = 1.0 + (s % 7) as f32 * 0.5;
                    let e = avx.step(&mut u, &mut i, target, step);
                    let e2 = Portable.step(&mut u2, &mut i2, target, step);
                    assert_eq!(e.to_bits(), e2.to_bits(), "k={k} step {s}");
                }
                assert_eq!((u, i), (u2, i2), "k={k}");
            }
        }
    }

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [0, 1, 7, 8, 9, 20, 64, 101] {
            let a: Vec<f32> = (0..n).map(|x| x as f32 * 0.25 - 3.0).collect();
            let b: Vec<f32> = (0..n).map(|x| 1.0 - x as f32 * 0.125).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!(
                (dot(&a, &b) as f64 - plain).abs() < 1e-3 * (1.0 + plain.abs()),
                "n={n}"
            );
        }
    }

    #[test]
    fn prediction_falls_back_to_biases_and_clips() {
        let u = [0.5f32, 1.0, 2.0];
        let i = [0.25f32, 1.0, 0.5];
        let range = (1.0, 5.0);
        assert_eq!(predict(Some(&u), Some(&i), 3.0, true, range), 5.0); // 3+0.5+0.25+2 = 5.75 -> 5
        assert_eq!(predict(Some(&u), Some(&i), 1.0, true, range), 3.75);
        assert_eq!(predict(Some(&u), None, 3.0, true, range), 3.5);
        assert_eq!(predict(None, Some(&i), 3.0, true, range), 3.25);
        assert_eq!(predict(None, None, 3.0, true, range), 3.0);
        assert_eq!(predict(Some(&u), Some(&i), 3.0, false, range), 2.0);
        assert_eq!(predict(None, Some(&i), 3.0, false, range), 3.0);
    }
}
