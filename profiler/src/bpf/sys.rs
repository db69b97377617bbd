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

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `enum bpf_cmd`: create a BPF link.
#[doc(alias = "bpf_cmd")]
const BPF_LINK_CREATE: libc::c_int = 28;

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

fn fd_u32(fd: RawFd) -> io::Result<u32> {
    u32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))
}
