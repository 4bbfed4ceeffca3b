//! `funksvd verify`: check the cluster the way training will use it, under the same launcher.
//! Every rank reports its host, cores and memory; the collectives training uses are checked
//! with known values, and timed (figures, not checks: what is fast enough depends on the
//! model); storage is checked from every rank. Exit 0 only if every check passes.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cli::VerifyArgs;
use crate::collective::{Collective, CollectiveExt, Op};
use crate::comm::Comm;
use crate::error::{Error, Result};
use crate::exchange;
use crate::features::LocalRatings;
use crate::ingest;
use crate::input::Input;
use crate::mf::params::padded_width;
use crate::store::Location;
use crate::train::item_rows::{exchanges_per_epoch, sharing_wanted};

/// What one rank reports about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RankInfo {
    pub rank: usize,
    pub host: String,
    pub pid: u32,
    pub cores: usize,
    pub memory_total_mb: u64,
    pub memory_available_mb: u64,
    /// The cgroup memory limit (a container's or a Slurm job's), if there is one.
    pub memory_limit_mb: Option<u64>,
    pub mpi_library: String,
}

/// One check and its verdict.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One measurement: reported, not judged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub detail: String,
}

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    ranks: usize,
    hosts: BTreeMap<String, usize>,
    rank_info: &'a [RankInfo],
    checks: &'a [Check],
    figures: &'a [Figure],
}

