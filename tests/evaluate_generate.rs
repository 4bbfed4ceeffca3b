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
            let args = evaluate_args(s(&model), s(&data), split, &[]);
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

/// A folder holding a model trained on 5 events of 3 users and 2 items (nothing held out).
fn tiny_model(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(name);
    let train_csv = dir.join("train.csv");
    std::fs::write(&train_csv, "user_id,product_id,event_type\n1,10,view\n1,11,purchase\n2,10,purchase\n2,11,view\n3,11,view\n").unwrap();
    let model = dir.join("model");
    mpirun(
        2,
        &train_args(s(&train_csv), s(&model), &["--holdout", "0"]),
    )
    .ok();
    (dir, model)
}

#[test]
fn evaluate_counts_unknown_users_and_items_and_falls_back_to_biases() {
    let (dir, model) = tiny_model("evaluate-unknown");
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
fn evaluate_warns_when_the_figure_is_only_the_fallback_or_the_split_is_of_other_data() {
    let (dir, model) = tiny_model("evaluate-strangers");
    let strangers = dir.join("strangers.csv");
    std::fs::write(
        &strangers,
        "user_id,product_id,event_type\n7,10,view\n8,11,view\n9,10,purchase\n",
    )
    .unwrap();
    let run = mpirun(
        2,
        &["evaluate", "--model", s(&model), "--data", s(&strangers)],
    )
    .ok();
    assert!(
        run.stderr
            .contains("every scored pair has a user or item the model does not know"),
        "{}",
        run.stderr
    );
    let out = json(&run);
    assert_eq!(out["n_known_pairs"], 0);
    assert!(out["rmse_known_pairs"].is_null());
    // --split train on data the model did not train on: said, and the unknown pairs left out.
    let run = mpirun(
        2,
        &[
            "evaluate",
            "--model",
            s(&model),
            "--data",
            s(&strangers),
            "--split",
            "train",
        ],
    )
    .ok();
    assert!(
        run.stderr.contains("the model never saw this data's pairs"),
        "{}",
        run.stderr
    );
    let out = json(&run);
    assert_eq!(out["n_scored"], 0);
    assert_eq!(out["n_skipped_unknown_for_train_split"], 3);
}

#[test]
fn generate_refuses_a_folder_with_data_and_overwrite_replaces_its_own_generation() {
    let dir = temp_dir("generate-overwrite");
    let out = dir.join("events");
    let gen = |files: &str, extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--out",
            s(&out),
            "--events",
            "4000",
            "--files",
            files,
        ];
        args.extend_from_slice(extra);
        mpirun(2, &args)
    };
    gen("4", &[]).ok();
    let run = gen("2", &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("--overwrite"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        4,
        "nothing touched"
    );
    gen("2", &["--overwrite"]).ok();
    let mut names: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["part-00000.parquet", "part-00001.parquet"],
        "one generation"
    );
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
fn the_shop_profile_writes_a_folder_per_day_that_training_reads_whole() {
    let dir = temp_dir("generate-shop");
    let args = |out: &std::path::Path| {
        let mut a: Vec<String> = ["generate", "--out", s(out), "--profile", "shop"]
            .map(String::from)
            .to_vec();
        let rest = ["--users", "3000", "--items", "300", "--events", "40000"];
        a.extend(rest.map(String::from));
        a.extend(["--days", "4", "--files", "6", "--taste", "1"].map(String::from));
        a
    };
    let (one, three) = (dir.join("one"), dir.join("three"));
    let run = |ranks, out: &std::path::Path| {
        let a = args(out);
        mpirun(ranks, &a.iter().map(String::as_str).collect::<Vec<_>>()).ok()
    };
    run(1, &one);
    run(3, &three);
    // Files 0..5 over days 0..3: two files on days 0 and 2 (6 x d / 4 rounded up: 0, 2, 3, 5).
    let days = ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"];
    let of_day = [vec![0, 1], vec![2], vec![3, 4], vec![5]];
    for (day, files) in days.iter().zip(&of_day) {
        for f in files {
            let name = format!("date={day}/part-{f:05}.parquet");
            assert_eq!(
                file_bytes(&one.join(&name)),
                file_bytes(&three.join(&name)),
                "{name}"
            );
        }
    }
    let model = dir.join("model");
    mpirun(
        2,
        &default_train_args(s(&one), s(&model), &["--epochs", "3"]),
    )
    .ok();
    let trained = load_model(&model);
    assert_eq!(trained.meta.training.rows_read, 40000);
    // The long tail: fewer users than the 3,000 drawn from visit in 40,000 events.
    let users = trained.user_ids.len();
    assert!(users < 3000, "{users}");
    // Bad combinations are usage errors naming the flags.
    let mut few = args(&dir.join("few"));
    let at = few.iter().position(|a| a == "--files").unwrap();
    few[at + 1] = "3".into();
    let run = mpirun(2, &few.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--profile shop --days 4: give --files 4 or more"),
        "{}",
        run.stderr
    );
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
