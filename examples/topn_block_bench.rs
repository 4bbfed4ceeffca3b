//! Top-N scoring of a published model's users, a block of B users per call
//! (`Model::top_n_many`), for the block sizes given: microseconds per user. One user per call
//! is what a server answering one request at a time pays; `serve` scores the requests that
//! arrive together in one call for this reason (docs/DESIGN.md, "Batches").
//!
//!   cargo run --release --example topn_block_bench -- MODEL [--blocks "1 2 4 8 16 64"] [--users 2000] [--n 10]
//!
//! MODEL is a published model's folder or s3:// prefix, e.g. the bench model that
//! `scripts/bench_serve.sh` trains (`target/bench/model-recommend-5000000`).

use std::time::Instant;

use funksvd::store::Location;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut model, mut blocks, mut users, mut n) = (None, "1 2 4 8 16 64".to_string(), 2000, 10);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--blocks" => blocks = value(),
            "--users" => users = number(&value(), "--users"),
            "--n" => n = number(&value(), "--n"),
            _ if model.is_none() => model = Some(arg),
            _ => fail(&format!("unknown argument {arg}")),
        }
    }
    let model = model.unwrap_or_else(|| fail("give a model's folder or s3:// prefix"));
    let loc = Location::parse(&model, "MODEL").unwrap_or_else(|e| fail(&e.to_string()));
    let model = funksvd::model_io::load_blocking(&loc).unwrap_or_else(|e| fail(&e.to_string()));
    let known = model.user_ids.len().max(1) as u32;
    println!(
        "{} users x {} items, {} factors; top {n} of each of {users} users",
        model.user_ids.len(),
        model.item_ids.len(),
        model.meta.factors
    );
    for block in blocks.split_whitespace().map(|b| number(b, "--blocks")) {
        let calls = (users / block.max(1)).max(1);
        let started = Instant::now();
        for call in 0..calls {
            // Users spread over the model, a different set each call.
            let ids: Vec<u32> = (0..block as u32)
                .map(|j| ((call * block) as u32 + j).wrapping_mul(7919) % known)
                .collect();
            std::hint::black_box(model.top_n_many(&ids, n, &[]));
        }
        let per_user = started.elapsed().as_secs_f64() / (calls * block) as f64;
        println!("block {block:>3}: {:7.1} us per user", per_user * 1e6);
    }
}

fn number(text: &str, flag: &str) -> usize {
    match text.parse() {
        Ok(v) if v > 0 => v,
        _ => fail(&format!("{flag}: {text} is not a whole number above 0")),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("topn_block_bench: {message}");
    std::process::exit(2)
}
