//! `--holdout-by time`: each user's most recent interactions are held out, the same pairs on
//! any rank count and file layout, and `evaluate` scores exactly those.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::*;
use funksvd::ids::Id;

/// Events of 120 users: each pair seen 1-3 times at distinct times (a pair's time is its
/// latest event), as rating CSV lines `user,item,rating,ts`; returns the lines and, per user,
/// the pairs ordered newest first with their aggregated (max) rating.
/// Per user, (item, rating) newest first.
type Newest = BTreeMap<u64, Vec<(u64, f32)>>;

fn events() -> (Vec<String>, Newest) {
    let mut lines = Vec::new();
    let mut latest: BTreeMap<(u64, u64), (i64, f32)> = BTreeMap::new();
    let mut clock = 1_600_000_000i64;
    for round in 0..3u64 {
        for u in 0..120u64 {
            for j in 0..(4 + u % 9) {
                if (u + j + round) % 3 == 0 && round > 0 {
                    continue;
                }
                let i = (u * 13 + j * 7) % 90;
                let rating = 1 + (u + i + round) % 5;
                clock += 1 + ((u * 31 + j * 17 + round * 7) % 50) as i64;
                let ts = if u % 2 == 0 {
                    clock.to_string()
                } else {
                    // Some users' times as text, UTC: the order is what counts.
                    let t = clock - 1_600_000_000;
                    format!(
                        "2020-09-{:02} {:02}:{:02}:{:02} UTC",
                        13 + t / 86_400,
                        t / 3600 % 24,
                        t / 60 % 60,
                        t % 60
                    )
                };
                lines.push(format!("{u},{i},{rating},{ts}"));
                let e = latest.entry((u, i)).or_insert((i64::MIN, 0.0));
                e.0 = e.0.max(clock);
                e.1 = e.1.max(rating as f32);
            }
        }
    }
    let mut by_user: BTreeMap<u64, Vec<(i64, u64, f32)>> = BTreeMap::new();
    for ((u, i), (t, r)) in latest {
        by_user.entry(u).or_default().push((t, i, r));
    }
    let ordered = by_user
        .into_iter()
        .map(|(u, mut v)| {
            v.sort_by_key(|p| std::cmp::Reverse(p.0));
            (u, v.into_iter().map(|(_, i, r)| (i, r)).collect())
        })
        .collect();
    (lines, ordered)
}

fn write_csv(dir: &Path, name: &str, lines: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let text = std::iter::once("user,item,rating,ts".to_string())
        .chain(lines.iter().cloned())
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(dir.join(name), text + "\n").unwrap();
}

const FLAGS: [&str; 10] = [
    "--rating-col",
    "rating",
    "--user-col",
    "user",
    "--item-col",
    "item",
    "--time-col",
    "ts",
    "--holdout-by",
    "time",
];

#[test]
fn each_users_latest_pairs_are_held_out_on_any_rank_count_and_layout() {
    let dir = temp_dir("holdout-time");
    let (lines, ordered) = events();
    // One file in time order; three files with the lines dealt out backwards.
    write_csv(&dir.join("one"), "all.csv", &lines);
    let mut reversed = lines.clone();
    reversed.reverse();
    for f in 0..3 {
        let part: Vec<String> = reversed.iter().skip(f).step_by(3).cloned().collect();
        write_csv(&dir.join("three"), &format!("part-{f}.csv"), &part);
    }
    // Expected: round(0.2 n) newest pairs of each user, at most n - 1.
    let mut held: BTreeSet<(u64, u64)> = BTreeSet::new();
    let mut held_ratings = Vec::new();
    for (u, pairs) in &ordered {
        let k = ((0.2 * pairs.len() as f64).round() as usize).min(pairs.len() - 1);
        for &(i, r) in &pairs[..k] {
            held.insert((*u, i));
            held_ratings.push((*u, i, r));
        }
    }
    assert!(held.len() > 100, "{} held out", held.len());
    let mut holdouts = Vec::new();
    for (ranks, layout) in [(1, "one"), (3, "one"), (2, "three")] {
        let model = dir.join(format!("m-{ranks}-{layout}"));
        let data = dir.join(layout);
        let args = train_args(s(&data), s(&model), &FLAGS);
        mpirun(ranks, &args).ok();
        let meta = load_model(&model).meta;
        assert_eq!(meta.hyperparameters.holdout_by.name(), "time");
        assert_eq!(
            meta.metrics.n_holdout as usize,
            held.len(),
            "{ranks} ranks, {layout}"
        );
        holdouts.push(meta.metrics.holdout_rmse.unwrap());
        // evaluate --split holdout scores exactly the expected pairs: their count, and the
        // RMSE of the model's own predictions of them.
        let eval = evaluate_args(s(&model), s(&data), "holdout", &[]);
        let report: serde_json::Value =
            serde_json::from_str(&mpirun(2, &eval).ok().stdout).unwrap();
        assert_eq!(report["n_scored"].as_u64().unwrap() as usize, held.len());
        let m = load_model(&model);
        let sse: f64 = held_ratings
            .iter()
            .map(|&(u, i, r)| {
                let p = m.predict_ids(&Id::Int(u as i64), &Id::Int(i as i64));
                (p as f64 - r as f64).powi(2)
            })
            .sum();
        let rmse = (sse / held_ratings.len() as f64).sqrt();
        assert_close(
            report["rmse"].as_f64().unwrap(),
            rmse,
            1e-5,
            "hold-out RMSE of the latest pairs",
        );
    }
    // The same pairs everywhere, so the figures agree closely (the models differ by rank count).
    for h in &holdouts[1..] {
        assert_close(
            *h,
            holdouts[0],
            0.005,
            "hold-out RMSE across ranks and layouts",
        );
    }
}
