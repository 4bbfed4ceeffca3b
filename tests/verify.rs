//! `funksvd verify` under mpirun: a complete table, JSON, and failing storage checks.

mod common;

use common::*;

#[test]
fn verify_passes_with_a_complete_table_for_1_2_and_4_ranks() {
    let (dir, data) = generated("verify", 100, 40, 2000, 2);
    let model = dir.join("model");
    for ranks in [1, 2, 4] {
        let run = mpirun(ranks, &["verify", "--data", s(&data), "--model", s(&model)]).ok();
        let out = &run.stdout;
        assert!(
            out.contains(&format!("funksvd verify: {ranks} ranks on 1 hosts")),
            "{out}"
        );
        for rank in 0..ranks {
            assert!(
                out.lines()
                    .any(|l| l.trim_start().starts_with(&format!("{rank} "))),
                "rank {rank} row missing:\n{out}"
            );
        }
        for check in [
            "allreduce correctness",
            "alltoall and allgather",
            "shared item rows",
            "dataset readable from every rank",
            "model location writable",
        ] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("ok") && l.contains(check)),
                "{check} not ok:\n{out}"
            );
        }
        // Timings are figures, not checks: reported with their unit, never "ok".
        for (figure, unit) in [
            ("allreduce latency", " us "),
            ("item block exchange", " ms "),
        ] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with("  ") && l.contains(figure) && l.contains(unit)),
                "{figure} not among the figures:\n{out}"
            );
            assert!(!out
                .lines()
                .any(|l| l.starts_with("ok") && l.contains(figure)));
        }
        assert!(out.contains("40 items x 24 floats"), "{out}");
        // One host: training will keep the item rows in memory the ranks share.
        if ranks > 1 {
            let stated = format!("the {ranks} ranks map one window of");
            assert!(out.contains(&stated), "{out}");
        }
        assert!(out.contains("all checks passed"));
        // The probe object is gone again.
        assert!(std::fs::read_dir(&model).map(|d| d.count()).unwrap_or(0) == 0);
    }
}

#[test]
fn verify_json_is_one_document_with_every_rank_and_check() {
    let run = mpirun(
        2,
        &["verify", "--json", "--items", "5000", "--factors", "10"],
    )
    .ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON on stdout");
    assert_eq!(v["ok"], true);
    assert_eq!(v["ranks"], 2);
    assert_eq!(v["rank_info"].as_array().unwrap().len(), 2);
    assert!(v["rank_info"][1]["cores"].as_u64().unwrap() >= 1);
    assert!(v["rank_info"][0]["mpi_library"]
        .as_str()
        .unwrap()
        .contains("MPI"));
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true));
    let figures = v["figures"].as_array().unwrap();
    let exchange = figures
        .iter()
        .find(|f| f["name"] == "item block exchange")
        .expect("the exchange timing");
    assert!(exchange["value"].as_f64().unwrap() >= 0.0);
    assert_eq!(exchange["unit"], "ms");
    assert!(exchange["detail"]
        .as_str()
        .unwrap()
        .contains("5000 items x 16 floats"));
    let latency = figures
        .iter()
        .find(|f| f["name"] == "allreduce latency")
        .expect("the allreduce latency");
    assert!(latency["value"].as_f64().unwrap() > 0.0);
}

#[test]
fn verify_with_unreadable_data_fails_on_every_rank() {
    let run = mpirun(2, &["verify", "--data", "/nonexistent/funksvd-data"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stdout.contains("FAILED") && run.stdout.contains("dataset readable from every rank"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("rank 0:") && run.stdout.contains("rank 1:"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("SOME CHECKS FAILED"));
    assert!(run.stderr.contains("verify failed"), "{}", run.stderr);
}
