//! Frame names interned once per unique location and label set, for the text exporters.
//!
//! A recording of 150k unique stacks has some 4 million frames but only tens of thousands of
//! distinct names, and its stacks often differ only in the addresses of their leaves. So
//! the folded and flame graph writers turn each stack into a list of name ids (computed once
//! per location, however many stacks share it) and merge, sort and prune those lists; text
//! is only written at the end, straight from this table.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::sync::Arc;

use rustc_hash::FxHashMap as HashMap;

use crate::profile::{Profile, Stack, UNKNOWN_FRAME};

/// Not computed yet.
const PENDING: u32 = u32::MAX;

/// The frame names of one profile's stacks, each distinct name once, by dense id.
#[derive(Debug)]
pub struct FrameNames<'a> {
    profile: &'a Profile,
    per_pid: bool,
    names: Vec<Cow<'a, str>>,
    ids: HashMap<Cow<'a, str>, u32>,
    /// Per location id: where its name ids start in `spans`, and how many (`PENDING` when
    /// not computed yet).
    locations: Vec<(u32, u32)>,
    spans: Vec<u32>,
    /// Per label set id: its root frame's name id, `None` for no root frame.
    roots: Vec<Option<Option<u32>>>,
    /// The name id of a function's frame, by the address of its name and whether it is in
    /// kernel code; the profile holds every name while this table lives.
    functions: HashMap<(usize, bool), u32>,
}

