//! The raw `bpf()` calls that aya 0.14 does not offer. This is the only module in prof that
//! makes `bpf()` syscalls itself.
//!
//! BPF_LINK_CREATE with a bpf_cookie attaches a BPF program to one perf event. aya 0.14
//! attaches perf_event programs without a cookie and keeps its own link call private. The
//! kernel side is the "bpf-perf-link" patch set (Linux 5.15): each link carries a u64 cookie
//! that the program reads with `bpf_get_attach_cookie()`, which is how one program tells the
//! events apart. The same call links programs to sampling events and to tracepoint events.
//!
//! Order of operations: open the perf event disabled, create the link, then enable the event.
//! Both the perf event fd and the link fd must stay open for the whole recording; closing
//! either detaches the program.
//!
//! BPF_MAP_LOOKUP_BATCH and BPF_MAP_LOOKUP_AND_DELETE_BATCH (Linux 5.6) read, and optionally
//! delete, thousands of hash-map entries per call; aya 0.14 reads a map one `get_next_key` and
//! one lookup per entry, and deletes one call per key. Draining a generation of the counts and
//! stack maps while a recording goes on is only cheap with them.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd`: create a BPF link.
#[doc(alias = "bpf_cmd")]
const BPF_LINK_CREATE: libc::c_int = 28;

/// `enum bpf_cmd`: read a batch of map entries.
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// `enum bpf_cmd`: read and delete a batch of map entries.
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_int = 25;

/// `enum bpf_attach_type`: attach to a perf event.
#[doc(alias = "bpf_attach_type")]
const BPF_PERF_EVENT: u32 = 41;

/// The `link_create` member of `union bpf_attr`, as far as the perf-event variant reaches.
/// The kernel zero-extends a shorter attr to its own size, so nothing after the cookie is
/// passed.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    /// `link_create.perf_event.bpf_cookie`.
    bpf_cookie: u64,
}

const _: () = assert!(mem::offset_of!(LinkCreateAttr, bpf_cookie) == 16);
const _: () = assert!(mem::size_of::<LinkCreateAttr>() == 24);

/// Links the program `prog` to the perf event `perf_event` with `cookie`.
/// The returned fd is the link; dropping it detaches the program.
pub fn link_create(prog: BorrowedFd<'_>, perf_event: RawFd, cookie: u64) -> io::Result<OwnedFd> {
    let attr = LinkCreateAttr {
        prog_fd: fd_u32(prog.as_raw_fd())?,
        target_fd: fd_u32(perf_event)?,
        attach_type: BPF_PERF_EVENT,
        flags: 0,
        bpf_cookie: cookie,
    };
    // SAFETY: `attr` is a fully initialised, correctly laid out prefix of `union bpf_attr` for
    // BPF_LINK_CREATE, it outlives the call, and the size passed is its exact size. The
    // kernel only reads from it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreateAttr,
            mem::size_of::<LinkCreateAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::other("bpf() returned a bad fd"))?;
    // SAFETY: on success BPF_LINK_CREATE returns a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `batch` member of `union bpf_attr`, used by the `BPF_MAP_*_BATCH` commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where to resume (a pointer to the previous call's `out_batch`); 0 starts at the
    /// beginning.
    in_batch: u64,
    /// Where the kernel writes the position to resume from (a bucket index, a u32, for hash
    /// maps).
    out_batch: u64,
    keys: u64,
    values: u64,
    /// In: room in `keys` and `values`, in entries. Out: entries written.
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const _: () = assert!(mem::offset_of!(BatchAttr, count) == 32);
const _: () = assert!(mem::size_of::<BatchAttr>() == 56);

/// Whether a batch read also deletes what it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// `BPF_MAP_LOOKUP_BATCH`.
    Read,
    /// `BPF_MAP_LOOKUP_AND_DELETE_BATCH`.
    ReadAndDelete,
}

/// Reads every entry of the hash map `map`, `chunk` entries per `bpf()` call, and hands each
/// batch's keys and values to `each`. With [`Batch::ReadAndDelete`] the entries are deleted as
/// they are read (bucket by bucket, atomically with the read, so an entry a program adds
/// meanwhile is either read or kept, never lost).
///
/// `K` and `V` must be the map's key and value types, of exactly its key and value sizes.
pub fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    map: BorrowedFd<'_>,
    batch: Batch,
    chunk: u32,
    mut each: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    let command = match batch {
        Batch::Read => BPF_MAP_LOOKUP_BATCH,
        Batch::ReadAndDelete => BPF_MAP_LOOKUP_AND_DELETE_BATCH,
    };
    let mut chunk = chunk.max(1);
    let mut keys: Vec<K> = Vec::with_capacity(chunk as usize);
    let mut values: Vec<V> = Vec::with_capacity(chunk as usize);
    // The resume token: a bucket index for hash maps. Sixteen bytes leave room to spare.
    let mut position = [0u64; 2];
    let mut first = true;
    loop {
        keys.clear();
        values.clear();
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: position.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd_u32(map.as_raw_fd())?,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a fully initialised `union bpf_attr` prefix for the batch
        // commands, of the size passed. The kernel writes at most `chunk` keys and values
        // into `keys` and `values`, whose capacities are at least `chunk` elements of the
        // map's key and value types (the caller's contract), and its resume token into
        // `position`, which is larger than the u32 a hash map writes. All of them outlive
        // the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                command,
                &mut attr as *mut BatchAttr,
                mem::size_of::<BatchAttr>() as libc::c_uint,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let count = (attr.count as usize).min(chunk as usize);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // ENOENT: the map has no more entries; the last batch may still hold some.
            None | Some(libc::ENOENT) => {}
            // One bucket holds more entries than the room given: retry it with more room
            // (the kernel wrote its position to resume from).
            Some(libc::ENOSPC) if count == 0 && chunk < u32::MAX / 2 => {
                chunk *= 2;
                keys.reserve(chunk as usize);
                values.reserve(chunk as usize);
                first = false;
                continue;
            }
            Some(_) => return Err(err.expect("an errno was read")),
        }
        // SAFETY: the kernel filled the first `count` entries of both buffers (it reports
        // the number in `attr.count`, never more than the room given), and `K` and `V` are
        // plain data, valid for any bytes.
        unsafe {
            keys.set_len(count);
            values.set_len(count);
        }
        each(&keys, &values);
        if err.is_some() {
            return Ok(());
        }
        first = false;
    }
}

fn fd_u32(fd: RawFd) -> io::Result<u32> {
    u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}
