//! The process's memory: peak resident size for the logs, what the host has free (to refuse a
//! model that cannot fit before allocating it), and the allocator setting that keeps it low
//! (memory per input event is a target of the benchmark).

/// Buffers above this size get their own mapping from glibc's allocator, returned to the
/// operating system as soon as they are freed.
const OWN_MAPPING_ABOVE: i32 = 4 << 20;

/// Call once at start. glibc raises its threshold for giving large blocks their own mapping
/// each time one is freed, so after the read phase the big buffers of the exchange and of
/// saving the model land in the heap and stay resident after use: peak RSS at 2 ranks x 5M
/// events went from 95 MB to 82 MB with a fixed 4 MB threshold, at the same speed (a 128 KB
/// threshold saves a little more and costs 0.1 s of page faults).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a setting of glibc's allocator; no pointers involved.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_MAPPING_ABOVE);
    }
}

/// This process's peak resident memory so far in MB (VmHWM; None where /proc is missing).
pub fn peak_rss_mb() -> Option<f64> {
    status_mb("VmHWM:")
}

/// This process's resident memory now in MB (VmRSS; None where /proc is missing).
pub fn rss_mb() -> Option<f64> {
    status_mb("VmRSS:")
}

fn status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// At debug level: `rank R: WHEN; memory N MB, peak P MB` (where a phase's memory goes).
pub fn log(rank: usize, when: &str) {
    log::debug!(
        "rank {rank}: {when}; memory {:.0} MB, peak {:.0} MB",
        rss_mb().unwrap_or(0.0),
        peak_rss_mb().unwrap_or(0.0)
    );
}

/// Memory the host can still give without swapping, in bytes (MemAvailable; None where /proc is
/// missing).
pub fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
