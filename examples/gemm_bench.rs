//! The matrix product of `recommend`'s scoring, alone: a block of 64 users' rows (`[1, p]`,
//! k + 1 floats) times a tile of 4096 items' rows, through ndarray's `matrixmultiply` (what
//! funksvd uses) and through OpenBLAS's `cblas_sgemm` on one thread (loaded at run time from
//! `libopenblas.so.0` if the machine has it: `apt install libopenblas0-pthread`), for the
//! factor counts given. Prints GFLOP/s of each, best of `--repeat` rounds over a catalogue of
//! `--items` items.
//!
//!   cargo run --release --example gemm_bench -- [--factors "20 64 128"] [--items 20000] [--repeat 5]

use std::ffi::{c_int, c_void, CString};
use std::time::Instant;

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2};

const USERS: usize = 64;
const TILE: usize = 4096;

type Sgemm = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);
type SetThreads = unsafe extern "C" fn(c_int);

/// `cblas_sgemm` from OpenBLAS, on one thread, if the library is there.
fn openblas() -> Option<Sgemm> {
    let name = CString::new("libopenblas.so.0").ok()?;
    // SAFETY: dlopen/dlsym with valid C strings; the symbols have the C signatures above
    // (CBLAS); the library stays loaded for the process.
    unsafe {
        let lib = libc::dlopen(name.as_ptr(), libc::RTLD_NOW);
        if lib.is_null() {
            return None;
        }
        let sym = |s: &str| -> *mut c_void {
            let c = CString::new(s).expect("a symbol name");
            libc::dlsym(lib, c.as_ptr())
        };
        let (sgemm, threads) = (sym("cblas_sgemm"), sym("openblas_set_num_threads"));
        if sgemm.is_null() {
            return None;
        }
        if !threads.is_null() {
            std::mem::transmute::<*mut c_void, SetThreads>(threads)(1);
        }
        Some(std::mem::transmute::<*mut c_void, Sgemm>(sgemm))
    }
}

fn main() {
    let mut factors = vec![20usize, 64, 128];
    let (mut items, mut repeat) = (20_000usize, 5usize);
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        match (pair[0].as_str(), pair.get(1)) {
            ("--factors", Some(v)) => {
                factors = v.split_whitespace().map(|f| f.parse().unwrap()).collect()
            }
            ("--items", Some(v)) => items = v.parse().unwrap(),
            ("--repeat", Some(v)) => repeat = v.parse().unwrap(),
            _ => panic!("usage: gemm_bench [--factors \"20 64\"] [--items N] [--repeat N]"),
        }
    }
    let blas = openblas();
    if blas.is_none() {
        println!("OpenBLAS not found (apt install libopenblas0-pthread): matrixmultiply only");
    }
    println!(
        "{:>7} {:>18} {:>18} {:>8}",
        "k + 1", "matrixmultiply", "OpenBLAS 1 thread", "ratio"
    );
    for k in factors {
        let width = k + 1;
        let value = |i: usize| ((i * 2_654_435_761) % 1000) as f32 / 1000.0 - 0.5;
        let left = Array2::from_shape_fn((USERS, width), |(r, c)| value(r * width + c));
        let right = Array2::from_shape_fn((items, width), |(r, c)| value(7 + r * width + c));
        let mut out = Array2::<f32>::zeros((USERS, TILE));
        let flops = 2.0 * (USERS * width * items) as f64;
        let best = |f: &mut dyn FnMut()| {
            (0..repeat)
                .map(|_| {
                    let t = Instant::now();
                    f();
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
        };
        let mm = best(&mut || {
            for start in (0..items).step_by(TILE) {
                let end = (start + TILE).min(items);
                let tile = right.slice(s![start..end, ..]);
                let mut c = out.slice_mut(s![.., ..end - start]);
                general_mat_mul(1.0, &left, &tile.t(), 0.0, &mut c);
            }
        });
        let gflops = |t: f64| flops / t / 1e9;
        let blas_text = match blas {
            Some(sgemm) => {
                let t = best(&mut || {
                    for start in (0..items).step_by(TILE) {
                        let n = (start + TILE).min(items) - start;
                        // SAFETY: row-major A (64 x width, lda width), B^T from `right`'s rows
                        // start.. (n x width, ldb width), C 64 x n with ldc TILE: all in bounds.
                        unsafe {
                            sgemm(
                                101,
                                111,
                                112,
                                USERS as c_int,
                                n as c_int,
                                width as c_int,
                                1.0,
                                left.as_ptr(),
                                width as c_int,
                                right.as_ptr().add(start * width),
                                width as c_int,
                                0.0,
                                out.as_mut_ptr(),
                                TILE as c_int,
                            );
                        }
                    }
                });
                (
                    format!("{:.1} GFLOP/s", gflops(t)),
                    format!("{:.2}x", mm / t),
                )
            }
            None => ("-".into(), "-".into()),
        };
        println!(
            "{width:>7} {:>13.1} GFLOP/s {:>18} {:>8}",
            gflops(mm),
            blas_text.0,
            blas_text.1
        );
    }
}
