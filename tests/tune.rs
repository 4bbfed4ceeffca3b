//! `funksvd tune`: trials over groups of ranks, ASHA stopping the weak ones at their rungs, the
//! trials table and best.json, the best trial's configuration published as the model, a grid,
//! a failed trial recorded while the search goes on, and a search resumed after a rank failed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef};
use arrow::util::display::array_value_to_string;
use common::*;
use funksvd::tune::record::decode_trials;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A row of trials.parquet.
#[derive(Clone, Debug, PartialEq)]
struct TrialRow {
    trial: usize,
    epoch: usize,
    metric: Option<f64>,
    seconds: f64,
    status: String,
    reason: Option<String>,
    /// The configuration's columns, as text.
    config: BTreeMap<String, String>,
}

/// trials.parquet's rows: the fixed columns through tune's own reader, the configuration's
/// columns (those after the fixed six) as the text arrow shows for them.
fn trials(model: &Path) -> Vec<TrialRow> {
    let path = model.join("_tune/trials.parquet");
    let bytes = bytes::Bytes::from(file_bytes(&path));
    let fixed = decode_trials(bytes.clone(), &path.display().to_string()).unwrap();
    let mut configs = Vec::new();
    for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap()
    {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let columns: Vec<(&String, &ArrayRef)> = schema
            .fields()
            .iter()
            .skip(6)
            .map(|f| f.name())
            .zip(batch.columns().iter().skip(6))
            .collect();
        for i in 0..batch.num_rows() {
            let shown = |c: &ArrayRef| array_value_to_string(c, i).unwrap();
            let config = columns.iter().filter(|(_, c)| c.is_valid(i));
            configs.push(
                config
                    .map(|(name, c)| (name.to_string(), shown(c)))
                    .collect(),
            );
        }
    }
    fixed
        .into_iter()
        .zip(configs)
        .map(|(r, config)| TrialRow {
            trial: r.trial,
            epoch: r.epoch,
            metric: r.metric,
            seconds: r.seconds,
            status: r.status.name().to_string(),
            reason: r.reason,
            config,
        })
        .collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&file_bytes(path)).unwrap()
}

/// `tune` on MovieLens' ratings (explicit), then `extra`.
fn ml_tune<'a>(data: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = ml_args(data, model);
    args[0] = "tune";
    args.extend_from_slice(extra);
    args
}

/// ml-latest-small's ratings and a fresh model folder for test `name` (None: no data here).
fn ml_search(name: &str) -> Option<(PathBuf, PathBuf)> {
    let data = shared_data("ml-latest-small/ratings.csv")?;
    Some((data, temp_dir(name).join("m")))
}

/// The final row of each trial.
fn finals(rows: &[TrialRow]) -> BTreeMap<usize, TrialRow> {
    rows.iter()
        .filter(|r| r.status != "continued")
        .map(|r| (r.trial, r.clone()))
        .collect()
}

