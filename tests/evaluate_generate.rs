//! `funksvd evaluate` and `funksvd generate` under mpirun.

mod common;

use common::*;

fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

#[test]
fn evaluate_on_the_training_split_agrees_with_the_train_rmse_in_model_json() {
    let dir = temp_dir("evaluate");
    let data = dir.join("data");
    generate(
        &data,
        &["--users", "600", "--items", "200", "--events", "40000"],
    );
    let model = dir.join("model");
    mpirun(2, &train_args(s(&data), s(&model), &[])).ok();
    let meta = load_model(&model).meta;
    for ranks in [1, 3] {
        let evaluate = |split: &str| {
            let args = [
                "evaluate",
                "--model",
                s(&model),
                "--data",
                s(&data),
                "--split",
                split,
            ];
            json(&mpirun(ranks, &args).ok())
        };
        let train = evaluate("train");
        assert_close(
            train["rmse"].as_f64().unwrap(),
            meta.metrics.train_rmse,
            1e-6,
            "train RMSE",
        );
        assert_eq!(train["n_scored"].as_u64().unwrap(), meta.n_ratings);
        assert_eq!(train["n_unknown_users"].as_u64().unwrap(), 0);
        let hold = evaluate("holdout");
        let expected = meta.metrics.holdout_rmse.unwrap();
        assert_close(
            hold["rmse"].as_f64().unwrap(),
            expected,
            1e-6,
            "hold-out RMSE",
        );
        assert_eq!(hold["n_scored"].as_u64().unwrap(), meta.metrics.n_holdout);
    }
}

#[test]
fn evaluate_counts_unknown_users_and_items_and_falls_back_to_biases() {
    let dir = temp_dir("evaluate-unknown");
    let train_csv = dir.join("train.csv");
    std::fs::write(&train_csv, "user_id,product_id,event_type\n1,10,view\n1,11,purchase\n2,10,purchase\n2,11,view\n3,11,view\n").unwrap();
    let model = dir.join("model");
    mpirun(
        2,
        &train_args(s(&train_csv), s(&model), &["--holdout", "0"]),
    )
    .ok();
    let test_csv = dir.join("test.csv");
    std::fs::write(
        &test_csv,
        "user_id,product_id,event_type\n1,10,view\n9,10,view\n1,99,purchase\n8,98,view\n",
    )
    .unwrap();
    let out = json(
        &mpirun(
            2,
            &["evaluate", "--model", s(&model), "--data", s(&test_csv)],
        )
        .ok(),
    );
    assert_eq!(out["n_scored"], 4);
    assert_eq!(out["n_unknown_users"], 2);
    assert_eq!(out["n_unknown_items"], 2);
    assert_eq!(out["n_fallback_predictions"], 3);
    assert!(out["fallback"].as_str().unwrap().contains("bias"));
}

#[test]
fn evaluate_refuses_a_folder_that_is_not_a_model() {
    let dir = temp_dir("evaluate-not-model");
    let run = mpirun(2, &["evaluate", "--model", s(&dir), "--data", s(&dir)]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("no model there"), "{}", run.stderr);
}

#[test]
fn generate_writes_the_same_files_for_any_rank_count() {
    let dir = temp_dir("generate");
    let args = [
        "--users",
        "200",
        "--items",
        "80",
        "--events",
        "12345",
        "--files",
        "5",
        "--row-group-size",
        "1000",
    ];
    let one = dir.join("one");
    let three = dir.join("three");
    let mut a = vec!["generate", "--out", s(&one)];
    a.extend(args);
    mpirun(1, &a).ok();
    let mut b = vec!["generate", "--out", s(&three)];
    b.extend(args);
    mpirun(3, &b).ok();
    for f in 0..5 {
        let name = format!("part-{f:05}.parquet");
        assert!(
            file_bytes(&one.join(&name)) == file_bytes(&three.join(&name)),
            "{name}"
        );
    }
    // Row groups of the requested size, and every event counted once by training.
    let model = dir.join("model");
    mpirun(2, &train_args(s(&one), s(&model), &["--epochs", "1"])).ok();
    assert_eq!(load_model(&model).meta.training.rows_read, 12345);
}

#[test]
fn help_teaches_with_examples_and_a_single_rank_runs_without_a_launcher() {
    let help = solo(&["train", "--help"]).ok();
    assert!(help.stdout.contains("Examples:") && help.stdout.contains("--event-weights"));
    let dir = temp_dir("solo");
    let data = dir.join("data");
    let run = solo(&[
        "generate",
        "--out",
        s(&data),
        "--users",
        "50",
        "--items",
        "20",
        "--events",
        "1000",
        "--files",
        "1",
    ])
    .ok();
    assert!(run.stderr.contains("wrote 1000 events"), "{}", run.stderr);
}
