//! The stall watchdog: a job whose ranks span hosts must end when a host stops answering (a
//! partition, a frozen node), not wait in a collective for as long as TCP retries (481 s when
//! measured on a cut link, and without a word). MPI has no timeout of its own, so every rank
//! runs a thread beside its work that exchanges heartbeats with rank 0 over UDP, outside MPI:
//! rank 0 hears every rank and answers each; every rank hears rank 0. A rank that has not been
//! heard for `--stall-timeout` seconds is named, with its host, by the rank that misses it,
//! which then ends its process (exit code 1, no model published); `mpirun` ends the ranks it
//! can still reach, and the ranks cut off from rank 0 end themselves the same way. Where the
//! silent rank is on another host, the process first leaves mpirun its own time to notice the
//! host (see `stalled`): mpirun cannot end a job quickly once it has to tell a host it cannot
//! reach.
//!
//! The beats run in a thread of their own, so a long epoch or a slow save never looks like a
//! stall: only a process that stopped (or a host no packet reaches) does. A rank that never
//! reaches rank 0 within the timeout (a firewall that drops UDP between the hosts) is not
//! watched, with a warning: the watchdog must never end a healthy job.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::collective::Collective;
use crate::error::{Error, Result};

/// The stall timeout when the user gives none (`--stall-timeout`).
pub const DEFAULT_SECONDS: f64 = 60.0;

/// The stall timeout: `--stall-timeout` when given, else `FUNKSVD_STALL_TIMEOUT` (what a launch
/// file sets), else the default.
pub fn timeout(flag: Option<&str>) -> Result<Duration> {
    timeout_from(flag, std::env::var("FUNKSVD_STALL_TIMEOUT").ok())
}

fn timeout_from(flag: Option<&str>, env: Option<String>) -> Result<Duration> {
    let (name, text) = match (flag, env) {
        (Some(text), _) => ("--stall-timeout ".to_string(), text.to_string()),
        (None, Some(text)) => ("FUNKSVD_STALL_TIMEOUT=".to_string(), text),
        (None, None) => return Ok(Duration::from_secs_f64(DEFAULT_SECONDS)),
    };
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        _ => Err(Error::usage(format!(
            "{name}{text}: must be a number of seconds up to 86400 (0 turns the watch off)"
        ))),
    }
}

const MAGIC: &[u8; 8] = b"FSVDBEAT";
const BEAT: u8 = 0;
const ANSWER: u8 = 1;
const DONE: u8 = 2;

/// A running watchdog; dropping it stops the beats (after the job's last collective).
pub struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What every rank knows of the job's watch.
#[derive(Clone)]
struct Watch {
    rank: usize,
    hosts: Vec<String>,
    token: u64,
    timeout: Duration,
    period: Duration,
    /// How long a rank that misses a rank on another host leaves the launcher to end the job.
    launcher_grace: Duration,
}

/// Start the watch (collective: every rank calls it at the same point, before its work).
/// `None` on one rank or with a timeout of 0 (turned off).
pub fn start(comm: &dyn Collective, timeout: Duration) -> Result<Option<Watchdog>> {
    if comm.size() < 2 || timeout.is_zero() {
        return Ok(None);
    }
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .map_err(|e| Error::runtime(format!("stall watchdog: cannot open a UDP socket: {e}")))?;
    // Rank 0's token (telling this job's beats from any other's), port and addresses.
    let mut mine = Vec::new();
    if comm.is_root() {
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(0);
        mine.extend(token().to_le_bytes());
        mine.extend(port.to_le_bytes());
        for addr in local_addresses() {
            mine.extend(addr.octets());
        }
    }
    let root = comm.broadcast_bytes(0, mine)?;
    let hosts = comm.allgather_bytes(hostname().as_bytes())?;
    let watch = Watch {
        rank: comm.rank(),
        hosts: hosts
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect(),
        token: u64::from_le_bytes(root[..8].try_into().expect("8 bytes")),
        timeout,
        period: (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(2)),
        launcher_grace: launcher_grace(),
    };
    let port = u16::from_le_bytes(root[8..10].try_into().expect("2 bytes"));
    let targets: Vec<SocketAddr> = root[10..]
        .chunks_exact(4)
        .map(|a| SocketAddrV4::new(Ipv4Addr::new(a[0], a[1], a[2], a[3]), port).into())
        .collect();
    socket
        .set_read_timeout(Some(watch.period / 2))
        .map_err(|e| Error::runtime(format!("stall watchdog: {e}")))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("stall-watchdog".into())
        .spawn(move || match watch.rank {
            0 => watch_ranks(&socket, &watch, &flag),
            _ => watch_root(&socket, &watch, &targets, &flag),
        })
        .map_err(|e| Error::runtime(format!("stall watchdog: cannot start its thread: {e}")))?;
    Ok(Some(Watchdog {
        stop,
        thread: Some(thread),
    }))
}

