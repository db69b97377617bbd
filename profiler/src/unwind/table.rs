//! Unwind tables from DWARF call frame information: one ELF file in, compact sorted rows out.
//!
//! In: the bytes of an ELF file (an executable, a shared library, the vDSO). Out: a
//! [`CompiledFile`]: [`UnwindRow`]s sorted by pc, relative to the table's base, plus what a
//! mapping of the file needs to turn an address into a table pc (its executable segments) and
//! the file's GNU build id.
//!
//! Each FDE of `.eh_frame` (or of `.debug_frame`, where a file has no `.eh_frame`) is run
//! through gimli's CFI interpreter. Each row of the result keeps only what the BPF walk needs
//! on x86-64: how the CFA is found (rsp + offset, rbp + offset, the standard PLT
//! expressions, `*(rbp + offset)` on realigned stacks) and where rbp was saved. A row whose
//! return address is undefined marks the outermost frame; an FDE of a signal trampoline (the
//! `S` augmentation) marks a signal frame; any other rule is an "unsupported" row, counted.
//! Where no FDE covers an address, a "no CFI" row tells the walk to follow the frame pointer.
//! Consecutive rows with the same rules are merged.

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EndianSlice, Expression, LittleEndian,
    Operation, Reader, Register, RegisterRule, UnwindContext, UnwindSection, X86_64,
};
use object::{Object, ObjectSection, ObjectSegment, SegmentFlags};
use thiserror::Error;

use crate::bpf::abi::{
    CFA_DEREF_RBP, CFA_PLT, CFA_RBP, CFA_RSP, RBP_AT_CFA, RBP_AT_RBP, RBP_SAME, ROW_END,
    ROW_NO_CFI, ROW_SIGNAL, ROW_UNSUPPORTED, UnwindRow,
};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// Why a file yields no table.
#[derive(Debug, Error)]
pub enum TableError {
    /// The bytes are not an ELF file object can read.
    #[error("not an ELF file: {0}")]
    NotElf(#[from] object::Error),
    /// The file is not x86-64: the rows describe x86-64 registers only.
    #[error("not an x86-64 file")]
    WrongArchitecture,
    /// The file has neither `.eh_frame` nor `.debug_frame`.
    #[error("no .eh_frame or .debug_frame")]
    NoCallFrameInfo,
    /// gimli could not parse the call frame information.
    #[error("bad call frame information: {0}")]
    Dwarf(#[from] gimli::Error),
    /// The file's code spans more than 4 GiB, more than a row's 32-bit pc can reach.
    #[error("code spans more than 4 GiB")]
    TooLarge,
}

/// An executable `PT_LOAD` segment, to place a mapping of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// `p_offset`.
    pub file_offset: u64,
    /// `p_filesz`.
    pub file_size: u64,
    /// `p_vaddr`.
    pub address: u64,
}

/// What building a table found, for the summary and the benches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// FDEs read.
    pub fdes: u64,
    /// Rows gimli produced, before merging.
    pub raw_rows: u64,
    /// Rows whose rules the walk cannot follow.
    pub unsupported: u64,
}

/// What a mapping of a file needs to place its table, read from the ELF headers alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// The address (in the file's virtual address space) that row pcs are relative to: the
    /// lowest executable segment's.
    pub base: u64,
    /// The executable segments.
    pub segments: Vec<Segment>,
    /// The GNU build id, if the file has one.
    pub build_id: Option<Vec<u8>>,
    /// Bytes of call frame information (`.eh_frame`, else `.debug_frame`): what building the
    /// table costs, roughly.
    pub cfi_bytes: u64,
}

/// One file's unwind table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledFile {
    /// Where the table goes.
    pub layout: Layout,
    /// The rows, sorted by pc, without two neighbours of the same rules.
    pub rows: Vec<UnwindRow>,
    /// What the build found.
    pub stats: TableStats,
}

impl std::ops::Deref for CompiledFile {
    type Target = Layout;

    fn deref(&self) -> &Layout {
        &self.layout
    }
}

/// Reads the layout of the ELF file in `data`: cheap, the headers and the build-id note only.
pub fn inspect(data: &[u8]) -> Result<Layout, TableError> {
    let file = object::File::parse(data)?;
    layout(&file)
}

