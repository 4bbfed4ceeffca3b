//! Every bad input and failure of README "Failure behaviour", run through the real binary under
//! mpirun with 2 ranks: the exit code, a message naming the culprit, nothing published, no hang.
//! The README table is checked against these cases, so the two cannot drift.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;

/// One row of the README table: what goes wrong, the exit code, what the message says.
struct Case {
    name: &'static str,
    code: i32,
    says: &'static str,
    /// Prepares the input in `dir` and returns the funksvd arguments.
    args: fn(&Path) -> Vec<String>,
}

fn train(data: &Path, model: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--data", s(data), "--model", s(model)]
        .iter()
        .map(|a| a.to_string())
        .collect();
    if !extra.contains(&"--epochs") {
        v.extend(["--epochs".to_string(), "2".to_string()]);
    }
    // The cases written for the explicit objective name it (events default to the implicit).
    if !extra.contains(&"--objective") && !extra.contains(&"--rating-col") {
        v.extend(["--objective".to_string(), "explicit".to_string()]);
    }
    v.extend(extra.iter().map(|a| a.to_string()));
    v
}

/// `tune` over `space` on a small Parquet dataset in `dir`, then `extra`.
fn tune(dir: &Path, space: &str, extra: &[&str]) -> Vec<String> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
    let mut args = train(&data, &dir.join("m"), extra);
    args[0] = "tune".into();
    args.extend(["--space".to_string(), space.to_string()]);
    args
}

/// A model trained (one process) on a small CSV in `dir`, and that CSV's folder: (model, data).
fn tiny_model(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = csv(
        dir,
        "a.csv",
        b"user_id,product_id,event_type\n1,2,view\n1,3,purchase\n2,3,view\n3,2,view\n3,4,view\n",
    );
    let model = dir.join("model");
    let args = train(&data, &model, &["--holdout", "0"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    solo(&args).ok();
    (model, data)
}

/// `recommend --model MODEL --out DIR/recs`, then `extra`.
fn recommend(dir: &Path, model: &Path, extra: &[&str]) -> Vec<String> {
    let out = dir.join("recs");
    ["recommend", "--model", s(model), "--out", s(&out)]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
}

/// Test credentials and `extra` NAME=VALUE settings, as the leading arguments of a case.
fn s3_env(extra: &[&str]) -> Vec<String> {
    ["AWS_ACCESS_KEY_ID=k", "AWS_SECRET_ACCESS_KEY=s"]
        .iter()
        .chain(extra)
        .map(|a| a.to_string())
        .collect()
}

fn csv(dir: &Path, name: &str, text: &[u8]) -> std::path::PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join(name), text).unwrap();
    data
}

fn parquet_bytes(columns: Vec<(&str, ArrayRef)>, row_group: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect::<Vec<_>>(),
    ));
    let batch = RecordBatch::try_new(
        schema.clone(),
        columns.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    buf
}