#[test]
fn a_search_over_groups_stops_weak_trials_and_publishes_the_best_one() {
    let Some((data, model)) = ml_search("tune-asha") else {
        return;
    };
    let space = "lr=log:0.002..0.05 reg=0.02,0.05,0.1 factors=4,16 epochs=4..12";
    let run = mpirun(
        2,
        &ml_tune(
            s(&data),
            s(&model),
            &[
                "--space", space, "--trials", "12", "--seed", "7", "--eta", "2",
            ],
        ),
    )
    .ok();
    assert!(
        run.stderr
            .contains("tune: 12 trials, 2 groups of 1 rank(s)"),
        "{}",
        run.stderr
    );
    let rows = trials(&model);
    let last = finals(&rows);
    assert_eq!(
        last.keys().copied().collect::<Vec<_>>(),
        (0..12).collect::<Vec<_>>()
    );
    let asha_rungs = [1, 2, 4, 8];
    for row in &rows {
        let epochs: usize = row.config["epochs"].parse().unwrap();
        match row.status.as_str() {
            "continued" | "stopped" => assert!(
                asha_rungs.contains(&row.epoch) && row.epoch < epochs,
                "{row:?}"
            ),
            "completed" => assert_eq!(row.epoch, epochs, "{row:?}"),
            other => panic!("trial {} {other}: {:?}", row.trial, row.reason),
        }
        assert!(
            row.metric.unwrap() > 0.7 && row.metric.unwrap() < 2.0,
            "{row:?}"
        );
    }
    let stopped = last.values().filter(|r| r.status == "stopped").count();
    assert!(
        stopped >= 3,
        "ASHA with eta 2 stops about half the trials at each rung: {stopped} of 12"
    );
    // The best trial is the completed one with the lowest hold-out RMSE.
    let best = json(&model.join("_tune/best.json"));
    let (trial, value) = last
        .values()
        .filter(|r| r.status == "completed")
        .map(|r| (r.trial, r.metric.unwrap()))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(best["trial"], trial);
    assert_eq!(best["value"].as_f64().unwrap(), value);
    assert_eq!(best["trials"]["stopped"], stopped);
    // The published model was trained with that trial's configuration and says so.
    let meta = json(&model.join("model.json"));
    assert_eq!(meta["tuned"]["trial"], trial, "{}", meta["tuned"]);
    assert_eq!(meta["tuned"]["metric"], "holdout_rmse");
    let config = &last[&trial].config;
    let h = &meta["hyperparameters"];
    assert_eq!(h["factors"].to_string(), config["factors"]);
    assert_eq!(h["epochs"].to_string(), config["epochs"]);
    assert_close(
        h["lr"].as_f64().unwrap(),
        config["lr"].parse().unwrap(),
        1e-6,
        "lr",
    );
    // Trained on 2 ranks instead of the trial's 1: the same quality within a little.
    let published = meta["metrics"]["holdout_rmse"].as_f64().unwrap();
    assert_close(
        published,
        value,
        0.01 * value,
        "hold-out RMSE of the published model",
    );
}

