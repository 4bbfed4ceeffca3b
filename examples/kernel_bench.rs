//! The SGD kernel alone, without MPI, files or features: how many rating updates per second
//! one core does over a synthetic rating matrix shaped like the bench data (power-law item
//! popularity, ~19 ratings per user). A change to `mf::kernel` or `train::pass::sgd_pass`
//! shows its effect here in seconds.
//!
//!   cargo run --release --example kernel_bench -- [--users N] [--items N] [--per-user N]
//!       [--factors "20 100"] [--epochs N] [--order shuffled|sequential|training]
//!
//! Prints the best of `--epochs` timed passes per configuration (the first, untimed pass warms
//! the caches).

use std::time::Instant;

use funksvd::ids::Id;
use funksvd::mf::kernel::Step;
use funksvd::mf::{Globals, Hyper, Params};
use funksvd::rng::Rng;
use funksvd::train::data::{HeldOut, ItemBlocks, RankData, RankRatings};
use funksvd::train::pass::{holdout_errors, sgd_pass, PassRows};
use funksvd::train::schedule::{add_visits, run_order, schedule, Schedule, USER_RUN};
use funksvd::train::MIN_PASSES;

struct Args {
    users: usize,
    items: usize,
    per_user: usize,
    factors: Vec<usize>,
    epochs: usize,
    /// Only the visiting order whose name starts with this (all if empty).
    order: String,
}

