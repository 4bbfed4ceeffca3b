//! The Slurm batch scripts, for real: scripts/slurm_test.sh starts a one-node Slurm (state in a
//! temporary folder), submits slurm/train.sbatch and slurm/verify.sbatch with `sbatch --wait`,
//! stops a training the way a time limit does (SIGTERM to the batch shell) and resumes it, and
//! stops the daemons afterwards.

mod common;

use std::process::Command;

use common::*;

#[test]
fn slurm_batch_scripts_train_verify_and_fail_properly_on_a_one_node_cluster() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !root {
        assert!(!ci, "CI runs as root and must run the Slurm test");
        eprintln!("skipping: the one-node Slurm needs root (munge, slurmd)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/slurm_test.sh");
    let mut cmd = Command::new("bash");
    cmd.args([script, BIN]);
    let run = run_command(cmd);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("slurm: 5 passed, 0 failed"),
        "{}",
        run.stdout
    );
}
