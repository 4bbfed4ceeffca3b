//! One error type for the whole program, and the one place that maps errors to exit codes.

use std::fmt;

/// What went wrong, sorted by who must act: the user (bad flag, bad input) or the operator
/// (storage, MPI, a bug). The message always names the flag, file, column or rank involved.
#[derive(Debug)]
pub enum Error {
    /// Bad flag, bad input data, nothing to train on: the user must change something. Exit code 2.
    Usage(String),
    /// Storage, network or any other runtime failure. Exit code 1.
    Runtime(String),
    /// Another rank failed; that rank has printed its own message. Carries the exit code it chose.
    PeerFailed { rank: usize, code: i32 },
    /// Every rank stopped on SIGTERM or SIGINT, after saving what can be resumed; rank 0 has
    /// logged how to continue. Exit code 128 + the signal (143, 130), as a shell reports it.
    Interrupted { signal: i32 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn runtime(msg: impl Into<String>) -> Self {
        Error::Runtime(msg.into())
    }

    /// The process exit code for this error (see SPEC: 2 usage/bad input, 1 anything else).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            Error::Runtime(_) => 1,
            Error::PeerFailed { code, .. } => *code,
            Error::Interrupted { signal } => 128 + signal,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Runtime(m) => f.write_str(m),
            Error::PeerFailed { rank, code } => {
                write!(f, "stopping: rank {rank} failed (exit code {code})")
            }
            Error::Interrupted { signal } => write!(f, "interrupted by signal {signal}"),
        }
    }
}

impl std::error::Error for Error {}
