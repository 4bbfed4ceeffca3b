//! The only code that calls MPI: rank and size, the collectives the pipeline needs, failure
//! agreement and the abort path. Everything else works on plain Rust data.

use mpi::collective::SystemOperation;
use mpi::datatype::{Partition, PartitionMut};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::error::{Error, Result};

/// The world communicator of this job, with the operations the pipeline uses.
pub struct Comm {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
}

impl Comm {
    pub fn new(world: SimpleCommunicator) -> Self {
        let rank = world.rank() as usize;
        let size = world.size() as usize;
        Comm { world, rank, size }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Every rank learns whether any rank failed, before anyone enters the next collective.
    ///
    /// The lowest rank that failed on its own gets its error back (and prints it); every other rank
    /// gets `PeerFailed` naming that rank and its exit code. So an error that every rank
    /// hits alike (a bad flag, a missing column) is printed once, and an error of one rank is
    /// printed by that rank; every rank exits with the same code.
    pub fn agree<T>(&self, local: Result<T>) -> Result<T> {
        // > 0: this rank's own failure; < 0: it already stopped for another rank's failure.
        let my_code: i32 = match &local {
            Ok(_) => 0,
            Err(Error::PeerFailed { code, .. }) => -(*code).max(1),
            Err(e) => e.exit_code().max(1),
        };
        let mut codes = vec![0i32; self.size];
        self.world.all_gather_into(&my_code, &mut codes[..]);
        if let Some(origin) = codes.iter().position(|&c| c > 0) {
            return if origin == self.rank {
                local
            } else {
                Err(Error::PeerFailed {
                    rank: origin,
                    code: codes[origin],
                })
            };
        }
        match (local, codes.iter().position(|&c| c < 0)) {
            (Ok(_), Some(r)) => Err(Error::PeerFailed {
                rank: r,
                code: -codes[r],
            }),
            (local, _) => local,
        }
    }

    /// Sum `send` over all ranks into `recv` (same length on every rank).
    pub fn allreduce_sum_f32(&self, send: &[f32], recv: &mut [f32]) {
        debug_assert_eq!(send.len(), recv.len());
        self.world
            .all_reduce_into(send, recv, SystemOperation::sum());
    }

    /// Send `send` to rank `dest` while receiving `recv.len()` floats from rank `source`.
    pub fn sendrecv_f32(&self, send: &[f32], dest: usize, recv: &mut [f32], source: usize) {
        let dest = self.world.process_at_rank(dest as i32);
        let source = self.world.process_at_rank(source as i32);
        mpi::point_to_point::send_receive_into(send, &dest, recv, &source);
    }

    /// Sum small f64 vectors over all ranks, in place (copies; for metrics, not for hot loops).
    pub fn allreduce_sum_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    pub fn allreduce_sum_u64(&self, values: &mut [u64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }

    pub fn allreduce_max_u64(&self, values: &mut [u64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::max());
    }

    pub fn allreduce_min_u64(&self, values: &mut [u64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::min());
    }

    pub fn allreduce_min_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::min());
    }

