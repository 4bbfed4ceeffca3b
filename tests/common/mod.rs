//! Helpers for the integration tests: run the real binary under `mpirun`, with a timeout, on
//! data in a fresh temporary folder; read models back the way a user would.

#![allow(dead_code)]

pub mod hosts;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float32Type, Int32Type, Int64Type};
use funksvd::mf::Model;
use funksvd::model_io;
use funksvd::store::Location;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

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
    run_with_timeout(mpirun_command(ranks, args, env))
}

/// The mpirun command every test uses: root allowed, oversubscribed, and only the S3 settings
/// the test gives (whatever the developer's shell exports), forwarded to every rank.
fn mpirun_command(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args(["--oversubscribe", "-n", &ranks.to_string()])
        .args(env.iter().flat_map(|(k, _)| ["-x", k]))
        .arg(BIN)
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Ranks must not wait for each other's cores when the machine is oversubscribed.
        .env("OMPI_MCA_mpi_yield_when_idle", "1");
    for name in S3_ENV_NAMES {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

const S3_ENV_NAMES: [&str; 10] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "MINIO_ENDPOINT",
    "MINIO_ACCESS_KEY",
    "MINIO_SECRET_KEY",
];

/// Run the binary directly (a single rank, no launcher).
pub fn solo(args: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    run_with_timeout(cmd)
}

/// Run any command with the test timeout.
pub fn run_command(cmd: Command) -> Run {
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
/// `train --data DATA --model MODEL`, then `extra`.
pub fn train_args<'a>(data: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", data, "--model", model];
    // The tests written for the explicit objective name it: events now default to the
    // implicit one (tests/train.rs pins the defaults).
    if !extra.contains(&"--objective") && !extra.contains(&"--rating-col") {
        args.extend_from_slice(&["--objective", "explicit"]);
    }
    args.extend_from_slice(extra);
    args
}

/// `evaluate --model MODEL --data DATA --split SPLIT`, then `extra`.
pub fn evaluate_args<'a>(
    model: &'a str,
    data: &'a str,
    split: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "evaluate", "--model", model, "--data", data, "--split", split,
    ];
    args.extend_from_slice(extra);
    args
}

/// `train` with every flag at its default (no `--objective`: what the data decide).
pub fn default_train_args<'a>(data: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train", "--data", data, "--model", model];
    args.extend_from_slice(extra);
    args
}

/// The flags of a ratings CSV with columns user, item, rating (the tests' own CSVs).
pub const COLUMNS: [&str; 6] = [
    "--rating-col",
    "rating",
    "--user-col",
    "user",
    "--item-col",
    "item",
];

/// `train` on MovieLens' ratings.csv (explicit ratings, its column names).
pub fn ml_args<'a>(data: &'a str, model: &'a str) -> Vec<&'a str> {
    train_args(
        data,
        model,
        &[
            "--rating-col",
            "rating",
            "--user-col",
            "userId",
            "--item-col",
            "movieId",
        ],
    )
}

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
    model_io::load_blocking(&Location::parse(s(dir), "--model").unwrap()).unwrap()
}

/// Generate a small dataset with `funksvd generate`.
pub fn generate(dir: &Path, extra: &[&str]) {
    let mut args = vec!["generate", "--out", s(dir)];
    args.extend_from_slice(extra);
    mpirun(2, &args).ok();
}

/// The bytes of a model's three top-level files, to show a model did not change.
pub fn model_files(dir: &Path) -> Vec<Vec<u8>> {
    ["model.json", "users.parquet", "items.parquet"]
        .iter()
        .map(|f| file_bytes(&dir.join(f)))
        .collect()
}

/// A fresh folder for one test holding a generated dataset in `data/`: (folder, dataset).
pub fn generated(
    name: &str,
    users: u32,
    items: u32,
    events: u32,
    files: u32,
) -> (PathBuf, PathBuf) {
    generated_in_groups(name, users, items, events, files, None)
}

/// `generated`, with `row_group` rows per Parquet row group (generate's default without).
pub fn generated_in_groups(
    name: &str,
    users: u32,
    items: u32,
    events: u32,
    files: u32,
    row_group: Option<u32>,
) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let data = dir.join("data");
    let numbers = [users, items, events, files].map(|n| n.to_string());
    let mut args = vec![
        "--users",
        &numbers[0],
        "--items",
        &numbers[1],
        "--events",
        &numbers[2],
        "--files",
        &numbers[3],
    ];
    let rows = row_group.map(|n| n.to_string());
    if let Some(rows) = &rows {
        args.extend(["--row-group-size", rows.as_str()]);
    }
    generate(&data, &args);
    (dir, data)
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

/// Credentials of the test S3 server; the secret is distinctive so a test can grep for leaks.
pub const S3_ACCESS_KEY: &str = "funksvd-test";
pub const S3_SECRET_KEY: &str = "Zx9-s3cr3t-never-printed";

/// A local S3 server (`s3s-fs`, which checks request signatures as MinIO does) over a temporary
/// folder, on a free loopback port; stopped when dropped. A bucket is a sub-folder.
pub struct S3Server {
    child: Option<std::process::Child>,
    pub port: u16,
    pub root: PathBuf,
    /// The address it listens on (loopback, or the hosts' bridge for tests/hosts.rs).
    pub host: String,
}

impl S3Server {
    /// Start one, or `None` (skip) when s3s-fs is not installed outside CI.
    pub fn start(name: &str, buckets: &[&str]) -> Option<S3Server> {
        S3Server::start_on(name, buckets, "127.0.0.1")
    }

