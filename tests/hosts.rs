//! Ranks on several hosts (issue 32): network namespaces as hosts (`scripts/hosts.sh`), mpirun
//! reaching them through an rsh agent as the MPI Operator's launcher reaches its pods, TCP
//! between them. What holds on one host holds across hosts (the same models, bit for bit, as
//! one host passing the rows as messages), and a lost host ends the job instead of hanging it.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::hosts::Hosts;
use common::*;

fn same_model_files(a: &Path, b: &Path) -> bool {
    ["users.parquet", "items.parquet"]
        .iter()
        .all(|f| file_bytes(&a.join(f)) == file_bytes(&b.join(f)))
}

/// One host's run of the same job with the rows passed as messages, as across hosts.
fn one_host_passed(ranks: usize, args: &[&str]) -> Run {
    mpirun_env(ranks, args, &[("FUNKSVD_SHARED_ROWS", "0")])
}

#[test]
fn verify_names_every_host_and_checks_the_collectives_over_tcp() {
    let Some(hosts) = Hosts::up("verify", 3, 2) else {
        return;
    };
    let run = hosts.mpirun(4, &["verify"], &[]).ok();
    for needle in [
        "4 ranks on 2 hosts",
        "fsvdt1: 2",
        "fsvdt2: 2",
        "training passes the item rows as messages",
        "all checks passed",
    ] {
        assert!(run.stdout.contains(needle), "{needle}:\n{}", run.stdout);
    }
    let one_each = hosts.command_with(3, &["--npernode", "1"], &["verify"], &[]);
    let run = run_command(one_each).ok();
    for needle in ["3 ranks on 3 hosts", "fsvdt3: 1", "all checks passed"] {
        assert!(run.stdout.contains(needle), "{needle}:\n{}", run.stdout);
    }
}

#[test]
fn models_trained_across_hosts_equal_one_hosts_with_the_rows_passed() {
    let Some(hosts) = Hosts::up("models", 3, 2) else {
        return;
    };
    let (dir, data) = generated("hosts-models", 600, 200, 20000, 4);
    for objective in ["explicit", "implicit"] {
        let extra = ["--objective", objective, "--epochs", "4"];
        let extra = match objective {
            // The popularity weight's choice is a second fit: a fixed weight keeps it short.
            "implicit" => [&extra[..], &["--popularity-weight", "1"]].concat(),
            _ => extra.to_vec(),
        };
        for (ranks, mapping) in [(4, &[][..]), (3, &["--npernode", "1"][..])] {
            let across = dir.join(format!("{objective}-{ranks}-hosts"));
            let args = train_args(s(&data), s(&across), &extra);
            let run = run_command(hosts.command_with(ranks, mapping, &args, &[])).ok();
            let passed = match objective {
                "explicit" => "item rows: passed round the ring",
                _ => "item rows: on every rank",
            };
            assert!(run.stderr.contains(passed), "{}", run.stderr);
            let one = dir.join(format!("{objective}-{ranks}-one"));
            one_host_passed(ranks, &train_args(s(&data), s(&one), &extra)).ok();
            assert!(
                same_model_files(&across, &one),
                "{objective}, {ranks} ranks: the model across hosts differs from one host's"
            );
            let meta = load_model(&across).meta;
            let expected = match objective {
                "explicit" => "passed",
                _ => "gathered-passed",
            };
            assert_eq!(meta.training.item_rows, expected, "{objective}");
        }
    }
}

/// A job long enough to be stopped mid-epoch, checkpointing every epoch.
fn long_job<'a>(data: &'a str, model: &'a str) -> Vec<&'a str> {
    train_args(data, model, &["--epochs", "200", "--checkpoint-every", "1"])
}

