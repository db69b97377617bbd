//! The table store: which file's rows sit where in the kernel's row array, with bounded
//! memory.
//!
//! In: compiled files, by [`FileKey`]. Out: file slots in `unwind_files`, each pointing at a
//! contiguous range of `unwind_rows`, and a [`FileRef`] (slot and generation) for process
//! mappings to name. When the rows or the slots run out, the least recently used file that
//! no live process maps is evicted first, then the least recently used of the others; each
//! eviction is counted. A file that does not fit even so is marked full, and the walk counts
//! the samples that needed it.

use std::collections::{BTreeMap, HashMap};

use crate::bpf::abi::{FILE_FULL, FILE_LOADED, FILE_PENDING, UnwindFile, UnwindRow};
use crate::bpf::{BpfError, UnwindMaps};

use super::files::FileKey;
use super::table::Layout;

/// A file slot as a process mapping names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileRef {
    /// The slot in `unwind_files`.
    pub slot: u32,
    /// The slot's generation when the file got it.
    pub generation: u32,
}

/// What the store holds and has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Files with their rows in place.
    pub files_loaded: u64,
    /// Rows in use.
    pub rows_used: u64,
    /// Files evicted to make room.
    pub evictions: u64,
    /// Files that did not fit.
    pub files_full: u64,
}

/// Free ranges of a row array: first fit, neighbours merged.
#[derive(Clone, Debug)]
pub struct RowSpace {
    /// start → length.
    free: BTreeMap<u32, u32>,
}

impl RowSpace {
    /// An empty array of `len` rows.
    pub fn new(len: u32) -> RowSpace {
        let mut free = BTreeMap::new();
        if len > 0 {
            free.insert(0, len);
        }
        RowSpace { free }
    }

    /// Takes `len` contiguous rows; their first index.
    pub fn alloc(&mut self, len: u32) -> Option<u32> {
        let (&start, &size) = self.free.iter().find(|&(_, &size)| size >= len)?;
        self.free.remove(&start);
        if size > len {
            self.free.insert(start + len, size - len);
        }
        Some(start)
    }

    /// Gives back `len` rows from `start`.
    pub fn release(&mut self, start: u32, len: u32) {
        let mut start = start;
        let mut len = len;
        if let Some((&before, &size)) = self.free.range(..start).next_back()
            && before + size == start
        {
            self.free.remove(&before);
            start = before;
            len += size;
        }
        if let Some(&size) = self.free.get(&(start + len)) {
            self.free.remove(&(start + len));
            len += size;
        }
        self.free.insert(start, len);
    }
}

#[derive(Debug)]
struct Stored {
    keys: Vec<FileKey>,
    layout: Layout,
    /// (first row, rows), once loaded.
    rows: Option<(u32, u32)>,
    state: u32,
    /// Live process mappings that name this file.
    users: u32,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    file: Option<Stored>,
}

/// The files whose tables are in the kernel's maps.
#[derive(Debug)]
pub struct TableStore {
    maps: UnwindMaps,
    slots: Vec<Slot>,
    by_key: HashMap<FileKey, u32>,
    space: RowSpace,
    clock: u64,
    stats: StoreStats,
}

impl TableStore {
    /// A store over the unwinder's maps, empty.
    pub fn new(maps: UnwindMaps) -> TableStore {
        let sizes = maps.sizes();
        TableStore {
            slots: (0..sizes.files).map(|_| Slot::default()).collect(),
            by_key: HashMap::new(),
            space: RowSpace::new(sizes.rows),
            clock: 0,
            stats: StoreStats::default(),
            maps,
        }
    }

    /// The maps, for the process entries.
    pub fn maps(&mut self) -> &mut UnwindMaps {
        &mut self.maps
    }

