//! `funksvd generate`: a synthetic clickstream with planted structure, for demos, tests and
//! benchmarks. Hidden user and item vectors decide how likely a view turns into a cart and a
//! purchase, and with `--taste` which items a user views; item popularity and user activity
//! follow power laws; a few events have types outside the default weight table. File f depends only on (seed, f), so ranks write files in
//! parallel and the result is the same for any rank count.

use std::fmt::Write as _;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::cli::{GenerateArgs, OutFormat, Profile};
use crate::collective::{Collective, CollectiveExt, Op};
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::store::Location;

/// 2026-11-01T00:00:00Z in microseconds since the epoch; the data spans 30 days from there.
const START_MICROS: i64 = 1_793_491_200_000_000;
const SPAN_MICROS: i64 = 30 * 24 * 3600 * 1_000_000;
/// Ids look like a shop's: users from 1, products from 1,000,000.
const FIRST_USER_ID: i64 = 1;
const FIRST_PRODUCT_ID: i64 = 1_000_000;

pub fn run(comm: &dyn Collective, args: &GenerateArgs) -> Result<()> {
    comm.agree(args.check())?;
    let out = comm.agree(Location::parse(&args.out, "--out"))?;
    // Two generations never mix: an earlier one is replaced whole, or not touched.
    comm.agree(match comm.is_root() {
        true => clear(&out, args.overwrite),
        false => Ok(()),
    })?;
    let world = World::new(args);
    let mut written = 0usize;
    let result = (comm.rank()..args.files)
        .step_by(comm.size())
        .try_for_each(|f| {
            let events = world.file_events(args, f);
            written += events.len();
            let (name, bytes) = match args.format {
                OutFormat::Parquet => (
                    format!("part-{f:05}.parquet"),
                    to_parquet(&events, args.row_group_size)?,
                ),
                OutFormat::Csv => (format!("part-{f:05}.csv"), to_csv(&events)),
            };
            // A shop's export: one folder per day.
            let name = match args.profile {
                Profile::Demo => name,
                Profile::Shop => format!("date={}/{name}", &format_utc(day_span(args, f).0)[..10]),
            };
            out.blocking().put(&out.child_key(&name), bytes)
        });
    comm.agree(result)?;
    let mut total = [written as u64];
    comm.reduce_u64(&mut total, Op::Sum);
    if comm.is_root() {
        log::info!(
            "wrote {} events in {} {} files to {}",
            total[0],
            args.files,
            match args.format {
                OutFormat::Parquet => "Parquet",
                OutFormat::Csv => "CSV",
            },
            args.out
        );
    }
    Ok(())
}

/// Rank 0: refuse a folder that holds data files, unless `overwrite`, and then delete the
/// files an earlier `generate` wrote (and only those: anything else there is refused).
fn clear(out: &Location, overwrite: bool) -> Result<()> {
    let files = out.blocking().list_files()?;
    let Some(first) = files.first() else {
        return Ok(());
    };
    let shown = out.display_key(&first.key);
    if !overwrite {
        return Err(Error::usage(format!(
            "--out {}: already holds {} data files ({shown}, ...); choose an empty folder, or add --overwrite to replace an earlier generation",
            out.url(),
            files.len()
        )));
    }
    let ours = |key: &str| {
        let name = key.rsplit('/').next().unwrap_or("");
        let stem = name
            .strip_suffix(".parquet")
            .or_else(|| name.strip_suffix(".csv"))
            .and_then(|n| n.strip_prefix("part-"));
        stem.is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if let Some(other) = files.iter().find(|f| !ours(&f.key)) {
        return Err(Error::usage(format!(
            "--out {} --overwrite: {} was not written by funksvd generate; it is not deleted: choose another folder",
            out.url(),
            out.display_key(&other.key)
        )));
    }
    for f in &files {
        out.blocking().delete(&f.key)?;
    }
    log::info!(
        "--overwrite: deleted the {} files of an earlier generation in {}",
        files.len(),
        out.url()
    );
    Ok(())
}

/// One generated event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Event {
    pub user: u32,
    pub item: u32,
    pub kind: EventKind,
    pub micros: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    View,
    AddToCart,
    Purchase,
    /// Not in the default weight table: must be skipped and counted.
    RemoveFromCart,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::AddToCart => "add_to_cart",
            EventKind::Purchase => "purchase",
            EventKind::RemoveFromCart => "remove_from_cart",
        }
    }
}