#[test]
fn a_grid_runs_every_point_and_groups_of_two_ranks_publish_the_trial_bit_for_bit() {
    let Some((data, model)) = ml_search("tune-grid") else {
        return;
    };
    let space = "factors=4,8 reg=0.05,0.1";
    let args = ml_tune(
        s(&data),
        s(&model),
        &[
            "--space",
            space,
            "--epochs",
            "5",
            "--scheduler",
            "none",
            "--ranks-per-trial",
            "2",
        ],
    );
    let run = mpirun(2, &args).ok();
    assert!(
        run.stderr.contains("4 trials, 1 groups of 2 rank(s)"),
        "{}",
        run.stderr
    );
    let rows = trials(&model);
    let last = finals(&rows);
    let points: Vec<(String, String)> = last
        .values()
        .map(|r| (r.config["factors"].clone(), r.config["reg"].clone()))
        .collect();
    assert_eq!(
        points,
        [("4", "0.05"), ("4", "0.1"), ("8", "0.05"), ("8", "0.1")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // Without ASHA every trial runs to the end, measured at the same epochs as with it.
    for t in 0..4 {
        let epochs: Vec<usize> = rows
            .iter()
            .filter(|r| r.trial == t)
            .map(|r| r.epoch)
            .collect();
        assert_eq!(epochs, vec![1, 3, 5], "trial {t}");
    }
    // The trial ran on 2 ranks like the final training: the published model is that trial's.
    let best = json(&model.join("_tune/best.json"));
    let meta = json(&model.join("model.json"));
    assert_eq!(
        meta["metrics"]["holdout_rmse"].as_f64().unwrap(),
        best["value"].as_f64().unwrap()
    );
    assert_eq!(
        best["flags"],
        format!(
            "--factors {} --reg {}",
            last[&(best["trial"].as_u64().unwrap() as usize)].config["factors"],
            last[&(best["trial"].as_u64().unwrap() as usize)].config["reg"]
        )
    );
    // A second search over the same model folder is refused; nothing is touched.
    let before = file_bytes(&model.join("_tune/trials.parquet"));
    let again = mpirun(2, &args);
    assert_eq!(again.code, 2, "{}", again.stderr);
    assert!(
        again.stderr.contains("a search is there already") && again.stderr.contains("--resume"),
        "{}",
        again.stderr
    );
    assert_eq!(file_bytes(&model.join("_tune/trials.parquet")), before);
}

#[test]
fn a_diverging_trial_is_recorded_as_failed_and_the_search_goes_on() {
    let Some((data, model)) = ml_search("tune-diverge") else {
        return;
    };
    let args = ml_tune(
        s(&data),
        s(&model),
        &["--space", "lr=0.01,20", "--epochs", "4", "--factors", "8"],
    );
    let run = mpirun(1, &args).ok();
    let last = finals(&trials(&model));
    assert_eq!(last[&0].status, "completed");
    assert_eq!(last[&1].status, "failed");
    assert!(
        last[&1].reason.as_deref().unwrap().contains("--lr"),
        "{:?}",
        last[&1].reason
    );
    assert!(
        run.stderr.contains("trial 1 of 2 (--lr 20): failed"),
        "{}",
        run.stderr
    );
    assert_eq!(json(&model.join("_tune/best.json"))["trial"], 0);
}

/// `--final-holdout 0`: the best trial's flags trained again on all of the data, the search
/// judged on the hold-out as always.
#[test]
fn the_final_model_can_train_on_all_of_the_data() {
    let Some((data, model)) = ml_search("tune-final") else {
        return;
    };
    let extra = [
        "--space",
        "reg=0.05,0.1",
        "--epochs",
        "3",
        "--scheduler",
        "none",
        "--final-holdout",
        "0",
    ];
    let run = mpirun(2, &ml_tune(s(&data), s(&model), &extra)).ok();
    assert!(
        run.stderr
            .contains("on all of the data (--final-holdout 0)"),
        "{}",
        run.stderr
    );
    let (best, meta) = (
        json(&model.join("_tune/best.json")),
        json(&model.join("model.json")),
    );
    let trial = best["trial"].as_u64().unwrap() as usize;
    let chosen = &finals(&trials(&model))[&trial];
    assert!(chosen.metric.is_some());
    // Every rating of ml-latest-small trained the model; nothing was held out to measure.
    assert_eq!(meta["n_ratings"], 100_836);
    assert_eq!(meta["hyperparameters"]["holdout"], 0.0);
    assert_eq!(meta["tuned"]["final_holdout"], 0.0);
    assert_eq!(meta["tuned"]["trial"], trial);
    assert!(
        meta["metrics"]["holdout_rmse"].is_null(),
        "{}",
        meta["metrics"]
    );
    assert_eq!(
        meta["hyperparameters"]["reg"].as_f64().unwrap().to_string(),
        chosen.config["reg"]
    );
}

#[test]
fn a_search_whose_rank_failed_resumes_without_rerunning_finished_trials() {
    let Some((data, model)) = ml_search("tune-resume") else {
        return;
    };
    let space = "reg=0.02,0.04,0.06,0.08,0.1,0.12";
    let args = ml_tune(
        s(&data),
        s(&model),
        &[
            "--space",
            space,
            "--epochs",
            "4",
            "--factors",
            "8",
            "--scheduler",
            "none",
        ],
    );
    // The leader that starts trial 4 fails: every rank is out, the finished trials are kept.
    let failed = mpirun_env(2, &args, &[("FUNKSVD_FAULT", "trial-4@0:error")]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains("injected fault") && failed.stderr.contains("--resume"),
        "{}",
        failed.stderr
    );
    // At least the first finished trial is saved (rank 0 saves at once, then as often as saving
    // stays cheap: ms-long trials can finish between two saves and are rerun on resume).
    let before = finals(&trials(&model));
    assert!(!before.is_empty() && !before.contains_key(&4), "{before:?}");
    assert!(
        !model.join("model.json").exists(),
        "nothing is published by a failed search"
    );
    // Another --space is refused: a search resumes with the flags it started with.
    let mut other = args.clone();
    let at = other.iter().position(|a| *a == space).unwrap();
    other[at] = "reg=0.02,0.04";
    other.push("--resume");
    let refused = mpirun(2, &other);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("--space was 'reg=0.02,0.04,0.06,0.08,0.1,0.12'"),
        "{}",
        refused.stderr
    );
    let mut resume = args.clone();
    resume.push("--resume");
    let run = mpirun(2, &resume).ok();
    assert!(
        run.stderr.contains(&format!(
            "--resume: {} of 6 trials finished before",
            before.len()
        )),
        "{}",
        run.stderr
    );
    let after = finals(&trials(&model));
    assert_eq!(after.len(), 6);
    for (trial, row) in &before {
        assert_eq!(&after[trial], row, "trial {trial} was not run again");
    }
    assert!(model.join("model.json").exists());
}