    /// What the store holds.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// The file known by `key`, if stored.
    pub fn find(&self, key: &FileKey) -> Option<FileRef> {
        let slot = *self.by_key.get(key)?;
        Some(FileRef {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    /// Whether `file` is stored and still waits for its table.
    pub fn is_pending(&self, file: FileRef) -> bool {
        self.is_current(file)
            && self.slots[file.slot as usize]
                .file
                .as_ref()
                .is_some_and(|stored| stored.state == FILE_PENDING && stored.rows.is_none())
    }

    /// Another key for a stored file (its inode once its build id is known, or the reverse).
    pub fn alias(&mut self, file: FileRef, key: FileKey) {
        if self.is_current(file)
            && let Some(stored) = self.slots[file.slot as usize].file.as_mut()
        {
            stored.keys.push(key.clone());
            self.by_key.insert(key, file.slot);
        }
    }

    /// The layout of a stored file.
    pub fn layout(&self, file: FileRef) -> Option<&Layout> {
        if !self.is_current(file) {
            return None;
        }
        self.slots[file.slot as usize]
            .file
            .as_ref()
            .map(|stored| &stored.layout)
    }

    fn is_current(&self, file: FileRef) -> bool {
        self.slots
            .get(file.slot as usize)
            .is_some_and(|slot| slot.generation == file.generation && slot.file.is_some())
    }

    /// Stores a new file whose table is still to be built: the walk follows frame pointers
    /// through it meanwhile, and counts the samples as "not loaded yet". `None` if no slot
    /// can be freed.
    pub fn add_pending(
        &mut self,
        keys: Vec<FileKey>,
        layout: Layout,
    ) -> Result<Option<FileRef>, BpfError> {
        let slot = match self.slots.iter().position(|slot| slot.file.is_none()) {
            Some(slot) => slot as u32,
            None => match self.evict_one(None)? {
                Some(slot) => slot,
                None => return Ok(None),
            },
        };
        self.clock += 1;
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        let generation = entry.generation;
        for key in &keys {
            self.by_key.insert(key.clone(), slot);
        }
        entry.file = Some(Stored {
            keys,
            layout,
            rows: None,
            state: FILE_PENDING,
            users: 0,
            last_used: self.clock,
        });
        self.maps
            .set_file(slot, &UnwindFile::without_rows(generation, FILE_PENDING))?;
        Ok(Some(FileRef { slot, generation }))
    }

    /// Puts a pending file's rows in place, evicting other files if they do not fit. A file
    /// evicted meanwhile is left alone.
    pub fn fill(&mut self, file: FileRef, rows: &[UnwindRow]) -> Result<(), BpfError> {
        if !self.is_current(file) {
            return Ok(());
        }
        let len = u32::try_from(rows.len()).unwrap_or(u32::MAX);
        // Evicting every other file would not make room for this one.
        if len > self.maps.sizes().rows {
            self.stats.files_full += 1;
            return self.set_state(file, FILE_FULL);
        }
        let first = loop {
            if let Some(first) = self.space.alloc(len) {
                break Some(first);
            }
            if self.evict_one(Some(file.slot))?.is_none() {
                break None;
            }
        };
        let Some(first) = first else {
            self.stats.files_full += 1;
            return self.set_state(file, FILE_FULL);
        };
        self.maps.write_rows(first, rows);
        let stored = self.slots[file.slot as usize]
            .file
            .as_mut()
            .expect("checked current");
        stored.rows = Some((first, len));
        stored.state = FILE_LOADED;
        self.stats.files_loaded += 1;
        self.stats.rows_used += u64::from(len);
        // The slot points at the rows only once they are written.
        self.maps.set_file(
            file.slot,
            &UnwindFile {
                first_row: first,
                rows: len,
                generation: file.generation,
                state: FILE_LOADED,
            },
        )
    }

    /// Says why a stored file has no rows (`FILE_NO_CFI`, `FILE_FULL`).
    pub fn set_state(&mut self, file: FileRef, state: u32) -> Result<(), BpfError> {
        if !self.is_current(file) {
            return Ok(());
        }
        if let Some(stored) = self.slots[file.slot as usize].file.as_mut() {
            stored.state = state;
        }
        self.maps
            .set_file(file.slot, &UnwindFile::without_rows(file.generation, state))
    }

    /// A live process mapping now names `file`.
    pub fn retain(&mut self, file: FileRef) {
        self.clock += 1;
        let clock = self.clock;
        if self.is_current(file)
            && let Some(stored) = self.slots[file.slot as usize].file.as_mut()
        {
            stored.users += 1;
            stored.last_used = clock;
        }
    }

    /// A live process mapping no longer names `file`.
    pub fn release(&mut self, file: FileRef) {
        if self.is_current(file)
            && let Some(stored) = self.slots[file.slot as usize].file.as_mut()
        {
            stored.users = stored.users.saturating_sub(1);
        }
    }

    /// Evicts the least recently used file other than `keep`, unused ones first. Returns
    /// the freed slot, `None` if there was nothing to evict.
    fn evict_one(&mut self, keep: Option<u32>) -> Result<Option<u32>, BpfError> {
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(index, _)| Some(index as u32) != keep)
            .filter_map(|(index, slot)| Some((index, slot.file.as_ref()?)))
            // Never evict a file still waiting for its table: it has no rows to give.
            .filter(|(_, stored)| stored.rows.is_some() || stored.state != FILE_PENDING)
            .min_by_key(|(_, stored)| (stored.users > 0, stored.last_used))
            .map(|(index, _)| index as u32);
        let Some(slot) = victim else {
            return Ok(None);
        };
        let entry = &mut self.slots[slot as usize];
        let stored = entry.file.take().expect("chosen among stored files");
        for key in &stored.keys {
            if self.by_key.get(key) == Some(&slot) {
                self.by_key.remove(key);
            }
        }
        if let Some((first, len)) = stored.rows {
            self.space.release(first, len);
            self.stats.files_loaded -= 1;
            self.stats.rows_used -= u64::from(len);
        }
        self.stats.evictions += 1;
        // Mappings that still name the old generation see the mismatch and count their
        // samples as "tables full".
        entry.generation = entry.generation.wrapping_add(1);
        let generation = entry.generation;
        self.maps
            .set_file(slot, &UnwindFile::without_rows(generation, FILE_FULL))?;
        Ok(Some(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bpf::{BpfConfig, BpfProfiler, UnwindSizes};

    /// Free rows are handed out first fit and merged with their neighbours when given back.
    #[test]
    fn row_space_reuses_and_merges() {
        let mut space = RowSpace::new(100);
        let a = space.alloc(30).unwrap();
        let b = space.alloc(30).unwrap();
        let c = space.alloc(30).unwrap();
        assert_eq!((a, b, c), (0, 30, 60));
        assert_eq!(space.alloc(20), None);
        space.release(b, 30);
        assert_eq!(space.alloc(40), None);
        space.release(a, 30);
        // a and b merged: 60 contiguous rows.
        assert_eq!(space.alloc(60), Some(0));
        space.release(0, 60);
        space.release(c, 30);
        assert_eq!(space.alloc(100), Some(0));
    }

    fn store(rows: u32, files: u32) -> TableStore {
        let mut bpf = BpfProfiler::load(&BpfConfig {
            filter_tgids: false,
            stack_storage_size: 16,
            counts_map_size: 16,
            unwind: Some(UnwindSizes {
                rows,
                files,
                processes: 4,
            }),
            ..BpfConfig::default()
        })
        .expect("loads as root");
        TableStore::new(bpf.take_unwind_maps().unwrap())
    }

    fn key(n: u8) -> FileKey {
        FileKey::BuildId(vec![n].into())
    }

    const ROW: UnwindRow = UnwindRow {
        pc: 0,
        cfa_offset: 1,
        kind: 1,
        rbp_offset: 0,
    };

    /// When the rows run out, the least recently used file that no process maps goes first;
    /// its slot's generation changes, so mappings that named it see it gone. A file larger
    /// than the whole array is marked full (root: real maps).
    #[test]
    fn eviction_prefers_unused_files() {
        let mut store = store(100, 8);
        let used = store
            .add_pending(vec![key(1)], Layout::default())
            .unwrap()
            .unwrap();
        store.fill(used, &[ROW; 40]).unwrap();
        store.retain(used);
        let idle = store
            .add_pending(vec![key(2)], Layout::default())
            .unwrap()
            .unwrap();
        store.fill(idle, &[ROW; 40]).unwrap();
        // 20 rows left: a third file of 50 needs one of the two gone.
        let third = store
            .add_pending(vec![key(3)], Layout::default())
            .unwrap()
            .unwrap();
        store.fill(third, &[ROW; 50]).unwrap();
        assert_eq!(store.find(&key(1)), Some(used));
        assert_eq!(store.find(&key(2)), None, "the idle file was evicted");
        assert_eq!(store.stats().evictions, 1);
        assert_eq!(store.stats().rows_used, 90);
        let huge = store
            .add_pending(vec![key(4)], Layout::default())
            .unwrap()
            .unwrap();
        store.fill(huge, &[ROW; 101]).unwrap();
        assert_eq!(store.stats().files_full, 1);
        assert_eq!(
            store.find(&key(3)),
            Some(third),
            "nothing evicted for a hopeless file"
        );
    }
}