/// The hidden truth shared by every file.
pub struct World {
    latent: usize,
    user_vecs: Vec<f32>,
    item_vecs: Vec<f32>,
    user_cdf: Vec<f64>,
    item_cdf: Vec<f64>,
}

impl World {
    pub fn new(args: &GenerateArgs) -> World {
        let latent = args.latent;
        // Components of std L^(-1/4) make an affinity (a dot product) of unit variance.
        let scale = (latent as f64).powf(-0.25);
        let vectors = |n: usize, stream: u64| {
            let mut rng = Rng::new(args.seed, stream);
            (0..n * latent)
                .map(|_| (rng.normal() * scale) as f32)
                .collect::<Vec<f32>>()
        };
        World {
            latent,
            user_vecs: vectors(args.users, 1),
            item_vecs: vectors(args.items, 2),
            // A shop's users: a long tail of one-visit users (each visit a draw).
            user_cdf: match args.profile {
                Profile::Demo => power_law_cdf(args.users, 0.8, &mut Rng::new(args.seed, 3)),
                Profile::Shop => pareto_cdf(args.users, SHOP_ACTIVITY, &mut Rng::new(args.seed, 3)),
            },
            item_cdf: match args.profile {
                Profile::Demo => power_law_cdf(args.items, 1.0, &mut Rng::new(args.seed, 4)),
                Profile::Shop => power_law_cdf(args.items, 0.9, &mut Rng::new(args.seed, 4)),
            },
        }
    }

    /// Affinity of a user for an item: roughly standard normal.
    fn affinity(&self, user: u32, item: u32) -> f32 {
        let (u, i, k) = (user as usize, item as usize, self.latent);
        let a = &self.user_vecs[u * k..(u + 1) * k];
        let b = &self.item_vecs[i * k..(i + 1) * k];
        a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
    }

    /// The events of file `f` (of `args.files`), in time order.
    pub fn file_events(&self, args: &GenerateArgs, f: usize) -> Vec<Event> {
        if args.profile == Profile::Shop {
            return self.shop_events(args, f);
        }
        let count = args.events / args.files + usize::from(f < args.events % args.files);
        let mut rng = Rng::new(args.seed, 1000 + f as u64);
        // File f covers its own stretch of the 30 days.
        let span = SPAN_MICROS / args.files as i64;
        let start = START_MICROS + span * f as i64;
        let step = (span / count.max(1) as i64).max(1);
        let mut events = Vec::with_capacity(count);
        let mut t = start;
        while events.len() < count {
            let user = sample(&self.user_cdf, &mut rng);
            let item = self.viewed_item(user, args.taste, &mut rng);
            t += 1 + rng.below(2 * step as usize) as i64;
            let push = |kind, t| {
                if events.len() < count {
                    events.push(Event {
                        user,
                        item,
                        kind,
                        micros: t,
                    });
                }
            };
            let a = self.affinity(user, item) as f64;
            funnel(&mut rng, t, a, DEMO_FUNNEL, push);
        }
        events
    }
}

impl World {
    /// The shop profile's file `f`: visits until the file's share of the events, each a user
    /// (drawn by activity) viewing a few items (a new one by popularity and taste, or the last
    /// again), some views carted (by affinity: 1-2% of views) and bought (about half the
    /// carts); visits start uniformly over the file's stretch of its day, events a few seconds
    /// to two minutes apart.
    fn shop_events(&self, args: &GenerateArgs, f: usize) -> Vec<Event> {
        let count = args.events / args.files + usize::from(f < args.events % args.files);
        let mut rng = Rng::new(args.seed, 1000 + f as u64);
        let (start, span) = day_span(args, f);
        let mut events = Vec::with_capacity(count + 16);
        while events.len() < count {
            let user = sample(&self.user_cdf, &mut rng);
            let mut t = start + rng.below(span.max(1) as usize) as i64;
            let mut item = self.viewed_item(user, args.taste, &mut rng);
            // Views per visit: 1 + a geometric count, mean 4.
            loop {
                let push = |kind, micros| {
                    events.push(Event {
                        user,
                        item,
                        kind,
                        micros,
                    })
                };
                let a = self.affinity(user, item) as f64;
                funnel(&mut rng, t, a, SHOP_FUNNEL, push);
                if rng.next_f64() < 0.25 {
                    break;
                }
                t += 5_000_000 + rng.below(115_000_000) as i64;
                if rng.next_f64() >= 0.3 {
                    item = self.viewed_item(user, args.taste, &mut rng);
                }
            }
        }
        events.truncate(count);
        events.sort_by_key(|e| e.micros);
        events
    }