impl<'a> FrameNames<'a> {
    /// An empty table for `profile`'s stacks; `per_pid` roots them at `comm (pid)`.
    pub fn new(profile: &'a Profile, per_pid: bool) -> FrameNames<'a> {
        FrameNames {
            profile,
            per_pid,
            names: Vec::new(),
            ids: HashMap::default(),
            locations: vec![(0, PENDING); profile.locations.len()],
            spans: Vec::new(),
            roots: vec![None; profile.labels.len()],
            functions: HashMap::default(),
        }
    }

    fn intern(&mut self, name: Cow<'a, str>) -> u32 {
        if let Some(&id) = self.ids.get(name.as_ref()) {
            return id;
        }
        let id = u32::try_from(self.names.len()).expect("fewer than 2^32 names");
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The name with id `id`.
    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    /// Appends the name ids of `stack`, root first, to `path`: the root frame of its labels,
    /// then each location's names (see [`crate::profile::Location::frame_names`]); a stack
    /// of no frame at all is one `[unknown]`. These are the frames of its folded line.
    pub fn path(&mut self, stack: &Stack, path: &mut Vec<u32>) {
        let start = path.len();
        let root = match self.roots[stack.labels as usize] {
            Some(root) => root,
            None => {
                let profile = self.profile;
                // An empty comm gives no frame, as it adds nothing to a folded line.
                let root = profile
                    .labels
                    .get(stack.labels)
                    .root_frame(self.per_pid)
                    .filter(|name| !name.is_empty())
                    .map(|name| self.intern(Cow::Owned(name)));
                self.roots[stack.labels as usize] = Some(root);
                root
            }
        };
        path.extend(root);
        for &location in stack.locations.iter() {
            let (from, len) = self.location(location);
            path.extend_from_slice(&self.spans[from as usize..(from + len) as usize]);
        }
        if path.len() == start {
            let unknown = self.intern(Cow::Borrowed(UNKNOWN_FRAME));
            path.push(unknown);
        }
    }

    fn location(&mut self, id: u32) -> (u32, u32) {
        let known = self.locations[id as usize];
        if known.1 != PENDING {
            return known;
        }
        let profile = self.profile;
        let from = u32::try_from(self.spans.len()).expect("fewer than 2^32 names");
        let location = profile.locations.get(id);
        if location.lines.is_empty() {
            let unknown = self.intern(Cow::Borrowed(UNKNOWN_FRAME));
            self.spans.push(unknown);
        }
        for line in &location.lines {
            // Locations of one function share its name's allocation (one per function as
            // read or symbolized): found by address, the name is made and hashed once.
            let key = (
                Arc::as_ptr(&line.function).cast::<u8>().addr(),
                location.kernel,
            );
            let id = match self.functions.get(&key) {
                Some(&id) => id,
                None => {
                    let id = self.intern(line.frame_name(location.kernel));
                    self.functions.insert(key, id);
                    id
                }
            };
            self.spans.push(id);
        }
        let span = (from, self.spans.len() as u32 - from);
        self.locations[id as usize] = span;
        span
    }

    /// How the folded lines of two paths compare as text (`;`-joined names, byte by byte,
    /// a line before the longer lines it begins), without building the text.
    pub fn compare(&self, a: &[u32], b: &[u32]) -> Ordering {
        let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        let (Some(&x), Some(&y)) = (a.get(common), b.get(common)) else {
            // One path begins the other: the shorter line comes first.
            return a.len().cmp(&b.len());
        };
        // Nearly always the first names that differ decide, within the shorter one.
        let (x, y) = (self.name(x).as_bytes(), self.name(y).as_bytes());
        let shorter = x.len().min(y.len());
        match x[..shorter].cmp(&y[..shorter]) {
            Ordering::Equal => self.text(&a[common..]).cmp(self.text(&b[common..])),
            order => order,
        }
    }

    /// The bytes of `path`'s folded text.
    fn text<'s>(&'s self, path: &'s [u32]) -> impl Iterator<Item = u8> + 's {
        path.iter().enumerate().flat_map(move |(i, &id)| {
            let separator: &'static [u8] = if i == 0 { b"" } else { b";" };
            separator.iter().chain(self.name(id).as_bytes()).copied()
        })
    }

    /// Writes the folded text of `path` (its names joined by `;`).
    pub fn write_path(&self, path: &[u32], out: &mut impl std::io::Write) -> std::io::Result<()> {
        for (i, &id) in path.iter().enumerate() {
            if i > 0 {
                out.write_all(b";")?;
            }
            out.write_all(self.name(id).as_bytes())?;
        }
        Ok(())
    }

    /// The folded text of `path`.
    pub fn join(&self, path: &[u32]) -> String {
        let mut text = Vec::new();
        self.write_path(path, &mut text).expect("writing to memory");
        String::from_utf8(text).expect("names are text")
    }
}

/// Profiles that make the text exporters' corner cases, for their tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::events::Unit;
    use crate::profile::{EventProfile, Labels, Line, Location, Profile, Stack, Value};

    fn value(period: u64) -> Value {
        Value {
            samples: period.div_ceil(1000),
            period,
        }
    }

    fn labels(pid: u32, comm: Option<&str>) -> Labels {
        Labels {
            pid: Some(pid),
            comm: comm.map(Into::into),
            extra: Vec::new(),
        }
    }

    /// A profile of one event of `unit` from random stacks, each a list of indices into
    /// `names`, a pid (0: a process without a name, others named `p`) and a period.
    pub(crate) fn random(unit: Unit, names: &[&str], stacks: &[(Vec<usize>, u32, u64)]) -> Profile {
        let mut profile = Profile {
            events: vec![EventProfile::new("x".into(), unit)],
            ..Profile::default()
        };
        for (frames, pid, count) in stacks {
            let frames: Vec<&str> = frames.iter().map(|&i| names[i]).collect();
            let labels = labels(*pid, (*pid > 0).then_some("p"));
            let value = Value {
                samples: 1,
                period: *count,
            };
            profile.add_named(0, labels, &frames, value);
        }
        profile
    }

    /// One cpu-clock event with stacks that share prefixes, kernel frames, inlined
    /// functions, `[unknown]` frames, an empty stack, two processes of one name and one with
    /// none, frames whose names sort before `;` (`work.cold`, `work-2`, `work 3`), distinct
    /// addresses of one function (stacks whose names are equal), a stack of count 0, and
    /// stacks narrow enough to prune.
    pub(crate) fn tricky() -> Profile {
        let mut profile = Profile {
            events: vec![EventProfile::new("cpu-clock".into(), Unit::Nanoseconds)],
            ..Profile::default()
        };
        let app = |pid| labels(pid, Some("app"));
        profile.add_named(0, app(1), &["main", "work"], value(3_000_000));
        profile.add_named(0, app(2), &["main", "work"], value(1_000_000));
        profile.add_named(0, app(1), &["main", "work.cold"], value(500_000));
        profile.add_named(0, app(1), &["main", "work-2", "x"], value(400_000));
        profile.add_named(0, app(1), &["main", "work 3"], value(300_000));
        profile.add_named(0, app(1), &["main", "work", "leaf"], value(200_000));
        let kernel = ["main", "read", "ksys_read_[k]", "vfs_read_[k]"];
        profile.add_named(0, app(1), &kernel, value(700_000));
        profile.add_named(0, app(1), &["main", "[unknown]", "f"], value(90_000));
        profile.add_named(0, labels(3, None), &["lonely"], value(80_000));
        profile.add_named(0, Labels::default(), &[], value(70_000));
        profile.add_named(0, app(1), &["main", "zero"], value(0));
        let line = |f: &str| Line {
            function: f.into(),
            file: None,
            line: 0,
        };
        let labels = profile.labels.intern(app(1));
        let main = profile.locations.intern(Location::named("main"));
        for address in 0..40u64 {
            let inlined = profile.locations.intern(Location {
                address: 0x1000 + address,
                mapping: None,
                lines: vec![line("outer"), line("inlined")],
                kernel: false,
            });
            let unknown = profile.locations.intern(Location {
                address: 0x9000 + address,
                ..Location::unknown()
            });
            let locations = if address % 2 == 0 {
                vec![main, inlined]
            } else {
                vec![main, inlined, unknown]
            };
            let stack = Stack {
                labels,
                locations: locations.into(),
            };
            profile.events[0].add(stack, value(10 + address * 7));
        }
        for narrow in 0..30 {
            let name = format!("narrow_{narrow}");
            profile.add_named(0, app(1), &["main", "work", &name, "deeper"], value(20));
        }
        profile
    }
}
