use funksvd::store::Location;
use std::time::Instant;
fn main() {
    let path = std::env::args().nth(1).unwrap();
    let loc = Location::parse(&path, "--model").unwrap();
    let model = funksvd::model_io::load_blocking(&loc).unwrap();
    let n_users = model.user_ids.len() as u32;
    for block in [1usize, 2, 4, 8, 16, 64] {
        let t = Instant::now();
        let mut total = 0;
        let rounds = 2000 / block;
        for r in 0..rounds {
            let users: Vec<u32> = (0..block as u32)
                .map(|j| (r as u32 * 64 + j * 7) % n_users)
                .collect();
            total += model.top_n_many(&users, 10, &[]).len();
        }
        let per = t.elapsed().as_secs_f64() / (rounds * block) as f64;
        println!("block {block}: {:.1} us per user ({total})", per * 1e6);
    }
}
