//! `prof diff`: a differential flame graph of two saved profiles of one event.

use std::path::PathBuf;

use anyhow::{Result, bail};

use prof::export::{self, Format, diff, flamegraph, folded, pprof};

use crate::cmd::report::event_index;

/// A validated `prof diff` request.
#[derive(Debug)]
pub struct DiffConfig {
    /// The baseline.
    pub before: PathBuf,
    /// The profile compared with it.
    pub after: PathBuf,
    /// `--event`; by default the first event both profiles have.
    pub event: Option<String>,
    /// `--normalize`.
    pub normalize: bool,
    /// `-o` paths.
    pub outputs: Vec<PathBuf>,
    /// How to draw the graph.
    pub flame: flamegraph::Options,
}

/// Runs `prof diff`.
pub fn run(config: DiffConfig) -> Result<u8> {
    for path in &config.outputs {
        let format = Format::from_path(path)?.0;
        if !matches!(format, Format::Svg | Format::Folded) {
            bail!(
                "prof diff writes .svg (differential flame graph) or .folded (stack before after) \
                 files, not `{}`",
                path.display()
            );
        }
        export::check_writable(path)?;
    }
    let before = export::read_profile(&config.before)?;
    let after = export::read_profile(&config.after)?;
    let (b, a) = match &config.event {
        Some(name) => (event_index(&before, name)?, event_index(&after, name)?),
        None => {
            // Folded files carry one event each, named after the file: compare them as is.
            let common = before
                .events
                .iter()
                .position(|e| pprof::find_event(&after, &e.name).is_some());
            match common {
                Some(b) => (
                    b,
                    pprof::find_event(&after, &before.events[b].name).unwrap_or(0),
                ),
                None if before.events.len() == 1 && after.events.len() == 1 => (0, 0),
                None => bail!(
                    "the profiles share no event; pick one of each with --event (before has {}, after has {})",
                    names(&before),
                    names(&after)
                ),
            }
        }
    };
    let per_pid = config.flame.per_pid;
    let before_stacks = folded::stacks(&before, b, per_pid);
    let after_stacks = folded::stacks(&after, a, per_pid);
    let event = &after.events[a];
    for path in &config.outputs {
        export::write_atomic(path, |out| match Format::from_path(path) {
            Ok((Format::Folded, _)) => {
                for line in diff::lines(&before_stacks, &after_stacks, config.normalize) {
                    writeln!(out, "{line}")?;
                }
                Ok(())
            }
            _ => diff::write(
                &before_stacks,
                &after_stacks,
                &event.name,
                event.unit,
                config.normalize,
                &config.flame,
                out,
            ),
        })?;
        eprintln!("prof: wrote {}", path.display());
    }
    Ok(0)
}

fn names(profile: &prof::profile::Profile) -> String {
    let names: Vec<&str> = profile.events.iter().map(|e| e.name.as_str()).collect();
    names.join(", ")
}