fn good_parquet(rows: usize) -> Vec<u8> {
    let events = ["view", "add_to_cart", "purchase"];
    parquet_bytes(
        vec![
            (
                "user_id",
                Arc::new(Int64Array::from_iter_values(
                    (0..rows as i64).map(|i| i % 50),
                )),
            ),
            (
                "product_id",
                Arc::new(Int64Array::from_iter_values(
                    (0..rows as i64).map(|i| i % 30),
                )),
            ),
            (
                "event_type",
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|i| events[i % 3]),
                )),
            ),
        ],
        rows,
    )
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "missing column",
            code: 2,
            says: "no column \"customer\"",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                train(&data, &d.join("m"), &["--user-col", "customer"])
            },
        },
        Case {
            name: "column of the wrong type",
            code: 2,
            says: "but an id must be an integer or a string",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                let bytes = parquet_bytes(
                    vec![
                        ("user_id", Arc::new(Float64Array::from(vec![1.5, 2.5]))),
                        ("product_id", Arc::new(Int64Array::from(vec![1, 2]))),
                        (
                            "event_type",
                            Arc::new(StringArray::from(vec!["view", "view"])),
                        ),
                    ],
                    10,
                );
                std::fs::write(data.join("a.parquet"), bytes).unwrap();
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "all rows with null ids",
            code: 2,
            says: "nothing to train on",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n,1,view\n,2,purchase\n",
                );
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "only unknown event types",
            code: 2,
            says: "nothing to train on",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,1,click\n2,2,hover\n",
                );
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "empty dataset (a header only)",
            code: 2,
            says: "the dataset has no rows",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n");
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "empty prefix",
            code: 2,
            says: "no data files there",
            args: |d| {
                std::fs::create_dir_all(d.join("empty")).unwrap();
                train(&d.join("empty"), &d.join("m"), &[])
            },
        },
        Case {
            name: "Parquet file with a corrupt footer",
            code: 2,
            says: "corrupt Parquet footer",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                let mut bytes = good_parquet(100);
                let n = bytes.len();
                let meta_len = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
                for b in &mut bytes[n - 8 - meta_len..n - 8] {
                    *b = 0xEE;
                }
                std::fs::write(data.join("a.parquet"), bytes).unwrap();
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "truncated Parquet file",
            code: 2,
            says: "not a Parquet file",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                let bytes = good_parquet(100);
                std::fs::write(data.join("a.parquet"), &bytes[..bytes.len() / 2]).unwrap();
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "a file that is not Parquet, named .parquet",
            code: 2,
            says: "not a Parquet file",
            args: |d| {
                let data = csv(d, "a.parquet", b"user_id,product_id,event_type\n1,2,view\n");
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "CSV with ragged rows",
            code: 2,
            says: "bad CSV",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,2,view\n3,4\n",
                );
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "CSV without a header",
            code: 2,
            says: "no column \"user_id\"",
            args: |d| {
                let data = csv(d, "a.csv", b"1,2,view\n3,4,view\n");
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "non-UTF-8 bytes in an id",
            code: 2,
            says: "UTF-8",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,2,view\n\xff\xfe,4,view\n",
                );
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "NaN rating",
            code: 2,
            says: "ratings must be finite and not negative",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,rating\n1,2,4\n3,4,NaN\n");
                train(&data, &d.join("m"), &["--rating-col", "rating"])
            },
        },
        Case {
            name: "infinite rating",
            code: 2,
            says: "ratings must be finite and not negative",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,rating\n1,2,4\n3,4,inf\n");
                train(&data, &d.join("m"), &["--rating-col", "rating"])
            },
        },
        Case {
            name: "negative rating",
            code: 2,
            says: "ratings must be finite and not negative",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,rating\n1,2,4\n3,4,-1\n");
                train(&data, &d.join("m"), &["--rating-col", "rating"])
            },
        },
        Case {
            name: "a bad file read by one rank only",
            code: 2,
            says: "b.parquet: cannot read Parquet data",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
                // Data pages overwritten, footer intact: only the rank that reads b.parquet fails.
                let mut bytes = good_parquet(3000);
                for b in &mut bytes[8..200] {
                    *b = 0x5A;
                }
                std::fs::write(data.join("b.parquet"), bytes).unwrap();
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "--factors 0",
            code: 2,
            says: "--factors 0: must be between 1 and 4096",
            args: |d| train(&d.join("data"), &d.join("m"), &["--factors", "0"]),
        },
        Case {
            name: "--lr -1",
            code: 2,
            says: "--lr -1: must be a positive number",
            args: |d| train(&d.join("data"), &d.join("m"), &["--lr", "-1"]),
        },
        Case {
            name: "--holdout 1.0",
            code: 2,
            says: "--holdout 1: must be at least 0 and below 1",
            args: |d| train(&d.join("data"), &d.join("m"), &["--holdout", "1.0"]),
        },
        Case {
            name: "--epochs 0",
            code: 2,
            says: "--epochs 0: must be between 1 and 100000",
            args: |d| train(&d.join("data"), &d.join("m"), &["--epochs", "0"]),
        },
        Case {
            name: "--epochs 1000000000 (more than memory could record)",
            code: 2,
            says: "--epochs 1000000000: must be between 1 and 100000",
            args: |d| train(&d.join("data"), &d.join("m"), &["--epochs", "1000000000"]),
        },
        Case {
            name: "verify --items too many for memory",
            code: 2,
            says: "the bandwidth test's item rows must be between 1 item and 4 GiB",
            args: |_| {
                ["verify", "--items", "1000000000"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "generate --events too many for one file",
            code: 2,
            says: "give --files 50 or more",
            args: |d| {
                [
                    "generate",
                    "--out",
                    s(&d.join("g")),
                    "--events",
                    "1000000000",
                    "--files",
                    "2",
                ]
                .map(String::from)
                .to_vec()
            },
        },
        Case {
            name: "generate --taste above 1",
            code: 2,
            says: "--taste 2: must be between 0 and 1",
            args: |d| {
                ["generate", "--out", s(&d.join("g")), "--taste", "2"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "--stall-timeout that is not a number of seconds",
            code: 2,
            says: "--stall-timeout soon: must be a number of seconds up to 86400",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                let mut args = train(&data, &d.join("m"), &[]);
                args.extend(["--stall-timeout", "soon"].map(String::from));
                args
            },
        },
        Case {
            name: "serve --listen that is not HOST:PORT",
            code: 2,
            says: "--listen nowhere: ",
            args: |d| {
                let model = s(&d.join("m")).to_string();
                ["serve", "--model", &model, "--listen", "nowhere"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "serve --token-file that cannot be read",
            code: 2,
            says: "cannot read it",
            args: |d| {
                let (model, token) = (s(&d.join("m")).to_string(), s(&d.join("none")).to_string());
                ["serve", "--model", &model, "--token-file", &token]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "serve --max-n 0",
            code: 2,
            says: "--max-n 0: must be between 1 and 1000000",
            args: |d| {
                let model = s(&d.join("m")).to_string();
                ["serve", "--model", &model, "--max-n", "0"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "AWS_ENDPOINT_URL that is not a URL",
            code: 2,
            says: "AWS_ENDPOINT_URL=not a url: not a URL",
            args: |_| {
                let mut args = s3_env(&["AWS_ENDPOINT_URL=not a url"]);
                args.extend(train(Path::new("s3://b/data"), Path::new("s3://b/m"), &[]));
                args
            },
        },
        Case {
            name: "FUNKSVD_S3_TIMEOUT that is not a number of seconds",
            code: 2,
            says: "FUNKSVD_S3_TIMEOUT=soon: must be a number of seconds",
            args: |_| {
                let mut args = s3_env(&[
                    "AWS_ENDPOINT_URL=http://127.0.0.1:9",
                    "FUNKSVD_S3_TIMEOUT=soon",
                ]);
                args.extend(train(Path::new("s3://b/data"), Path::new("s3://b/m"), &[]));
                args
            },
        },
        Case {
            name: "a column name that appears twice",
            code: 2,
            says: "column \"user_id\" appears 2 times",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type,user_id\n1,2,view,3\n",
                );
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "files that disagree on the item column",
            code: 2,
            says: "the files disagree on the item column",
            args: |d| {
                csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                let data = csv(d, "b.csv", b"user_id,item_id,event_type\n1,2,view\n");
                train(&data, &d.join("m"), &[])
            },
        },
        Case {
            name: "--format csv on a Parquet file",
            code: 2,
            says: "this is a Parquet file (it starts with PAR1)",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(100)).unwrap();
                train(&data, &d.join("m"), &["--format", "csv"])
            },
        },
        Case {
            name: "a --delimiter that is not one character",
            code: 2,
            says: "must be one ASCII character",
            args: |d| train(&d.join("data"), &d.join("m"), &["--delimiter", ";;"]),
        },
        Case {
            name: "--data and --model the same folder",
            code: 2,
            says: "are the same folder",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                train(&data, &data, &[])
            },
        },
        Case {
            name: "generate into a folder that holds data",
            code: 2,
            says: "add --overwrite to replace an earlier generation",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                ["generate", "--out", s(&data), "--events", "1000"]
                    .map(String::from)
                    .to_vec()
            },
        },
        Case {
            name: "generate --overwrite over files it did not write",
            code: 2,
            says: "was not written by funksvd generate",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                [
                    "generate",
                    "--out",
                    s(&data),
                    "--events",
                    "1000",
                    "--overwrite",
                ]
                .map(String::from)
                .to_vec()
            },
        },
        Case {
            name: "malformed --event-weights",
            code: 2,
            says: "is not EVENT=WEIGHT",
            args: |d| {
                train(
                    &d.join("data"),
                    &d.join("m"),
                    &["--event-weights", "view:1"],
                )
            },
        },
        Case {
            name: "a learning rate that diverges",
            code: 2,
            says: "lower --lr",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
                train(&data, &d.join("m"), &["--lr", "50"])
            },
        },
        Case {
            name: "--objective that does not exist",
            code: 2,
            says: "invalid value 'bpr' for '--objective <OBJECTIVE>'",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                train(&data, &d.join("m"), &["--objective", "bpr"])
            },
        },
        Case {
            name: "--alpha 0",
            code: 2,
            says: "--alpha 0: must be a positive number",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                train(
                    &data,
                    &d.join("m"),
                    &["--objective", "implicit", "--alpha", "0"],
                )
            },
        },
        Case {
            name: "--unobserved-weight -1",
            code: 2,
            says: "--unobserved-weight -1: must be zero or positive",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                let flags = ["--objective", "implicit", "--unobserved-weight", "-1"];
                train(&data, &d.join("m"), &flags)
            },
        },
        Case {
            name: "--alpha with the explicit objective",
            code: 2,
            says: "--alpha applies to --objective implicit only",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                train(&data, &d.join("m"), &["--alpha", "40"])
            },
        },
        Case {
            name: "--alpha with --balance",
            code: 2,
            says: "--alpha and --balance: give one",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                let flags = [
                    "--objective",
                    "implicit",
                    "--alpha",
                    "2",
                    "--balance",
                    "0.1",
                ];
                train(&data, &d.join("m"), &flags)
            },
        },
        Case {
            name: "--popularity-weight with --no-bias",
            code: 2,
            says: "needs the item biases it is added to: leave out --no-bias",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                let flags = [
                    "--objective",
                    "implicit",
                    "--no-bias",
                    "--popularity-weight",
                    "1",
                ];
                train(&data, &d.join("m"), &flags)
            },
        },
        Case {
            name: "an implicit solve that overflows",
            code: 2,
            says: "lower --alpha (now 100000000000000000000000000000000000000)",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
                let flags = ["--objective", "implicit", "--alpha", "1e38"];
                train(&data, &d.join("m"), &flags)
            },
        },
        Case {
            name: "an implicit solve with no regularisation and no unobserved weight",
            code: 2,
            says: "raise --reg (now 0)",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
                let flags = [
                    "--objective",
                    "implicit",
                    "--reg",
                    "0",
                    "--unobserved-weight",
                    "0",
                    "--factors",
                    "64",
                ];
                train(&data, &d.join("m"), &flags)
            },
        },
        Case {
            name: "evaluate with a model URL that is not a model",
            code: 2,
            says: "no model there",
            args: |d| {
                let data = csv(d, "a.csv", b"user_id,product_id,event_type\n1,2,view\n");
                vec![
                    "evaluate".into(),
                    "--model".into(),
                    s(&data).into(),
                    "--data".into(),
                    s(&data).into(),
                ]
            },
        },
        Case {
            name: "--resume with a model URL that holds no checkpoint",
            code: 2,
            says: "no complete checkpoint",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,2,view\n2,3,purchase\n",
                );
                train(&data, &d.join("m"), &["--resume", "--holdout", "0"])
            },
        },
        Case {
            name: "--holdout-by time without a time column",
            code: 2,
            says: "no column \"timestamp\"",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,2,view\n2,3,view\n",
                );
                train(&data, &d.join("m"), &["--holdout-by", "time"])
            },
        },
        Case {
            name: "a time that is not a time",
            code: 2,
            says: "column \"timestamp\": cannot read \"soon\" as a time",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type,timestamp\n1,2,view,2020-01-01\n2,3,view,soon\n",
                );
                train(&data, &d.join("m"), &["--holdout-by", "time"])
            },
        },
        Case {
            name: "recommend --top 0",
            code: 2,
            says: "--top 0: give the number of items per list",
            args: |d| {
                let (model, _) = tiny_model(d);
                recommend(d, &model, &["--top", "0"])
            },
        },
        Case {
            name: "recommend with a model URL that is not a model",
            code: 2,
            says: "no model there",
            args: |d| {
                let (_, data) = tiny_model(d);
                recommend(d, &data, &["--top", "5"])
            },
        },
        Case {
            name: "recommend --users with no id column",
            code: 2,
            says: "users.csv: no column \"user_id\" of user ids",
            args: |d| {
                let (model, data) = tiny_model(d);
                std::fs::write(d.join("users.csv"), "customer,segment\n1,a\n").unwrap();
                let users = d.join("users.csv");
                recommend(
                    d,
                    &model,
                    &["--top", "5", "--data", s(&data), "--users", s(&users)],
                )
            },
        },
        Case {
            name: "recommend --users the model does not know, on an old model, without --data",
            code: 2,
            says: "their popular items come from the interactions: give --data",
            args: |d| {
                let (model, _) = tiny_model(d);
                // A model written before models recorded their items' training ratings.
                let m = load_model(&model);
                let items = funksvd::mf::tables::rows_to_parquet(
                    "item_id",
                    &m.item_ids,
                    &m.item_rows,
                    m.meta.factors,
                )
                .unwrap();
                std::fs::write(model.join(m.meta.table("items")), &items).unwrap();
                std::fs::write(d.join("users.csv"), "user_id\n1\n404\n").unwrap();
                let users = d.join("users.csv");
                recommend(d, &model, &["--top", "5", "--users", s(&users)])
            },
        },
        Case {
            name: "recommend --data with none of the model's columns",
            code: 2,
            says: "other.csv: no column \"user_id\"",
            args: |d| {
                let (model, _) = tiny_model(d);
                let other = d.join("other");
                std::fs::create_dir_all(&other).unwrap();
                std::fs::write(other.join("other.csv"), "a,b,c\n1,2,3\n").unwrap();
                recommend(d, &model, &["--top", "5", "--data", s(&other)])
            },
        },
        Case {
            name: "recommend --similar-items with --users",
            code: 2,
            says: "--users does not go with --similar-items",
            args: |d| {
                let (model, _) = tiny_model(d);
                recommend(
                    d,
                    &model,
                    &["--top", "5", "--similar-items", "--users", "u.csv"],
                )
            },
        },
        Case {
            name: "recommend into a folder holding other files",
            code: 2,
            says: "holds files that are not funksvd output (a.csv)",
            args: |d| {
                let (model, data) = tiny_model(d);
                let mut args = recommend(d, &model, &["--top", "5"]);
                args[4] = s(&data).into();
                args
            },
        },
        Case {
            name: "recommend into a location that cannot be written",
            code: 2,
            says: "--out /proc/funksvd-cannot-write-here: cannot write there",
            args: |d| {
                let (model, _) = tiny_model(d);
                let mut args = recommend(d, &model, &["--top", "5"]);
                args[4] = "/proc/funksvd-cannot-write-here".into();
                args
            },
        },
        Case {
            name: "a model location that cannot be written",
            code: 2,
            says: "--model /proc/funksvd-cannot-write-here: cannot write there",
            args: |d| {
                let data = csv(
                    d,
                    "a.csv",
                    b"user_id,product_id,event_type\n1,2,view\n2,3,purchase\n3,2,view\n",
                );
                train(&data, Path::new("/proc/funksvd-cannot-write-here"), &[])
            },
        },
        Case {
            name: "tune: a search space that does not parse",
            code: 2,
            says: "--space: 'lr=0.1..x': expected a range of numbers lo..hi",
            args: |d| tune(d, "lr=0.1..x", &[]),
        },
        Case {
            name: "tune: a flag in the space that train does not have",
            code: 2,
            says: "train has no flag --learning-rate",
            args: |d| tune(d, "learning-rate=0.1,0.2", &[]),
        },
        Case {
            name: "tune: a flag in the space every trial must share",
            code: 2,
            says: "--holdout is the same for every trial",
            args: |d| tune(d, "holdout=0.1,0.2", &[]),
        },
        Case {
            name: "tune: --ranks-per-trial that does not divide the ranks",
            code: 2,
            says: "the job's 2 ranks must split into groups of that many",
            args: |d| tune(d, "reg=0.01,0.1", &["--ranks-per-trial", "3"]),
        },
        Case {
            name: "tune: --final-holdout 1",
            code: 2,
            says: "--final-holdout 1: must be at least 0 (all of the data) and below 1",
            args: |d| tune(d, "reg=0.01,0.1", &["--final-holdout", "1"]),
        },
        Case {
            name: "tune: a rating metric for implicit trials",
            code: 2,
            says: "implicit models predict preferences, not ratings",
            args: |d| {
                tune(
                    d,
                    "objective=explicit,implicit",
                    &["--metric", "holdout_rmse"],
                )
            },
        },
        Case {
            name: "tune: a rank that fails mid-search",
            code: 1,
            says: "injected fault at trial-0",
            args: |d| {
                let mut args = tune(d, "reg=0.01,0.1", &[]);
                args.insert(0, "FUNKSVD_FAULT=trial-0@0".into());
                args
            },
        },
        Case {
            name: "a rank that fails mid-training",
            code: 1,
            says: "(rank 1): injected fault at epoch",
            args: |d| {
                let data = d.join("data");
                std::fs::create_dir_all(&data).unwrap();
                std::fs::write(data.join("a.parquet"), good_parquet(3000)).unwrap();
                let mut args = train(&data, &d.join("m"), &[]);
                args.insert(0, "FUNKSVD_FAULT=epoch@1".into());
                args
            },
        },
    ]
}

