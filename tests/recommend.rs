//! `funksvd recommend` under mpirun: the lists equal a naive reference (score every item, sort),
//! are the same on every rank count, never hold a seen item; unknown users get popular items;
//! similar items are the nearest by cosine; the output folder's rules.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use common::*;
use funksvd::mf::Model;

/// A ratings CSV of `users` x `items` with about `per_user` ratings each (deterministic), and
/// the pairs in it.
fn ratings_csv(path: &Path, users: u64, items: u64, per_user: u64) -> BTreeSet<(u64, u64)> {
    let mut text = String::from("user,item,rating\n");
    let mut pairs = BTreeSet::new();
    for u in 0..users {
        for j in 0..per_user {
            let i = (u * 7 + j * j * 13 + (u * j) % 11) % items;
            if pairs.insert((u, i)) {
                let rating = 1 + (u + 2 * i) % 5;
                text.push_str(&format!("{u},{i},{rating}\n"));
            }
        }
    }
    std::fs::write(path, text).unwrap();
    pairs
}

/// A folder with ratings.csv and a model trained on it: (folder, csv, model, pairs).
fn trained(name: &str) -> (PathBuf, PathBuf, PathBuf, BTreeSet<(u64, u64)>) {
    let dir = temp_dir(name);
    let csv = dir.join("ratings.csv");
    let pairs = ratings_csv(&csv, 300, 150, 25);
    let model = dir.join("model");
    let mut args = train_args(s(&csv), s(&model), &["--epochs", "8"]);
    args.extend_from_slice(&COLUMNS);
    mpirun(2, &args).ok();
    (dir, csv, model, pairs)
}

/// `recommend --model MODEL --out OUT --top TOP`, then `extra`.
fn recommend_args<'a>(
    model: &'a Path,
    out: &'a Path,
    top: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "recommend",
        "--model",
        s(model),
        "--out",
        s(out),
        "--top",
        top,
    ];
    args.extend_from_slice(extra);
    args
}

/// The top 5 of the users in the file `users` (the ratings CSV's columns), seen items from `csv`.
fn for_users<'a>(model: &'a Path, out: &'a Path, csv: &'a Path, users: &'a Path) -> Vec<&'a str> {
    let mut args = recommend_args(model, out, "5", &["--data", s(csv), "--users", s(users)]);
    args.extend_from_slice(&COLUMNS[2..]);
    args
}

/// The naive reference: every item scored in f64, the excluded ones left out, sorted (equal
/// scores: the lower item first), the first `n`.
fn naive(m: &Model, user: &str, n: usize, exclude: &BTreeSet<u64>) -> Vec<(String, f64)> {
    let u = m.user(&funksvd::ids::Id::from_str_value(user)).unwrap();
    naive_row(m, m.user_row(u), n, exclude)
}

/// `naive` for a user row given as it is.
fn naive_row(m: &Model, row: &[f32], n: usize, exclude: &BTreeSet<u64>) -> Vec<(String, f64)> {
    let mut all: Vec<(usize, f64)> = (0..m.item_ids.len())
        .filter(|&i| !exclude.contains(&m.item_ids[i].to_string().parse::<u64>().unwrap()))
        .map(|i| {
            let item = m.item_row(i);
            let dot: f64 = row[1..]
                .iter()
                .zip(&item[1..])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let offset = match m.meta.biased {
                true => m.meta.global_mean as f64 + row[0] as f64 + item[0] as f64,
                false => 0.0,
            };
            (i, offset + dot)
        })
        .collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all.into_iter()
        .map(|(i, score)| (m.item_ids[i].to_string(), score))
        .collect()
}

/// Rows grouped by key, in rank order.
fn lists(rows: &[Row]) -> BTreeMap<String, Vec<Row>> {
    let mut by: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in rows {
        by.entry(r.key.clone()).or_default().push(r.clone());
    }
    by
}

/// `got` matches the reference: same scores (f32 against f64), same items unless two
/// reference scores are too close for f32 to order them alike.
fn assert_matches(got: &[Row], want: &[(String, f64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: list length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.rank, k as i32 + 1, "{what}: ranks count from 1");
        assert!(
            (g.score as f64 - w.1).abs() < 1e-4,
            "{what}: {g:?} vs {w:?}"
        );
    }
    let close = want.windows(2).any(|w| (w[0].1 - w[1].1).abs() < 1e-4);
    if !close {
        let items: Vec<&str> = got.iter().map(|r| r.value.as_str()).collect();
        let expected: Vec<&str> = want.iter().map(|w| w.0.as_str()).collect();
        assert_eq!(items, expected, "{what}");
    }
}