fn layout(file: &object::File<'_>) -> Result<Layout, TableError> {
    if file.architecture() != object::Architecture::X86_64 {
        return Err(TableError::WrongArchitecture);
    }
    let segments: Vec<Segment> = file
        .segments()
        .filter(|segment| {
            matches!(segment.flags(), SegmentFlags::Elf { p_flags } if p_flags & object::elf::PF_X != 0)
        })
        .map(|segment| {
            let (file_offset, file_size) = segment.file_range();
            Segment {
                file_offset,
                file_size,
                address: segment.address(),
            }
        })
        .collect();
    let size = |name: &str| file.section_by_name(name).map_or(0, |s| s.size());
    Ok(Layout {
        base: segments.iter().map(|s| s.address).min().unwrap_or(0),
        segments,
        build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
        cfi_bytes: match size(".eh_frame") {
            0 => size(".debug_frame"),
            bytes => bytes,
        },
    })
}

impl Layout {
    /// The bias of a mapping of this file that starts at `start` with file offset
    /// `file_offset`: a table pc is `address - bias`. `None` if no executable segment
    /// contains that offset.
    pub fn bias(&self, start: u64, file_offset: u64) -> Option<u64> {
        let segment = self.segments.iter().find(|s| {
            let first = s.file_offset & !0xfff;
            first <= file_offset && file_offset < s.file_offset + s.file_size
        })?;
        // vaddr = address - start + file_offset + (p_vaddr - p_offset), the ELF rules making
        // p_vaddr and p_offset congruent modulo the page size; a table pc is vaddr - base.
        let vaddr_minus_offset = segment.address.wrapping_sub(segment.file_offset);
        Some(
            start
                .wrapping_sub(file_offset)
                .wrapping_sub(vaddr_minus_offset)
                .wrapping_add(self.base),
        )
    }
}

impl CompiledFile {
    /// The row that covers the virtual address `address` of the file, if any.
    pub fn row_at(&self, address: u64) -> Option<&UnwindRow> {
        let pc = u32::try_from(address.checked_sub(self.base)?).ok()?;
        let index = self.rows.partition_point(|row| row.pc <= pc);
        index.checked_sub(1).map(|i| &self.rows[i])
    }
}

/// Compiles the call frame information of the ELF file in `data`.
pub fn compile(data: &[u8]) -> Result<CompiledFile, TableError> {
    let file = object::File::parse(data)?;
    let layout = layout(&file)?;
    let address_of = |name: &str| file.section_by_name(name).map(|s| s.address());
    let mut bases = BaseAddresses::default();
    if let Some(address) = address_of(".eh_frame_hdr") {
        bases = bases.set_eh_frame_hdr(address);
    }
    if let Some(address) = address_of(".text") {
        bases = bases.set_text(address);
    }
    if let Some(address) = address_of(".got") {
        bases = bases.set_got(address);
    }
    let mut builder = RowBuilder::default();
    let eh_frame = file
        .section_by_name(".eh_frame")
        .and_then(|s| Some((s.address(), s.uncompressed_data().ok()?)))
        .filter(|(_, bytes)| !bytes.is_empty());
    let debug_frame = file
        .section_by_name(".debug_frame")
        .and_then(|s| s.uncompressed_data().ok())
        .filter(|bytes| !bytes.is_empty());
    match (eh_frame, debug_frame) {
        (Some((address, bytes)), _) => {
            let bases = bases.set_eh_frame(address);
            let section = EhFrame::new(&bytes, LittleEndian);
            builder.read(&section, &bases)?;
        }
        (None, Some(bytes)) => {
            let mut section = DebugFrame::new(&bytes, LittleEndian);
            section.set_address_size(8);
            builder.read(&section, &bases)?;
        }
        (None, None) => return Err(TableError::NoCallFrameInfo),
    }
    let rows = builder.finish(layout.base)?;
    Ok(CompiledFile {
        layout,
        rows,
        stats: builder.stats,
    })
}

/// A row before it is made relative to the table's base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Absolute {
    address: u64,
    /// 0 for rows that came from an FDE, 1 for the "no CFI" rows at FDE ends, so that at one
    /// address a real row sorts first and wins.
    filler: u8,
    kind: u8,
    cfa_offset: i16,
    rbp_offset: i8,
}

#[derive(Default)]
struct RowBuilder {
    rows: Vec<Absolute>,
    stats: TableStats,
}