/// Runs at a time: most of a case is processes starting and stopping, not work, so two at once
/// take about half the time on two cores.
const AT_ONCE: usize = 2;

#[test]
fn every_failure_exits_with_its_code_and_names_the_culprit_on_two_ranks() {
    let cases = cases();
    let problems: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..AT_ONCE)
            .map(|first| {
                let cases = &cases;
                scope.spawn(move || {
                    (first..cases.len())
                        .step_by(AT_ONCE)
                        .flat_map(|n| case_problems(n, &cases[n]))
                        .collect::<Vec<String>>()
                })
            })
            .collect();
        runs.into_iter().flat_map(|r| r.join().unwrap()).collect()
    });
    assert!(problems.is_empty(), "{}", problems.join("\n---\n"));
}

/// What is wrong with how case `n` ends (nothing: empty).
fn case_problems(n: usize, case: &Case) -> Vec<String> {
    let mut problems = Vec::new();
    {
        let dir = temp_dir(&format!("failure-{n}"));
        let mut args = (case.args)(&dir);
        // Leading NAME=VALUE arguments are the environment of the run.
        let mut env: Vec<(String, String)> = Vec::new();
        while let Some((k, v)) = args[0].split_once('=').filter(|(k, _)| !k.starts_with('-')) {
            env.push((k.to_string(), v.to_string()));
            args.remove(0);
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = mpirun_env(2, &argv, &env);
        if run.code != case.code
            || !run.stderr.contains(case.says)
            || run.stderr.contains("panicked")
        {
            problems.push(format!(
                "{}: exit {} (want {}), stderr:\n{}",
                case.name, run.code, case.code, run.stderr
            ));
        }
        if dir.join("m/model.json").exists() {
            problems.push(format!("{}: published a model", case.name));
        }
    }
    problems
}

#[test]
fn the_readme_failure_table_lists_every_case_as_tested() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let rows: Vec<String> = cases()
        .iter()
        .map(|c| format!("| {} | {} | `{}` |", c.name, c.code, c.says))
        .collect();
    let missing: Vec<&String> = rows
        .iter()
        .filter(|r| !readme.contains(r.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README \"Failure behaviour\" lacks these rows (the table should read):\n{}",
        rows.join("\n")
    );
}