    /// The item of a view: drawn by popularity; with probability `taste` the draw is repeated
    /// until the user keeps it, which they do with probability sigmoid(4 affinity - 3) (5% at
    /// affinity 0, 73% at 1, 99% at 2; at most 64 draws). With `taste` 0 no number is drawn
    /// beyond the item's, so the data of earlier versions is unchanged.
    fn viewed_item(&self, user: u32, taste: f64, rng: &mut Rng) -> u32 {
        let mut item = sample(&self.item_cdf, rng);
        if taste > 0.0 && rng.next_f64() < taste {
            for _ in 1..64 {
                if rng.next_f64() < sigmoid(4.0 * self.affinity(user, item) as f64 - 3.0) {
                    break;
                }
                item = sample(&self.item_cdf, rng);
            }
        }
        item
    }
}

/// The shop profile: file `f`'s stretch of time (start, length in microseconds). File f holds
/// day `f x days / files`; the files of one day split it in equal stretches.
fn day_span(args: &GenerateArgs, f: usize) -> (i64, i64) {
    const DAY: i64 = 24 * 3600 * 1_000_000;
    let day = f * args.days() / args.files;
    // The first file of day d: the smallest f with f x days >= d x files.
    let first = |d: usize| (d * args.files).div_ceil(args.days());
    let (from, to) = (first(day), first(day + 1));
    let share = DAY / (to - from).max(1) as i64;
    (
        START_MICROS + day as i64 * DAY + (f - from) as i64 * share,
        share,
    )
}

/// A funnel's odds as (intercept, slope) in the affinity a: a view carted with probability
/// sigmoid(cart.0 + cart.1 a); a cart then removed (2%) or bought, sigmoid(buy.0 + buy.1 a).
struct Funnel {
    cart: (f64, f64),
    buy: (f64, f64),
}

/// The demo's: carts and purchases about half the events.
const DEMO_FUNNEL: Funnel = Funnel {
    cart: (-1.5, 2.5),
    buy: (-0.5, 2.5),
};
/// A shop's: 1-2% of views carted, about half the carts bought.
const SHOP_FUNNEL: Funnel = Funnel {
    cart: (-6.5, 2.0),
    buy: (-1.5, 1.5),
};

