//! S3/MinIO through a real S3 server (s3s-fs, which checks signatures as MinIO does): every rank
//! reads only its share, the model equals a local run's, and S3 failures end every rank fast.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn assert_no_secret(run: &Run) {
    for secret in [S3_SECRET_KEY, WRONG_SECRET] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "secret leaked:\n{}",
            run.stderr
        );
    }
}

const WRONG_SECRET: &str = "Qq7-wrong-secret-never-printed";

/// The server's settings with a wrong secret key.
fn with_wrong_secret(env: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut wrong: Vec<(&'static str, String)> = env
        .iter()
        .filter(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY")
        .cloned()
        .collect();
    wrong.push(("AWS_SECRET_ACCESS_KEY", WRONG_SECRET.into()));
    wrong
}

fn dataset_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn s3_data_and_model_match_a_local_run_bit_for_bit_and_each_rank_reads_its_share() {
    let Some(server) = S3Server::start("s3-round-trip", &["shop"]) else {
        return;
    };
    let env = server.env();
    let gen = [
        "generate",
        "--out",
        "s3://shop/events",
        "--users",
        "1500",
        "--items",
        "400",
        "--events",
        "120000",
    ];
    let run = mpirun_with(
        3,
        &[&gen[..], &["--files", "4", "--row-group-size", "7500"]].concat(),
        &env,
    )
    .ok();
    assert_no_secret(&run);
    let local_data = server.root.join("shop/events");
    let total = dataset_bytes(&local_data);

    for ranks in [2, 3] {
        let model_url = format!("s3://shop/models/m{ranks}");
        let run = mpirun_with(
            ranks,
            &train_args("s3://shop/events/", &model_url, &[]),
            &env,
        )
        .ok();
        assert_no_secret(&run);
        let s3_model = server.root.join(format!("shop/models/m{ranks}"));
        let meta = load_model(&s3_model).meta;
        // Each rank read about 1/N of the dataset, never the whole of it.
        for (rank, read) in meta.training.phases.read_per_rank.iter().enumerate() {
            assert!(
                read.bytes > 0 && read.requests > 0,
                "rank {rank} read nothing"
            );
            let share = read.bytes as f64 / total as f64;
            assert!(
                share < 1.3 / ranks as f64,
                "rank {rank} of {ranks} read {share:.2} of the dataset"
            );
        }
        // The same files from local disk give the same model, bit for bit.
        let local_model = temp_dir(&format!("s3-local-{ranks}"));
        mpirun(ranks, &train_args(s(&local_data), s(&local_model), &[])).ok();
        for file in ["users.parquet", "items.parquet"] {
            assert!(
                file_bytes(&s3_model.join(file)) == file_bytes(&local_model.join(file)),
                "{file}, {ranks} ranks"
            );
        }
        // evaluate reads both the model and the data from S3.
        let eval = mpirun_with(
            2,
            &[
                "evaluate",
                "--model",
                &model_url,
                "--data",
                "s3://shop/events",
                "--split",
                "holdout",
            ],
            &env,
        )
        .ok();
        let json: serde_json::Value = serde_json::from_str(&eval.stdout).unwrap();
        assert_close(
            json["rmse"].as_f64().unwrap(),
            meta.metrics.holdout_rmse.unwrap(),
            1e-6,
            "hold-out RMSE from S3",
        );
        // recommend: model and data from S3, parts and manifest to S3, the same bytes as from
        // and to local disk.
        let recs = |model: &str, data: &str, out: &str, env: &[(&'static str, String)]| {
            let args = [
                "recommend",
                "--model",
                model,
                "--data",
                data,
                "--out",
                out,
                "--top",
                "7",
            ];
            let run = mpirun_with(ranks, &args, env).ok();
            assert_no_secret(&run);
        };
        let out_url = format!("s3://shop/recs/r{ranks}");
        recs(&model_url, "s3://shop/events", &out_url, &env);
        let local_out = local_model.with_extension("recs");
        recs(s(&local_model), s(&local_data), s(&local_out), &[]);
        let s3_out = server.root.join(format!("shop/recs/r{ranks}"));
        assert!(s3_out.join("_SUCCESS").exists(), "no manifest on S3");
        for rank in 0..ranks {
            let part = format!("part-{rank:05}.parquet");
            assert!(
                file_bytes(&s3_out.join(&part)) == file_bytes(&local_out.join(&part)),
                "{part} on S3 differs from the local one"
            );
        }
    }
}

#[test]
fn wrong_secret_key_fails_every_rank_fast_and_never_prints_a_secret() {
    let Some(server) = S3Server::start("s3-wrong-key", &["shop"]) else {
        return;
    };
    let env = server.env();
    mpirun_with(
        1,
        &[
            "generate",
            "--out",
            "s3://shop/events",
            "--events",
            "2000",
            "--files",
            "1",
        ],
        &env,
    )
    .ok();
    let wrong = with_wrong_secret(&env);
    let started = Instant::now();
    let run = mpirun_with(
        3,
        &train_args("s3://shop/events", "s3://shop/model", &[]),
        &wrong,
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    // The model location is checked first, before any data is read.
    assert!(
        run.stderr
            .contains("--model s3://shop/model: cannot write there")
            && run.stderr.contains(&server.endpoint())
            && run.stderr.contains("the secret key is wrong"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("403"), "{}", run.stderr);
    assert_no_secret(&run);
    // The MinIO names of the original deployment work as aliases.
    let minio: Vec<(&'static str, String)> = vec![
        ("MINIO_ENDPOINT", format!("127.0.0.1:{}", server.port)),
        ("MINIO_ACCESS_KEY", S3_ACCESS_KEY.into()),
        ("MINIO_SECRET_KEY", S3_SECRET_KEY.into()),
    ];
    let run = mpirun_with(
        2,
        &train_args("s3://shop/events", "s3://shop/model", &["--epochs", "1"]),
        &minio,
    )
    .ok();
    assert_no_secret(&run);
    assert!(server.root.join("shop/model/model.json").exists());
}

#[test]
fn a_missing_bucket_or_missing_credentials_is_named() {
    let Some(server) = S3Server::start("s3-missing", &["shop"]) else {
        return;
    };
    let run = mpirun_with(
        2,
        &train_args("s3://nosuchbucket/events", "s3://shop/m", &[]),
        &server.env(),
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("s3://nosuchbucket/events")
            && run.stderr.contains("bucket does not exist"),
        "{}",
        run.stderr
    );
    let run = mpirun_with(
        2,
        &train_args("s3://shop/events", "s3://shop/m", &[]),
        &[("AWS_ENDPOINT_URL", server.endpoint())],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("AWS_ACCESS_KEY_ID"), "{}", run.stderr);
}

#[test]
fn server_stopped_mid_run_fails_every_rank_and_leaves_the_previous_model_readable() {
    let Some(mut server) = S3Server::start("s3-stop", &["shop"]) else {
        return;
    };
    let env = server.env();
    let gen = [
        "generate",
        "--out",
        "s3://shop/events",
        "--users",
        "500",
        "--items",
        "200",
        "--events",
        "30000",
        "--files",
        "2",
    ];
    mpirun_with(2, &gen, &env).ok();
    let train = [
        "train",
        "--data",
        "s3://shop/events",
        "--model",
        "s3://shop/model",
    ];
    mpirun_with(2, &train, &env).ok();
    let model_dir = server.root.join("shop/model");
    let before = model_files(&model_dir);

    // A long run; stop the server once training is under way.
    let mut run = Streaming::start(2, &[&train[..], &["--epochs", "4000"]].concat(), &env);
    run.wait_for("epoch 1/");
    server.stop();
    let status = run.wait_exit(TIMEOUT);
    let log = std::mem::take(&mut run.log);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("s3://shop/") && log.contains("endpoint http://127.0.0.1"),
        "{log}"
    );
    // The previous model is untouched and still reads back through S3.
    let after = model_files(&model_dir);
    assert!(before == after, "the previous model changed");
    server.restart();
    let eval = mpirun_with(
        2,
        &[
            "evaluate",
            "--model",
            "s3://shop/model",
            "--data",
            "s3://shop/events",
        ],
        &server.env(),
    )
    .ok();
    assert!(eval.stdout.contains("\"rmse\""), "{}", eval.stdout);
}

#[test]
fn objects_larger_than_one_part_upload_in_parts_and_read_back_whole() {
    let Some(server) = S3Server::start("s3-multipart", &["shop"]) else {
        return;
    };
    let env = server.env();
    let gen = [
        "generate",
        "--out",
        "s3://shop/big",
        "--events",
        "1600000",
        "--files",
        "1",
        "--users",
        "20000",
        "--items",
        "5000",
    ];
    mpirun_with(1, &gen, &env).ok();
    let size = std::fs::metadata(server.root.join("shop/big/part-00000.parquet"))
        .unwrap()
        .len();
    assert!(
        size > 16 << 20,
        "the file ({size} bytes) is too small to need parts"
    );
    let run = mpirun_with(
        2,
        &train_args("s3://shop/big", "s3://shop/m", &["--epochs", "1"]),
        &env,
    )
    .ok();
    assert_no_secret(&run);
    assert_eq!(
        load_model(&server.root.join("shop/m"))
            .meta
            .training
            .rows_read,
        1_600_000
    );
}

#[test]
fn verify_checks_s3_data_and_model_locations_from_every_rank() {
    let Some(server) = S3Server::start("s3-verify", &["shop"]) else {
        return;
    };
    let env = server.env();
    mpirun_with(
        1,
        &[
            "generate",
            "--out",
            "s3://shop/events",
            "--events",
            "3000",
            "--files",
            "2",
        ],
        &env,
    )
    .ok();
    let args = [
        "verify",
        "--data",
        "s3://shop/events",
        "--model",
        "s3://shop/models/m",
    ];
    let run = mpirun_with(3, &args, &env).ok();
    assert!(run.stdout.contains("all checks passed"), "{}", run.stdout);
    let wrong = with_wrong_secret(&env);
    let run = mpirun_with(3, &args, &wrong);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.contains("FAILED") && run.stdout.contains("secret key is wrong"),
        "{}",
        run.stdout
    );
    assert_no_secret(&run);
}

#[test]
fn on_s3_a_failed_save_keeps_the_previous_model_and_resume_continues_a_stopped_run() {
    let Some(server) = S3Server::start("s3-publish", &["shop"]) else {
        return;
    };
    let env = server.env();
    let gen = [
        "generate",
        "--out",
        "s3://shop/events",
        "--users",
        "300",
        "--items",
        "100",
        "--events",
        "10000",
        "--files",
        "2",
    ];
    mpirun_with(2, &gen, &env).ok();
    let train = [
        "train",
        "--data",
        "s3://shop/events",
        "--model",
        "s3://shop/model",
        "--epochs",
        "4",
        "--objective",
        "explicit",
    ];
    mpirun_with(2, &train, &env).ok();
    let model_dir = server.root.join("shop/model");
    let snapshot = || model_files(&model_dir);
    let before = snapshot();
    for point in ["publish-tables", "publish-switch"] {
        let mut faulty = env.clone();
        faulty.push(("FUNKSVD_FAULT", format!("{point}@0")));
        let run = mpirun_with(2, &[&train[..], &["--seed", "9"]].concat(), &faulty);
        assert_eq!(run.code, 1, "{point}: {}", run.stderr);
        assert!(snapshot() == before, "{point}: the previous model changed");
    }
    // Checkpoints through S3: stop after epoch 3, resume, same model as an uninterrupted run.
    let mut faulty = env.clone();
    faulty.push(("FUNKSVD_FAULT", "epoch-3@1".into()));
    let ckpt = [
        "train",
        "--data",
        "s3://shop/events",
        "--model",
        "s3://shop/resumed",
        "--epochs",
        "4",
        "--checkpoint-every",
        "1",
        "--objective",
        "explicit",
    ];
    assert_eq!(mpirun_with(2, &ckpt, &faulty).code, 1);
    let run = mpirun_with(2, &[&ckpt[..], &["--resume"]].concat(), &env).ok();
    assert!(
        run.stderr.contains("resuming after epoch 2"),
        "{}",
        run.stderr
    );
    for file in ["users.parquet", "items.parquet"] {
        assert!(
            file_bytes(&server.root.join("shop/resumed").join(file))
                == file_bytes(&model_dir.join(file)),
            "{file}"
        );
    }
    let json = String::from_utf8(file_bytes(&model_dir.join("model.json"))).unwrap();
    assert!(
        !json.contains(S3_SECRET_KEY) && !json.contains(S3_ACCESS_KEY),
        "credentials in model.json"
    );
}

#[test]
fn an_endpoint_that_never_answers_fails_in_seconds_naming_it() {
    // Takes connections and never says a word (a hung proxy, a firewall that swallows).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [
        ("AWS_ENDPOINT_URL", endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY.to_string()),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY.to_string()),
        ("FUNKSVD_S3_TIMEOUT", "1".to_string()),
    ];
    let started = Instant::now();
    let run = mpirun_with(
        2,
        &train_args("s3://shop/events", "s3://shop/model", &[]),
        &env,
    );
    let took = started.elapsed();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&endpoint) && run.stderr.contains("did not answer in time"),
        "{}",
        run.stderr
    );
    // One timeout (and no retry after it) plus MPI's start and end; 120 s before.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_no_secret(&run);
}