/// Rank 0: hear every rank, answer each beat, end the job when one goes silent.
fn watch_ranks(socket: &UdpSocket, watch: &Watch, stop: &AtomicBool) {
    let n = watch.hosts.len();
    let started = Instant::now();
    // By rank: when last heard (None: not yet), and whether it is still watched.
    let mut heard: Vec<Option<Instant>> = vec![None; n];
    let mut watched = vec![true; n];
    watched[0] = false;
    let mut buf = [0u8; 64];
    let mut ending = Ending::default();
    while !stop.load(Ordering::Relaxed) {
        ending.check();
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            if let Some((rank, kind)) = parse(&buf[..len], watch.token, n) {
                heard[rank] = Some(Instant::now());
                match kind {
                    DONE => watched[rank] = false,
                    _ => {
                        let _ = socket.send_to(&packet(watch.token, 0, ANSWER), from);
                    }
                }
            }
        }
        for rank in 1..n {
            if !watched[rank] {
                continue;
            }
            match heard[rank] {
                Some(at) if at.elapsed() > watch.timeout => {
                    watched[rank] = false;
                    ending.stalled(watch, rank, at.elapsed());
                }
                None if started.elapsed() > watch.timeout => {
                    watched[rank] = false;
                    unreachable_warning(watch, rank);
                }
                _ => {}
            }
        }
    }
}

/// Every other rank: beat to rank 0 (to each of its addresses until one answers, then to the
/// one that did), end this process when rank 0 goes silent.
fn watch_root(socket: &UdpSocket, watch: &Watch, targets: &[SocketAddr], stop: &AtomicBool) {
    let started = Instant::now();
    let mut answered: Option<(SocketAddr, Instant)> = None;
    let mut next_beat = Instant::now();
    let mut buf = [0u8; 64];
    let beat = packet(watch.token, watch.rank, BEAT);
    let mut ending = Ending::default();
    while !stop.load(Ordering::Relaxed) {
        ending.check();
        if Instant::now() >= next_beat {
            match answered {
                Some((to, _)) => drop(socket.send_to(&beat, to)),
                None => targets
                    .iter()
                    .for_each(|&to| drop(socket.send_to(&beat, to))),
            }
            next_beat += watch.period;
        }
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            if let Some((0, ANSWER)) = parse(&buf[..len], watch.token, watch.hosts.len()) {
                answered = Some((from, Instant::now()));
            }
        }
        match answered {
            Some((_, at)) if at.elapsed() > watch.timeout && !ending.started() => {
                ending.stalled(watch, 0, at.elapsed())
            }
            None if started.elapsed() > watch.timeout => {
                unreachable_warning(watch, 0);
                return;
            }
            _ => {}
        }
    }
    // The job is over here: rank 0 stops watching this rank.
    if let Some((to, _)) = answered {
        let _ = socket.send_to(&packet(watch.token, watch.rank, DONE), to);
    }
}

/// When this process ends itself, once a rank it watches has gone silent. The watch goes on
/// meanwhile (rank 0 still answers the others, which must not take it for silent).
#[derive(Default)]
struct Ending {
    at: Option<Instant>,
}

impl Ending {
    fn started(&self) -> bool {
        self.at.is_some()
    }

