//! Helpers for the integration tests: run the real binary under `mpirun`, with a timeout, on
//! data in a fresh temporary folder; read models back the way a user would.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use funksvd::model_io::{self, Model};
use funksvd::store::Location;

pub const BIN: &str = env!("CARGO_BIN_EXE_funksvd");

/// A test that needs longer than this is hanging (no test here takes more than a few seconds).
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What one run printed and how it ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "expected success, got {}:\n{}",
            self.code, self.stderr
        );
        self
    }
}

/// Run `funksvd ARGS` as `ranks` MPI ranks.
pub fn mpirun(ranks: usize, args: &[&str]) -> Run {
    mpirun_env(ranks, args, &[])
}

/// `mpirun` with extra environment variables, forwarded to every rank.
pub fn mpirun_env(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-n", &ranks.to_string()])
        .args(env.iter().flat_map(|(k, _)| ["-x", k]))
        .arg(BIN)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Ranks must not wait for each other's cores when the machine is oversubscribed.
        .env("OMPI_MCA_mpi_yield_when_idle", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd)
}

/// Run the binary directly (a single rank, no launcher).
pub fn solo(args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_with_timeout(cmd)
}

fn run_with_timeout(mut cmd: Command) -> Run {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mpirun: is OpenMPI installed? (scripts/setup.sh)");
    let started = Instant::now();
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            break;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "timed out after {TIMEOUT:?} (a rank is hanging):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().expect("output");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A fresh, empty folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file from ../shared/data. In CI a missing file fails the test; elsewhere the test skips.
pub fn shared_data(relative: &str) -> Option<PathBuf> {
    let root = std::env::var("FUNKSVD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = root.join(relative);
    if path.exists() {
        return Some(path);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "shared data file {} is missing (CI must have ../shared/data)",
            path.display()
        );
    }
    eprintln!(
        "skipping: {} not found (set FUNKSVD_SHARED_DATA)",
        path.display()
    );
    None
}

pub fn load_model(dir: &Path) -> Model {
    model_io::load(&Location::parse(s(dir), "--model").unwrap()).unwrap()
}

/// Generate a small dataset with `funksvd generate`.
pub fn generate(dir: &Path, extra: &[&str]) {
    let mut args = vec!["generate", "--out", s(dir)];
    args.extend_from_slice(extra);
    mpirun(2, &args).ok();
}

pub fn file_bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `a` is within `tolerance` (relative) of `b`.
pub fn assert_close(a: f64, b: f64, tolerance: f64, what: &str) {
    let rel = (a - b).abs() / b.abs();
    assert!(
        rel <= tolerance,
        "{what}: {a} vs {b} differ by {:.3}% (> {:.3}%)",
        rel * 100.0,
        tolerance * 100.0
    );
}