#[test]
fn every_users_top_n_equals_the_naive_reference_on_1_2_and_3_ranks() {
    let (dir, csv, model_dir, pairs) = trained("recommend-naive");
    let model = load_model(&model_dir);
    let mut seen: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(u, i) in &pairs {
        seen.entry(u).or_default().insert(i);
    }
    let mut outputs = Vec::new();
    for ranks in [1, 2, 3] {
        let out = dir.join(format!("recs-{ranks}"));
        let mut args = recommend_args(&model_dir, &out, "10", &["--data", s(&csv)]);
        args.extend_from_slice(&COLUMNS[2..]);
        let run = mpirun(ranks, &args).ok();
        assert!(run.stderr.contains("recommend: "), "{}", run.stderr);
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("_SUCCESS")).unwrap()).unwrap();
        assert_eq!(manifest["parts"].as_array().unwrap().len(), ranks);
        assert_eq!(manifest["seen_items_excluded"], true);
        outputs.push(read_output(&out));
    }
    let rows = &outputs[0];
    assert_eq!(rows.len(), model.user_ids.len() * 10, "10 per user");
    for other in &outputs[1..] {
        // Bit for bit, in the same order: the parts in rank order list the users in id order.
        assert_eq!(other.len(), rows.len());
        for (a, b) in rows.iter().zip(other) {
            assert_eq!((&a.key, a.rank, &a.value), (&b.key, b.rank, &b.value));
            assert_eq!(a.score.to_bits(), b.score.to_bits(), "{a:?} vs {b:?}");
        }
    }
    let keys: Vec<i64> = rows.iter().map(|r| r.key.parse().unwrap()).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "users in id order");
    for (user, list) in lists(rows) {
        let u: u64 = user.parse().unwrap();
        let exclude = &seen[&u];
        for r in &list {
            assert_eq!(r.source, "model");
            assert!(
                !exclude.contains(&r.value.parse().unwrap()),
                "user {user} got seen item {}",
                r.value
            );
        }
        assert_matches(&list, &naive(&model, &user, 10, exclude), &user);
    }
}