    /// `rank` has not been heard for `silent`: say so, and end this process now or, where
    /// the silent rank is on another host, after the launcher's time. A host cut off: ending
    /// this process makes mpirun tear the job down, and its message to the cut host's daemon
    /// waits in TCP's retransmissions (about 15 minutes) before mpirun gives up; so the launcher
    /// is first left its own time to notice the host (`launcher_grace`), by which mpirun has
    /// ended the job and this process with it. Only a silent rank mpirun cannot notice (a
    /// frozen process) leaves this process to end itself.
    fn stalled(&mut self, watch: &Watch, rank: usize, silent: Duration) {
        if self.started() {
            return;
        }
        let grace = match watch.hosts[rank] != watch.hosts[watch.rank] {
            true => watch.launcher_grace,
            false => Duration::ZERO,
        };
        let then = match grace.is_zero() {
            true => String::new(),
            false => format!(
                "; the launcher ends the job when it notices the host (mpirun: oob_tcp_keepalive_*, {:.0} s), else this rank in {:.0} s",
                grace.saturating_sub(GRACE_MARGIN).as_secs_f64() / 2.0,
                grace.as_secs_f64()
            ),
        };
        let message = format!(
            "funksvd: error (rank {}): rank {rank} on host {} has not answered for {:.0} s (--stall-timeout {}): \
             its host is down, cut off or frozen; stopping the job (nothing is published; \
             the same command with --resume continues from the last checkpoint){then}\n",
            watch.rank,
            watch.hosts[rank],
            silent.as_secs_f64(),
            watch.timeout.as_secs_f64(),
        );
        // One write, so that mpirun does not put another rank's output inside the message.
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), message.as_bytes());
        self.at = Some(Instant::now() + grace);
        self.check();
    }

    /// End the process if its time has come.
    fn check(&self) {
        if self.at.is_some_and(|at| Instant::now() >= at) {
            // SAFETY: _exit ends the process at once; no destructor or atexit handler runs
            // (MPI's would wait for the peer that is gone).
            unsafe { libc::_exit(1) }
        }
    }
}

/// Beyond the launcher's own time to notice a silent host, before a rank ends itself.
const GRACE_MARGIN: Duration = Duration::from_secs(10);

/// How long a rank leaves mpirun (Open MPI's, which sets `OMPI_MCA_orte_hnp_uri` in its ranks)
/// to notice a host that stopped answering: twice its TCP keepalive on the connection to the
/// host's daemon, `oob_tcp_keepalive_time + intvl x probes` (Open MPI's defaults: 300 + 20 x 9),
/// plus a margin; measured, mpirun noticed at about the keepalive, and a rank that ends first
/// leaves it waiting on TCP's retransmissions instead. Other launchers (srun): zero.
fn launcher_grace() -> Duration {
    launcher_grace_from(|name| std::env::var(name).ok())
}

/// `launcher_grace` with the environment read through `env`.
fn launcher_grace_from(env: impl Fn(&str) -> Option<String>) -> Duration {
    if env("OMPI_MCA_orte_hnp_uri").is_none() {
        return Duration::ZERO;
    }
    let param = |name: &str, default: f64| {
        env(&format!("OMPI_MCA_oob_tcp_keepalive_{name}"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .unwrap_or(default)
    };
    let time = param("time", 300.0);
    if time <= 0.0 {
        // Keepalive off: mpirun never notices; nothing to wait for.
        return Duration::ZERO;
    }
    let keepalive = time + param("intvl", 20.0) * param("probes", 9.0);
    Duration::from_secs_f64((2.0 * keepalive).min(86_400.0)) + GRACE_MARGIN
}

fn unreachable_warning(watch: &Watch, rank: usize) {
    let (from, to) = match watch.rank {
        0 => (rank, 0),
        _ => (watch.rank, rank),
    };
    log::warn!(
        "stall watchdog: no heartbeat from rank {from} ({}) reached rank {to} ({}) over UDP in {:.0} s; \
         a host that stops answering will not be noticed for rank {from} (let UDP through between the hosts)",
        watch.hosts[from],
        watch.hosts[to],
        watch.timeout.as_secs_f64()
    );
}

fn packet(token: u64, rank: usize, kind: u8) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend(token.to_le_bytes());
    p.extend((rank as u32).to_le_bytes());
    p.push(kind);
    p
}

/// (rank, kind) of a packet of this job; `None` for anything else.
fn parse(p: &[u8], token: u64, ranks: usize) -> Option<(usize, u8)> {
    if p.len() != 21 || &p[..8] != MAGIC || p[8..16] != token.to_le_bytes() {
        return None;
    }
    let rank = u32::from_le_bytes(p[16..20].try_into().ok()?) as usize;
    (rank < ranks && p[20] <= DONE).then_some((rank, p[20]))
}

/// A number no other job shares: the time and this process's id.
fn token() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    crate::ids::mix64(nanos ^ ((std::process::id() as u64) << 32))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname terminates it or truncates.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match ok {
        true => String::from_utf8_lossy(&buf[..end]).into_owned(),
        false => "?".into(),
    }
}