fn parse() -> Args {
    let mut a = Args {
        users: 100_000,
        items: 20_000,
        per_user: 19,
        factors: vec![20, 100],
        epochs: 5,
        order: String::new(),
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{flag}: not a number: {value}"))
        };
        match flag.as_str() {
            "--users" => a.users = number(),
            "--items" => a.items = number(),
            "--per-user" => a.per_user = number(),
            "--epochs" => a.epochs = number().max(1),
            "--order" => a.order = value.clone(),
            "--factors" => {
                a.factors = value
                    .split_whitespace()
                    .map(|v| v.parse().expect("--factors: numbers"))
                    .collect()
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

/// Ratings by user (CSR, items sorted), items drawn with popularity ~ 1/rank, and a hold-out of
/// one pair in five.
fn synthetic(a: &Args) -> RankData {
    let mut rng = Rng::new(7, 1);
    let mut cdf = Vec::with_capacity(a.items);
    let mut total = 0.0;
    for r in 0..a.items {
        total += 1.0 / (r + 1) as f64;
        cdf.push(total);
    }
    // Popularity must not follow the item numbering.
    let mut popular: Vec<u32> = (0..a.items as u32).collect();
    rng.shuffle(&mut popular);
    let mut data = RankData {
        ratings: RankRatings {
            user_offsets: vec![0],
            ..Default::default()
        },
        holdout: Vec::new(),
    };
    let mut mine = Vec::new();
    for u in 0..a.users {
        let r = &mut data.ratings;
        r.user_ids.push(Id::Int(u as i64));
        let n = 1 + (rng.next_f64() * (2 * a.per_user - 1) as f64) as usize;
        mine.clear();
        for _ in 0..n {
            let x = rng.next_f64() * total;
            mine.push(popular[cdf.partition_point(|&c| c < x).min(a.items - 1)]);
        }
        mine.sort_unstable();
        mine.dedup();
        for &i in &mine {
            let value = 1.0 + (rng.next_f64() * 4.0) as f32;
            if rng.next_f64() < 0.2 {
                data.holdout.push(HeldOut {
                    user: u as u32,
                    item: i,
                    value,
                });
            } else {
                r.items.push(i);
                r.values.push(value);
            }
        }
        r.user_offsets.push(r.items.len());
    }
    data
}

fn main() {
    let a = parse();
    let mut data = synthetic(&a);
    let item_ids: Vec<Id> = (0..a.items as i64).map(Id::Int).collect();
    let n = data.ratings.n_ratings() as f64;
    println!(
        "{} users, {} items, {} ratings, {} held out; best of {} passes",
        data.ratings.n_users(),
        a.items,
        data.ratings.n_ratings(),
        data.holdout.len(),
        a.epochs
    );
    println!(
        "{:>7} {:>40} {:>10} {:>11} {:>11}",
        "factors", "order", "sec/pass", "updates/s", "holdout/s"
    );
    let users = data.ratings.n_users();
    let mut shuffled: Vec<u32> = (0..users as u32).collect();
    Rng::new(1, 2).shuffle(&mut shuffled);
    let sequential: Vec<u32> = (0..users as u32).collect();
    let mut training = Vec::new();
    run_order(users.div_ceil(USER_RUN), &mut Rng::new(1, 2), &mut training);
    // As training cuts the items on one rank (item ids are already in row order here).
    let mut counts = vec![0u64; a.items];
    for &i in &data.ratings.items {
        counts[i as usize] += 1;
    }
    let blocks = ItemBlocks::plan(&counts, 1, MIN_PASSES);
    let orders: [(&str, &[u32], usize); 3] = [
        ("shuffled: users shuffled, 1 visit each", &shuffled, 1),
        ("sequential: users in order, 1 visit each", &sequential, 1),
        // (Here the list is of runs of users, not users.)
        ("training: runs of users, blocks", &training, MIN_PASSES),
    ];
    for &factors in &a.factors {
        let hyper = Hyper {
            factors,
            ..Hyper::default()
        };
        for (name, order, n_blocks) in orders {
            if !name.starts_with(&a.order) {
                continue;
            }
            if n_blocks > 1 {
                renumber(&mut data, &blocks.row_of);
            }
            let (best, best_holdout) =
                time_passes(&a, &data, &item_ids, &hyper, order, &blocks, n_blocks);
            println!(
                "{factors:>7} {name:>40} {best:>10.4} {:>10.1}M {:>10.1}M",
                n / best / 1e6,
                data.holdout.len() as f64 / best_holdout / 1e6
            );
            if n_blocks > 1 {
                renumber(&mut data, &blocks.order);
            }
        }
    }
}

/// The best seconds of `a.epochs` SGD passes (after one to warm up) in the visiting order
/// `order`, and of the hold-out scoring after each.
fn time_passes(
    a: &Args,
    data: &RankData,
    item_ids: &[Id],
    hyper: &Hyper,
    order: &[u32],
    blocks: &ItemBlocks,
    n_blocks: usize,
) -> (f64, f64) {
    let step = Step {
        lr: hyper.lr,
        reg: hyper.reg,
        biased: true,
    };
    let globals = Globals {
        global_mean: 3.0,
        rating_range: (1.0, 5.0),
    };
    // One visit per user: listed once, as training lists its visits once.
    let mut one_visit = Vec::new();
    let mut pairs = 0;
    let runs = (n_blocks > 1).then(|| Schedule::new(&data.ratings, blocks, USER_RUN));
    if runs.is_none() {
        let mut visits = Vec::new();
        add_visits(&data.ratings, order, &mut visits);
        let r = &data.ratings;
        pairs = schedule(&r.items, &r.values, &visits, &mut one_visit).pairs;
    }
    let mut params = Params::init(&data.ratings.user_ids, item_ids, hyper);
    let (mut best, mut best_holdout) = (f64::INFINITY, f64::INFINITY);
    let mut checksum = 0.0;
    for pass in 0..=a.epochs {
        let t = Instant::now();
        match &runs {
            None => checksum += sgd_pass(rows(&mut params), &one_visit, pairs, &[], step, 3.0),
            // As training does: run by run, each through every block (one rank: one group,
            // which starts at row 0).
            Some(schedule) => {
                for (n, &run) in order.iter().enumerate() {
                    let (ratings, pairs) = schedule.stretch(run as usize, 0);
                    let following = order
                        .get(n + 1)
                        .map_or(&[][..], |&r| schedule.stretch(r as usize, 0).0);
                    checksum += sgd_pass(rows(&mut params), ratings, pairs, following, step, 3.0);
                }
            }
        }
        let sgd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let h = holdout_errors(&data.holdout, params.view(), true, globals);
        let hold = t.elapsed().as_secs_f64();
        checksum += h.squared;
        if pass > 0 {
            best = best.min(sgd);
            best_holdout = best_holdout.min(hold);
        }
    }
    assert!(checksum.is_finite());
    (best, best_holdout)
}

/// All of `params`' rows, for a pass over all items.
fn rows(params: &mut Params) -> PassRows<'_> {
    PassRows {
        users: params.users.as_mut_slice(),
        items: params.items.as_mut_slice(),
        width: params.width,
    }
}

/// Item i becomes `new[i]`; each user's ratings sorted by the new numbers again.
fn renumber(data: &mut RankData, new: &[u32]) {
    let r = &mut data.ratings;
    for u in 0..r.n_users() {
        let range = r.user_offsets[u]..r.user_offsets[u + 1];
        let mut pairs: Vec<(u32, f32)> = r.items[range.clone()]
            .iter()
            .map(|&i| new[i as usize])
            .zip(r.values[range.clone()].iter().copied())
            .collect();
        pairs.sort_unstable_by_key(|p| p.0);
        for (k, (i, v)) in range.zip(pairs) {
            r.items[k] = i;
            r.values[k] = v;
        }
    }
    for h in &mut data.holdout {
        h.item = new[h.item as usize];
    }
}
