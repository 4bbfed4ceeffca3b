//! Cache hints: the kernel asks for the rows of the ratings a few places ahead, the id interner
//! for the table slots of the ids a few rows ahead.

/// Hint the CPU to load `rows[start..start + len]` into cache (a no-op where unsupported).
/// Any element type: only the addresses matter.
#[inline(always)]
pub fn prefetch_row<T>(rows: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if start + len <= rows.len() && len > 0 {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // Elements per 64-byte cache line; a row may straddle a line boundary.
        let per_line = (64 / std::mem::size_of::<T>().max(1)).max(1);
        let mut at = start;
        while at < start + len {
            // SAFETY: `at` is inside `rows` (checked above); prefetch never faults anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(rows.as_ptr().add(at) as *const i8) };
            at += per_line;
        }
        // SAFETY: as above; the last element of the row.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(rows.as_ptr().add(start + len - 1) as *const i8) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (rows, start, len);
}