/// This host's IPv4 addresses, loopback last (rank 0's, for the beats of every rank).
fn local_addresses() -> Vec<Ipv4Addr> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list freed below by freeifaddrs; each
    // entry's address is read only when it is an AF_INET sockaddr.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return vec![Ipv4Addr::LOCALHOST];
        }
        let mut at = list;
        while !at.is_null() {
            let entry = &*at;
            let up = entry.ifa_flags & libc::IFF_UP as u32 != 0;
            if up
                && !entry.ifa_addr.is_null()
                && (*entry.ifa_addr).sa_family as i32 == libc::AF_INET
            {
                let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                found.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
            at = entry.ifa_next;
        }
        libc::freeifaddrs(list);
    }
    found.sort_by_key(|a| a.is_loopback());
    found.dedup();
    if found.is_empty() {
        found.push(Ipv4Addr::LOCALHOST);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_of_another_job_or_malformed_are_ignored() {
        let p = packet(7, 3, BEAT);
        assert_eq!(parse(&p, 7, 4), Some((3, BEAT)));
        assert_eq!(parse(&p, 8, 4), None, "another job's token");
        assert_eq!(parse(&p, 7, 3), None, "a rank this job does not have");
        assert_eq!(parse(&p[..20], 7, 4), None);
        let mut odd = p.clone();
        odd[20] = 9;
        assert_eq!(parse(&odd, 7, 4), None);
    }

    #[test]
    fn the_timeout_comes_from_the_flag_then_the_environment_then_the_default() {
        let secs = |flag, env: Option<&str>| {
            timeout_from(flag, env.map(String::from)).map(|d| d.as_secs_f64())
        };
        assert_eq!(secs(Some("10"), Some("20")).unwrap(), 10.0);
        assert_eq!(secs(None, Some("20")).unwrap(), 20.0);
        assert_eq!(secs(None, None).unwrap(), DEFAULT_SECONDS);
        assert_eq!(secs(Some("0"), None).unwrap(), 0.0, "0 turns the watch off");
        let bad = secs(Some("soon"), None).unwrap_err().to_string();
        assert!(bad.starts_with("--stall-timeout soon: "), "{bad}");
        let bad = secs(None, Some("-1")).unwrap_err().to_string();
        assert!(bad.starts_with("FUNKSVD_STALL_TIMEOUT=-1: "), "{bad}");
        assert!(secs(Some("inf"), None).is_err());
    }

    #[test]
    fn mpirun_is_left_its_keepalive_time_and_other_launchers_none() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|p| p.0 == name).map(|p| p.1.to_string())
        };
        let mpirun: &[(&str, &str)] = &[("OMPI_MCA_orte_hnp_uri", "1.0;tcp://x")];
        assert_eq!(
            launcher_grace_from(env(mpirun)),
            Duration::from_secs(960) + GRACE_MARGIN
        );
        let tuned: &[(&str, &str)] = &[
            ("OMPI_MCA_orte_hnp_uri", "1.0;tcp://x"),
            ("OMPI_MCA_oob_tcp_keepalive_time", "10"),
            ("OMPI_MCA_oob_tcp_keepalive_intvl", "5"),
            ("OMPI_MCA_oob_tcp_keepalive_probes", "4"),
        ];
        assert_eq!(
            launcher_grace_from(env(tuned)),
            Duration::from_secs(60) + GRACE_MARGIN
        );
        let off: &[(&str, &str)] = &[
            ("OMPI_MCA_orte_hnp_uri", "1.0;tcp://x"),
            ("OMPI_MCA_oob_tcp_keepalive_time", "0"),
        ];
        assert_eq!(
            launcher_grace_from(env(off)),
            Duration::ZERO,
            "keepalive off"
        );
        assert_eq!(launcher_grace_from(env(&[])), Duration::ZERO, "srun");
    }

    #[test]
    fn this_host_has_an_address_and_loopback_comes_last() {
        let found = local_addresses();
        assert!(!found.is_empty());
        let first_loopback = found.iter().position(|a| a.is_loopback());
        if let Some(at) = first_loopback {
            assert!(found[at..].iter().all(|a| a.is_loopback()), "{found:?}");
        }
    }
}