#[test]
fn users_of_the_data_the_model_does_not_know_get_rows_folded_in_from_their_interactions() {
    let dir = temp_dir("recommend-fold-in");
    let csv = dir.join("ratings.csv");
    let pairs = ratings_csv(&csv, 300, 150, 25);
    // The model never sees users 7 and 8; the data recommend reads has them.
    let text = std::fs::read_to_string(&csv).unwrap();
    let train_csv = dir.join("train.csv");
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("7,") && !l.starts_with("8,"))
        .collect();
    std::fs::write(&train_csv, kept.join("\n") + "\n").unwrap();
    let users = dir.join("users.csv");
    std::fs::write(&users, "user\n7\n8\n5\nnobody\n").unwrap();
    for objective in ["explicit", "implicit"] {
        let model_dir = dir.join(format!("model-{objective}"));
        let flags = ["--epochs", "8", "--objective", objective];
        let mut args = train_args(s(&train_csv), s(&model_dir), &flags);
        args.extend_from_slice(&COLUMNS);
        mpirun(2, &args).ok();
        let out = dir.join(format!("recs-{objective}"));
        let run = mpirun(2, &for_users(&model_dir, &out, &csv, &users)).ok();
        assert!(run.stderr.contains("2 folded in"), "{}", run.stderr);
        let by_user = lists(&read_output(&out));
        let sources = |u: &str| {
            by_user[u]
                .iter()
                .map(|r| r.source.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(sources("5"), vec!["model"; 5]);
        assert_eq!(sources("nobody"), vec!["popular"; 5]);
        let model = load_model(&model_dir);
        for user in [7u64, 8] {
            assert_eq!(sources(&user.to_string()), vec!["folded"; 5], "{objective}");
            // The reference: the model's own fold-in of the user's ratings, every item scored.
            let seen: BTreeSet<u64> = pairs.iter().filter(|p| p.0 == user).map(|p| p.1).collect();
            let mut items: Vec<(u32, f32)> = seen
                .iter()
                .map(|&i| {
                    let index = model.item(&funksvd::ids::Id::Int(i as i64)).unwrap() as u32;
                    (index, (1 + (user + 2 * i) % 5) as f32)
                })
                .collect();
            items.sort_by_key(|p| p.0);
            let (index, values): (Vec<u32>, Vec<f32>) = items.into_iter().unzip();
            let row = model.fold_in(&index, &values).unwrap();
            let want = naive_row(&model, &row, 5, &seen);
            let what = format!("{objective} user {user}");
            assert_matches(&by_user[&user.to_string()], &want, &what);
        }
    }
}

#[test]
fn unknown_users_get_popular_items_and_include_seen_lets_seen_items_back() {
    let (dir, csv, model_dir, pairs) = trained("recommend-users");
    let model = load_model(&model_dir);
    let users = dir.join("users.csv");
    // Known users 5 and 17 (17 twice), and two ids the model does not know.
    std::fs::write(&users, "user\n17\n5\nnobody\n17\n100000\n").unwrap();
    let out = dir.join("recs");
    let mut args = for_users(&model_dir, &out, &csv, &users);
    mpirun(2, &args).ok();
    let by_user = lists(&read_output(&out));
    assert_eq!(
        by_user.keys().collect::<Vec<_>>(),
        vec!["100000", "17", "5", "nobody"],
        "each user once (ids as strings: one is a string)"
    );
    // Popularity: interactions (users) per item in the data.
    let mut count: BTreeMap<u64, u64> = BTreeMap::new();
    for &(_, i) in &pairs {
        *count.entry(i).or_default() += 1;
    }
    let mut popular: Vec<(u64, u64)> = count.into_iter().collect();
    popular.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
    for unknown in ["100000", "nobody"] {
        let list = &by_user[unknown];
        assert!(list.iter().all(|r| r.source == "popular"), "{list:?}");
        let items: Vec<String> = list.iter().map(|r| r.value.clone()).collect();
        let want: Vec<String> = popular[..5].iter().map(|p| p.0.to_string()).collect();
        assert_eq!(items, want, "{unknown}");
        assert_eq!(list[0].score, popular[0].1 as f32, "scored by interactions");
    }
    for known in ["5", "17"] {
        assert!(by_user[known].iter().all(|r| r.source == "model"));
    }
    // --include-seen: the model's own top 5, seen or not.
    args.push("--include-seen");
    mpirun(3, &args).ok();
    let by_user = lists(&read_output(&out));
    let want = naive(&model, "5", 5, &BTreeSet::new());
    assert_matches(&by_user["5"], &want, "user 5 with --include-seen");
    let seen_5: BTreeSet<u64> = pairs.iter().filter(|p| p.0 == 5).map(|p| p.1).collect();
    let without = naive(&model, "5", 5, &seen_5);
    assert_ne!(
        want, without,
        "the test must have a seen item among user 5's best"
    );
    // Without --data: the popularity the model recorded (its training ratings per item).
    let hyper = &model.meta.hyperparameters;
    let mut trained: BTreeMap<u64, u64> = BTreeMap::new();
    for &(u, i) in &pairs {
        let id = |v: u64| funksvd::ids::Id::Int(v as i64);
        if !funksvd::train::data::is_held_out(&id(u), &id(i), hyper.seed, hyper.holdout) {
            *trained.entry(i).or_default() += 1;
        }
    }
    let mut by_training: Vec<(u64, u64)> = trained.into_iter().collect();
    by_training.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
    mpirun(
        2,
        &recommend_args(&model_dir, &out, "5", &["--users", s(&users)]),
    )
    .ok();
    let by_user = lists(&read_output(&out));
    let items: Vec<String> = by_user["nobody"].iter().map(|r| r.value.clone()).collect();
    let want: Vec<String> = by_training[..5].iter().map(|p| p.0.to_string()).collect();
    assert_eq!(items, want, "popular by the model's training ratings");
    assert_eq!(by_user["nobody"][0].score, by_training[0].1 as f32);
}

#[test]
fn similar_items_are_the_nearest_by_cosine_without_the_item_itself() {
    let (dir, _csv, model_dir, _pairs) = trained("recommend-similar");
    let model = load_model(&model_dir);
    let out = dir.join("similar");
    mpirun(
        2,
        &recommend_args(&model_dir, &out, "8", &["--similar-items"]),
    )
    .ok();
    let rows = read_output(&out);
    assert_eq!(rows.len(), model.item_ids.len() * 8);
    let k = model.meta.factors;
    let factors = |i: usize| &model.item_row(i)[1..=k];
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    for (item, list) in lists(&rows) {
        let i = model
            .item(&funksvd::ids::Id::from_str_value(&item))
            .unwrap();
        let mut want: Vec<(usize, f64)> = (0..model.item_ids.len())
            .filter(|&j| j != i)
            .map(|j| {
                let dot: f64 = factors(i)
                    .iter()
                    .zip(factors(j))
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                (j, dot / (norm(factors(i)) * norm(factors(j))))
            })
            .collect();
        want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        want.truncate(8);
        let want: Vec<(String, f64)> = want
            .into_iter()
            .map(|(j, c)| (model.item_ids[j].to_string(), c))
            .collect();
        assert!(list.iter().all(|r| r.value != item), "item {item} itself");
        assert_matches(&list, &want, &format!("item {item}"));
    }
}

#[test]
fn the_output_folder_is_replaced_whole_refused_when_foreign_and_unfinished_on_failure() {
    let (dir, csv, model_dir, _pairs) = trained("recommend-folder");
    let out = dir.join("recs");
    let recommend = |ranks: usize, extra: &[&str], env: &[(&str, &str)]| {
        mpirun_env(ranks, &recommend_args(&model_dir, &out, "3", extra), env)
    };
    recommend(3, &[], &[]).ok();
    let names = |p: &Path| -> BTreeSet<String> {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect()
    };
    assert_eq!(names(&out).len(), 4, "three parts and the manifest");
    // Fewer ranks: the old parts go, not just the ones rewritten.
    recommend(1, &[], &[]).ok();
    assert_eq!(
        names(&out),
        BTreeSet::from(["_SUCCESS".to_string(), "part-00000.parquet".to_string()])
    );
    // A rank that fails before its part is finished: no manifest, every rank out.
    let failed = recommend(2, &[], &[("FUNKSVD_FAULT", "recommend-part@1")]);
    assert_eq!(failed.code, 1, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("injected fault"),
        "{}",
        failed.stderr
    );
    assert!(
        !out.join("_SUCCESS").exists(),
        "a failed run claims nothing"
    );
    // A folder with someone else's files is left alone.
    let foreign = dir.join("mixed");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::copy(&csv, foreign.join("ratings.csv")).unwrap();
    let mut args = recommend_args(&model_dir, &foreign, "3", &[]);
    let refused = mpirun(2, &args);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("ratings.csv") && refused.stderr.contains("not funksvd output"),
        "{}",
        refused.stderr
    );
    assert_eq!(names(&foreign), BTreeSet::from(["ratings.csv".to_string()]));
    // --top above the catalogue: every item, with a warning.
    args[4] = s(&out);
    args[6] = "100000";
    let all = mpirun(2, &args).ok();
    assert!(all.stderr.contains("--top 100000"), "{}", all.stderr);
    let n_items = load_model(&model_dir).item_ids.len();
    let rows = read_output(&out);
    assert_eq!(
        rows.iter().filter(|r| r.key == rows[0].key).count(),
        n_items
    );
}