    pub fn allreduce_max_f64(&self, values: &mut [f64]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::max());
    }

    /// Broadcast a byte buffer from `root`; other ranks pass anything (ignored) and get root's.
    pub fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Result<Vec<u8>> {
        let root_proc = self.world.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        root_proc.broadcast_into(&mut len);
        let mut buf = if self.rank == root {
            bytes
        } else {
            vec![0u8; len as usize]
        };
        // MPI counts are i32: send large buffers in pieces.
        for chunk in buf.chunks_mut(MAX_MESSAGE) {
            root_proc.broadcast_into(chunk);
        }
        Ok(buf)
    }

    /// Every rank contributes a byte buffer; every rank gets all of them, in rank order.
    pub fn allgather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut lens = vec![0u64; self.size];
        self.world
            .all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let (counts, displs) = counts_and_displs(&lens, "allgather")?;
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let mut all = receive_buffer(total);
        {
            let mut partition = PartitionMut::new(&mut all[..], counts, displs);
            self.world.all_gather_varcount_into(mine, &mut partition);
        }
        Ok(split_by_lengths(all, &lens))
    }

    /// Personalised exchange: `outgoing[r]` goes to rank r; returns what each rank sent to us.
    pub fn alltoall_bytes(&self, outgoing: &[Vec<u8>]) -> Result<Vec<Vec<u8>>> {
        assert_eq!(outgoing.len(), self.size);
        let send_lens: Vec<u64> = outgoing.iter().map(|b| b.len() as u64).collect();
        let (recv, recv_lens) = self.alltoall_flat(&outgoing.concat(), &send_lens)?;
        Ok(split_by_lengths(recv, &recv_lens))
    }

    /// Personalised exchange of one buffer holding every destination's message back to back
    /// (`send_lens[r]` bytes for rank r); returns what arrived, back to back in rank order, and
    /// the length from each rank. No copies besides MPI's.
    pub fn alltoall_flat(&self, send: &[u8], send_lens: &[u64]) -> Result<(Vec<u8>, Vec<u64>)> {
        assert_eq!(send_lens.len(), self.size);
        let mut recv_lens = vec![0u64; self.size];
        self.world.all_to_all_into(send_lens, &mut recv_lens[..]);
        let (send_counts, send_displs) = counts_and_displs(send_lens, "exchange")?;
        let (recv_counts, recv_displs) = counts_and_displs(&recv_lens, "exchange")?;
        let total = recv_lens.iter().map(|&l| l as usize).sum();
        let mut recv = receive_buffer(total);
        {
            let send_part = Partition::new(send, send_counts, send_displs);
            let mut recv_part = PartitionMut::new(&mut recv[..], recv_counts, recv_displs);
            self.world
                .all_to_all_varcount_into(&send_part, &mut recv_part);
        }
        recv.truncate(total);
        Ok((recv, recv_lens))
    }

    /// Gather byte buffers on `root`, back to back in rank order, with each rank's length;
    /// other ranks get `None`.
    pub fn gather_flat(&self, root: usize, mine: &[u8]) -> Result<Option<(Vec<u8>, Vec<u64>)>> {
        let root_proc = self.world.process_at_rank(root as i32);
        let my_len = mine.len() as u64;
        if self.rank == root {
            let mut lens = vec![0u64; self.size];
            root_proc.gather_into_root(&my_len, &mut lens[..]);
            let (counts, displs) = counts_and_displs(&lens, "gather")?;
            let total = lens.iter().map(|&l| l as usize).sum();
            let mut all = receive_buffer(total);
            {
                let mut partition = PartitionMut::new(&mut all[..], counts, displs);
                root_proc.gather_varcount_into_root(mine, &mut partition);
            }
            all.truncate(total);
            Ok(Some((all, lens)))
        } else {
            root_proc.gather_into(&my_len);
            root_proc.gather_varcount_into(mine);
            Ok(None)
        }
    }

    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// `init.len()` floats that every rank of the job maps and reads and writes in place,
    /// holding `init` (the same on every rank), if all ranks run on one node: an MPI
    /// shared-memory window, so ranks see each other's rows without copying them. `None` on
    /// every rank alike when the ranks span several nodes, when there is one rank, when
    /// `FUNKSVD_SHARED_ROWS=0` asks for messages, or when the window does not fit in shared
    /// memory or MPI cannot map it.
    pub fn node_floats(&self, init: &[f32]) -> Option<NodeFloats> {
        let wanted = self.size > 1
            && !matches!(
                std::env::var("FUNKSVD_SHARED_ROWS").as_deref(),
                Ok("0" | "off" | "false" | "no")
            );
        let node = self.world.split_shared(self.rank as i32);
        let leader = node.rank() == 0;
        // Rank 0 of the node holds the whole window, one cache line more so the rows can start
        // on a line: the segment is mapped at a page boundary in every process, so the offset
        // that aligns it is the same everywhere.
        let window = init.len() * 4 + 64;
        let bytes = if leader { window } else { 0 };
        let mut one_node = [u64::from(wanted && node.size() as usize == self.size)];
        self.allreduce_min_u64(&mut one_node);
        if one_node[0] == 0 {
            return None;
        }
        // Open MPI 4.1 leaves the other ranks waiting inside MPI_Win_allocate_shared when the
        // leader's file does not fit: check the room first (containers' /dev/shm is often
        // 64 MB), and every rank hears of it before anyone allocates.
        let room = if leader {
            window_room(bytes, node.size() as usize, self.rank)
        } else {
            Ok(())
        };
        if let Err(why) = &room {
            log::warn!("{why}: the ranks pass the item rows as messages instead");
        }
        let mut all_room = [u64::from(room.is_ok())];
        self.allreduce_min_u64(&mut all_room);
        if all_room[0] == 0 {
            return None;
        }
        let mut base: *mut f32 = std::ptr::null_mut();
        // SAFETY: plain MPI calls on a valid communicator; MPI writes `win` and `base` before
        // `win` is read (only after a successful allocation). ERRORS_RETURN on the node
        // communicator makes a failed allocation return a code instead of ending the job.
        let win = unsafe {
            ffi::MPI_Comm_set_errhandler(node.as_raw(), ffi::RSMPI_ERRORS_RETURN);
            let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
            let mut mine: *mut f32 = std::ptr::null_mut();
            let rc = ffi::MPI_Win_allocate_shared(
                bytes as ffi::MPI_Aint,
                1,
                ffi::RSMPI_INFO_NULL,
                node.as_raw(),
                &mut mine as *mut *mut f32 as *mut std::ffi::c_void,
                win.as_mut_ptr(),
            );
            (rc == ffi::MPI_SUCCESS as i32).then(|| win.assume_init())
        };
        let made = win.is_some_and(|win| {
            let (mut size, mut unit): (ffi::MPI_Aint, std::ffi::c_int) = (0, 0);
            // SAFETY: a valid window; MPI writes the three outputs.
            let rc = unsafe {
                ffi::MPI_Win_shared_query(
                    win,
                    0,
                    &mut size,
                    &mut unit,
                    &mut base as *mut *mut f32 as *mut std::ffi::c_void,
                )
            };
            rc == ffi::MPI_SUCCESS as i32 && size as usize >= window && base.align_offset(64) < 16
        });
        let mut all_made = [u64::from(made)];
        self.allreduce_min_u64(&mut all_made);
        if all_made[0] == 0 {
            // Windows some ranks got stay mapped until the end: freeing them is collective.
            if leader || !made {
                log::warn!(
                    "MPI could not map a shared-memory window of {} MB for the item rows: the ranks pass them as messages instead",
                    window >> 20
                );
            }
            return None;
        }
        let (Some(win), true) = (win, made) else {
            unreachable!("every rank made its window")
        };
        let floats = base.wrapping_add(base.align_offset(64));
        // SAFETY: the window is valid on every rank; lock_all opens the passive-target epoch
        // that `MPI_Win_sync` needs. The leader's window holds `init.len()` floats from the
        // aligned start (one line of slack), and no other rank touches it before the sync.
        unsafe {
            ffi::MPI_Win_lock_all(ffi::MPI_MODE_NOCHECK as std::ffi::c_int, win);
            if leader {
                std::ptr::copy_nonoverlapping(init.as_ptr(), floats, init.len());
            }
        }
        let shared = NodeFloats { win, node, floats };
        crate::funksvd::params::Mapped::sync(&shared);
        Some(shared)
    }

    /// End every rank of the job now. Only for failures that cannot be agreed on.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// The host this rank runs on, as MPI names it.
    pub fn processor_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }
}

