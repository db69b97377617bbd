//! The maps of the table-driven unwinder (`ebpf/unwind.h`), owned by whoever keeps the
//! tables current (see [`crate::unwind`]):
//!
//! - `unwind_rows`, an mmapable array: rows are written straight into its memory, so a file
//!   of 25,000 rows costs no syscall at all, not one per row;
//! - `unwind_files`: where each file slot's rows are;
//! - `unwind_procs`: each process's executable mappings.
//!
//! In: rows, file slots and process entries built in userspace. Out: the kernel's view of
//! them, which the sampling programs read.

use std::os::fd::AsFd;
use std::ptr::NonNull;

use aya::maps::{Array, HashMap, Map, MapData, MapError};

use super::abi::{UnwindFile, UnwindProc, UnwindRow};
use super::{BpfError, map_err};

/// How much the unwinder's maps hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnwindSizes {
    /// Rows of every file together (`--unwind-table-size`).
    pub rows: u32,
    /// Distinct files with a table at once.
    pub files: u32,
    /// Processes with mappings at once.
    pub processes: u32,
}

impl UnwindSizes {
    /// Kernel memory the row and file arrays reserve, in bytes: they are allocated whole
    /// when the maps are created.
    pub fn reserved_bytes(&self) -> u64 {
        u64::from(self.rows) * size_of::<UnwindRow>() as u64
            + u64::from(self.files) * size_of::<UnwindFile>() as u64
    }

    /// Kernel memory the process entries take at most, in bytes: they are allocated one by
    /// one, as processes appear.
    pub fn process_bytes_at_most(&self) -> u64 {
        u64::from(self.processes) * size_of::<UnwindProc>() as u64
    }
}

pub(super) const ROWS: &str = "unwind_rows";
pub(super) const FILES: &str = "unwind_files";
pub(super) const PROCS: &str = "unwind_procs";

/// The rows array, mapped into this process.
#[derive(Debug)]
struct MappedRows {
    address: NonNull<UnwindRow>,
    len: usize,
    bytes: usize,
    /// Keeps the map alive while it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is plain memory shared with the kernel, owned by this value alone; it
// can move to another thread like any owned buffer.
unsafe impl Send for MappedRows {}

impl MappedRows {
    fn new(map: MapData, len: u32) -> Result<MappedRows, BpfError> {
        let len = len as usize;
        let page = rustix::param::page_size();
        let bytes = (len * size_of::<UnwindRow>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the array map's whole value area (the kernel
        // rounds mmapable arrays up to whole pages), at an address the kernel chooses, so it
        // aliases no Rust memory. The fd stays open as long as the mapping (`_map`).
        let address = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                bytes,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                map.fd().as_fd(),
                0,
            )
        }
        .map_err(|err| BpfError::Mmap {
            map: ROWS,
            source: err.into(),
        })?;
        let address = NonNull::new(address.cast::<UnwindRow>()).expect("mmap succeeded");
        Ok(MappedRows {
            address,
            len,
            bytes,
            _map: map,
        })
    }

    fn rows_mut(&mut self) -> &mut [UnwindRow] {
        // SAFETY: the mapping holds `len` rows (it is at least len * 8 bytes, page-aligned),
        // lives as long as `self`, and `&mut self` makes this the only reference to it from
        // userspace. The BPF programs only read it, and a row they read while it is written
        // belongs to a file slot that does not yet point at it.
        unsafe { std::slice::from_raw_parts_mut(self.address.as_ptr(), self.len) }
    }
}

impl Drop for MappedRows {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this address and size, and no slice of
        // it outlives `self`.
        unsafe {
            let _ = rustix::mm::munmap(self.address.as_ptr().cast(), self.bytes);
        }
    }
}

/// The unwinder's three maps, taken out of the loaded object so that one thread can own
/// them while another drains the counts.
pub struct UnwindMaps {
    rows: MappedRows,
    files: Array<MapData, UnwindFile>,
    procs: HashMap<MapData, u32, UnwindProc>,
    sizes: UnwindSizes,
}

impl std::fmt::Debug for UnwindMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwindMaps")
            .field("rows", &self.rows)
            .field("sizes", &self.sizes)
            .finish_non_exhaustive()
    }
}

impl UnwindMaps {
    pub(super) fn new(
        rows: Map,
        files: Map,
        procs: Map,
        sizes: UnwindSizes,
    ) -> Result<UnwindMaps, BpfError> {
        let Map::Array(rows) = rows else {
            unreachable!("unwind_rows is an array in the object");
        };
        Ok(UnwindMaps {
            rows: MappedRows::new(rows, sizes.rows)?,
            files: Array::try_from(files).map_err(map_err(FILES))?,
            procs: HashMap::try_from(procs).map_err(map_err(PROCS))?,
            sizes,
        })
    }

    /// What the maps hold.
    pub fn sizes(&self) -> UnwindSizes {
        self.sizes
    }

    /// Writes `rows` at index `first` of the rows array. Only rows that no file slot points
    /// at may be written.
    pub fn write_rows(&mut self, first: u32, rows: &[UnwindRow]) {
        let first = first as usize;
        self.rows.rows_mut()[first..first + rows.len()].copy_from_slice(rows);
    }

    /// Points file slot `slot` at its rows (or says why it has none).
    pub fn set_file(&mut self, slot: u32, file: &UnwindFile) -> Result<(), BpfError> {
        self.files.set(slot, file, 0).map_err(map_err(FILES))
    }

    /// Writes the mappings of process `tgid`.
    pub fn set_process(&mut self, tgid: u32, process: &UnwindProc) -> Result<(), BpfError> {
        self.procs.insert(tgid, process, 0).map_err(map_err(PROCS))
    }

    /// Forgets process `tgid`, if it was there.
    pub fn remove_process(&mut self, tgid: u32) -> Result<(), BpfError> {
        match self.procs.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(err))
                if err.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(source) => Err(BpfError::Map { map: PROCS, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{BpfConfig, BpfProfiler};

    /// The sampling program with the table walk passes the kernel's verifier, and the rows
    /// array maps into memory and takes rows (root: it loads the real program).
    #[test]
    fn loads_with_unwind_tables() {
        let sizes = UnwindSizes {
            rows: 1000,
            files: 8,
            processes: 4,
        };
        let mut bpf = BpfProfiler::load(&BpfConfig {
            filter_tgids: false,
            stack_storage_size: 16,
            counts_map_size: 16,
            unwind: Some(sizes),
            ..BpfConfig::default()
        })
        .unwrap_or_else(|err| panic!("{:#}", anyhow::Error::new(err)));
        let mut maps = bpf.take_unwind_maps().expect("asked for tables");
        assert!(bpf.take_unwind_maps().is_none());
        let row = UnwindRow {
            pc: 7,
            cfa_offset: 2,
            kind: 1,
            rbp_offset: 0,
        };
        maps.write_rows(998, &[row, row]);
        maps.set_file(
            3,
            &UnwindFile {
                first_row: 998,
                rows: 2,
                generation: 1,
                state: 0,
            },
        )
        .unwrap();
        maps.set_process(42, &UnwindProc::default()).unwrap();
        maps.remove_process(42).unwrap();
        maps.remove_process(42).unwrap();
        assert_eq!(sizes.reserved_bytes(), 1000 * 8 + 8 * 16);
    }
}
