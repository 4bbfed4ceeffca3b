//! Several hosts on this machine, as the tests' fixture (issue 32): network namespaces made by
//! `scripts/hosts.sh`, each with its own hostname and an address in 198.18.0.0/24, reached by
//! mpirun through an rsh agent (`scripts/hosts-rsh`) with a hostfile from a launcher host of its
//! own (`fsvdt0`, as an MPIJob's launcher pod), TCP between the hosts.
//! Root only: elsewhere the tests skip with a message; in CI (root) they must run. The hosts
//! tests of a harness run one at a time (one set of hosts, and the machine's two cores).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use super::{run_command, temp_dir, Run, BIN};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The hosts' names start with this (scripts/hosts.sh NAME).
const NAME: &str = "fsvdt";

/// What mpirun is told, as k8s/mpijob.yaml tells it: TCP only on the hosts' links, and TCP
/// keepalive on its connections to the hosts' daemons, so that it notices a host cut off
/// within 10 + 5 x 4 = 30 s (Open MPI's default is 480 s).
pub const MCA: [(&str, &str); 7] = [
    ("btl", "tcp,self"),
    ("btl_tcp_if_include", "198.18.0.0/24"),
    ("oob_tcp_if_include", "198.18.0.0/24"),
    ("oob_tcp_keepalive_time", "10"),
    ("oob_tcp_keepalive_intvl", "5"),
    ("oob_tcp_keepalive_probes", "4"),
    ("mpi_yield_when_idle", "1"),
];

pub struct Hosts {
    pub names: Vec<String>,
    hostfile: PathBuf,
    _one: MutexGuard<'static, ()>,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

impl Hosts {
    /// `count` hosts with `slots` ranks each; `None` (the test skips) when not root outside CI.
    pub fn up(test: &str, count: usize, slots: usize) -> Option<Hosts> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "the hosts tests must run in CI, as root"
            );
            eprintln!("skipping: several hosts need root (network namespaces)");
            return None;
        }
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        // A test that failed before its hosts came down leaves them: start clean.
        down();
        let out = Command::new(script("hosts.sh"))
            .args(["up", &count.to_string(), NAME])
            .env("SLOTS", slots.to_string())
            .output()
            .expect("scripts/hosts.sh");
        assert!(
            out.status.success(),
            "scripts/hosts.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hostfile = temp_dir(&format!("{test}-hosts")).join("hostfile");
        std::fs::write(&hostfile, &out.stdout).unwrap();
        Some(Hosts {
            names: (1..=count).map(|i| format!("{NAME}{i}")).collect(),
            hostfile,
            _one: one,
        })
    }

    /// 198.18.0.254: this machine as the hosts reach it (the tests' S3 server listens there).
    pub const HERE: &'static str = "198.18.0.254";

    /// `mpirun -n RANKS funksvd ARGS` over the hosts, `env` forwarded to every rank.
    pub fn command(&self, ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Command {
        self.command_with(ranks, &[], args, env)
    }

    /// `command` with more flags for mpirun (`--map-by node`, `--npernode 1`).
    pub fn command_with(
        &self,
        ranks: usize,
        mpirun: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        // mpirun runs on the launcher's host, as in an MPIJob (scripts/hosts.sh).
        let mut cmd = Command::new(script("hosts.sh"));
        cmd.args(["run", &format!("{NAME}0"), "mpirun"])
            .args(mpirun)
            .args(["-n", &ranks.to_string(), "--hostfile"])
            .arg(&self.hostfile)
            .arg("--mca")
            .arg("plm_rsh_agent")
            .arg(script("hosts-rsh"));
        for (k, v) in MCA {
            cmd.args(["--mca", k, v]);
        }
        cmd.args(env.iter().flat_map(|(k, _)| ["-x", k]))
            .arg(BIN)
            .args(args)
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    pub fn mpirun(&self, ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Run {
        run_command(self.command(ranks, args, env))
    }

    /// A command run on host `host` (1-based).
    pub fn on(&self, host: usize, program: &str) -> Command {
        let mut cmd = Command::new(script("hosts.sh"));
        cmd.args(["run", &self.names[host - 1], program]);
        cmd
    }

    /// Host `host`'s link down (a partition: its processes run on, nothing reaches them).
    pub fn cut(&self, host: usize) {
        self.link("cut", host);
    }

    pub fn mend(&self, host: usize) {
        self.link("mend", host);
    }

    fn link(&self, what: &str, host: usize) {
        let status = Command::new(script("hosts.sh"))
            .args([what, &self.names[host - 1]])
            .status()
            .unwrap();
        assert!(status.success(), "hosts.sh {what}");
    }

    /// The processes running in host `host` (1-based), by pid.
    pub fn pids(&self, host: usize) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.names[host - 1]])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        down();
    }
}

fn down() {
    let _ = Command::new(script("hosts.sh"))
        .args(["down", NAME])
        .status();
}
