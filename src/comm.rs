//! The only code that calls MPI: the world communicator as a `Collective`, the node's shared
//! memory window, the panic hook that aborts the job, and the abort path. It knows nothing of
//! the model: what the ranks share and when is the callers' policy.

use std::ops::Range;

use mpi::collective::SystemOperation;
use mpi::datatype::{Equivalence, Partition, PartitionMut};
use mpi::ffi;
use mpi::raw::AsRaw;
use mpi::topology::{Color, Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::collective::{split_by_lengths, Collective, Op, SharedFloats};
use crate::error::{Error, Result};

/// The tag of `send_bytes` messages (the collectives do not use tags).
const MESSAGE_TAG: i32 = 0x7475;

/// A communicator of this job (the world, or a part `split` made).
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

    /// The host this rank runs on, as MPI names it.
    pub fn processor_name(&self) -> String {
        mpi::environment::processor_name().unwrap_or_else(|_| "unknown".into())
    }

    /// The MPI library's own name and version (its first line).
    pub fn library_version(&self) -> String {
        mpi::environment::library_version()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or("")
            .split(',')
            .next()
            .unwrap_or("")
            .trim()
            .to_string()
    }

    /// `values` combined over all ranks, in place: one reduction for every element type.
    fn all_reduce<T: Equivalence + Copy>(&self, values: &mut [T], op: Op) {
        let send = values.to_vec();
        let op = match op {
            Op::Sum => SystemOperation::sum(),
            Op::Min => SystemOperation::min(),
            Op::Max => SystemOperation::max(),
        };
        self.world.all_reduce_into(&send[..], values, op);
    }
}

