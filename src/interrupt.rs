//! SIGTERM and SIGINT during training. Kubernetes evicts a pod and Slurm ends a job at its time
//! limit with SIGTERM, then kills it after a grace time: a training rank notes the signal
//! (`catch`), the ranks agree after each epoch whether any of them got one (`agreed`), and
//! then stop together at the same epoch, after saving a checkpoint `--resume` continues from.
//! Only `train` catches the signals; the other commands end on them as usual.

use std::sync::atomic::{AtomicI32, Ordering};

use crate::collective::{Collective, Op};
use crate::error::Error;

/// The last signal caught (0: none).
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CAUGHT.store(signal, Ordering::Relaxed);
}

/// From now on SIGTERM and SIGINT are noted instead of ending the process.
pub fn catch() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: `note` only stores to an atomic; SA_RESTART keeps interrupted system calls
        // (MPI's, storage's) going rather than failing with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal this process has caught, if any.
pub fn caught() -> Option<i32> {
    match CAUGHT.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// Whether any rank has caught a signal (every rank calls this at the same point; one small
/// allreduce): the signal (SIGTERM before SIGINT when ranks got different ones), or `None`.
pub fn agreed(comm: &dyn Collective) -> Option<i32> {
    let mut signal = [caught().map_or(0, |s| s as u64)];
    comm.reduce_u64(&mut signal, Op::Max);
    match signal[0] {
        0 => None,
        s => Some(s as i32),
    }
}

/// The error that ends every rank after a signal; rank 0 first logs what happened, `what`
/// (such as "after epoch 3 of 10; run the same command with --resume to continue").
pub fn stopped(comm: &dyn Collective, signal: i32, what: &str) -> Error {
    if comm.is_root() {
        log::warn!("interrupted ({}) {what}", name(signal));
    }
    Error::Interrupted { signal }
}

/// The signal's name for messages.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collective::Solo;

    #[test]
    fn a_caught_signal_is_noted_and_agreed_on() {
        assert_eq!(agreed(&Solo), None);
        catch();
        // SAFETY: raising a signal this process now handles.
        unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(caught(), Some(libc::SIGTERM));
        assert_eq!(agreed(&Solo), Some(15));
        assert_eq!(name(15), "SIGTERM");
        CAUGHT.store(0, Ordering::Relaxed);
    }
}