pub fn run(comm: &Comm, args: &VerifyArgs) -> Result<()> {
    comm.agree(args.check())?;
    let mut checks = Vec::new();
    let infos = gather_infos(comm)?;
    checks.push(collectives_check(comm)?);
    checks.push(alltoall_check(comm)?);
    let mut items = (args.items, "the --items default".to_string());
    if let Some(data) = &args.data {
        let (check, found) = data_check(comm, data)?;
        checks.push(check);
        if let Some(n) = found {
            items = (n.max(1), format!("the items of {data}"));
        }
    }
    // As training keeps them: padded rows.
    let floats = items.0 * padded_width(args.factors);
    let figures = timings(comm, args.factors, items);
    // Ranks per host (every rank has every rank's info).
    let mut hosts: BTreeMap<String, usize> = BTreeMap::new();
    for info in &infos {
        *hosts.entry(info.host.clone()).or_default() += 1;
    }
    checks.push(shared_rows_check(comm, floats, hosts.len()));
    if let Some(model) = &args.model {
        checks.push(model_check(comm, model)?);
    }

    let all_ok = checks.iter().all(|c| c.ok);
    if comm.is_root() {
        if args.json {
            let report = Report {
                ok: all_ok,
                ranks: comm.size(),
                hosts,
                rank_info: &infos,
                checks: &checks,
                figures: &figures,
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            print!(
                "{}",
                render_table(&infos, &hosts, &checks, &figures, all_ok)
            );
        }
    }
    if all_ok {
        Ok(())
    } else {
        // Every rank knows the verdict (the checks were agreed); rank 0 printed why.
        let failed: Vec<&str> = checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        Err(Error::runtime(format!(
            "verify failed: {}",
            failed.join(", ")
        )))
    }
}

/// The allreduce latency, and one epoch's item block exchanges at the model's size (`items`:
/// how many, and where that number comes from) when passed round the ring.
fn timings(comm: &Comm, factors: usize, (items, source): (usize, String)) -> Vec<Figure> {
    let width = padded_width(factors);
    let floats = items * width;
    let mb = floats as f64 * 4.0 / 1e6;
    vec![
        Figure {
            name: "allreduce latency".into(),
            value: time_allreduce(comm, 1, 200) * 1e6,
            unit: "us".into(),
            detail: "one allreduce of 1 float, the slowest rank's mean of 200".into(),
        },
        Figure {
            name: "item block exchange".into(),
            value: time_epoch_exchange(comm, floats, 10) * 1e3,
            unit: "ms".into(),
            detail: format!(
                "one epoch's exchanges of {mb:.1} MB of item rows when passed round the ring ({items} items x {width} floats, from {source}: {} block hand-overs)",
                exchanges_per_epoch(comm.size()),
            ),
        },
    ]
}

fn gather_infos(comm: &Comm) -> Result<Vec<RankInfo>> {
    let (total, available) = meminfo();
    let mine = RankInfo {
        rank: comm.rank(),
        host: comm.processor_name(),
        pid: std::process::id(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_total_mb: total / 1024,
        memory_available_mb: available / 1024,
        memory_limit_mb: cgroup_memory_limit().map(|b| b >> 20),
        mpi_library: comm.library_version(),
    };
    let bytes = serde_json::to_vec(&mine).map_err(|e| Error::runtime(e.to_string()))?;
    comm.allgather_bytes(&bytes)?
        .iter()
        .map(|b| serde_json::from_slice(b).map_err(|e| Error::runtime(format!("rank info: {e}"))))
        .collect()
}

/// MemTotal and MemAvailable in KiB.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|p| std::fs::read_to_string(p).ok())
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .find(|&v| v < (1 << 60))
}

/// Sums of known values in every type training reduces: f32 (items), f64 (metrics), u64.
fn collectives_check(comm: &Comm) -> Result<Check> {
    let n = comm.size();
    let r = comm.rank();
    let len = 1000;
    let send: Vec<f32> = (0..len).map(|i| (r + 1) as f32 * (i % 7) as f32).collect();
    let mut recv = vec![0.0f32; len];
    recv.copy_from_slice(&send);
    comm.reduce_f32(&mut recv, Op::Sum);
    let ranks_sum = (n * (n + 1) / 2) as f32;
    let f32_ok = recv
        .iter()
        .enumerate()
        .all(|(i, &v)| v == ranks_sum * (i % 7) as f32);
    let mut f64s = [r as f64 + 0.5];
    comm.reduce_f64(&mut f64s, Op::Sum);
    let f64_ok = f64s[0] == (n * (n - 1) / 2) as f64 + 0.5 * n as f64;
    let mut u64s = [1u64 << 40, r as u64];
    comm.reduce_u64(&mut u64s, Op::Sum);
    let u64_ok = u64s == [(n as u64) << 40, (n * (n - 1) / 2) as u64];
    let ok = f32_ok && f64_ok && u64_ok;
    Ok(Check {
        name: "allreduce correctness".into(),
        ok,
        detail: if ok {
            format!("sums of known f32, f64 and u64 vectors over {n} ranks are exact")
        } else {
            format!(
                "wrong sums: f32 {f32_ok}, f64 {f64_ok}, u64 {u64_ok} (a broken MPI or network)"
            )
        },
    })
}

/// The exchange's all-to-all and the vocabulary's allgather, with known payloads.
fn alltoall_check(comm: &Comm) -> Result<Check> {
    let n = comm.size();
    let r = comm.rank();
    let outgoing: Vec<Vec<u8>> = (0..n).map(|to| format!("{r}->{to}").into_bytes()).collect();
    let incoming = comm.alltoall_bytes(&outgoing)?;
    let a2a_ok = incoming
        .iter()
        .enumerate()
        .all(|(from, b)| b == format!("{from}->{r}").as_bytes());
    let gathered = comm.allgather_bytes(format!("rank{r}").as_bytes())?;
    let ag_ok = gathered
        .iter()
        .enumerate()
        .all(|(i, b)| b == format!("rank{i}").as_bytes());
    let mut oks = [(a2a_ok && ag_ok) as u64];
    comm.reduce_u64(&mut oks, Op::Sum);
    let ok = oks[0] == n as u64;
    Ok(Check {
        name: "alltoall and allgather".into(),
        ok,
        detail: if ok {
            format!("every rank got every other rank's message ({n} x {n})")
        } else {
            format!("{} of {n} ranks got wrong messages", n as u64 - oks[0])
        },
    })
}

/// Mean seconds of one allreduce of `floats` f32 over `repeats` runs (after one warm-up).
fn time_allreduce(comm: &Comm, floats: usize, repeats: usize) -> f64 {
    let mut values = vec![1.0f32; floats];
    comm.reduce_f32(&mut values, Op::Sum);
    comm.barrier();
    let started = Instant::now();
    for _ in 0..repeats {
        comm.reduce_f32(&mut values, Op::Sum);
    }
    let mut t = [started.elapsed().as_secs_f64() / repeats as f64];
    comm.reduce_f64(&mut t, Op::Max);
    t[0]
}

/// Mean seconds of one epoch's exchanges as training does them for `floats` floats of item
/// rows: `exchanges_per_epoch` hand-overs of one rank's share around the ring (`repeats` runs
/// after one warm-up; the slowest rank's time).
fn time_epoch_exchange(comm: &Comm, floats: usize, repeats: usize) -> f64 {
    let ranks = comm.size();
    let share = floats.div_ceil(ranks);
    let send = vec![1.0f32; share];
    let mut recv = vec![0.0f32; share];
    let (down, up) = ((comm.rank() + ranks - 1) % ranks, (comm.rank() + 1) % ranks);
    let mut epoch = || {
        for _ in 0..exchanges_per_epoch(ranks) {
            comm.sendrecv_f32(&send, down, &mut recv, up);
        }
    };
    epoch();
    comm.barrier();
    let started = Instant::now();
    for _ in 0..repeats {
        epoch();
    }
    let mut t = [started.elapsed().as_secs_f64() / repeats as f64];
    comm.reduce_f64(&mut t, Op::Max);
    t[0]
}

/// Whether training will keep `floats` floats of item rows in memory the ranks share (all
/// ranks on one node, see `ItemRows::Shared`), and that each rank sees the others' writes
/// there after a sync.
fn shared_rows_check(comm: &Comm, floats: usize, hosts: usize) -> Check {
    let ranks = comm.size();
    let check = |ok, detail| Check {
        name: "shared item rows".into(),
        ok,
        detail,
    };
    if ranks < 2 {
        return check(true, "one rank: nothing to share".into());
    }
    let floats = floats.max(ranks);
    let wanted = sharing_wanted(comm.rank());
    let Some(mut window) = comm.node_floats(&vec![0.0; floats], wanted) else {
        let why = if hosts > 1 {
            format!("the ranks are on {hosts} hosts")
        } else {
            "FUNKSVD_SHARED_ROWS=0, or no room in shared memory: see rank 0's warning".into()
        };
        return check(
            true,
            format!("not used ({why}): training passes the item rows as messages"),
        );
    };
    let slot = |r: usize| r * (floats / ranks);
    let mine = slot(comm.rank());
    // SAFETY: each rank writes only its own slot, and reads only after the sync.
    unsafe { window.part_mut(mine..mine + 1)[0] = comm.rank() as f32 + 1.0 };
    window.sync();
    // SAFETY: every rank wrote before the sync and writes no more.
    let all = unsafe { window.all() };
    let seen = (0..ranks).all(|r| all[slot(r)] == r as f32 + 1.0);
    let mut all_seen = [u64::from(seen)];
    comm.reduce_u64(&mut all_seen, Op::Min);
    let mb = floats as f64 * 4.0 / 1e6;
    if all_seen[0] == 1 {
        check(
            true,
            format!("the {ranks} ranks map one window of {mb:.1} MB and see each other's writes: training keeps the item rows there, no copies"),
        )
    } else {
        check(
            false,
            format!("the {ranks} ranks map one window of {mb:.1} MB but do not all see each other's writes; FUNKSVD_SHARED_ROWS=0 makes training pass the item rows as messages"),
        )
    }
}

/// Every rank lists the dataset and reads a byte of it; then the item count for the bandwidth
/// check, from each rank's share of the item column.
fn data_check(comm: &Comm, data: &str) -> Result<(Check, Option<usize>)> {
    let mine: Result<usize> = (|| {
        let loc = Location::parse(data, "--data")?;
        let files = loc.blocking().list_files()?;
        let first = files
            .first()
            .ok_or_else(|| Error::usage(format!("--data {data}: no data files there")))?;
        if first.size > 0 {
            loc.blocking().get_range(&first.key, 0..1)?;
        }
        Ok(files.len())
    })();
    let mut status = [mine.is_ok() as u64];
    comm.reduce_u64(&mut status, Op::Sum);
    let reasons = comm.allgather_bytes(
        mine.as_ref()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
            .as_bytes(),
    )?;
    if status[0] != comm.size() as u64 {
        let why: Vec<String> = reasons
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(rank, r)| format!("rank {rank}: {}", String::from_utf8_lossy(r)))
            .collect();
        let check = Check {
            name: "dataset readable from every rank".into(),
            ok: false,
            detail: why.join("; "),
        };
        return Ok((check, None));
    }
    let files = mine.unwrap_or(0);
    // The item count, reading only the item column's share of each rank (default columns).
    let items = count_items(comm, data).ok();
    let check = Check {
        name: "dataset readable from every rank".into(),
        ok: true,
        detail: format!(
            "{data}: {files} files listed and read by all {} ranks",
            comm.size()
        ),
    };
    Ok((check, items))
}

