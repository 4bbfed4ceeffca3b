//! Several jobs publishing into one model location at once: each publication wins whole or is
//! refused with a message, and what is left is always one writer's model, consistent from
//! `model.json` to the top-level copies, on local disk and on S3.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// The factors of each concurrent writer: every writer's model is told apart by its width.
const WRITERS: [usize; 3] = [4, 8, 12];

/// Start one training job (one rank, no launcher: the writers run side by side).
fn writer(
    data: &str,
    model: &str,
    factors: usize,
    delay_ms: usize,
    env: &[(&'static str, String)],
) -> std::process::Child {
    let mut cmd = Command::new(BIN);
    cmd.args(["train", "--data", data, "--model", model, "--epochs", "2"])
        .env(
            "FUNKSVD_FAULT",
            format!("publish-switch@0:delay-{delay_ms}"),
        )
        .args(["--factors", &factors.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start funksvd")
}

/// One round: the writers at once, each pausing `delays[w]` ms before its switch; returns
/// (factors, exit code, stderr) of each.
fn round(
    data: &str,
    model: &str,
    delays: [usize; 3],
    env: &[(&'static str, String)],
) -> Vec<(usize, i32, String)> {
    let children: Vec<_> = WRITERS
        .iter()
        .zip(delays)
        .map(|(&k, d)| (k, writer(data, model, k, d, env)))
        .collect();
    children
        .into_iter()
        .map(|(k, child)| {
            let out = child.wait_with_output().expect("wait");
            (
                k,
                out.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
        .collect()
}

/// The model at `root` (a local folder: the model's, or the S3 server's copy of it) is whole:
/// model.json names a version whose tables are the top-level copies, of its width. Returns
/// the width.
fn consistent(root: &Path) -> usize {
    let meta: serde_json::Value =
        serde_json::from_slice(&file_bytes(&root.join("model.json"))).unwrap();
    let factors = meta["factors"].as_u64().unwrap() as usize;
    for table in ["users", "items"] {
        let named = meta["files"][table].as_str().unwrap();
        let copy = file_bytes(&root.join(format!("{table}.parquet")));
        assert!(
            file_bytes(&root.join(named)) == copy,
            "top-level {table}.parquet is not the {named} that model.json names"
        );
    }
    let model = load_model(root);
    assert_eq!(model.meta.factors, factors);
    assert_eq!(
        model.user_rows.len(),
        model.user_ids.len() * (factors + 1),
        "the tables' width"
    );
    factors
}

/// Rounds of concurrent writers into `model`, checking each round's end state.
fn rounds(
    n: usize,
    data: &str,
    (model, root): (&str, &Path),
    delays: [usize; 3],
    env: &[(&'static str, String)],
) {
    let mut wins = 0;
    for r in 0..n {
        let results = round(data, model, delays, env);
        let winners: Vec<usize> = results.iter().filter(|r| r.1 == 0).map(|r| r.0).collect();
        for (k, code, stderr) in &results {
            assert!(
                *code == 0 || (*code == 1 && stderr.contains("another job published a model")),
                "round {r}, writer {k}: exit {code}:\n{stderr}"
            );
        }
        assert!(
            !winners.is_empty(),
            "round {r}: nobody published: {results:?}"
        );
        let left = consistent(root);
        assert!(
            winners.contains(&left),
            "round {r}: the model left ({left} factors) is no winner's ({winners:?})"
        );
        wins += winners.len();
        // Retention: the current version, the one its writer replaced, and (when two jobs both
        // won, one starting after the other's switch) the other winner's, until the next round.
        let versions = version_folders(root);
        assert!(
            versions.len() <= 1 + winners.len(),
            "round {r}: versions {versions:?} kept; winners {winners:?}; the stderr of each:\n{}",
            results
                .iter()
                .map(|r| r.2.as_str())
                .collect::<Vec<_>>()
                .join("\n---\n")
        );
    }
    eprintln!(
        "{n} rounds of {} writers: {wins} publications won",
        WRITERS.len()
    );
}

/// The version folders below a model that hold files (a local S3 server keeps emptied folders).
fn version_folders(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("_versions"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| std::fs::read_dir(e.path()).is_ok_and(|mut files| files.next().is_some()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn dataset(name: &str) -> (PathBuf, PathBuf) {
    generated(name, 300, 100, 6000, 1)
}

#[test]
fn concurrent_publishes_on_local_disk_leave_one_writers_whole_model() {
    let (dir, data) = dataset("publish-race");
    let model = dir.join("model");
    // The same work for each, no pause: their switches come within moments of each other.
    rounds(20, s(&data), (s(&model), &model), [0, 0, 0], &[]);
}

#[test]
fn concurrent_publishes_on_s3_leave_one_writers_whole_model() {
    let Some(server) = S3Server::start("publish-race-s3", &["shop"]) else {
        return;
    };
    let (_dir, data) = dataset("publish-race-s3-data");
    // The local S3 server checks If-Match / If-None-Match and then writes, not atomically as
    // MinIO and AWS do: switches a few milliseconds apart could both pass its check. So here
    // the writers all start from the same model.json but pause before their switches for
    // different times: the later ones must be refused by the server's precondition check.
    let root = server.root.join("shop/model");
    let env = server.env();
    rounds(
        8,
        s(&data),
        ("s3://shop/model", &root),
        [0, 700, 1400],
        &env,
    );
}

#[test]
fn a_failed_publication_leaves_no_orphan_and_the_next_keeps_the_previous_model() {
    let (dir, data) = dataset("publish-orphan");
    let model = dir.join("model");
    let train = |seed: &str, env: &[(&str, &str)]| {
        let args = train_args(s(&data), s(&model), &["--epochs", "2", "--seed", seed]);
        mpirun_env(2, &args, env)
    };
    train("1", &[]).ok();
    let first = load_model(&model).meta.files["users"].clone();
    // Killed between writing its tables and the switch: the folder it leaves is an orphan.
    let crashed = model.join("_versions/v00000000001000000000-1");
    std::fs::create_dir_all(&crashed).unwrap();
    std::fs::write(crashed.join("users.parquet"), b"half").unwrap();
    // A publication failing at the switch deletes its own folder.
    let run = train("2", &[("FUNKSVD_FAULT", "publish-switch@0")]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    train("3", &[]).ok();
    let names = version_folders(&model);
    let current = load_model(&model).meta.files["users"].clone();
    let version = |files: &str| files.split('/').nth(1).unwrap().to_string();
    let mut want = vec![version(&first), version(&current)];
    want.sort();
    let mut got = names.clone();
    got.sort();
    assert_eq!(
        got, want,
        "kept: the model before (seed 1) and the current one (seed 3)"
    );
}