/// A view at `t` of an item of affinity `a`, and what follows it by `odds`, given to `push`.
fn funnel(rng: &mut Rng, t: i64, a: f64, odds: Funnel, mut push: impl FnMut(EventKind, i64)) {
    push(EventKind::View, t);
    if rng.next_f64() < sigmoid(odds.cart.0 + odds.cart.1 * a) {
        push(EventKind::AddToCart, t + 20_000_000);
        if rng.next_f64() < 0.02 {
            push(EventKind::RemoveFromCart, t + 40_000_000);
        } else if rng.next_f64() < sigmoid(odds.buy.0 + odds.buy.1 * a) {
            push(EventKind::Purchase, t + 60_000_000);
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Cumulative weights of a Zipf law with exponent `s`, over a random order of the n entities
/// (so the popular ones are not simply the first ids).
fn power_law_cdf(n: usize, s: f64, rng: &mut Rng) -> Vec<f64> {
    let mut ranks: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut ranks);
    let mut cdf = Vec::with_capacity(n);
    let mut acc = 0.0;
    for &r in &ranks {
        acc += 1.0 / ((r + 1) as f64).powf(s);
        cdf.push(acc);
    }
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

/// The shop profile's user activity: each user's rate of visits Pareto-distributed with this
/// tail index (a long tail of one-visit users, a few users with hundreds of visits, none with a
/// tenth of the shop's traffic as a Zipf law over ranks gives its first user).
const SHOP_ACTIVITY: f64 = 1.6;

/// Cumulative weights of n entities whose weights are Pareto(`alpha`) draws.
fn pareto_cdf(n: usize, alpha: f64, rng: &mut Rng) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (0..n)
        .map(|_| {
            acc += (1.0 - rng.next_f64()).powf(-1.0 / alpha);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn sample(cdf: &[f64], rng: &mut Rng) -> u32 {
    let x = rng.next_f64();
    cdf.partition_point(|&c| c <= x).min(cdf.len() - 1) as u32
}

fn to_parquet(events: &[Event], row_group_size: usize) -> Result<Bytes> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("product_id", DataType::Int64, false),
        Field::new("event_type", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| FIRST_USER_ID + e.user as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| FIRST_PRODUCT_ID + e.item as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| e.kind.name()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.micros))
                .with_timezone("UTC"),
        ),
    ];
    let failed =
        |e: &dyn std::fmt::Display| Error::runtime(format!("cannot write generated Parquet: {e}"));
    let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| failed(&e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(row_group_size))
        .build();
    let mut buf = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props)).map_err(|e| failed(&e))?;
    writer.write(&batch).map_err(|e| failed(&e))?;
    writer.close().map_err(|e| failed(&e))?;
    Ok(Bytes::from(buf))
}

fn to_csv(events: &[Event]) -> Bytes {
    let mut s = String::with_capacity(events.len() * 48 + 64);
    s.push_str("user_id,product_id,event_type,timestamp\n");
    for e in events {
        let _ = writeln!(
            s,
            "{},{},{},{}",
            FIRST_USER_ID + e.user as i64,
            FIRST_PRODUCT_ID + e.item as i64,
            e.kind.name(),
            format_utc(e.micros)
        );
    }
    Bytes::from(s)
}