    /// `start`, listening on `host` (an address of this machine).
    pub fn start_on(name: &str, buckets: &[&str], host: &str) -> Option<S3Server> {
        let Some(bin) = s3s_fs_binary() else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("s3s-fs is not installed (scripts/test.sh installs it)");
            }
            eprintln!("skipping: s3s-fs not found (cargo install s3s-fs@0.14.1 --locked --features binary)");
            return None;
        };
        let root = temp_dir(name).join("s3");
        for b in buckets {
            std::fs::create_dir_all(root.join(b)).unwrap();
        }
        let mut server = S3Server {
            child: None,
            port: 0,
            root,
            host: host.to_string(),
        };
        server.spawn(&bin, None);
        Some(server)
    }

    /// Run s3s-fs on `port`, or on a free one.
    fn spawn(&mut self, bin: &Path, port: Option<u16>) {
        let port = port.unwrap_or_else(|| {
            std::net::TcpListener::bind((self.host.as_str(), 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let child = Command::new(bin)
            .args(["--host", &self.host, "--port", &port.to_string()])
            .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET_KEY])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        self.child = Some(child);
        self.port = port;
        let started = Instant::now();
        while std::net::TcpStream::connect((self.host.as_str(), port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    /// The environment a rank needs to reach this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same folder (a new port).
    pub fn restart(&mut self) {
        self.stop();
        let bin = s3s_fs_binary().expect("s3s-fs");
        self.spawn(&bin, None);
    }

    /// Start again on the same folder and port (a store back after an outage: its clients'
    /// endpoint still holds).
    pub fn resume(&mut self) {
        self.stop();
        let bin = s3s_fs_binary().expect("s3s-fs");
        self.spawn(&bin, Some(self.port));
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn s3s_fs_binary() -> Option<PathBuf> {
    let home = std::env::var("HOME").map(PathBuf::from).ok();
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home.map(|h| h.join(".cargo/bin")))
        .map(|d| d.join("s3s-fs"))
        .find(|p| p.is_file())
}

/// Run with extra environment given as owned pairs (S3Server::env).
pub fn mpirun_with(ranks: usize, args: &[&str], env: &[(&'static str, String)]) -> Run {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    mpirun_env(ranks, args, &pairs)
}

/// An mpirun still running, whose stderr arrives line by line (for killing things mid-run).
pub struct Streaming {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Everything read from stderr so far.
    pub log: String,
}

/// A test that fails while mpirun runs leaves no job behind.
impl Drop for Streaming {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Streaming {
    pub fn start(ranks: usize, args: &[&str], env: &[(&'static str, String)]) -> Streaming {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Streaming::spawn(mpirun_command(ranks, args, &pairs))
    }

    /// Start `cmd` (an mpirun command) with its stderr streamed.
    pub fn spawn(mut cmd: Command) -> Streaming {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mpirun");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        Streaming {
            child,
            lines,
            log: String::new(),
        }
    }

    /// Send `signal` (`TERM`, `INT`, `KILL`) to every rank (the children of mpirun; not to
    /// mpirun itself), as Slurm and Kubernetes signal a job's processes.
    pub fn signal_ranks(&self, signal: &str) -> usize {
        let out = Command::new("pgrep")
            .args(["-P", &self.child.id().to_string()])
            .output()
            .expect("pgrep");
        let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        for pid in &pids {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), pid.clone()])
                .status();
        }
        pids.len()
    }

    /// Block until a stderr line contains `needle` (panics after a minute).
    pub fn wait_for(&mut self, needle: &str) {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no line with {needle:?} within 60 s:\n{}", self.log));
            self.log.push_str(&line);
            self.log.push('\n');
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Wait for mpirun to end, failing the test if it takes longer than `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if started.elapsed() >= within {
                while let Ok(line) = self.lines.try_recv() {
                    self.log.push_str(&line);
                    self.log.push('\n');
                }
                panic!("mpirun still running after {within:?}:\n{}", self.log);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push_str(&line);
            self.log.push('\n');
        }
        status
    }
}

/// One row of `recommend`'s output: key id (as text), rank, listed id (as text), score, source.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub key: String,
    pub rank: i32,
    pub value: String,
    pub score: f32,
    pub source: String,
}

/// Every row of an output folder, parts in name order; panics if `_SUCCESS` is missing.
pub fn read_output(out: &Path) -> Vec<Row> {
    assert!(out.join("_SUCCESS").exists(), "no _SUCCESS in {out:?}");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    parts.sort();
    let text = |a: &dyn Array, r: usize| match a.data_type() {
        arrow::datatypes::DataType::Int64 => a.as_primitive::<Int64Type>().value(r).to_string(),
        _ => a.as_string::<i32>().value(r).to_string(),
    };
    let mut rows = Vec::new();
    for part in parts {
        let file = std::fs::File::open(&part).unwrap();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
        {
            let b = batch.unwrap();
            for r in 0..b.num_rows() {
                rows.push(Row {
                    key: text(b.column(0).as_ref(), r),
                    rank: b.column(1).as_primitive::<Int32Type>().value(r),
                    value: text(b.column(2).as_ref(), r),
                    score: b.column(3).as_primitive::<Float32Type>().value(r),
                    source: match b.num_columns() {
                        5 => b.column(4).as_string::<i32>().value(r).to_string(),
                        _ => String::new(),
                    },
                });
            }
        }
    }
    rows
}

/// A Python that imports `modules` (such as "yaml, jsonschema"): FUNKSVD_PYTHON, else target/venv
/// (scripts/test.sh makes it). `None` (the test skips, saying so) when it has not; in CI a failure.
pub fn python_with(modules: &str) -> Option<PathBuf> {
    let candidate = std::env::var("FUNKSVD_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(candidate);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "{} lacks {modules} (scripts/test.sh installs them)",
            candidate.display()
        );
    }
    eprintln!(
        "skipping: no Python with {modules} at {}",
        candidate.display()
    );
    None
}