/// Largest single MPI message we send (counts are C ints).
const MAX_MESSAGE: usize = 1 << 30;

fn counts_and_displs(lens: &[u64], what: &str) -> Result<(Vec<i32>, Vec<i32>)> {
    let total: u64 = lens.iter().sum();
    if total > i32::MAX as u64 {
        return Err(Error::runtime(format!(
            "{what}: {total} bytes in one collective exceeds MPI's 2 GiB limit; use more ranks"
        )));
    }
    let counts: Vec<i32> = lens.iter().map(|&l| l as i32).collect();
    let mut displs = Vec::with_capacity(counts.len());
    let mut at = 0i32;
    for &c in &counts {
        displs.push(at);
        at += c;
    }
    Ok((counts, displs))
}

/// A receive buffer of `len` bytes plus one: an empty Vec's dangling pointer can equal an empty
/// send buffer's, and MPI rejects a receive buffer that aliases the send buffer.
fn receive_buffer(len: usize) -> Vec<u8> {
    vec![0u8; len + 1]
}

fn split_by_lengths(all: Vec<u8>, lens: &[u64]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(lens.len());
    let mut at = 0usize;
    for &l in lens {
        out.push(all[at..at + l as usize].to_vec());
        at += l as usize;
    }
    out
}

/// Make a panic on one rank end the whole job instead of leaving the others in a collective:
/// print the message with the rank, then MPI_Abort on the world communicator.
pub fn install_panic_hook(rank: usize) {
    std::panic::set_hook(Box::new(move |info| {
        // RUST_BACKTRACE=1 adds where it happened, as Rust's own hook would.
        let trace = std::backtrace::Backtrace::capture();
        let trace = match trace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("{trace}\n"),
            _ => String::new(),
        };
        say(&format!(
            "funksvd: rank {rank}: internal error (a bug, please report it): {info}\n{trace}"
        ));
        // SAFETY: MPI is initialised (the hook is installed after init) and MPI_Abort may be
        // called from any state; it does not return.
        unsafe {
            mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1);
        }
        std::process::abort();
    }));
}