impl RowBuilder {
    fn read<'a, S: UnwindSection<Slice<'a>>>(
        &mut self,
        section: &S,
        bases: &BaseAddresses,
    ) -> Result<(), TableError> {
        let mut ctx = UnwindContext::new();
        let mut entries = section.entries(bases);
        while let Some(entry) = entries.next()? {
            let CieOrFde::Fde(partial) = entry else {
                continue;
            };
            let fde = match partial
                .parse(|section, bases, offset| section.cie_from_offset(bases, offset))
            {
                Ok(fde) => fde,
                // One bad FDE (seen in hand-written assembly) should not cost the file.
                Err(_) => continue,
            };
            if fde.len() == 0 {
                continue;
            }
            self.stats.fdes += 1;
            let signal = fde.is_signal_trampoline();
            let encoding = fde.cie().encoding();
            let mut table = match fde.rows(section, bases, &mut ctx) {
                Ok(table) => table,
                Err(_) => continue,
            };
            loop {
                let row = match table.next_row() {
                    Ok(Some(row)) => row,
                    Ok(None) => break,
                    // Keep the rows read so far; the rest of the FDE is unusable.
                    Err(_) => break,
                };
                self.stats.raw_rows += 1;
                let (kind, cfa_offset, rbp_offset) = if signal {
                    (ROW_SIGNAL, 0, 0)
                } else {
                    translate(section, encoding, row.cfa(), |register| {
                        row.register(register)
                    })
                };
                if kind & 0x0f == ROW_UNSUPPORTED {
                    self.stats.unsupported += 1;
                }
                self.rows.push(Absolute {
                    address: row.start_address(),
                    filler: 0,
                    kind,
                    cfa_offset,
                    rbp_offset,
                });
            }
            // Past the FDE, nothing is known until another FDE says so.
            self.rows.push(Absolute {
                address: fde.end_address(),
                filler: 1,
                kind: ROW_NO_CFI,
                cfa_offset: 0,
                rbp_offset: 0,
            });
        }
        Ok(())
    }

    /// The rows relative to `base`, sorted and merged. Rows below `base` (outside every
    /// executable segment) are dropped.
    fn finish(&mut self, base: u64) -> Result<Vec<UnwindRow>, TableError> {
        self.rows.sort_by_key(|row| (row.address, row.filler));
        let mut rows: Vec<UnwindRow> = Vec::with_capacity(self.rows.len() / 2);
        let mut last_address = None;
        for row in &self.rows {
            // At one address the first row (a real one, thanks to the sort) wins.
            if last_address == Some(row.address) {
                continue;
            }
            last_address = Some(row.address);
            let Some(offset) = row.address.checked_sub(base) else {
                continue;
            };
            let pc = u32::try_from(offset).map_err(|_| TableError::TooLarge)?;
            let compact = UnwindRow {
                pc,
                cfa_offset: row.cfa_offset,
                kind: row.kind,
                rbp_offset: row.rbp_offset,
            };
            if let Some(previous) = rows.last()
                && same_rules(previous, &compact)
            {
                continue;
            }
            rows.push(compact);
        }
        Ok(rows)
    }
}

fn same_rules(a: &UnwindRow, b: &UnwindRow) -> bool {
    a.kind == b.kind && a.cfa_offset == b.cfa_offset && a.rbp_offset == b.rbp_offset
}

const RSP: Register = X86_64::RSP;
const RBP: Register = X86_64::RBP;

/// An offset in bytes as the row's units of 8, if it is a multiple of 8 and fits.
fn eighths<T: TryFrom<i64>>(offset: i64) -> Option<T> {
    if offset % 8 != 0 {
        return None;
    }
    T::try_from(offset / 8).ok()
}

const UNSUPPORTED: (u8, i16, i8) = (ROW_UNSUPPORTED, 0, 0);

/// The compact form of one row: (kind, cfa_offset, rbp_offset).
fn translate<'a, S: UnwindSection<Slice<'a>>>(
    section: &S,
    encoding: gimli::Encoding,
    cfa: &CfaRule<usize>,
    register: impl Fn(Register) -> Option<RegisterRule<usize>>,
) -> (u8, i16, i8) {
    let ra = register(X86_64::RA).unwrap_or(RegisterRule::Undefined);
    match ra {
        RegisterRule::Undefined => return (ROW_END, 0, 0),
        RegisterRule::Offset(-8) => {}
        _ => return UNSUPPORTED,
    }
    let (cfa_kind, cfa_offset) = match *cfa {
        CfaRule::RegisterAndOffset { register, offset } => {
            let kind = match register {
                RSP => CFA_RSP,
                RBP => CFA_RBP,
                _ => return UNSUPPORTED,
            };
            match eighths::<i16>(offset) {
                Some(offset) => (kind, offset),
                None => return UNSUPPORTED,
            }
        }
        CfaRule::Expression(ref expression) => match expression
            .get(section)
            .ok()
            .and_then(|e| cfa_expression(e, encoding))
        {
            Some(rule) => rule,
            None => return UNSUPPORTED,
        },
    };
    let (rbp_kind, rbp_offset) = match register(RBP) {
        None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => (RBP_SAME, 0),
        Some(RegisterRule::Offset(offset)) => match eighths::<i8>(offset) {
            Some(offset) => (RBP_AT_CFA, offset),
            None => return UNSUPPORTED,
        },
        Some(RegisterRule::Expression(ref expression)) => match expression
            .get(section)
            .ok()
            .and_then(|e| register_offset(e, encoding, RBP))
            .and_then(eighths::<i8>)
        {
            Some(offset) => (RBP_AT_RBP, offset),
            None => return UNSUPPORTED,
        },
        Some(_) => return UNSUPPORTED,
    };
    (cfa_kind | rbp_kind, cfa_offset, rbp_offset)
}

