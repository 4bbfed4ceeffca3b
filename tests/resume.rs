//! Checkpoints and `--resume`: a run killed or stopped by a signal mid-training ends every rank
//! fast, leaves the previous model intact, and resumes to the same model, bit for bit, as an
//! uninterrupted run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn same_model_files(a: &std::path::Path, b: &std::path::Path) -> bool {
    ["users.parquet", "items.parquet"]
        .iter()
        .all(|f| file_bytes(&a.join(f)) == file_bytes(&b.join(f)))
}

#[test]
fn a_run_stopped_after_a_checkpoint_resumes_to_the_same_model_bit_for_bit() {
    let (dir, data) = generated("resume", 400, 150, 20000, 2);
    let whole = dir.join("whole");
    let train = |model: &std::path::Path, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = train_args(s(&data), s(model), &["--epochs", "6"]);
        args.extend_from_slice(extra);
        mpirun_env(2, &args, env)
    };
    train(&whole, &[], &[]).ok();

    let model = dir.join("model");
    let run = train(
        &model,
        &["--checkpoint-every", "2"],
        &[("FUNKSVD_FAULT", "epoch-5@1")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("checkpoint after epoch 4 saved"),
        "{}",
        run.stderr
    );
    assert!(!model.join("model.json").exists());
    let run = train(&model, &["--checkpoint-every", "2", "--resume"], &[]).ok();
    assert!(
        run.stderr.contains("resuming after epoch 4"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("epoch 4/6"),
        "epochs 1-4 ran again:\n{}",
        run.stderr
    );
    assert!(
        same_model_files(&model, &whole),
        "the resumed model differs from the uninterrupted one"
    );
    let m = load_model(&model);
    assert_eq!(m.meta.metrics.history.len(), 6);
    assert_eq!(m.meta.metrics.history[0].epoch, 1);

    // A checkpoint made otherwise is refused, naming what differs.
    let refuse = |ranks: usize, extra: &[&str], needle: &str| {
        let mut args = train_args(s(&data), s(&model), &["--epochs", "6", "--resume"]);
        args.extend_from_slice(extra);
        let run = mpirun(ranks, &args);
        assert_eq!(run.code, 2, "{extra:?}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "{extra:?}: {needle:?} missing:\n{}",
            run.stderr
        );
    };
    refuse(3, &[], "made with 2 ranks");
    refuse(2, &["--lr", "0.02"], "other hyperparameters");
    refuse(2, &["--aggregate", "sum"], "other data or input flags");
    // Item rows saved under another numbering of the items (another funksvd version): refused,
    // and the checkpoint is left as it was.
    let newest = std::fs::read_dir(model.join("_checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap()
        .join("checkpoint.json");
    let original = std::fs::read_to_string(&newest).unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&original).unwrap();
    meta["item_order"] = "0123456789abcdef".into();
    std::fs::write(&newest, meta.to_string()).unwrap();
    refuse(2, &[], "numbers the items differently");
    std::fs::write(&newest, original).unwrap();
    let other = dir.join("other");
    generate(
        &other,
        &[
            "--users", "400", "--items", "150", "--events", "20001", "--files", "2",
        ],
    );
    let run = mpirun(2, &train_args(s(&other), s(&model), &["--resume"]));
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("other data"), "{}", run.stderr);
    // A folder that holds no checkpoint (or no model at all).
    let run = mpirun(
        2,
        &train_args(s(&data), s(&dir.join("empty")), &["--resume"]),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("no complete checkpoint"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_rank_killed_mid_training_ends_the_job_fast_and_resume_finishes_it() {
    let (dir, data) = generated("sigkill", 300, 100, 10000, 2);
    let model = dir.join("model");
    let epochs = "300";
    let base = [
        "train",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--epochs",
        epochs,
        "--checkpoint-every",
        "1",
        "--objective",
        "explicit",
    ];
    // A previous model that must survive the crash.
    mpirun(2, &train_args(s(&data), s(&model), &["--epochs", "2"])).ok();
    let before = file_bytes(&model.join("model.json"));

    let mut run = Streaming::start(2, &base, &[]);
    run.wait_for("checkpoint after epoch 3 saved");
    // SIGKILL one rank (not mpirun): the process running this model's training, rank 1 or 0.
    let pids = Command::new("pgrep")
        .args([
            "-f",
            &format!("{BIN} train --data {} --model {}", s(&data), s(&model)),
        ])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    assert!(!pids.is_empty(), "no rank found to kill");
    Command::new("kill")
        .args(["-9", pids.last().unwrap()])
        .status()
        .unwrap();
    let status = run.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "mpirun exited 0 after a rank was killed");
    assert!(
        file_bytes(&model.join("model.json")) == before,
        "the previous model changed"
    );

    let run = mpirun(2, &[&base[..], &["--resume"]].concat()).ok();
    assert!(
        run.stderr.contains("resuming after epoch"),
        "{}",
        run.stderr
    );
    let resumed = load_model(&model);
    assert_eq!(resumed.meta.metrics.history.len(), 300);
    let whole = dir.join("whole");
    mpirun(2, &train_args(s(&data), s(&whole), &["--epochs", epochs])).ok();
    assert!(
        same_model_files(&model, &whole),
        "the resumed model differs from the uninterrupted one"
    );
}

#[test]
fn sigterm_checkpoints_at_the_end_of_the_epoch_and_resume_gives_the_same_model() {
    let (dir, data) = generated("sigterm", 300, 100, 10000, 2);
    let model = dir.join("model");
    // A previous model that must survive the interruption.
    mpirun(2, &train_args(s(&data), s(&model), &["--epochs", "2"])).ok();
    let before = file_bytes(&model.join("model.json"));
    let long = train_args(s(&data), s(&model), &["--epochs", "100000"]);

    let mut run = Streaming::start(2, &long, &[]);
    run.wait_for("epoch 5/100000");
    assert_eq!(run.signal_ranks("TERM"), 2, "two ranks signalled");
    let status = run.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(143), "{}", run.log);
    let said = run
        .log
        .lines()
        .find(|l| l.contains("interrupted (SIGTERM) after epoch"))
        .unwrap_or_else(|| panic!("no interruption line:\n{}", run.log));
    assert!(
        said.contains("of 100000; run the same command with --resume to continue"),
        "{said}"
    );
    let epoch: usize = said
        .split("after epoch ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        run.log
            .contains(&format!("checkpoint after epoch {epoch} saved")),
        "no checkpoint although --checkpoint-every was not given:\n{}",
        run.log
    );
    assert!(
        file_bytes(&model.join("model.json")) == before,
        "the previous model changed"
    );

    // Resumed to a few more epochs: the same model as a run of that many epochs at once.
    let total = (epoch + 2).to_string();
    let resumed = train_args(s(&data), s(&model), &["--epochs", &total, "--resume"]);
    let out = mpirun(2, &resumed).ok();
    assert!(
        out.stderr
            .contains(&format!("resuming after epoch {epoch}")),
        "{}",
        out.stderr
    );
    let whole = dir.join("whole");
    mpirun(2, &train_args(s(&data), s(&whole), &["--epochs", &total])).ok();
    assert!(
        same_model_files(&model, &whole),
        "the resumed model differs from the uninterrupted one"
    );

    // Fewer epochs than the checkpoint: refused, not a silent republication.
    let fewer = train_args(s(&data), s(&model), &["--epochs", "1", "--resume"]);
    let out = mpirun(2, &fewer);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("give --epochs"), "{}", out.stderr);

    // SIGINT (Ctrl-C) stops the same way, with 130.
    let mut run = Streaming::start(2, &long, &[]);
    run.wait_for("epoch 5/100000");
    run.signal_ranks("INT");
    let status = run.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", run.log);
    assert!(
        run.log.contains("interrupted (SIGINT) after epoch"),
        "{}",
        run.log
    );
}
