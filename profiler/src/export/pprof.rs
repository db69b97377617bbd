//! pprof: the profile exchange format of Go, Pyroscope, Parca, Grafana and speedscope.
//!
//! [`write`] encodes a whole [`Profile`] (every event) as one gzipped `perftools.profiles`
//! message; [`read`] decodes files written by prof or by other programs. The messages
//! are declared in [`proto`] with prost's derive, field numbers following
//! `profile.proto`; prost does the encoding.
//!
//! Each event has two sample types, named as Pyroscope, Parca and Go's tools accept them
//! (no `-`, `/` or `:`; see [`sample_types`]): the CPU-time event is `samples`/`count` and
//! `cpu`/`nanoseconds`, as Go's CPU profiles and Alloy's eBPF profiler write it, so
//! Pyroscope files it as `process_cpu`; every other event is `<name>_samples`/`count` and
//! `<name>` in its unit, with `-` and `:` turned into `_` (`page_faults`). One comment per
//! event (`prof event page_faults=page-faults`) keeps the perf name, so prof reads its files
//! back under the names the user typed. Samples carry `pid` and `comm` labels; the losses go
//! into the comments, one parseable line per event.
//!
//! Files written before this naming (`cpu-clock/samples`, `cpu-clock`) still read.

use rustc_hash::FxHashMap as HashMap;
use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use prost::Message;
use thiserror::Error;

use crate::events::Unit;
use crate::export::limits::{self, LimitError, ReadLimits};
use crate::export::pprof_scan::{self, ScanError};
use crate::profile::{
    EventProfile, KERNEL_MAPPING, Labels, Line, Location, Mapping, Profile, Stack, UnknownReason,
    UnwindStop, Value,
};

/// The `perftools.profiles` messages, as declared in pprof's `profile.proto`.
#[allow(missing_docs)]
pub mod proto {
    /// A whole profile.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    impl Profile {
        /// The string at `index` of the string table (empty when out of range).
        pub fn text(&self, index: i64) -> &str {
            usize::try_from(index)
                .ok()
                .and_then(|i| self.string_table.get(i))
                .map_or("", String::as_str)
        }

        /// Each sample type as (type, unit) strings.
        pub fn sample_type_names(&self) -> Vec<(&str, &str)> {
            self.sample_type
                .iter()
                .map(|t| (self.text(t.r#type), self.text(t.unit)))
                .collect()
        }
    }

    /// A sample type: both fields index the string table.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    /// A stack (leaf first) with one value per sample type.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    /// A string (`str`) or numeric (`num`) label.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    /// A mapped binary.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    /// An address and its lines, innermost (inlined) first.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    /// A function and a line in it.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    /// A function.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

/// Why a file could not be read as pprof.
#[derive(Debug, Error)]
pub enum PprofError {
    /// Reading failed.
    #[error("cannot read the profile")]
    Io(#[from] io::Error),
    /// Nothing in it.
    #[error("the file is empty")]
    Empty,
    /// gzip said no.
    #[error("it starts as gzip but does not decompress (truncated or corrupt?)")]
    Gzip(#[source] io::Error),
    /// protobuf said no.
    #[error("not a pprof profile (truncated, or another format?)")]
    Decode(#[from] prost::DecodeError),
    /// Not even protobuf's wire format.
    #[error("not a pprof profile (truncated, or another format?)")]
    Malformed,
    /// It is larger than prof reads.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// An event's values add up to more than 64 bits hold.
    #[error(
        "event `{0}`'s values add up to more than 9,223,372,036,854,775,807, the most a pprof \
         value holds; the profile is refused rather than shown with wrapped or capped shares"
    )]
    Overflow(String),
    /// It decodes, but refers to things that are not there.
    #[error("invalid pprof profile: {0}")]
    Invalid(String),
}

/// Gzip-compressed pprof files start with these bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The two pprof sample types of one event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampleTypes {
    /// The type that counts samples (unit `count`).
    pub samples: String,
    /// The type of the estimated event count.
    pub value: String,
    /// The value type's unit.
    pub unit: &'static str,
}

/// The sample type of the CPU-time event, as Go's CPU profiles and Alloy name it.
const CPU_TYPE: &str = "cpu";
/// The sample type that counts the CPU-time event's samples.
const SAMPLES_TYPE: &str = "samples";
/// The comment that keeps an event's perf name: `prof event <value type>=<perf name>`.
const EVENT_COMMENT: &str = "prof event ";

/// Whether `name` (a perf event name, with or without modifiers) measures CPU time in
/// nanoseconds: `cpu-clock`, `task-clock`, or Go's `cpu`.
fn is_cpu_time(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(base, "cpu-clock" | "task-clock" | CPU_TYPE)
}

/// Whether `name` is the hardware `cycles` event (with or without modifiers).
fn is_cycles(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    matches!(base, "cycles" | "cpu-cycles")
}

/// `name` as a sample type Pyroscope accepts and Prometheus-style names allow: every
/// character but ASCII letters, digits and `_` becomes `_` (`page-faults` → `page_faults`,
/// `cpu-clock:u` → `cpu_clock_u`).
pub fn sample_type_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if name.is_empty() {
        "_".to_owned()
    } else {
        name
    }
}

/// The index of the event that becomes `samples` and `cpu`: the first one counting CPU time
/// in nanoseconds, else the first `cycles` (on machines with a PMU, the default event).
fn cpu_event(events: &[EventProfile]) -> Option<usize> {
    events
        .iter()
        .position(|e| e.unit == Unit::Nanoseconds && is_cpu_time(&e.name))
        .or_else(|| events.iter().position(|e| is_cycles(&e.name)))
}

/// The unit a sample type names for `unit`: events are a `count`, as in Go's profiles.
fn unit_name(unit: Unit) -> &'static str {
    match unit {
        Unit::Events => "count",
        unit => unit.as_str(),
    }
}

/// The sample types of each event, in order:
///
/// - the CPU-time event (see [`cpu_event`]): `samples`/`count` and `cpu`/`nanoseconds`
///   (`cpu`/`count` for `cycles`, whose periods count cycles, not time);
/// - every other event: `<name>_samples`/`count` and `<name>`/`<unit>`, with the name made
///   safe by [`sample_type_name`] (`page_faults_samples`, `page_faults`/`count`).
///
/// No two events get the same type: a clash gets a numeric suffix.
pub fn sample_types(events: &[EventProfile]) -> Vec<SampleTypes> {
    let cpu = cpu_event(events);
    let mut taken: Vec<String> = Vec::new();
    let mut types = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let (mut samples, mut value) = if Some(index) == cpu {
            (SAMPLES_TYPE.to_owned(), CPU_TYPE.to_owned())
        } else {
            let value = sample_type_name(&event.name);
            (format!("{value}_samples"), value)
        };
        let mut suffix = 1;
        while taken.contains(&samples) || taken.contains(&value) {
            suffix += 1;
            let base = sample_type_name(&event.name);
            value = format!("{base}_{suffix}");
            samples = format!("{value}_samples");
        }
        taken.push(samples.clone());
        taken.push(value.clone());
        types.push(SampleTypes {
            samples,
            value,
            unit: unit_name(event.unit),
        });
    }
    types
}