fn operations<R: Reader<Offset = usize>>(
    expression: Expression<R>,
    encoding: gimli::Encoding,
) -> Option<Vec<Operation<R, usize>>> {
    let mut ops = expression.operations(encoding);
    let mut all = Vec::new();
    while let Some(op) = ops.next().ok()? {
        all.push(op);
        if all.len() > 16 {
            return None;
        }
    }
    Some(all)
}

/// The CFA expressions the walk knows:
/// - the PLT rule, `rsp + 8 + ((rip & 15) >= N) << 3` with N = 10 or 11, which glibc's and
///   binutils' lazy-binding PLT stubs use;
/// - `*(rbp + off)`, which GCC emits for functions that realign their stack.
fn cfa_expression<R: Reader<Offset = usize>>(
    expression: Expression<R>,
    encoding: gimli::Encoding,
) -> Option<(u8, i16)> {
    use Operation::*;
    let ops = operations(expression, encoding)?;
    match ops.as_slice() {
        [
            RegisterOffset {
                register: RSP,
                offset: 8,
                ..
            },
            RegisterOffset {
                register: X86_64::RA,
                offset: 0,
                ..
            },
            UnsignedConstant { value: 15 },
            And,
            UnsignedConstant {
                value: threshold @ (10 | 11),
            },
            Ge,
            UnsignedConstant { value: 3 },
            Shl,
            Plus,
        ] => Some((CFA_PLT, *threshold as i16)),
        [
            RegisterOffset {
                register: RBP,
                offset,
                ..
            },
            Deref { .. },
        ] => Some((CFA_DEREF_RBP, eighths::<i16>(*offset)?)),
        _ => None,
    }
}

