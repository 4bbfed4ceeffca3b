//! `train --objective implicit` (iALS): the same model bit for bit on the same rank count, the
//! same ranking quality on any rank count, checkpoints that resume bit for bit, and a model
//! every reader takes as it is (`evaluate`, `recommend`).

mod common;

use std::path::Path;

use common::*;

/// `train --objective implicit` on MovieLens (every rating an interaction), small and quick.
fn ml_implicit<'a>(data: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = ml_args(data, model);
    args.extend([
        "--objective",
        "implicit",
        "--factors",
        "16",
        "--epochs",
        "6",
        "--reg",
        "0.1",
        "--alpha",
        "2",
    ]);
    args.extend_from_slice(extra);
    args
}

fn ndcg20(model: &Path) -> f64 {
    let m = load_model(model);
    let ranking = m
        .meta
        .metrics
        .ranking
        .expect("an implicit model records its ranking");
    ranking["model"]["ndcg@20"].as_f64().unwrap()
}

fn same_tables(a: &Path, b: &Path) -> bool {
    ["users.parquet", "items.parquet"]
        .iter()
        .all(|f| file_bytes(&a.join(f)) == file_bytes(&b.join(f)))
}

#[test]
fn implicit_models_repeat_bit_for_bit_and_rank_alike_on_any_rank_count() {
    let Some(data) = shared_data("ml-latest-small/ratings.csv") else {
        return;
    };
    let dir = temp_dir("implicit-ranks");
    let model = |n: usize| dir.join(format!("m{n}"));
    let mut ndcg = Vec::new();
    for ranks in [1, 2, 3, 8] {
        let out = model(ranks);
        let run = mpirun(ranks, &ml_implicit(s(&data), s(&out), &[])).ok();
        let says =
            "objective implicit (iALS on the ratings of --rating-col rating, as --objective asks)";
        assert!(run.stderr.contains(says), "{}", run.stderr);
        ndcg.push(ndcg20(&out));
    }
    // It learns what popularity knows and more: MovieLens' users differ in taste.
    let m = load_model(&model(1));
    let ranking = m.meta.metrics.ranking.as_ref().unwrap();
    let popular = ranking["popularity"]["ndcg@20"].as_f64().unwrap();
    assert!(ndcg[0] > popular * 1.3, "{} vs {popular}", ndcg[0]);
    for (n, v) in ndcg.iter().enumerate() {
        assert_close(*v, ndcg[0], 0.01, &format!("NDCG@20 of run {n} vs 1 rank"));
    }
    // What the model says about itself, and what a reader makes of it.
    let hyper = &m.meta.hyperparameters;
    assert_eq!(hyper.objective, funksvd::mf::Objective::Implicit);
    assert_eq!(hyper.implicit.unwrap().alpha, 2.0);
    assert_eq!(
        (m.meta.global_mean, m.meta.rating_min, m.meta.rating_max),
        (0.0, 0.0, 1.0)
    );
    assert!(
        m.user_rows.chunks(17).all(|row| row[0] == 0.0),
        "user biases are 0"
    );
    let history = &m.meta.metrics.history;
    assert!(history
        .iter()
        .all(|e| e.loss.is_some() && e.holdout_rmse.is_none()));
    assert!(history[5].loss < history[0].loss);
    let eval = mpirun(
        2,
        &["evaluate", "--model", s(&model(1)), "--data", s(&data)],
    )
    .ok();
    let report: serde_json::Value = serde_json::from_str(&eval.stdout).unwrap();
    assert_eq!(report["objective"], "implicit");
    let evaluated = report["ranking"]["model"]["ndcg@20"].as_f64().unwrap();
    assert!(
        (evaluated - ndcg[0]).abs() < 2e-3,
        "{evaluated} vs {}",
        ndcg[0]
    );
    // The same ranks again: the same model, bit for bit, whether the rows are shared in the
    // node's memory (as above) or passed as messages (as on several nodes).
    let again = dir.join("again");
    let passed = ("FUNKSVD_SHARED_ROWS", "0");
    mpirun_env(2, &ml_implicit(s(&data), s(&again), &[]), &[passed]).ok();
    assert!(same_tables(&again, &model(2)));
    let item_rows = |p: &Path| load_model(p).meta.training.item_rows;
    assert_eq!(item_rows(&model(1)), "own");
    assert_eq!(item_rows(&model(2)), "gathered-shared");
    assert_eq!(item_rows(&again), "gathered-passed");
    // The other item side (every rank sums its parts of every item's steps: taken when users
    // far outnumber items), both ways: the same model bit for bit, ranking alike.
    let summed = ("FUNKSVD_ITEM_SIDE", "summed");
    let (in_memory, as_messages) = (dir.join("summed-shared"), dir.join("summed-passed"));
    mpirun_env(3, &ml_implicit(s(&data), s(&in_memory), &[]), &[summed]).ok();
    mpirun_env(
        3,
        &ml_implicit(s(&data), s(&as_messages), &[]),
        &[summed, passed],
    )
    .ok();
    assert!(same_tables(&in_memory, &as_messages));
    assert_eq!(item_rows(&in_memory), "summed-shared");
    assert_eq!(item_rows(&as_messages), "summed-passed");
    assert_close(
        ndcg20(&in_memory),
        ndcg[0],
        0.01,
        "summed item side vs 1 rank",
    );
    // recommend reads it as any model: lists in score order, no seen item.
    let recs = dir.join("recs");
    let two = model(2);
    let args = [
        "recommend",
        "--model",
        s(&two),
        "--out",
        s(&recs),
        "--top",
        "5",
    ];
    mpirun(2, &[&args[..], &["--data", s(&data)]].concat()).ok();
    assert!(recs.join("_SUCCESS").exists());
}

#[test]
fn an_implicit_run_stopped_after_a_checkpoint_resumes_to_the_same_model_bit_for_bit() {
    let (dir, data) = generated("implicit-resume", 400, 150, 20000, 2);
    let train = |model: &Path, extra: &[&str], env: &[(&str, &str)]| {
        // A weight given: the fault points are the epochs', and the choice's fit has epochs too.
        let flags = [
            "--objective",
            "implicit",
            "--epochs",
            "6",
            "--factors",
            "8",
            "--popularity-weight",
            "0.1",
        ];
        let mut args = train_args(s(&data), s(model), &flags);
        args.extend_from_slice(extra);
        mpirun_env(2, &args, env)
    };
    let whole = dir.join("whole");
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
    let run = train(&model, &["--checkpoint-every", "2", "--resume"], &[]).ok();
    assert!(
        run.stderr.contains("resuming after epoch 4"),
        "{}",
        run.stderr
    );
    assert!(same_tables(&model, &whole), "the resumed model differs");
    // Another objective's checkpoint is not this run's.
    let run = mpirun(
        2,
        &train_args(
            s(&data),
            s(&model),
            &["--epochs", "6", "--factors", "8", "--resume"],
        ),
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("other hyperparameters"),
        "{}",
        run.stderr
    );
}
