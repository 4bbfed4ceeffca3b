//! The BLAS under ndarray-linalg's solves (Cholesky in fold-in and `als::solve_exact`):
//! Debian's OpenBLAS, linked through `openblas-system`. A rank is one core's worth of work, so
//! OpenBLAS runs on the calling thread only. It starts its pool of threads when it is loaded,
//! before `main`, sized by the cores the process may use: under `mpirun --bind-to none`, above
//! 2 ranks here (Open MPI binds no rank when oversubscribed) or under a launcher that does not
//! pin, every rank got a pool as wide as the node, for any solve large enough to split. Setting
//! `OPENBLAS_NUM_THREADS=1` in each launcher would do the same; this way no launcher can
//! forget it.

use std::os::raw::c_int;

extern "C" {
    fn openblas_set_num_threads(threads: c_int);
    fn openblas_get_num_threads() -> c_int;
}

/// Call once at start: every BLAS and LAPACK call of this process runs on its calling thread.
pub fn one_thread() {
    // SAFETY: OpenBLAS's own setter; it takes a count and touches no memory of ours.
    unsafe { openblas_set_num_threads(1) }
}

/// The threads a BLAS call may use.
pub fn threads() -> usize {
    // SAFETY: OpenBLAS's own getter; no arguments.
    unsafe { openblas_get_num_threads() }.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_one_thread_a_blas_call_uses_one_thread() {
        one_thread();
        assert_eq!(threads(), 1);
    }
}