/// The event of `profile` that `name` means: the event of that name, else the one whose
/// pprof sample type `name` is or would be (`page-faults` and `page_faults` both find an
/// event read as `page_faults`; `cpu-clock` finds Go's `cpu`). This is how `prof report`,
/// `diff` and `--ratio` take the perf names users type for profiles of any program.
pub fn find_event(profile: &Profile, name: &str) -> Option<usize> {
    if let Some(index) = profile.event_index(name) {
        return Some(index);
    }
    let types = sample_types(&profile.events);
    let wanted = sample_type_name(name);
    profile
        .events
        .iter()
        .enumerate()
        .position(|(index, event)| {
            // A `cpu` event of a file that does not say which perf event it was (Go's, or
            // another profiler's) is what a CPU-time name means.
            let cpu_of_unknown_origin = event.name == CPU_TYPE
                && if event.unit == Unit::Nanoseconds {
                    is_cpu_time(name)
                } else {
                    is_cycles(name)
                };
            sample_type_name(&event.name) == wanted
                || types[index].value == wanted
                || cpu_of_unknown_origin
        })
}

/// Checks `message` against the rules real backends apply before they accept a profile:
/// Pyroscope's ingester (`pkg/validation`: string 0 empty, string indices in range, location
/// and function ids non-zero, one value per sample type, no sample type containing `-`), Go's
/// `profile.CheckValid` (ids unique, references to mappings and functions that exist), plus
/// no `:` (Pyroscope's profile type ids are `name:type:unit:period_type:period_unit`) and no
/// `/` (`go tool pprof` saves fetched profiles under a name made of the sample type). Returns
/// every rule broken; prof's tests apply it to every profile prof writes.
pub fn backend_rule_violations(message: &proto::Profile) -> Vec<String> {
    let mut broken = Vec::new();
    let strings = &message.string_table;
    let text = |index: i64| usize::try_from(index).ok().and_then(|i| strings.get(i));
    if strings.first().is_none_or(|s| !s.is_empty()) {
        broken.push("string 0 is not the empty string".to_owned());
    }
    if message.sample_type.is_empty() {
        broken.push("no sample types".to_owned());
    }
    for value_type in message.sample_type.iter().chain(&message.period_type) {
        match (text(value_type.r#type), text(value_type.unit)) {
            (Some(name), Some(_)) => {
                if let Some(bad) = name.chars().find(|c| matches!(c, '-' | ':' | '/')) {
                    broken.push(format!("sample type `{name}` contains `{bad}`"));
                }
            }
            _ => broken.push("a sample type's string index is out of range".to_owned()),
        }
    }
    let mut ids = |what: &str, ids: &mut dyn Iterator<Item = u64>| {
        let mut seen = rustc_hash::FxHashSet::default();
        for id in ids {
            if id == 0 || !seen.insert(id) {
                broken.push(format!("{what} id {id} is zero or used twice"));
            }
        }
        seen
    };
    let mappings = ids("mapping", &mut message.mapping.iter().map(|m| m.id));
    let functions = ids("function", &mut message.function.iter().map(|f| f.id));
    let locations = ids("location", &mut message.location.iter().map(|l| l.id));
    for mapping in &message.mapping {
        if text(mapping.filename).is_none() || text(mapping.build_id).is_none() {
            broken.push(format!("mapping {}: string index out of range", mapping.id));
        }
    }
    for function in &message.function {
        if [function.name, function.system_name, function.filename]
            .iter()
            .any(|&i| text(i).is_none())
        {
            broken.push(format!(
                "function {}: string index out of range",
                function.id
            ));
        }
    }
    for location in &message.location {
        if location.mapping_id != 0 && !mappings.contains(&location.mapping_id) {
            broken.push(format!(
                "location {}: no mapping {}",
                location.id, location.mapping_id
            ));
        }
        for line in &location.line {
            if !functions.contains(&line.function_id) {
                broken.push(format!(
                    "location {}: no function {}",
                    location.id, line.function_id
                ));
            }
        }
    }
    for sample in &message.sample {
        if sample.value.len() != message.sample_type.len() {
            broken.push("a sample's values do not match the sample types".to_owned());
        }
        if sample.location_id.iter().any(|id| !locations.contains(id)) {
            broken.push("a sample refers to a location that does not exist".to_owned());
        }
        if sample
            .label
            .iter()
            .any(|l| text(l.key).is_none() || text(l.str).is_none())
        {
            broken.push("a sample label's string index is out of range".to_owned());
        }
    }
    broken.dedup();
    broken
}

/// Writes `profile` as a gzipped pprof file. The message is the one [`encode`] builds,
/// byte for byte, but streamed: samples are encoded one at a time from the profile's stacks
/// and the string table straight from its interned strings, so no copy of the whole message
/// is held.
pub fn write(profile: &Profile, out: &mut dyn Write) -> io::Result<()> {
    let mut gzip = GzEncoder::new(out, Compression::default());
    Encoder::new(profile).write(&mut gzip)?;
    gzip.finish()?;
    Ok(())
}

/// Reads a pprof file, gzipped or not, within the default [`ReadLimits`].
pub fn read(input: &mut dyn Read) -> Result<Profile, PprofError> {
    let limits = ReadLimits::default();
    let bytes = limits::read_capped(input, limits.max_input_bytes, false).map_err(|err| {
        match limits::limit_error(&err) {
            Some(limit) => PprofError::Limit(limit.clone()),
            None => PprofError::Io(err),
        }
    })?;
    decode_bytes_within(&bytes, &limits)
}

/// Decodes pprof bytes, gzipped or not, within the default [`ReadLimits`].
pub fn decode_bytes(bytes: &[u8]) -> Result<Profile, PprofError> {
    decode_bytes_within(bytes, &ReadLimits::default())
}

/// Decodes pprof bytes, gzipped or not; what is larger than `limits` is refused before it
/// takes memory.
pub fn decode_bytes_within(bytes: &[u8], limits: &ReadLimits) -> Result<Profile, PprofError> {
    if bytes.is_empty() {
        return Err(PprofError::Empty);
    }
    let inflated;
    let raw = if bytes.starts_with(&GZIP_MAGIC) {
        inflated = limits::read_capped(GzDecoder::new(bytes), limits.max_input_bytes, true)
            .map_err(|err| match limits::limit_error(&err) {
                Some(limit) => PprofError::Limit(limit.clone()),
                None => PprofError::Gzip(err),
            })?;
        inflated.as_slice()
    } else if bytes.len() as u64 > limits.max_input_bytes {
        return Err(LimitError::InputSize(limits.max_input_bytes, false).into());
    } else {
        bytes
    };
    let scan_error = |err| match err {
        ScanError::Limit(limit) => PprofError::Limit(limit),
        ScanError::Malformed => PprofError::Malformed,
    };
    pprof_scan::check(raw, limits).map_err(scan_error)?;
    // The samples, nearly all of a big profile, are decoded one at a time as they are read
    // into the profile, never all at once.
    let (samples, rest) = pprof_scan::split_samples(raw).map_err(scan_error)?;
    let message = proto::Profile::decode(rest.as_slice())?;
    drop(rest);
    let samples = samples
        .into_iter()
        .map(|bytes| proto::Sample::decode(bytes).map_err(PprofError::from));
    decode_samples(&message, samples, limits)
}

/// Strings of the table being built, by index: borrowed from the profile where they come
/// from it, each stored once.
#[derive(Default)]
struct StringTable<'a> {
    strings: Vec<Cow<'a, str>>,
    index: HashMap<Cow<'a, str>, i64>,
}