/// The ranking metrics of one list against the relevant items, written out independently of
/// `funksvd::metrics`: [precision, recall, ndcg, map, hit].
fn metrics_of(list: &[u64], relevant: &BTreeSet<u64>, k: usize) -> [f64; 5] {
    let mut hits = 0.0;
    let (mut dcg, mut ap) = (0.0, 0.0);
    for (p, item) in list.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1.0;
            dcg += 1.0 / ((p + 2) as f64).log2();
            ap += hits / (p + 1) as f64;
        }
    }
    let ideal: f64 = (0..relevant.len().min(k))
        .map(|p| 1.0 / ((p + 2) as f64).log2())
        .sum();
    [
        hits / k as f64,
        hits / relevant.len() as f64,
        dcg / ideal,
        ap / relevant.len().min(k) as f64,
        (hits > 0.0) as u8 as f64,
    ]
}

#[test]
fn evaluate_ranks_the_hold_out_like_a_naive_reference_for_the_model_and_popularity() {
    let (_dir, csv, model_dir, pairs) = trained("recommend-ranking");
    let model = load_model(&model_dir);
    let hyper = &model.meta.hyperparameters;
    let id = |v: u64| funksvd::ids::Id::Int(v as i64);
    let held = |u: u64, i: u64| {
        funksvd::train::data::is_held_out(&id(u), &id(i), hyper.seed, hyper.holdout)
    };
    let mut train: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut relevant: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    for &(u, i) in &pairs {
        if held(u, i) {
            relevant.entry(u).or_default().insert(i);
        } else {
            train.entry(u).or_default().insert(i);
            *counts.entry(i).or_default() += 1;
        }
    }
    let mut popular: Vec<(u64, u64)> = counts.into_iter().collect();
    popular.sort_by_key(|&(i, c)| (std::cmp::Reverse(c), i));
    let ks = [5usize, 10];
    // [model, popularity] x k: summed metrics, and the items in some top k.
    let mut sums = [[[0.0f64; 5]; 2]; 2];
    let mut covered = [
        [BTreeSet::new(), BTreeSet::new()],
        [BTreeSet::new(), BTreeSet::new()],
    ];
    let mut users = 0.0;
    let empty = BTreeSet::new();
    for (&u, rel) in &relevant {
        let Some(_) = model.user(&id(u)) else {
            continue;
        };
        users += 1.0;
        let own = train.get(&u).unwrap_or(&empty);
        let from_model: Vec<u64> = naive(&model, &u.to_string(), 10, own)
            .iter()
            .map(|(i, _)| i.parse().unwrap())
            .collect();
        let from_popular: Vec<u64> = popular
            .iter()
            .map(|p| p.0)
            .filter(|i| !own.contains(i) && model.item(&id(*i)).is_some())
            .take(10)
            .collect();
        for (kind, list) in [from_model, from_popular].iter().enumerate() {
            for (j, &k) in ks.iter().enumerate() {
                let m = metrics_of(list, rel, k);
                (0..5).for_each(|x| sums[kind][j][x] += m[x]);
                covered[kind][j].extend(list.iter().take(k).copied());
            }
        }
    }
    assert!(users > 200.0, "{users} users with a hold-out");
    for ranks in [1, 3] {
        let mut args = vec![
            "evaluate",
            "--model",
            s(&model_dir),
            "--data",
            s(&csv),
            "--k",
            "5,10",
        ];
        args.extend_from_slice(&COLUMNS[2..]);
        let run = mpirun(ranks, &args).ok();
        let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        let ranking = &report["ranking"];
        assert_eq!(ranking["users"].as_f64().unwrap(), users);
        for (kind, name) in ["model", "popularity"].iter().enumerate() {
            for (j, k) in ks.iter().enumerate() {
                let metric = ["precision", "recall", "ndcg", "map", "hit_rate"];
                for (x, metric) in metric.iter().enumerate() {
                    let got = ranking[name][format!("{metric}@{k}")].as_f64().unwrap();
                    // The model's scores are f32 here and f64 in the reference: a near tie may
                    // order two items differently for a user or two.
                    let tolerance = if kind == 0 { 2e-3 } else { 1e-12 };
                    let want = sums[kind][j][x] / users;
                    assert!(
                        (got - want).abs() <= tolerance,
                        "{name} {metric}@{k} on {ranks} ranks: {got} vs {want}"
                    );
                }
                let coverage = covered[kind][j].len() as f64 / model.item_ids.len() as f64;
                let got = ranking[name][format!("coverage@{k}")].as_f64().unwrap();
                assert!(
                    (got - coverage).abs() < 0.02,
                    "{name} coverage@{k}: {got} vs {coverage}"
                );
            }
        }
    }
}

