//! `funksvd`: parse arguments, start MPI for the commands that run as ranks (every one but
//! `serve`), run the command, map errors to exit codes.

use std::io::Write;

use clap::Parser;
use funksvd::cli::{Cli, Command};
use funksvd::collective::Collective;
use funksvd::comm::{install_panic_hook, say, Comm};
use funksvd::error::Error;
use funksvd::watchdog;

fn main() {
    let code = run();
    // MPI, if it was started, is finalised by now (the universe was dropped inside `run`).
    std::process::exit(code);
}

fn run() -> i32 {
    funksvd::memory::tune_allocator();
    funksvd::mf::blas::one_thread();
    match Cli::try_parse() {
        Err(e) => {
            // Under a launcher every rank parsed the same arguments: rank 0 prints for them.
            if launcher_rank().unwrap_or(0) == 0 {
                let _ = e.print();
            }
            e.exit_code()
        }
        Ok(cli) => match &cli.command {
            Command::Serve(args) => serve(args),
            command => run_ranks(command, cli.stall_timeout.as_deref()),
        },
    }
}

/// `serve`: one process, no MPI.
fn serve(args: &funksvd::cli::ServeArgs) -> i32 {
    init_logging(0, 1);
    match funksvd::cmd::serve::run(args) {
        Ok(()) => 0,
        Err(e) => {
            say(&format!("funksvd: error: {e}\n"));
            e.exit_code()
        }
    }
}

/// Run a command as one rank of an MPI job (one rank alone without a launcher), its peers
/// watched for stalls (`watchdog`).
fn run_ranks(command: &Command, stall_timeout: Option<&str>) -> i32 {
    let Some(universe) = mpi::initialize() else {
        eprintln!("funksvd: error: MPI could not be initialised");
        return 1;
    };
    let comm = Comm::new(universe.world());
    install_panic_hook(comm.rank());
    init_logging(comm.rank(), comm.size());
    // Every rank checks the same setting the same way: an error is every rank's, at once.
    let watchdog = match watchdog::timeout(stall_timeout).and_then(|t| watchdog::start(&comm, t)) {
        Ok(watchdog) => watchdog,
        Err(e) if comm.is_root() => return report(&comm, &e),
        Err(e) => return e.exit_code(),
    };
    let result = match command {
        Command::Train(args) => funksvd::cmd::train::run(&comm, args),
        Command::Evaluate(args) => funksvd::cmd::evaluate::run(&comm, args),
        Command::Recommend(args) => funksvd::cmd::recommend::run(&comm, args),
        Command::Generate(args) => funksvd::cmd::generate::run(&comm, args),
        Command::Verify(args) => funksvd::cmd::verify::run(&comm, args),
        Command::Tune(args) => funksvd::cmd::tune::run(&comm, args),
        Command::Serve(_) => unreachable!("serve runs without MPI"),
    };
    let code = match result {
        Ok(()) => 0,
        Err(e) => report(&comm, &e),
    };
    let _ = std::io::stdout().flush();
    drop(comm);
    drop(universe);
    // After MPI's finalize, where the ranks wait for each other (rank 0 may still be saving).
    drop(watchdog);
    code
}

/// This process's rank as the launcher announces it, before MPI starts (Open MPI, PMIx, MPICH's
/// PMI, Slurm); `None` without a launcher.
fn launcher_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.parse().ok())
}

/// Print an error once: the failing rank prints its message, the others only their exit.
fn report(comm: &Comm, e: &Error) -> i32 {
    match e {
        Error::PeerFailed { rank, .. } => {
            log::debug!("rank {}: stopping because rank {rank} failed", comm.rank());
        }
        // Rank 0 has said what happened and how to go on.
        Error::Interrupted { .. } => {}
        _ if comm.size() > 1 => say(&format!("funksvd: error (rank {}): {e}\n", comm.rank())),
        _ => say(&format!("funksvd: error: {e}\n")),
    }
    e.exit_code()
}

/// Rank 0 speaks for the job at `info`; the other ranks only warn or fail (RUST_LOG overrides).
fn init_logging(rank: usize, size: usize) {
    let default = if rank == 0 { "info" } else { "warn" };
    let started = std::time::Instant::now();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(move |buf, record| {
            let who = if size > 1 {
                format!(" rank {rank}")
            } else {
                String::new()
            };
            let level = match record.level() {
                log::Level::Info => String::new(),
                l => format!(" {}", l.as_str().to_lowercase()),
            };
            writeln!(
                buf,
                "[funksvd{who} {:>7.2}s{level}] {}",
                started.elapsed().as_secs_f64(),
                record.args()
            )
        })
        // Above rank 0's progress bar while one is shown; stderr otherwise.
        .target(env_logger::Target::Pipe(Box::new(
            funksvd::progress::LogWriter,
        )))
        .init();
}