/// `2026-11-01 00:00:00 UTC`, the way REES46 writes its times.
fn format_utc(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> GenerateArgs {
        GenerateArgs {
            out: String::new(),
            users: 500,
            items: 200,
            events: 20_000,
            files: 3,
            row_group_size: 1000,
            latent: 4,
            taste: 0.0,
            seed: 7,
            format: OutFormat::Parquet,
            overwrite: false,
            profile: Profile::Demo,
            days: None,
        }
    }

    #[test]
    fn files_are_deterministic_and_sum_to_the_event_count() {
        let a = args();
        let w = World::new(&a);
        let total: usize = (0..a.files).map(|f| w.file_events(&a, f).len()).sum();
        assert_eq!(total, a.events);
        assert_eq!(w.file_events(&a, 1), World::new(&a).file_events(&a, 1));
        assert_ne!(w.file_events(&a, 0), w.file_events(&a, 1));
    }

    #[test]
    fn funnel_follows_affinity_and_popularity_is_skewed() {
        let a = GenerateArgs {
            events: 200_000,
            files: 1,
            ..args()
        };
        let w = World::new(&a);
        let events = w.file_events(&a, 0);
        let mut item_views = vec![0usize; a.items];
        let (mut cart_aff, mut carts, mut view_aff, mut views) = (0.0, 0, 0.0, 0);
        for e in &events {
            match e.kind {
                EventKind::View => {
                    item_views[e.item as usize] += 1;
                    view_aff += w.affinity(e.user, e.item) as f64;
                    views += 1;
                }
                EventKind::AddToCart => {
                    cart_aff += w.affinity(e.user, e.item) as f64;
                    carts += 1;
                }
                _ => {}
            }
        }
        // Carted pairs have clearly higher affinity than viewed ones.
        assert!(cart_aff / carts as f64 > view_aff / views as f64 + 0.5);
        item_views.sort_unstable_by(|a, b| b.cmp(a));
        let top_decile: usize = item_views[..a.items / 10].iter().sum();
        assert!(
            top_decile as f64 > 0.4 * views as f64,
            "popularity is skewed"
        );
        assert!(events.iter().any(|e| e.kind == EventKind::RemoveFromCart));
        assert!(events
            .windows(2)
            .all(|p| p[0].micros <= p[1].micros + 60_000_000));
    }

    #[test]
    fn taste_steers_views_toward_liked_items_and_keeps_popularity_skewed() {
        let a = GenerateArgs {
            events: 100_000,
            files: 1,
            ..args()
        };
        let views = |taste: f64| {
            let a = GenerateArgs { taste, ..a.clone() };
            let w = World::new(&a);
            let viewed: Vec<(u32, u32)> = w
                .file_events(&a, 0)
                .iter()
                .filter(|e| e.kind == EventKind::View)
                .map(|e| (e.user, e.item))
                .collect();
            let affinity = viewed
                .iter()
                .map(|&(u, i)| w.affinity(u, i) as f64)
                .sum::<f64>()
                / viewed.len() as f64;
            let mut per_item = vec![0usize; a.items];
            viewed.iter().for_each(|&(_, i)| per_item[i as usize] += 1);
            per_item.sort_unstable_by(|a, b| b.cmp(a));
            let top_decile = per_item[..a.items / 10].iter().sum::<usize>() as f64;
            (affinity, top_decile / viewed.len() as f64)
        };
        let (none, none_top) = views(0.0);
        let (half, _) = views(0.5);
        let (all, all_top) = views(1.0);
        assert!(none.abs() < 0.1, "{none}");
        assert!(half > none + 0.2 && all > half + 0.2, "{none} {half} {all}");
        assert!(none_top > 0.4 && all_top > 0.4, "{none_top} {all_top}");
    }

    #[test]
    fn shop_visits_fill_each_files_stretch_of_its_day_in_time_order() {
        let a = GenerateArgs {
            profile: Profile::Shop,
            days: Some(2),
            files: 3,
            events: 30_000,
            taste: 1.0,
            ..args()
        };
        let w = World::new(&a);
        let all: Vec<Vec<Event>> = (0..3).map(|f| w.file_events(&a, f)).collect();
        assert_eq!(all.iter().map(Vec::len).sum::<usize>(), a.events);
        assert_eq!(all[1], World::new(&a).file_events(&a, 1), "deterministic");
        // Files 0 and 1 split day 0 in halves; file 2 is day 1 (3 x d / 2 rounded up: 0, 2).
        let day = 24 * 3600 * 1_000_000i64;
        assert_eq!(day_span(&a, 0), (START_MICROS, day / 2));
        assert_eq!(day_span(&a, 1), (START_MICROS + day / 2, day / 2));
        assert_eq!(day_span(&a, 2), (START_MICROS + day, day));
        for (f, events) in all.iter().enumerate() {
            assert!(
                events.windows(2).all(|p| p[0].micros <= p[1].micros),
                "file {f}"
            );
            let (start, span) = day_span(&a, f);
            // A visit starts within the stretch; its later events may run a little past it.
            assert!(events
                .iter()
                .all(|e| e.micros >= start && e.micros < start + span + 3_600_000_000));
        }
        let events: Vec<&Event> = all.iter().flatten().collect();
        let views = events.iter().filter(|e| e.kind == EventKind::View).count();
        let share = views as f64 / events.len() as f64;
        assert!(
            (0.9..0.99).contains(&share),
            "views are {share} of the events"
        );
        // A long tail of users: most users drawn have few events, a few have many.
        let mut per_user = std::collections::HashMap::new();
        for e in &events {
            *per_user.entry(e.user).or_insert(0usize) += 1;
        }
        let mut counts: Vec<usize> = per_user.into_values().collect();
        counts.sort_unstable();
        let (tenth, median) = (counts[counts.len() / 10], counts[counts.len() / 2]);
        let most = *counts.last().unwrap();
        assert!(2 * tenth < median && most > 10 * median, "{counts:?}");
    }

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(START_MICROS), "2026-11-01 00:00:00 UTC");
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_utc(951_782_400_000_000 + 3_723_000_000),
            "2000-02-29 01:02:03 UTC"
        );
    }
}