impl<'a> StringTable<'a> {
    fn new() -> StringTable<'a> {
        let mut table = StringTable::default();
        table.get("");
        table
    }

    /// The index of `text`, which lives as long as the profile.
    fn get(&mut self, text: &'a str) -> i64 {
        self.intern(Cow::Borrowed(text))
    }

    /// The index of a string made while encoding.
    fn get_owned(&mut self, text: String) -> i64 {
        self.intern(Cow::Owned(text))
    }

    fn intern(&mut self, text: Cow<'a, str>) -> i64 {
        if let Some(&index) = self.index.get(text.as_ref()) {
            return index;
        }
        let index = self.strings.len() as i64;
        self.strings.push(text.clone());
        self.index.insert(text, index);
        index
    }

    fn into_strings(self) -> Vec<String> {
        self.strings.into_iter().map(Cow::into_owned).collect()
    }
}

/// The comment line that carries an event's losses.
fn losses_comment(event: &EventProfile) -> String {
    let losses = &event.losses;
    let mut text = format!(
        "prof losses {}: kernel_samples={} stack_map_full={} no_stack={} map_full={}",
        event.name, losses.kernel_samples, losses.stack_map_full, losses.no_stack, losses.map_full
    );
    // Off-CPU only; left out when zero so other events' comments stay as they were.
    for (key, value) in [
        ("blocks_short", losses.blocks_short),
        ("blocks_dropped", losses.blocks_dropped),
    ] {
        if value > 0 {
            text.push_str(&format!(" {key}={value}"));
        }
    }
    for (reason, samples) in &event.unknown {
        text.push_str(&format!(" unknown.{}={samples}", reason.key()));
    }
    for (reason, samples) in losses.unwind.iter().filter(|&(_, n)| n > 0) {
        text.push_str(&format!(" unwind.{}={samples}", reason.key()));
    }
    text
}

/// Reads back a [`losses_comment`] into the event it names.
fn apply_losses_comment(comment: &str, events: &mut [EventProfile]) -> bool {
    let Some(rest) = comment.strip_prefix("prof losses ") else {
        return false;
    };
    let Some((name, fields)) = rest.rsplit_once(": ") else {
        return false;
    };
    let Some(event) = events.iter_mut().find(|e| e.name == name) else {
        return false;
    };
    for field in fields.split(' ') {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "kernel_samples" => event.losses.kernel_samples = value,
            "stack_map_full" => event.losses.stack_map_full = value,
            "no_stack" => event.losses.no_stack = value,
            "map_full" => event.losses.map_full = value,
            "blocks_short" => event.losses.blocks_short = value,
            "blocks_dropped" => event.losses.blocks_dropped = value,
            _ => {
                if let Some(reason) = key
                    .strip_prefix("unknown.")
                    .and_then(UnknownReason::from_key)
                {
                    event.unknown.insert(reason, value);
                } else if let Some(reason) =
                    key.strip_prefix("unwind.").and_then(UnwindStop::from_key)
                {
                    event.losses.unwind.set(reason, value);
                }
            }
        }
    }
    true
}

/// Builds the pprof message for `profile`.
pub fn encode(profile: &Profile) -> proto::Profile {
    let encoder = Encoder::new(profile);
    let mut sample = proto::Sample::default();
    let mut samples = Vec::with_capacity(encoder.rows.len());
    for row in 0..encoder.rows.len() {
        encoder.sample(row, &mut sample);
        samples.push(sample.clone());
    }
    let Encoder {
        head,
        mut tail,
        strings,
        ..
    } = encoder;
    tail.sample_type = head.sample_type;
    tail.sample = samples;
    tail.string_table = strings.into_strings();
    tail
}

/// A profile on its way to pprof: every table built once per unique mapping, location,
/// function, label set and string, and the samples (one per unique stack, with the values
/// of every event) sorted but not yet encoded.
struct Encoder<'a> {
    /// The sample types (field 1).
    head: proto::Profile,
    /// Fields 3 to 14, but for the string table (6).
    tail: proto::Profile,
    strings: StringTable<'a>,
    /// The stacks in sample order.
    rows: Vec<&'a Stack>,
    /// `types` values per row, in the order of `rows`.
    values: Vec<i64>,
    types: usize,
    /// Per label set id: its sample labels.
    labels: Vec<Vec<proto::Label>>,
}

/// The protobuf keys of `Profile.sample` (field 2) and `Profile.string_table` (field 6),
/// both length-delimited.
const SAMPLE_KEY: u8 = (2 << 3) | 2;
const STRING_KEY: u8 = (6 << 3) | 2;