fn count_items(comm: &Comm, data: &str) -> Result<usize> {
    let loc = Location::parse(data, "--data")?;
    // The default columns and events.
    let input = Input::default();
    let dataset = crate::pipeline::plan(comm, &loc, &input)?;
    let mut local = LocalRatings::new();
    let read = ingest::read_slice(
        &loc,
        &dataset,
        &dataset.slices[comm.rank()],
        input.rule(),
        &mut local,
    );
    comm.agree(read)?;
    Ok(exchange::agree_on_ids(comm, local.items.ids())?.len())
}

/// Rank 0 writes and deletes a probe object where the model will go.
fn model_check(comm: &Comm, model: &str) -> Result<Check> {
    let result: Result<String> = if comm.is_root() {
        (|| {
            let loc = Location::parse(model, "--model")?;
            let key = loc.child_key(&format!("_funksvd-verify-{}", std::process::id()));
            let io = loc.blocking();
            io.put(&key, bytes::Bytes::from_static(b"funksvd verify probe"))?;
            let back = io.get(&key)?;
            io.delete(&key)?;
            if &back[..] != b"funksvd verify probe" {
                return Err(Error::runtime("the probe object read back different bytes"));
            }
            Ok(format!(
                "{model}: rank 0 wrote, read back and deleted a probe object"
            ))
        })()
    } else {
        Ok(String::new())
    };
    let why = result
        .as_ref()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    let mut status = [result.is_ok() as u64];
    comm.reduce_u64(&mut status, Op::Sum);
    let ok = status[0] == comm.size() as u64;
    Ok(Check {
        name: "model location writable".into(),
        ok,
        detail: if ok { result.unwrap_or_default() } else { why },
    })
}