/// The offset of `DW_OP_breg<register> offset`, the only register expression the walk knows.
fn register_offset<R: Reader<Offset = usize>>(
    expression: Expression<R>,
    encoding: gimli::Encoding,
    register: Register,
) -> Option<i64> {
    match operations(expression, encoding)?.as_slice() {
        [
            Operation::RegisterOffset {
                register: r,
                offset,
                ..
            },
        ] if *r == register => Some(*offset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

    /// One row of `readelf --debug-dump=frames-interp`: address, CFA, rbp and ra columns.
    struct ReadelfRow {
        address: u64,
        cfa: String,
        rbp: String,
        ra: String,
    }

    /// Parses readelf's interpreted frame tables: each FDE's header names the register
    /// columns, then one line per row.
    fn readelf_rows(path: &str) -> Vec<ReadelfRow> {
        let output = Command::new("readelf")
            .args(["--debug-dump=frames-interp", path])
            .output()
            .expect("readelf (binutils) runs");
        // readelf exits 1 on libc without saying why; the row counts below check the output.
        let text = String::from_utf8_lossy(&output.stdout);
        let mut rows = Vec::new();
        let mut columns: Vec<&str> = Vec::new();
        let mut in_fde = false;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.get(3) == Some(&"FDE") {
                in_fde = true;
                columns.clear();
            } else if words.get(3) == Some(&"CIE") {
                in_fde = false;
            } else if words.first() == Some(&"LOC") {
                columns = words.clone();
            } else if in_fde && words.len() == columns.len() && !columns.is_empty() {
                let Ok(address) = u64::from_str_radix(words[0], 16) else {
                    continue;
                };
                let column = |name: &str| {
                    columns
                        .iter()
                        .position(|c| *c == name)
                        .map_or("u".to_owned(), |i| words[i].to_owned())
                };
                rows.push(ReadelfRow {
                    address,
                    cfa: words[1].to_owned(),
                    rbp: column("rbp"),
                    ra: column("ra"),
                });
            }
        }
        rows
    }

    /// The rows compiled from a system library's .eh_frame give, at every address readelf
    /// lists, the same CFA rule, the same rbp rule and the same end-of-stack marker as
    /// binutils' own interpretation of the same FDEs.
    #[test]
    fn rows_match_readelf_for_libc() {
        let compiled = compile(&std::fs::read(LIBC).unwrap()).unwrap();
        let expected = readelf_rows(LIBC);
        assert!(
            expected.len() > 10_000,
            "readelf listed {} rows",
            expected.len()
        );
        let mut checked = 0;
        let mut expressions = 0;
        let mut signal = 0;
        for want in &expected {
            let row = compiled
                .row_at(want.address)
                .unwrap_or_else(|| panic!("no row at {:#x}", want.address));
            let kind = row.kind & 0x0f;
            let at = format!(
                "{:#x}: {row:?} vs {} {} {}",
                want.address, want.cfa, want.rbp, want.ra
            );
            match want.ra.as_str() {
                "u" => {
                    assert_eq!(kind, ROW_END, "{at}");
                    continue;
                }
                // Only the signal trampoline's FDE ("zRS") restores rip by an expression.
                "exp" => {
                    assert_eq!(kind, ROW_SIGNAL, "{at}");
                    signal += 1;
                    continue;
                }
                _ if !(want.cfa.starts_with("rsp+")
                    || want.cfa.starts_with("rbp+")
                    || want.cfa == "exp") =>
                {
                    // Another register holds the CFA (rdi, rdx, rbx in setcontext and the
                    // dynamic linker): the walk cannot follow it.
                    assert_eq!(kind, ROW_UNSUPPORTED, "{at}");
                    continue;
                }
                ra => assert_eq!(ra, "c-8", "{at}"),
            }
            if let Some(offset) = want.cfa.strip_prefix("rsp+") {
                assert_eq!(kind, CFA_RSP, "{at}");
                assert_eq!(
                    i64::from(row.cfa_offset) * 8,
                    offset.parse::<i64>().unwrap(),
                    "{at}"
                );
            } else if let Some(offset) = want.cfa.strip_prefix("rbp+") {
                assert_eq!(kind, CFA_RBP, "{at}");
                assert_eq!(
                    i64::from(row.cfa_offset) * 8,
                    offset.parse::<i64>().unwrap(),
                    "{at}"
                );
            } else if want.cfa == "exp" {
                expressions += 1;
                assert!(
                    matches!(kind, CFA_PLT | CFA_DEREF_RBP | ROW_SIGNAL | ROW_UNSUPPORTED),
                    "{at}"
                );
                continue;
            } else {
                unreachable!("other CFA registers were checked above");
            }
            match want.rbp.as_str() {
                "u" => assert_eq!(row.kind & 0xf0, RBP_SAME, "{at}"),
                saved => {
                    let offset: i64 = saved.strip_prefix("c").unwrap().parse().unwrap();
                    assert_eq!(row.kind & 0xf0, RBP_AT_CFA, "{at}");
                    assert_eq!(i64::from(row.rbp_offset) * 8, offset, "{at}");
                }
            }
            checked += 1;
        }
        assert!(checked > 10_000, "{checked} rows checked");
        assert!(expressions < 10, "{expressions} CFA expressions");
        assert_eq!(signal, 1, "libc has one signal trampoline, __restore_rt");
        // Merging rows that differ only in registers the walk ignores, and FDE ends that the
        // next FDE starts at, keeps fewer rows than gimli gave plus one end per FDE.
        let stats = compiled.stats;
        assert!(
            (compiled.rows.len() as u64) < stats.raw_rows + stats.fdes,
            "{} rows from {stats:?}",
            compiled.rows.len()
        );
    }

    /// The entry point of an executable (`_start`) is the outermost frame: its return
    /// address is undefined.
    #[test]
    fn entry_point_ends_the_stack() {
        let exe = std::fs::read("/bin/true").unwrap();
        let compiled = compile(&exe).unwrap();
        let entry = object::File::parse(&*exe).unwrap().entry();
        assert_eq!(compiled.row_at(entry).unwrap().kind & 0x0f, ROW_END);
    }

    /// A mapping's bias turns its addresses into table pcs, whatever the segment layout.
    #[test]
    fn bias_places_a_mapping() {
        let file = Layout {
            base: 0x1000,
            segments: vec![Segment {
                file_offset: 0x1040,
                file_size: 0x5000,
                address: 0x2040,
            }],
            build_id: None,
            cfi_bytes: 0,
        };
        // Mapped at 0x7f00_0000_0000 from file offset 0x1000: vaddr 0x2000 is there.
        let bias = file.bias(0x7f00_0000_0000, 0x1000).unwrap();
        let vaddr = 0x2100;
        let address = 0x7f00_0000_0000 + (vaddr - 0x2000);
        assert_eq!(address - bias, vaddr - file.base);
        assert_eq!(file.bias(0x7f00_0000_0000, 0x9000), None);
    }
}