impl<'a> Encoder<'a> {
    fn new(profile: &'a Profile) -> Encoder<'a> {
        let mut strings = StringTable::new();
        let mut head = proto::Profile::default();
        let mut message = proto::Profile::default();
        let type_names = sample_types(&profile.events);
        for names in &type_names {
            head.sample_type.push(proto::ValueType {
                r#type: strings.get_owned(names.samples.clone()),
                unit: strings.get("count"),
            });
            head.sample_type.push(proto::ValueType {
                r#type: strings.get_owned(names.value.clone()),
                unit: strings.get(names.unit),
            });
        }

        // Mappings; kernel locations without one (from folded input) share a synthetic one.
        for (id, mapping) in profile.mappings.iter() {
            message.mapping.push(proto::Mapping {
                id: u64::from(id) + 1,
                memory_start: mapping.start,
                memory_limit: mapping.limit,
                file_offset: mapping.offset,
                filename: strings.get(&mapping.file),
                build_id: mapping.build_id.as_deref().map_or(0, |id| strings.get(id)),
                has_functions: mapping.has_functions,
                has_filenames: mapping.has_lines,
                has_line_numbers: mapping.has_lines,
                has_inline_frames: mapping.has_lines,
            });
        }
        let mut kernel_mapping = None;

        let mut functions: HashMap<(&str, Option<&str>), u64> = HashMap::default();
        message.location.reserve(profile.locations.len());
        for (id, location) in profile.locations.iter() {
            let mapping_id = match location.mapping {
                Some(mapping) => u64::from(mapping) + 1,
                None if location.kernel => *kernel_mapping.get_or_insert_with(|| {
                    let id = message.mapping.len() as u64 + 1;
                    message.mapping.push(proto::Mapping {
                        id,
                        filename: strings.get(KERNEL_MAPPING),
                        memory_limit: u64::MAX,
                        has_functions: true,
                        ..proto::Mapping::default()
                    });
                    id
                }),
                None => 0,
            };
            let lines = location
                .lines
                .iter()
                .rev()
                .map(|line| {
                    let key = (&*line.function, line.file.as_deref());
                    let next = functions.len() as u64 + 1;
                    let function_id = *functions.entry(key).or_insert_with(|| {
                        let name = strings.get(&line.function);
                        message.function.push(proto::Function {
                            id: next,
                            name,
                            system_name: name,
                            filename: line.file.as_deref().map_or(0, |f| strings.get(f)),
                            start_line: 0,
                        });
                        next
                    });
                    proto::Line {
                        function_id,
                        line: i64::from(line.line),
                        column: 0,
                    }
                })
                .collect();
            message.location.push(proto::Location {
                id: u64::from(id) + 1,
                mapping_id,
                address: location.address,
                line: lines,
                is_folded: false,
            });
        }

        // One pprof sample per stack, with the values of every event: a row of values per
        // stack, found by the stack only where several events may share it.
        let types = head.sample_type.len();
        let mut rows: Vec<(&Stack, usize)> = Vec::new();
        let mut values: Vec<i64> = Vec::new();
        let mut row_of: HashMap<&Stack, usize> = HashMap::default();
        for (index, event) in profile.events.iter().enumerate() {
            rows.reserve(event.stacks.len());
            for (stack, value) in &event.stacks {
                let row = if index == 0 {
                    None
                } else {
                    row_of.get(stack).copied()
                };
                let row = row.unwrap_or_else(|| {
                    let row = rows.len();
                    rows.push((stack, row));
                    values.resize(values.len() + types, 0);
                    if profile.events.len() > 1 {
                        row_of.insert(stack, row);
                    }
                    row
                });
                let values = &mut values[row * types..(row + 1) * types];
                values[2 * index] = values[2 * index].saturating_add(saturate(value.samples));
                values[2 * index + 1] =
                    values[2 * index + 1].saturating_add(saturate(value.period));
            }
        }
        drop(row_of);
        rows.sort_unstable_by(|a, b| {
            (a.0.labels, &a.0.locations).cmp(&(b.0.labels, &b.0.locations))
        });
        let mut sorted_values = Vec::with_capacity(values.len());
        for &(_, row) in &rows {
            sorted_values.extend_from_slice(&values[row * types..(row + 1) * types]);
        }
        drop(values);
        let rows: Vec<&Stack> = rows.into_iter().map(|(stack, _)| stack).collect();

        // Labels, their strings interned in the order the samples first use them.
        let pid_key = strings.get("pid");
        let comm_key = strings.get("comm");
        let mut label_sets: Vec<Option<Vec<proto::Label>>> = vec![None; profile.labels.len()];
        for stack in &rows {
            let cached = &mut label_sets[stack.labels as usize];
            if cached.is_some() {
                continue;
            }
            let labels = profile.labels.get(stack.labels);
            let mut out = Vec::new();
            if let Some(pid) = labels.pid {
                out.push(proto::Label {
                    key: pid_key,
                    num: i64::from(pid),
                    ..proto::Label::default()
                });
            }
            if let Some(comm) = &labels.comm {
                out.push(proto::Label {
                    key: comm_key,
                    str: strings.get(comm),
                    ..proto::Label::default()
                });
            }
            for (key, value) in &labels.extra {
                out.push(proto::Label {
                    key: strings.get(key),
                    str: strings.get(value),
                    ..proto::Label::default()
                });
            }
            *cached = Some(out);
        }
        let labels = label_sets
            .into_iter()
            .map(Option::unwrap_or_default)
            .collect();

        // The period type is the CPU event's (`cpu`/`nanoseconds`, as Pyroscope's CPU series
        // and Alloy's profiles have it), else the first event's.
        if let Some(main) = cpu_event(&profile.events).or((!profile.events.is_empty()).then_some(0))
        {
            let total = profile.events[main].total();
            let names = &type_names[main];
            message.period_type = Some(proto::ValueType {
                r#type: strings.get_owned(names.value.clone()),
                unit: strings.get(names.unit),
            });
            message.period = saturate(total.period / total.samples.max(1));
            message.default_sample_type = strings.get_owned(names.value.clone());
        }
        message.time_nanos = profile
            .start
            .and_then(|start| start.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |since| saturate(since.as_nanos() as u64));
        message.duration_nanos = saturate(profile.duration.as_nanos() as u64);
        let mut comments: Vec<i64> = profile.comments.iter().map(|c| strings.get(c)).collect();
        for (event, names) in profile.events.iter().zip(&type_names) {
            if event.name != names.value {
                comments.push(
                    strings.get_owned(format!("{EVENT_COMMENT}{}={}", names.value, event.name)),
                );
            }
        }
        for event in &profile.events {
            comments.push(strings.get_owned(losses_comment(event)));
        }
        if profile.forks_untracked > 0 {
            comments.push(
                strings.get_owned(format!("prof forks_untracked={}", profile.forks_untracked)),
            );
        }
        if profile.side_band_lost > 0 {
            comments
                .push(strings.get_owned(format!("prof side_band_lost={}", profile.side_band_lost)));
        }
        message.comment = comments;
        Encoder {
            head,
            tail: message,
            strings,
            rows,
            values: sorted_values,
            types,
            labels,
        }
    }

    /// Fills `sample` with row `row`, reusing its buffers.
    fn sample(&self, row: usize, sample: &mut proto::Sample) {
        let stack = self.rows[row];
        sample.location_id.clear();
        sample
            .location_id
            .extend(stack.locations.iter().rev().map(|&id| u64::from(id) + 1));
        sample.value.clear();
        sample
            .value
            .extend_from_slice(&self.values[row * self.types..(row + 1) * self.types]);
        sample.label.clear();
        sample
            .label
            .extend_from_slice(&self.labels[stack.labels as usize]);
    }

    /// Writes the encoded message: the fields in the order prost writes them, the samples
    /// and strings one at a time.
    fn write(self, out: &mut dyn Write) -> io::Result<()> {
        const CHUNK: usize = 1 << 18;
        let mut buf = Vec::with_capacity(2 * CHUNK);
        self.head.encode(&mut buf).map_err(io::Error::other)?;
        let mut sample = proto::Sample::default();
        for row in 0..self.rows.len() {
            self.sample(row, &mut sample);
            buf.push(SAMPLE_KEY);
            sample
                .encode_length_delimited(&mut buf)
                .map_err(io::Error::other)?;
            if buf.len() >= CHUNK {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        // Fields 3 to 5 (mappings, locations, functions), then the strings (6), then 7 to
        // 14: prost writes fields in tag order, and a message is the concatenation of its
        // fields.
        let (low, high) = split_at_strings(self.tail);
        low.encode(&mut buf).map_err(io::Error::other)?;
        for text in &self.strings.strings {
            buf.push(STRING_KEY);
            prost::encode_length_delimiter(text.len(), &mut buf).map_err(io::Error::other)?;
            buf.extend_from_slice(text.as_bytes());
            if buf.len() >= CHUNK {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        high.encode(&mut buf).map_err(io::Error::other)?;
        out.write_all(&buf)
    }
}

/// `message` as two messages: its fields below the string table's (6), and those above.
fn split_at_strings(message: proto::Profile) -> (proto::Profile, proto::Profile) {
    let low = proto::Profile {
        mapping: message.mapping,
        location: message.location,
        function: message.function,
        ..proto::Profile::default()
    };
    let high = proto::Profile {
        drop_frames: message.drop_frames,
        keep_frames: message.keep_frames,
        time_nanos: message.time_nanos,
        duration_nanos: message.duration_nanos,
        period_type: message.period_type,
        period: message.period,
        comment: message.comment,
        default_sample_type: message.default_sample_type,
        ..proto::Profile::default()
    };
    (low, high)
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Reads a decoded message into a [`Profile`], checking every reference, within the default
/// [`ReadLimits`].
pub fn decode(message: &proto::Profile) -> Result<Profile, PprofError> {
    decode_within(message, &ReadLimits::default())
}

/// Reads a decoded message into a [`Profile`], checking every reference; a stack deeper
/// than `limits` allows, counting inlined functions, is refused.
pub fn decode_within(message: &proto::Profile, limits: &ReadLimits) -> Result<Profile, PprofError> {
    decode_samples(message, message.sample.iter().map(Ok), limits)
}

/// [`decode_within`] with the samples apart, so that a caller can decode each as it is
/// read.
fn decode_samples<S: std::borrow::Borrow<proto::Sample>>(
    message: &proto::Profile,
    samples: impl IntoIterator<Item = Result<S, PprofError>>,
    limits: &ReadLimits,
) -> Result<Profile, PprofError> {
    let budget = limits::Budget::new(*limits);
    let strings = &message.string_table;
    let string = |index: i64, what: &str| -> Result<&str, PprofError> {
        usize::try_from(index)
            .ok()
            .and_then(|i| strings.get(i))
            .map(String::as_str)
            .ok_or_else(|| {
                PprofError::Invalid(format!(
                    "{what} refers to string {index}, but the string table has {}",
                    strings.len()
                ))
            })
    };
    if message.sample_type.is_empty() {
        return Err(PprofError::Invalid("it declares no sample types".into()));
    }
    if strings.first().is_some_and(|s| !s.is_empty()) {
        return Err(PprofError::Invalid("string 0 must be empty".into()));
    }

    // Sample types → events: `X_samples` (prof's) or `X/samples` (prof's before) pairs with
    // `X`; a lone `samples` type gives the sample counts of every other type (Go's CPU
    // profiles, and prof's CPU event); other types stand alone.
    let mut types = Vec::with_capacity(message.sample_type.len());
    for value_type in &message.sample_type {
        types.push((
            string(value_type.r#type, "a sample type")?,
            string(value_type.unit, "a sample type's unit")?,
        ));
    }
    let counts_samples_of = |index: usize| -> Option<&str> {
        let (name, unit) = types[index];
        if unit != "count" {
            return None;
        }
        let base = name
            .strip_suffix("_samples")
            .or_else(|| name.strip_suffix("/samples"))?;
        types.iter().any(|(t, _)| *t == base).then_some(base)
    };
    let samples_of = |name: &str| {
        types
            .iter()
            .enumerate()
            .position(|(index, _)| counts_samples_of(index) == Some(name))
    };
    let plain_samples = types
        .iter()
        .position(|(t, u)| *t == SAMPLES_TYPE && *u == "count")
        .filter(|_| types.len() > 1);
    // The perf names prof wrote down for its events.
    let renames: HashMap<&str, &str> = message
        .comment
        .iter()
        .filter_map(|&index| string(index, "a comment").ok())
        .filter_map(|comment| comment.strip_prefix(EVENT_COMMENT)?.split_once('='))
        .collect();
    let mut events = Vec::new();
    let mut columns: Vec<(usize, Option<usize>)> = Vec::new();
    for (index, (name, unit)) in types.iter().enumerate() {
        if Some(index) == plain_samples || counts_samples_of(index).is_some() {
            continue;
        }
        columns.push((index, samples_of(name).or(plain_samples)));
        let name = renames.get(name).copied().unwrap_or(name);
        let mut unit = Unit::from_name(unit);
        // prof writes a perf event's occurrences as a `count`.
        if unit == Unit::Count && crate::events::Event::parse(name).is_ok() {
            unit = Unit::Events;
        }
        events.push(EventProfile::new(name.to_owned(), unit));
    }

    let mut profile = Profile {
        events,
        ..Profile::default()
    };
    let mut mapping_ids: HashMap<u64, u32> = HashMap::default();
    let mut kernel_mappings: Vec<u64> = Vec::new();
    for mapping in &message.mapping {
        let file = string(mapping.filename, "a mapping's file name")?;
        let build_id = string(mapping.build_id, "a mapping's build id")?;
        if file == KERNEL_MAPPING {
            kernel_mappings.push(mapping.id);
        }
        let id = profile.mappings.intern(Mapping {
            file: Arc::from(file),
            build_id: (!build_id.is_empty()).then(|| Arc::from(build_id)),
            start: mapping.memory_start,
            limit: mapping.memory_limit,
            offset: mapping.file_offset,
            has_functions: mapping.has_functions,
            has_lines: mapping.has_line_numbers,
        });
        if mapping.id == 0 || mapping_ids.insert(mapping.id, id).is_some() {
            return Err(PprofError::Invalid(format!(
                "mapping id {} is zero or used twice",
                mapping.id
            )));
        }
    }
    // Each function's name and file once, shared by every location that has its lines.
    let mut files: HashMap<&str, Arc<str>> = HashMap::default();
    let mut functions: HashMap<u64, (Arc<str>, Option<Arc<str>>)> = HashMap::default();
    for function in &message.function {
        let name = string(function.name, "a function's name")?;
        let name = if name.is_empty() {
            string(function.system_name, "a function's system name")?
        } else {
            name
        };
        let file = string(function.filename, "a function's file name")?;
        let file = (!file.is_empty()).then_some(file);
        let file = file.map(|file| files.entry(file).or_insert_with(|| Arc::from(file)).clone());
        if function.id == 0
            || functions
                .insert(function.id, (Arc::from(name), file))
                .is_some()
        {
            return Err(PprofError::Invalid(format!(
                "function id {} is zero or used twice",
                function.id
            )));
        }
    }
    let mut location_ids: HashMap<u64, u32> = HashMap::default();
    for location in &message.location {
        let mapping = match location.mapping_id {
            0 => None,
            id => Some(*mapping_ids.get(&id).ok_or_else(|| {
                PprofError::Invalid(format!(
                    "location {} refers to mapping {id}, which does not exist",
                    location.id
                ))
            })?),
        };
        let mut lines = Vec::with_capacity(location.line.len());
        for line in location.line.iter().rev() {
            let (name, file) = functions.get(&line.function_id).ok_or_else(|| {
                PprofError::Invalid(format!(
                    "location {} refers to function {}, which does not exist",
                    location.id, line.function_id
                ))
            })?;
            lines.push(Line {
                function: name.clone(),
                file: file.clone(),
                line: u32::try_from(line.line).unwrap_or(0),
            });
        }
        let id = profile.locations.intern(Location {
            address: location.address,
            mapping,
            lines,
            kernel: kernel_mappings.contains(&location.mapping_id),
        });
        if location.id == 0 || location_ids.insert(location.id, id).is_some() {
            return Err(PprofError::Invalid(format!(
                "location id {} is zero or used twice",
                location.id
            )));
        }
    }

    let pid_key = strings.iter().position(|s| s == "pid").map(|i| i as i64);
    let comm_key = strings.iter().position(|s| s == "comm").map(|i| i as i64);
    // Every event's total must fit, so that no share is computed from a wrapped sum.
    let mut totals = vec![Value::default(); profile.events.len()];
    for sample in samples {
        let sample = sample?;
        let sample = sample.borrow();
        if sample.value.len() != types.len() {
            return Err(PprofError::Invalid(format!(
                "a sample has {} values for {} sample types",
                sample.value.len(),
                types.len()
            )));
        }
        let mut labels = Labels::default();
        for label in &sample.label {
            let key = string(label.key, "a label's key")?;
            if Some(label.key) == pid_key && label.str == 0 {
                labels.pid = u32::try_from(label.num).ok();
            } else if Some(label.key) == comm_key {
                labels.comm = Some(Arc::from(string(label.str, "a label's value")?));
            } else if label.str != 0 {
                let value = string(label.str, "a label's value")?;
                labels.extra.push((Arc::from(key), Arc::from(value)));
            } else {
                let value = label.num.to_string();
                labels
                    .extra
                    .push((Arc::from(key), Arc::from(value.as_str())));
            }
        }
        let labels = profile.labels.intern(labels);
        let mut locations = Vec::with_capacity(sample.location_id.len());
        let mut frames = 0;
        for id in sample.location_id.iter().rev() {
            let location = *location_ids.get(id).ok_or_else(|| {
                PprofError::Invalid(format!(
                    "a sample refers to location {id}, which does not exist"
                ))
            })?;
            // Each inlined function is a frame of its own.
            frames += profile.locations.get(location).lines.len().max(1);
            locations.push(location);
        }
        budget.check_depth(frames)?;
        let stack = Stack {
            labels,
            locations: locations.into(),
        };
        for (event, &(column, samples)) in columns.iter().enumerate() {
            let period = sample.value[column];
            let count = samples.map_or(period, |s| sample.value[s]);
            if period < 0 || count < 0 {
                return Err(PprofError::Invalid("a sample has a negative value".into()));
            }
            if period == 0 && count == 0 {
                continue;
            }
            let value = Value {
                samples: count as u64,
                period: period as u64,
            };
            totals[event] = totals[event]
                .checked_add(value)
                .ok_or_else(|| PprofError::Overflow(profile.events[event].name.clone()))?;
            profile.events[event].add(stack.clone(), value);
        }
    }

    profile.start = u64::try_from(message.time_nanos)
        .ok()
        .filter(|&t| t > 0)
        .map(|nanos| SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos));
    profile.duration = Duration::from_nanos(u64::try_from(message.duration_nanos).unwrap_or(0));
    for &index in &message.comment {
        let comment = string(index, "a comment")?;
        if comment.starts_with(EVENT_COMMENT) {
            continue;
        }
        if apply_losses_comment(comment, &mut profile.events) {
            continue;
        }
        if let Some(n) = comment.strip_prefix("prof forks_untracked=") {
            profile.forks_untracked = n.parse().unwrap_or(0);
        } else if let Some(n) = comment.strip_prefix("prof side_band_lost=") {
            profile.side_band_lost = n.parse().unwrap_or(0);
        } else {
            profile.comments.push(comment.to_owned());
        }
    }
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A profile of two events that share a stack, with inlined lines, a kernel frame,
    /// labels and losses.
    fn sample_profile() -> Profile {
        let mut profile = Profile {
            events: vec![
                EventProfile::new("cpu-clock".into(), Unit::Nanoseconds),
                EventProfile::new("page-faults".into(), Unit::Events),
            ],
            start: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            duration: Duration::from_millis(2500),
            ..Profile::default()
        };
        let mapping = profile.mappings.intern(Mapping {
            file: "/usr/bin/app".into(),
            build_id: Some("abcdef".into()),
            start: 0x1000,
            limit: 0x9000,
            offset: 0,
            has_functions: true,
            has_lines: true,
        });
        let line = |f: &str, l| Line {
            function: f.into(),
            file: Some("app.c".into()),
            line: l,
        };
        let main = profile.locations.intern(Location {
            address: 0x1234,
            mapping: Some(mapping),
            lines: vec![line("main", 10), line("inlined_helper", 20)],
            kernel: false,
        });
        let kernel = profile
            .locations
            .intern(Location::named("do_syscall_64_[k]"));
        let labels = profile.labels.intern(Labels {
            pid: Some(42),
            comm: Some("app".into()),
            extra: vec![("cgroup".into(), "/system.slice".into())],
        });
        let stack = Stack {
            labels,
            locations: vec![main, kernel].into(),
        };
        profile.events[0].add(
            stack.clone(),
            Value {
                samples: 3,
                period: 3_000_000,
            },
        );
        profile.events[1].add(
            stack,
            Value {
                samples: 1,
                period: 7,
            },
        );
        profile.events[0].losses.stack_map_full = 5;
        profile.events[0]
            .losses
            .unwind
            .set(UnwindStop::Unreadable, 6);
        profile.events[0].unknown.insert(UnknownReason::Vdso, 2);
        profile
    }

    /// What prof writes, prof reads back: events, units, stacks, lines, mappings, labels,
    /// times and losses.
    #[test]
    fn round_trip() {
        let profile = sample_profile();
        let mut bytes = Vec::new();
        write(&profile, &mut bytes).unwrap();
        assert!(bytes.starts_with(&GZIP_MAGIC));
        let back = read(&mut bytes.as_slice()).unwrap();
        let names: Vec<&str> = back.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["cpu-clock", "page-faults"]);
        assert_eq!(back.events[1].unit, Unit::Events);
        assert_eq!(back.events[0].total(), profile.events[0].total());
        assert_eq!(back.events[1].total(), profile.events[1].total());
        let (stack, _) = back.events[0].stacks.iter().next().unwrap();
        assert_eq!(
            back.frame_names(stack, true),
            ["app (42)", "main", "inlined_helper", "do_syscall_64_[k]"]
        );
        let main = back.locations.get(stack.locations[0]);
        assert_eq!(main.lines[1].line, 20);
        assert_eq!(main.lines[1].file.as_deref(), Some("app.c"));
        let mapping = back.mappings.get(main.mapping.unwrap());
        assert_eq!(mapping.build_id.as_deref(), Some("abcdef"));
        assert!(back.locations.get(stack.locations[1]).kernel);
        let labels = back.labels.get(stack.labels);
        assert_eq!(labels.extra, [("cgroup".into(), "/system.slice".into())]);
        assert_eq!(back.start, profile.start);
        assert_eq!(back.duration, profile.duration);
        assert_eq!(back.events[0].losses.stack_map_full, 5);
        assert_eq!(back.events[0].losses.unwind.get(UnwindStop::Unreadable), 6);
        assert_eq!(back.events[0].unknown.get(&UnknownReason::Vdso), Some(&2));
        assert!(back.comments.is_empty(), "{:?}", back.comments);
    }

    /// The file [`write`] streams is, once decompressed, the message [`encode`] builds,
    /// byte for byte, and reads back with the same stacks and values: one event, and two
    /// events that share some stacks and not others.
    #[test]
    fn streamed_file_is_the_message() {
        let mut shared = sample_profile();
        shared.add_named(
            0,
            Labels::default(),
            &["only_cpu"],
            Value {
                samples: 2,
                period: 20,
            },
        );
        shared.add_named(
            1,
            Labels::default(),
            &["only_faults"],
            Value {
                samples: 1,
                period: 9,
            },
        );
        for profile in [
            sample_profile(),
            shared,
            crate::export::names::fixtures::tricky(),
        ] {
            let mut file = Vec::new();
            write(&profile, &mut file).unwrap();
            let mut streamed = Vec::new();
            GzDecoder::new(file.as_slice())
                .read_to_end(&mut streamed)
                .unwrap();
            assert_eq!(streamed, encode(&profile).encode_to_vec());
            let back = decode_bytes(&file).unwrap();
            assert_eq!(back.events.len(), profile.events.len());
            for event in 0..profile.events.len() {
                assert_eq!(back.events[event].total(), profile.events[event].total());
                assert_eq!(
                    crate::export::folded::lines(&back, event, true),
                    crate::export::folded::lines(&profile, event, true)
                );
            }
        }
    }

    /// The sample types of prof's profiles: `samples`/`count` and `cpu`/`nanoseconds` for
    /// cpu-clock (the period type too), `page_faults_samples`/`count` and
    /// `page_faults`/`count` beside it, none with `-`, `/` or `:`; the file passes the
    /// backends' rules and reads back under the perf names, with every mapping marked
    /// symbolized.
    #[test]
    fn sample_types_backends_accept() {
        let profile = sample_profile();
        let message = encode(&profile);
        let text = |i: i64| message.text(i);
        assert_eq!(
            message.sample_type_names(),
            [
                ("samples", "count"),
                ("cpu", "nanoseconds"),
                ("page_faults_samples", "count"),
                ("page_faults", "count")
            ]
        );
        let period = message.period_type.unwrap();
        assert_eq!(
            (text(period.r#type), text(period.unit)),
            ("cpu", "nanoseconds")
        );
        assert_eq!(text(message.default_sample_type), "cpu");
        assert_eq!(backend_rule_violations(&message), Vec::<String>::new());
        assert!(message.mapping.iter().all(|m| m.has_functions));
        let back = decode(&message).unwrap();
        let names: Vec<&str> = back.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["cpu-clock", "page-faults"]);
        assert_eq!(back.events[1].unit, Unit::Events);
        assert!(back.comments.is_empty(), "{:?}", back.comments);
        // Modifiers, a second clock and cache events get names of their own.
        let events: Vec<EventProfile> = ["cpu-clock:u", "task-clock", "L1-dcache-load-misses"]
            .iter()
            .map(|name| EventProfile::new((*name).into(), Unit::Nanoseconds))
            .collect();
        let values: Vec<String> = sample_types(&events).into_iter().map(|t| t.value).collect();
        assert_eq!(values, ["cpu", "task_clock", "L1_dcache_load_misses"]);
    }

    /// The rules catch what Pyroscope and Go refuse: a `-` or `/` in a sample type, a zero
    /// location id, a sample with too few values.
    #[test]
    fn backend_rules_catch_violations() {
        let mut message = encode(&sample_profile());
        message.string_table.push("cpu-clock/samples".into());
        message.sample_type[0].r#type = message.string_table.len() as i64 - 1;
        message.location[0].id = 0;
        message.sample[0].value.pop();
        let broken = backend_rule_violations(&message).join("\n");
        assert!(broken.contains("contains `-`"), "{broken}");
        assert!(broken.contains("location id 0"), "{broken}");
        assert!(broken.contains("values do not match"), "{broken}");
    }

    /// Files prof wrote before Pyroscope-style names (`cpu-clock/samples`, `cpu-clock`) read
    /// as before, and the names users type find events of any file.
    #[test]
    fn reads_old_names_and_finds_events() {
        let old: &[u8] = include_bytes!("../../tests/golden/spin_faults.pb.gz");
        let profile = decode_bytes(old).unwrap();
        let names: Vec<&str> = profile.events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["cpu-clock", "page-faults"]);
        assert!(profile.events[1].total().samples > 0);
        assert_eq!(find_event(&profile, "page_faults"), Some(1));
        let go = Profile {
            events: vec![
                EventProfile::new("cpu".into(), Unit::Nanoseconds),
                EventProfile::new("page_faults".into(), Unit::Count),
            ],
            ..Profile::default()
        };
        assert_eq!(find_event(&go, "cpu-clock"), Some(0));
        assert_eq!(find_event(&go, "page-faults"), Some(1));
        assert_eq!(find_event(&go, "context-switches"), None);
    }

    /// Go's CPU profiles (`samples/count`, `cpu/nanoseconds`) read as one `cpu` event.
    #[test]
    fn reads_go_style_sample_types() {
        let mut message = encode(&sample_profile());
        let mut strings = StringTable::new();
        for s in &message.string_table[1..] {
            strings.get_owned(s.clone());
        }
        message.sample_type = vec![
            proto::ValueType {
                r#type: strings.get("samples"),
                unit: strings.get("count"),
            },
            proto::ValueType {
                r#type: strings.get("cpu"),
                unit: strings.get("nanoseconds"),
            },
        ];
        for sample in &mut message.sample {
            sample.value = vec![4, 40_000_000];
        }
        message.comment.clear();
        message.string_table = strings.into_strings();
        let profile = decode(&message).unwrap();
        assert_eq!(profile.events.len(), 1);
        assert_eq!(profile.events[0].name, "cpu");
        assert_eq!(
            profile.events[0].total(),
            Value {
                samples: 4,
                period: 40_000_000
            }
        );
    }

    /// Empty, truncated, corrupt and non-pprof input is refused with an error, never a
    /// panic.
    #[test]
    fn bad_input_is_an_error() {
        let mut bytes = Vec::new();
        write(&sample_profile(), &mut bytes).unwrap();
        assert!(matches!(decode_bytes(&[]), Err(PprofError::Empty)));
        assert!(matches!(
            decode_bytes(&bytes[..bytes.len() / 2]),
            Err(PprofError::Gzip(_))
        ));
        let raw = encode(&sample_profile()).encode_to_vec();
        assert!(decode_bytes(&raw[..raw.len() - 3]).is_err());
        assert!(decode_bytes(b"<svg>not a profile</svg>").is_err());
        let mut broken = encode(&sample_profile());
        broken.sample[0].location_id.push(999);
        assert!(matches!(decode(&broken), Err(PprofError::Invalid(_))));
    }

    /// Real files to mutate: a recording prof made (gzipped and raw) and a profile with
    /// every feature (raw).
    fn seeds() -> Vec<Vec<u8>> {
        let recorded: &[u8] = include_bytes!("../../tests/golden/spin_faults.pb.gz");
        let mut raw = Vec::new();
        GzDecoder::new(recorded).read_to_end(&mut raw).unwrap();
        vec![
            recorded.to_vec(),
            raw,
            encode(&sample_profile()).encode_to_vec(),
        ]
    }

    /// How many mutated files the fuzz test tries: `PROF_FUZZ_CASES`, default 2,000.
    fn fuzz_cases() -> u32 {
        std::env::var("PROF_FUZZ_CASES")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(2_000)
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: fuzz_cases(),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Fuzzing the reader: real files with bytes flipped, inserted, deleted or cut off
        /// either read (and then render and re-encode) or are refused; nothing panics.
        #[test]
        fn mutated_files_never_panic(
            seed in 0..3usize,
            edits in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>(), 0..4u8),
                1..6,
            ),
        ) {
            let mut bytes = seeds().swap_remove(seed);
            for (position, byte, kind) in edits {
                let at = position % bytes.len().max(1);
                match kind {
                    0 if !bytes.is_empty() => bytes[at] ^= byte | 1,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at.min(bytes.len()), byte),
                    _ if !bytes.is_empty() => {
                        bytes.remove(at);
                    }
                    _ => {}
                }
            }
            if let Ok(profile) = decode_bytes(&bytes) {
                for event in 0..profile.events.len() {
                    crate::export::folded::stacks(&profile, event, true);
                    profile.function_shares(event);
                }
                let again = encode(&profile).encode_to_vec();
                proptest::prop_assert!(decode_bytes(&again).is_ok());
            }
        }
    }
}
