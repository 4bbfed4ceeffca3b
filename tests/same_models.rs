//! Models stay bit for bit what they were: the same data, flags and rank count give the model
//! files whose checksums `tests/fixtures/model-checksums.txt` keeps (made by the code of
//! fc92f84, before the layout of the source was renovated). A change to the kernel, the
//! visiting order, the item numbering or the model files shows here.
//!
//! `FUNKSVD_WRITE_FIXTURE=1 cargo test --release --test same_models` writes the fixture anew:
//! only for a change meant to alter every model, said so in its commit.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const FIXTURE: &str = "tests/fixtures/model-checksums.txt";

/// One training run of the fixture: its name, ranks, extra flags and environment.
struct Case {
    name: &'static str,
    ranks: usize,
    flags: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const GENERATED: &[Case] = &[
    Case {
        name: "generated-1-rank",
        ranks: 1,
        flags: &[],
        env: &[],
    },
    Case {
        name: "generated-2-ranks",
        ranks: 2,
        flags: &[],
        env: &[],
    },
    Case {
        name: "generated-3-ranks",
        ranks: 3,
        flags: &[],
        env: &[],
    },
    // Item rows passed round the ring instead of shared: the same model as shared rows.
    Case {
        name: "generated-3-ranks",
        ranks: 3,
        flags: &[],
        env: &[("FUNKSVD_SHARED_ROWS", "0")],
    },
    Case {
        name: "generated-2-ranks-no-bias-k7",
        ranks: 2,
        flags: &[
            "--no-bias",
            "--factors",
            "7",
            "--lr",
            "0.005",
            "--holdout",
            "0.1",
            "--seed",
            "5",
        ],
        env: &[],
    },
    // Rows wider than the unrolled kernels (130 factors: 136 floats): the loop of any width.
    Case {
        name: "generated-1-rank-k130",
        ranks: 1,
        flags: &["--factors", "130", "--epochs", "3"],
        env: &[],
    },
    Case {
        name: "generated-4-ranks-k33",
        ranks: 4,
        flags: &["--factors", "33", "--epochs", "4"],
        env: &[],
    },
];

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils)");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `name users=<sha256> items=<sha256>` of a trained model.
fn line(name: &str, model: &Path) -> String {
    format!(
        "{name} users={} items={}",
        sha256(&model.join("users.parquet")),
        sha256(&model.join("items.parquet"))
    )
}

#[test]
fn models_are_bit_for_bit_those_the_fixture_keeps() {
    let (dir, data) = generated_in_groups("same-models", 700, 250, 40000, 3, Some(6000));
    let mut lines: Vec<String> = Vec::new();
    for (n, case) in GENERATED.iter().enumerate() {
        let model = dir.join(format!("m{n}"));
        let args = train_args(s(&data), s(&model), case.flags);
        mpirun_env(case.ranks, &args, case.env).ok();
        lines.push(line(case.name, &model));
    }
    if let Some(ratings) = shared_data("ml-latest-small/ratings.csv") {
        let model = dir.join("ml");
        mpirun(2, &ml_args(s(&ratings), s(&model))).ok();
        lines.push(line("movielens-2-ranks", &model));
    }
    lines.dedup();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE);
    if std::env::var("FUNKSVD_WRITE_FIXTURE").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(fixture.parent().unwrap()).unwrap();
        std::fs::write(&fixture, lines.join("\n") + "\n").unwrap();
        eprintln!("wrote {}", fixture.display());
        return;
    }
    let expected =
        std::fs::read_to_string(&fixture).unwrap_or_else(|e| panic!("{}: {e}", fixture.display()));
    for got in &lines {
        let name = got.split(' ').next().unwrap();
        let want = expected
            .lines()
            .find(|l| l.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("{name}: not in {FIXTURE}"));
        assert_eq!(got, want, "{name}: the model files changed");
    }
}
