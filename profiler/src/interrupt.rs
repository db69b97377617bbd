//! What a signal that ends prof at once must still do: remove the temporary files of outputs
//! being written, and say in one line what was lost.
//!
//! Outputs are written to a hidden temporary file that is renamed into place when complete
//! ([`crate::export::write_atomic`]). The temporary file deletes itself when dropped, but a
//! signal that ends the process runs no destructor, so every temporary file is also listed
//! here, where a signal handler can [`abandon`] them.
//!
//! In: paths from [`register`] and a message from [`set_message`]. Out: [`abandon`], which a
//! signal handler calls: it unlinks the registered files, writes the message to stderr and
//! exits. Everything `abandon` touches was prepared before, so it allocates nothing and
//! makes only async-signal-safe calls (`unlink`, `write`, `_exit`).

use std::ffi::{CStr, CString, c_char};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering::SeqCst};

/// How many temporary files can be listed at once; prof writes its outputs one at a time,
/// so a few are plenty. A file that finds no free slot is still removed on every exit path
/// but a signal.
const SLOTS: usize = 32;

/// The listed temporary files, as C strings made by [`CString::into_raw`]; null when free.
static TEMP_FILES: [AtomicPtr<c_char>; SLOTS] = [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS];

/// The line [`abandon`] prints, a C string made by [`CString::into_raw`]; null for none.
static MESSAGE: AtomicPtr<c_char> = AtomicPtr::new(ptr::null_mut());

/// Set once [`abandon`] has begun. From then on nothing it may read is freed: the process is
/// about to end, so a C string that would be freed is leaked instead.
static ABANDONING: AtomicBool = AtomicBool::new(false);

/// A listed temporary file; dropping it takes the file off the list (it does not delete it:
/// the owner renames or removes it).
#[derive(Debug)]
pub struct Listed {
    slot: Option<usize>,
}

/// Lists `path` for removal by [`abandon`], until the returned guard is dropped.
pub fn register(path: &Path) -> Listed {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return Listed { slot: None };
    };
    let raw = path.into_raw();
    for (index, slot) in TEMP_FILES.iter().enumerate() {
        if slot
            .compare_exchange(ptr::null_mut(), raw, SeqCst, SeqCst)
            .is_ok()
        {
            return Listed { slot: Some(index) };
        }
    }
    free(raw);
    Listed { slot: None }
}

impl Drop for Listed {
    fn drop(&mut self) {
        if let Some(index) = self.slot {
            free(TEMP_FILES[index].swap(ptr::null_mut(), SeqCst));
        }
    }
}

/// Sets the line [`abandon`] prints (without the newline), replacing the previous one.
pub fn set_message(line: &str) {
    let line = CString::new(format!("{line}\n").replace('\0', " ")).expect("no NUL left");
    free(MESSAGE.swap(line.into_raw(), SeqCst));
}

/// Frees a C string taken off a list, unless [`abandon`] may be reading it.
///
/// The list entry was swapped to null before this check, and `abandon` sets
/// [`ABANDONING`] before it reads the list, all in one sequentially consistent order: either
/// this load sees the flag (and leaks), or `abandon` reads the list after the swap and never
/// sees this pointer.
fn free(raw: *mut c_char) {
    if raw.is_null() || ABANDONING.load(SeqCst) {
        return;
    }
    // SAFETY: `raw` came from `CString::into_raw` in this module, was taken off its list by a
    // swap (so no one else frees it), and `abandon`, the only other reader, cannot be using it
    // (see above).
    drop(unsafe { CString::from_raw(raw) });
}

/// Removes every listed temporary file, prints the message set by [`set_message`] (if any)
/// to stderr, and ends the process with `code`, without running destructors or atexit
/// handlers. Async-signal-safe: call it from a signal handler.
pub fn abandon(code: i32) -> ! {
    ABANDONING.store(true, SeqCst);
    for slot in &TEMP_FILES {
        let path = slot.load(SeqCst);
        if !path.is_null() {
            // SAFETY: a non-null entry is a valid C string, and it is never freed once
            // ABANDONING is set (see `free`).
            let path = unsafe { CStr::from_ptr(path) };
            let _ = rustix::fs::unlink(path);
        }
    }
    let message = MESSAGE.load(SeqCst);
    if !message.is_null() {
        // SAFETY: as above, a valid C string that is never freed from now on.
        let bytes = unsafe { CStr::from_ptr(message) }.to_bytes();
        let _ = rustix::io::write(rustix::stdio::stderr(), bytes);
    }
    // SAFETY: _exit(2) is async-signal-safe and ends the process at once; skipping
    // destructors is the point.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed_path(listed: &Listed) -> Option<String> {
        let raw = TEMP_FILES[listed.slot?].load(SeqCst);
        if raw.is_null() {
            return None;
        }
        // SAFETY: the guard is alive, so its entry is a valid C string that is not freed.
        let path = unsafe { CStr::from_ptr(raw) };
        Some(path.to_string_lossy().into_owned())
    }

    /// A listed path is in its slot while its guard lives. A path with a NUL cannot be
    /// listed, which is not an error. The last message set is the one printed.
    #[test]
    fn listing_and_unlisting() {
        let listed = register(Path::new("/tmp/prof-listed-test"));
        assert!(listed.slot.is_some(), "a free slot");
        assert_eq!(
            listed_path(&listed).as_deref(),
            Some("/tmp/prof-listed-test")
        );
        drop(listed);
        let nul = std::ffi::OsStr::from_bytes(b"a\0b");
        assert!(register(Path::new(nul)).slot.is_none());
        set_message("one");
        set_message("two");
        // SAFETY: MESSAGE holds a valid C string that nothing frees while this test reads it
        // (no other test sets the message).
        let message = unsafe { CStr::from_ptr(MESSAGE.load(SeqCst)) };
        assert_eq!(message.to_bytes(), b"two\n");
    }
}