#[test]
fn a_rank_killed_on_the_second_host_ends_every_rank_and_resume_finishes_the_job() {
    let Some(hosts) = Hosts::up("sigkill", 2, 2) else {
        return;
    };
    let (dir, data) = generated("hosts-sigkill", 600, 200, 20000, 4);
    let model = dir.join("model");
    hosts
        .mpirun(4, &train_args(s(&data), s(&model), &["--epochs", "2"]), &[])
        .ok();
    let before = file_bytes(&model.join("model.json"));
    let job = long_job(s(&data), s(&model));
    let mut run = Streaming::spawn(hosts.command(4, &job, &[]));
    run.wait_for("checkpoint after epoch 3 saved");
    let ranks = funksvd_pids(&hosts, 2);
    assert_eq!(ranks.len(), 2, "two ranks on the second host");
    let killed = Instant::now();
    kill(ranks[0], "KILL");
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "mpirun exited 0 after a rank was killed");
    assert!(killed.elapsed() < Duration::from_secs(30));
    assert!(funksvd_pids(&hosts, 1).is_empty() && funksvd_pids(&hosts, 2).is_empty());
    assert_eq!(
        file_bytes(&model.join("model.json")),
        before,
        "the previous model changed"
    );
    let resume = [&job[..], &["--resume"]].concat();
    let run = hosts.mpirun(4, &resume, &[]).ok();
    assert!(
        run.stderr.contains("resuming after epoch"),
        "{}",
        run.stderr
    );
    let whole = dir.join("whole");
    hosts.mpirun(4, &long_job(s(&data), s(&whole)), &[]).ok();
    assert!(
        same_model_files(&model, &whole),
        "the resumed model differs from the whole run's"
    );
}

#[test]
fn a_host_cut_off_mid_epoch_ends_the_job_by_itself_and_resume_finishes_it() {
    let Some(hosts) = Hosts::up("cut", 2, 2) else {
        return;
    };
    let (dir, data) = generated("hosts-cut", 600, 200, 20000, 4);
    let model = dir.join("model");
    let job = long_job(s(&data), s(&model));
    let watched = [&job[..], &["--stall-timeout", "10"]].concat();
    let mut run = Streaming::spawn(hosts.command(4, &watched, &[]));
    run.wait_for("checkpoint after epoch 3 saved");
    let cut = Instant::now();
    hosts.cut(2);
    // Rank 0 names the host at the stall timeout; mpirun ends the job when its keepalive
    // notices the host (30 s in the tests' settings).
    let status = run.wait_exit(Duration::from_secs(90));
    let ended = cut.elapsed();
    assert!(
        !status.success(),
        "mpirun exited 0 after a host was cut off"
    );
    for needle in [
        "on host fsvdt2 has not answered for",
        "(--stall-timeout 10)",
    ] {
        assert!(run.log.contains(needle), "{needle}:\n{}", run.log);
    }
    assert!(
        !model.join("model.json").exists(),
        "a model was published:\n{}",
        run.log
    );
    assert!(
        funksvd_pids(&hosts, 1).is_empty(),
        "ranks left on the first host"
    );
    // The cut host's ranks end by themselves: they stop hearing rank 0 at the stall timeout
    // and leave their launcher its keepalive's time (40 s) to end them.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !funksvd_pids(&hosts, 2).is_empty() {
        assert!(
            Instant::now() < deadline,
            "ranks on the cut host still running after {:?}",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "job ended {ended:?} after the cut; the cut host's ranks {:?}",
        cut.elapsed()
    );
    hosts.mend(2);
    let resume = [&job[..], &["--resume"]].concat();
    let run = hosts.mpirun(4, &resume, &[]).ok();
    assert!(
        run.stderr.contains("resuming after epoch"),
        "{}",
        run.stderr
    );
    let whole = dir.join("whole");
    one_host_passed(4, &long_job(s(&data), s(&whole))).ok();
    assert!(
        same_model_files(&model, &whole),
        "the resumed model differs from the whole run's"
    );
}

/// The funksvd processes running on host `host`.
fn funksvd_pids(hosts: &Hosts, host: usize) -> Vec<u32> {
    hosts
        .pids(host)
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("funksvd"))
        })
        .collect()
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