/// Write `text` to stderr in one call: `eprintln!` writes each piece of its format apart, and
/// mpirun can put another rank's output between them (or kill the rank between them).
pub fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Whether a shared-memory window of `bytes` fits where Open MPI puts its file
/// (`osc_sm_backing_directory`, /dev/shm by default), with a tenth to spare and 8 MB for each
/// of the node's `ranks`: Open MPI's own segments there (4 MB a rank) fill as they are used.
fn window_room(bytes: usize, ranks: usize, rank: usize) -> std::result::Result<(), String> {
    crate::fault::point("shared-rows", rank).map_err(|e| e.to_string())?;
    let dir = std::env::var("OMPI_MCA_osc_sm_backing_directory").unwrap_or("/dev/shm".into());
    let Ok(path) = std::ffi::CString::new(dir.clone()) else {
        return Ok(());
    };
    // SAFETY: statvfs writes the struct it is given; `path` is a valid C string.
    let free = unsafe {
        let mut fs: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut fs) != 0 {
            // No such directory: Open MPI then uses its session directory; let it try.
            return Ok(());
        }
        fs.f_bavail as u64 * fs.f_frsize as u64
    };
    let needed = bytes as u64 + bytes as u64 / 10 + ranks as u64 * (8 << 20);
    if free < needed {
        return Err(format!(
            "sharing the item rows ({} MB) needs {} MB free in {dir} (room for MPI's own segments included), and it has {} MB",
            bytes >> 20,
            needed >> 20,
            free >> 20
        ));
    }
    Ok(())
}

/// Floats in an MPI shared-memory window that every rank of the job maps (`Comm::node_floats`).
/// Dropping it frees the window: a collective call, so every rank drops it at the same point.
pub struct NodeFloats {
    win: ffi::MPI_Win,
    node: SimpleCommunicator,
    floats: *mut f32,
}

impl crate::funksvd::params::Mapped for NodeFloats {
    fn floats(&self) -> *mut f32 {
        self.floats
    }

    fn sync(&self) {
        // SAFETY: the window is valid and locked (`node_floats`). The syncs on both sides of the
        // barrier order this rank's memory accesses before and after it against everyone's.
        unsafe {
            ffi::MPI_Win_sync(self.win);
            self.node.barrier();
            ffi::MPI_Win_sync(self.win);
        }
    }
}

impl Drop for NodeFloats {
    fn drop(&mut self) {
        // SAFETY: the window is valid and locked by `node_floats`; every rank drops it together.
        unsafe {
            ffi::MPI_Win_unlock_all(self.win);
            ffi::MPI_Win_free(&mut self.win);
        }
    }
}