impl Collective for Comm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn gather_codes(&self, mine: i32) -> Vec<i32> {
        let mut codes = vec![0i32; self.size];
        self.world.all_gather_into(&mine, &mut codes[..]);
        codes
    }

    fn reduce_f32(&self, values: &mut [f32], op: Op) {
        self.all_reduce(values, op)
    }

    fn reduce_f64(&self, values: &mut [f64], op: Op) {
        self.all_reduce(values, op)
    }

    fn reduce_u64(&self, values: &mut [u64], op: Op) {
        self.all_reduce(values, op)
    }

    fn sendrecv_f32(&self, send: &[f32], dest: usize, recv: &mut [f32], source: usize) {
        let dest = self.world.process_at_rank(dest as i32);
        let source = self.world.process_at_rank(source as i32);
        mpi::point_to_point::send_receive_into(send, &dest, recv, &source);
    }

    fn broadcast_bytes(&self, root: usize, bytes: Vec<u8>) -> Result<Vec<u8>> {
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

    fn allgather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut lens = vec![0u64; self.size];
        self.world
            .all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let (counts, displs) = counts_and_displs(&lens, "allgather")?;
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let mut all = receive_buffer(total);
        {
            let mut partition = PartitionMut::new(&mut all[..], counts, displs);
            self.world
                .all_gather_varcount_into(not_in_place(mine), &mut partition);
        }
        Ok(split_by_lengths(&all, &lens))
    }

    fn alltoall_flat(&self, send: &[u8], send_lens: &[u64]) -> Result<(Vec<u8>, Vec<u64>)> {
        assert_eq!(send_lens.len(), self.size);
        let mut recv_lens = vec![0u64; self.size];
        self.world.all_to_all_into(send_lens, &mut recv_lens[..]);
        let (send_counts, send_displs) = counts_and_displs(send_lens, "exchange")?;
        let (recv_counts, recv_displs) = counts_and_displs(&recv_lens, "exchange")?;
        let total = recv_lens.iter().map(|&l| l as usize).sum();
        let mut recv = receive_buffer(total);
        {
            let send_part = Partition::new(not_in_place(send), send_counts, send_displs);
            let mut recv_part = PartitionMut::new(&mut recv[..], recv_counts, recv_displs);
            self.world
                .all_to_all_varcount_into(&send_part, &mut recv_part);
        }
        recv.truncate(total);
        Ok((recv, recv_lens))
    }

    fn gather_flat(&self, root: usize, mine: &[u8]) -> Result<Option<(Vec<u8>, Vec<u64>)>> {
        let root_proc = self.world.process_at_rank(root as i32);
        let my_len = mine.len() as u64;
        if self.rank != root {
            root_proc.gather_into(&my_len);
            root_proc.gather_varcount_into(not_in_place(mine));
            return Ok(None);
        }
        let mut lens = vec![0u64; self.size];
        root_proc.gather_into_root(&my_len, &mut lens[..]);
        let (counts, displs) = counts_and_displs(&lens, "gather")?;
        let total = lens.iter().map(|&l| l as usize).sum();
        let mut all = receive_buffer(total);
        {
            let mut partition = PartitionMut::new(&mut all[..], counts, displs);
            root_proc.gather_varcount_into_root(not_in_place(mine), &mut partition);
        }
        all.truncate(total);
        Ok(Some((all, lens)))
    }

    fn barrier(&self) {
        self.world.barrier();
    }

    fn split(&self, color: usize) -> Box<dyn Collective> {
        let color = Color::with_value(i32::try_from(color).expect("a color per group of ranks"));
        let part = self
            .world
            .split_by_color(color)
            .expect("every rank passes a color");
        Box::new(Comm::new(part))
    }

    fn send_bytes(&self, dest: usize, bytes: &[u8]) {
        self.world
            .process_at_rank(dest as i32)
            .send_with_tag(bytes, MESSAGE_TAG);
    }

    fn try_receive_bytes(&self) -> Option<(usize, Vec<u8>)> {
        let (message, status) = self
            .world
            .any_process()
            .immediate_matched_probe_with_tag(MESSAGE_TAG)?;
        let source = status.source_rank() as usize;
        let (bytes, _) = (message, status).matched_receive_vec::<u8>();
        Some((source, bytes))
    }

    fn wait_for_all(&self) {
        let mut request = self.world.immediate_barrier();
        loop {
            match request.test() {
                Ok(_) => return,
                Err(pending) => request = pending,
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn node_floats(&self, init: &[f32], wanted: bool) -> Option<Box<dyn SharedFloats>> {
        let window = NodeFloats::allocate(self, init, wanted)?;
        Some(Box::new(window))
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

/// An empty send buffer with a real address. An empty slice's pointer is dangling: for bytes it
/// is 1, which is how Open MPI spells `MPI_IN_PLACE`, so a rank with nothing to send would take
/// part in another algorithm than the others and the collective would hang (found by a
/// `recommend` run where one rank had no seen items to route).
fn not_in_place(send: &[u8]) -> &[u8] {
    static NOTHING: [u8; 1] = [0];
    match send.is_empty() {
        true => &NOTHING[..0],
        false => send,
    }
}

/// A receive buffer of `len` bytes plus one: an empty Vec's dangling pointer can equal an empty
/// send buffer's, and MPI rejects a receive buffer that aliases the send buffer.
fn receive_buffer(len: usize) -> Vec<u8> {
    vec![0u8; len + 1]
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
            ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 1);
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

/// Floats in an MPI shared-memory window that every rank of the job maps. Dropping it frees
/// the window: a collective call, so every rank drops it at the same point.
pub struct NodeFloats {
    win: ffi::MPI_Win,
    node: SimpleCommunicator,
    floats: *mut f32,
    len: usize,
}

impl NodeFloats {
    /// `init` in a window on the node, if every rank is on one node and `wanted` it, and the
    /// window fits (see `window_room`) and MPI maps it; `None` on every rank alike otherwise.
    fn allocate(comm: &Comm, init: &[f32], wanted: bool) -> Option<NodeFloats> {
        let node = comm.world.split_shared(comm.rank as i32);
        let leader = node.rank() == 0;
        // Rank 0 of the node holds the whole window, one cache line more so the floats can
        // start on a line: the segment is mapped at a page boundary in every process, so the
        // offset that aligns it is the same everywhere.
        let bytes = init.len() * 4 + 64;
        let one_node = comm.size > 1 && wanted && node.size() as usize == comm.size;
        if !all_ranks(comm, one_node) {
            return None;
        }
        // Open MPI 4.1 leaves the other ranks waiting inside MPI_Win_allocate_shared when the
        // leader's file does not fit: check the room first (containers' /dev/shm is often
        // 64 MB), and every rank hears of it before anyone allocates.
        let room = if leader {
            window_room(bytes, node.size() as usize)
        } else {
            Ok(())
        };
        if let Err(why) = &room {
            log::warn!("{why}: the ranks pass the item rows as messages instead");
        }
        if !all_ranks(comm, room.is_ok()) {
            return None;
        }
        let mapped = map_window(&node, if leader { bytes } else { 0 }, bytes);
        if !all_ranks(comm, mapped.is_some()) {
            // Windows some ranks got stay mapped until the end: freeing them is collective.
            if leader || mapped.is_none() {
                log::warn!(
                    "MPI could not map a shared-memory window of {} MB for the item rows: the ranks pass them as messages instead",
                    bytes >> 20
                );
            }
            return None;
        }
        let (win, base) = mapped?;
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
        let shared = NodeFloats {
            win,
            node,
            floats,
            len: init.len(),
        };
        shared.sync();
        Some(shared)
    }
}

/// Whether `ok` holds on every rank.
fn all_ranks(comm: &Comm, ok: bool) -> bool {
    let mut all = [u64::from(ok)];
    comm.reduce_u64(&mut all, Op::Min);
    all[0] == 1
}

/// A shared-memory window with `own_bytes` on this rank (0 on all but the node's leader), and
/// the leader's memory as this process maps it (its `window` bytes hold the floats and a cache
/// line to align them on); `None` if MPI fails to make or query it.
fn map_window(
    node: &SimpleCommunicator,
    own_bytes: usize,
    window: usize,
) -> Option<(ffi::MPI_Win, *mut f32)> {
    // SAFETY: plain MPI calls on a valid communicator; MPI writes `win` before it is read
    // (only after a successful allocation). ERRORS_RETURN on the node communicator makes a
    // failed allocation return a code instead of ending the job.
    let win = unsafe {
        ffi::MPI_Comm_set_errhandler(node.as_raw(), ffi::RSMPI_ERRORS_RETURN);
        let mut win = std::mem::MaybeUninit::<ffi::MPI_Win>::uninit();
        let mut mine: *mut f32 = std::ptr::null_mut();
        let rc = ffi::MPI_Win_allocate_shared(
            own_bytes as ffi::MPI_Aint,
            1,
            ffi::RSMPI_INFO_NULL,
            node.as_raw(),
            &mut mine as *mut *mut f32 as *mut std::ffi::c_void,
            win.as_mut_ptr(),
        );
        if rc != ffi::MPI_SUCCESS as i32 {
            return None;
        }
        win.assume_init()
    };
    let (mut size, mut unit): (ffi::MPI_Aint, std::ffi::c_int) = (0, 0);
    let mut base: *mut f32 = std::ptr::null_mut();
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
    let usable =
        rc == ffi::MPI_SUCCESS as i32 && size as usize >= window && base.align_offset(64) < 16;
    usable.then_some((win, base))
}

/// Whether a shared-memory window of `bytes` fits where Open MPI puts its file
/// (`osc_sm_backing_directory`, /dev/shm by default), with a tenth to spare and 8 MB for each
/// of the node's `ranks`: Open MPI's own segments there (4 MB a rank) fill as they are used.
fn window_room(bytes: usize, ranks: usize) -> std::result::Result<(), String> {
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

impl SharedFloats for NodeFloats {
    fn len(&self) -> usize {
        self.len
    }

    /// # Safety
    /// As `SharedFloats::part_mut` says.
    unsafe fn part_mut(&mut self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: inside the window (checked above), which holds `len` initialised floats
        // while `self` lives; the caller keeps every other rank off `range`, and `&mut self`
        // keeps this process's other references out.
        unsafe { std::slice::from_raw_parts_mut(self.floats.add(range.start), range.len()) }
    }

    /// # Safety
    /// As `SharedFloats::all` says.
    unsafe fn all(&self) -> &[f32] {
        // SAFETY: the window holds `len` initialised floats while `self` lives; the caller
        // keeps every rank from writing while the slice lives.
        unsafe { std::slice::from_raw_parts(self.floats, self.len) }
    }

    fn sync(&self) {
        // SAFETY: the window is valid and locked (`allocate`). The syncs on both sides of the
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
        // SAFETY: the window is valid and locked by `allocate`; every rank drops it together.
        unsafe {
            ffi::MPI_Win_unlock_all(self.win);
            ffi::MPI_Win_free(&mut self.win);
        }
    }
}
