//! `prof diff`: a differential flame graph of two saved profiles of one event.

use std::path::PathBuf;

use anyhow::{Result, bail};

use prof::export::limits::ReadLimits;
use prof::export::{self, Format, diff, flamegraph, folded, pprof};

use crate::cmd::report::event_index;
use crate::cmd::{discarded_line, quit_on_signals};

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
    /// How much of each input to read.
    pub limits: ReadLimits,
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
    quit_on_signals(&discarded_line("interrupted", &[], &config.outputs))?;
    let before = export::read_profile_within(&config.before, &config.limits)?;
    let after = export::read_profile_within(&config.after, &config.limits)?;
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
    for (index, path) in config.outputs.iter().enumerate() {
        prof::interrupt::set_message(&discarded_line(
            "interrupted",
            &config.outputs[..index],
            &config.outputs[index..],
        ));
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
        say!("prof: wrote {}", path.display());
    }
    Ok(0)
}

fn names(profile: &prof::profile::Profile) -> String {
    let names: Vec<&str> = profile.events.iter().map(|e| e.name.as_str()).collect();
    names.join(", ")
}