#[test]
fn train_logs_the_hold_out_ndcg_that_evaluate_reports_for_the_final_model() {
    let dir = temp_dir("recommend-rank-metrics");
    let csv = dir.join("ratings.csv");
    ratings_csv(&csv, 300, 150, 25);
    let model = dir.join("model");
    let mut args = train_args(
        s(&csv),
        s(&model),
        &["--epochs", "6", "--rank-metrics", "10"],
    );
    args.extend_from_slice(&COLUMNS);
    let run = mpirun(2, &args).ok();
    let logged: Vec<f64> = run
        .stderr
        .lines()
        .filter(|l| l.contains("epoch ") && l.contains("/6:"))
        .map(|l| {
            let at = l
                .find("hold-out NDCG@10 ")
                .expect("NDCG on every epoch line")
                + 17;
            l[at..].split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(logged.len(), 6, "{}", run.stderr);
    assert!(run
        .stderr
        .contains("the popularity baseline's hold-out NDCG@10"));
    let mut eval = vec![
        "evaluate",
        "--model",
        s(&model),
        "--data",
        s(&csv),
        "--k",
        "10",
    ];
    eval.extend_from_slice(&COLUMNS[2..]);
    let report: serde_json::Value = serde_json::from_str(&mpirun(1, &eval).ok().stdout).unwrap();
    let final_ndcg = report["ranking"]["model"]["ndcg@10"].as_f64().unwrap();
    // The log rounds to 4 places; the model in training lists items in another order, which
    // only breaks exact ties differently.
    assert!(
        (logged[5] - final_ndcg).abs() < 2e-4,
        "{logged:?} vs {final_ndcg}"
    );
}

#[test]
fn a_users_table_written_in_parts_reads_back_as_the_whole_one_and_recommends_the_same() {
    let dir = temp_dir("recommend-parts");
    let csv = dir.join("ratings.csv");
    ratings_csv(&csv, 300, 150, 25);
    let (whole, parts) = (dir.join("whole"), dir.join("parts"));
    let train = |model: &Path, env: &[(&str, &str)]| {
        let mut args = train_args(s(&csv), s(model), &["--epochs", "4"]);
        args.extend_from_slice(&COLUMNS);
        mpirun_env(3, &args, env).ok()
    };
    train(&whole, &[]);
    // Any table is written in parts at a threshold of 0 bytes.
    train(&parts, &[("FUNKSVD_USER_PARTS_ABOVE", "0")]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(parts.join("model.json")).unwrap()).unwrap();
    let files: Vec<&str> = meta["user_parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["file"].as_str().unwrap())
        .collect();
    assert_eq!(files.len(), 3, "a part per rank: {meta}");
    let folder = meta["files"]["users"].as_str().unwrap();
    assert!(folder.ends_with("/users/"), "{folder}");
    assert!(files.iter().all(|f| f.starts_with(folder)), "{files:?}");
    assert!(
        !parts.join("users.parquet").exists(),
        "no top-level copy of a table in parts"
    );
    // Read back, the parts are the whole table, row for row, bit for bit.
    let (a, b) = (load_model(&whole), load_model(&parts));
    assert_eq!(a.user_ids, b.user_ids);
    let bits = |rows: &[f32]| rows.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&a.user_rows), bits(&b.user_rows));
    assert_eq!(bits(&a.item_rows), bits(&b.item_rows));
    // pandas reads the folder as one table, the same as the whole file.
    if let Some(py) = python_with("pandas, pyarrow") {
        let check = format!(
            "import pandas as pd, numpy as np\n\
             a = pd.read_parquet('{}')\n\
             b = pd.read_parquet('{}')\n\
             assert list(a.user_id) == list(b.user_id), 'ids'\n\
             assert np.array_equal(np.stack(a.factors), np.stack(b.factors)), 'factors'\n\
             assert np.array_equal(a.bias, b.bias), 'bias'\n",
            s(&whole.join("users.parquet")),
            s(&parts.join(folder)),
        );
        let out = std::process::Command::new(py)
            .args(["-c", &check])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // recommend, each rank reading only its share of the parts: the same lists as from the
    // whole table, on any rank count, for every user and for --users (fold-in, unknown ids).
    let users = dir.join("users.csv");
    std::fs::write(&users, "user\n7\n8\n5\n299\nnobody\n").unwrap();
    let lists_of = |model: &Path, ranks: usize, name: &str, extra: &[&str]| {
        let out = dir.join(name);
        let mut args = recommend_args(model, &out, "6", &["--data", s(&csv)]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&COLUMNS[2..]);
        mpirun(ranks, &args).ok();
        read_output(&out)
    };
    let want = lists_of(&whole, 2, "whole-all", &[]);
    let want_users = lists_of(&whole, 2, "whole-users", &["--users", s(&users)]);
    assert_eq!(want_users.len(), 5 * 6);
    for ranks in [1, 2, 4] {
        for (want, name, extra) in [
            (&want, "all", vec![]),
            (&want_users, "users", vec!["--users", s(&users)]),
        ] {
            let got = lists_of(&parts, ranks, &format!("parts-{name}-{ranks}"), &extra);
            assert_eq!(got.len(), want.len(), "{name} on {ranks} ranks");
            for (g, w) in got.iter().zip(want.iter()) {
                assert_eq!(
                    (&g.key, g.rank, &g.value, &g.source),
                    (&w.key, w.rank, &w.value, &w.source)
                );
                assert_eq!(g.score.to_bits(), w.score.to_bits(), "{g:?} vs {w:?}");
            }
        }
    }
    // A whole table published over one in parts brings the top-level copy back, and the
    // other way round takes it away.
    train(&parts, &[]);
    assert_eq!(load_model(&parts).user_ids, a.user_ids);
    assert!(parts.join("users.parquet").exists());
    train(&parts, &[("FUNKSVD_USER_PARTS_ABOVE", "0")]);
    assert!(!parts.join("users.parquet").exists());
    assert_eq!(load_model(&parts).user_ids, a.user_ids);
}