fn render_table(
    infos: &[RankInfo],
    hosts: &BTreeMap<String, usize>,
    checks: &[Check],
    figures: &[Figure],
    ok: bool,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "funksvd verify: {} ranks on {} hosts",
        infos.len(),
        hosts.len()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:>5}  {:<24} {:>8} {:>6} {:>10} {:>10} {:>10}  mpi",
        "rank", "host", "pid", "cores", "mem MB", "avail MB", "limit MB"
    );
    for i in infos {
        let limit = i
            .memory_limit_mb
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:>5}  {:<24} {:>8} {:>6} {:>10} {:>10} {:>10}  {}",
            i.rank,
            i.host,
            i.pid,
            i.cores,
            i.memory_total_mb,
            i.memory_available_mb,
            limit,
            i.mpi_library
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "ranks per host:");
    for (host, n) in hosts {
        let _ = writeln!(out, "  {host}: {n}");
    }
    let _ = writeln!(out);
    for c in checks {
        let _ = writeln!(
            out,
            "{:<8} {:<34} {}",
            if c.ok { "ok" } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "figures (measured, not judged):");
    for f in figures {
        let _ = writeln!(
            out,
            "  {:<34} {:>9.2} {:<3} {}",
            f.name, f.value, f.unit, f.detail
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{}",
        if ok {
            "all checks passed"
        } else {
            "SOME CHECKS FAILED"
        }
    );
    out
}
