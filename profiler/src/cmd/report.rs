//! `prof report`: read a saved profile (pprof from prof or any other program, or folded
//! stacks), then print its hottest functions or render it again: flame graphs, folded
//! stacks, pprof, or a ratio flame graph of two of its events. `--event a+b` adds events up
//! into one, the wall-clock view `cpu-clock+off-cpu` among them.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use prof::events::file_name_part;
use prof::export::limits::ReadLimits;
use prof::export::{self, Format, flamegraph, pprof, ratio};
use prof::profile::{EventProfile, Profile};
use prof::summary;

use crate::cmd::record::write_outputs;
use crate::cmd::{discarded_line, quit_on_signals};

/// A validated `prof report` request.
#[derive(Debug)]
pub struct ReportConfig {
    /// The profile to read.
    pub input: PathBuf,
    /// `--event`: the events to keep (all when empty).
    pub events: Vec<String>,
    /// `-o` paths; none prints the table.
    pub outputs: Vec<PathBuf>,
    /// `--top`.
    pub top: usize,
    /// `--ratio NUMERATOR/DENOMINATOR`.
    pub ratio: Option<(String, String)>,
    /// How much of the input to read.
    pub limits: ReadLimits,
    /// How to draw flame graphs.
    pub flame: flamegraph::Options,
}

/// Runs `prof report`.
pub fn run(config: ReportConfig) -> Result<u8> {
    // Nothing to finish: a signal removes what is half-written and ends prof.
    quit_on_signals(&discarded_line("interrupted", &[], &config.outputs))?;
    let mut profile = export::read_profile_within(&config.input, &config.limits)?;
    if let Some((numerator, denominator)) = &config.ratio {
        return write_ratio(&profile, numerator, denominator, &config);
    }
    if !config.events.is_empty() {
        let mut wanted = Vec::new();
        for name in &config.events {
            wanted.push(selected_event(&profile, name)?);
        }
        profile.events = wanted;
    }
    if config.outputs.is_empty() {
        let mut out = io::stdout().lock();
        for index in 0..profile.events.len() {
            if index > 0 {
                writeln!(out).context("writing to stdout")?;
            }
            out.write_all(summary::top_table(&profile, index, config.top).as_bytes())
                .context("writing to stdout")?;
        }
        out.flush().context("writing to stdout")?;
        return Ok(0);
    }
    let parts: Vec<String> = profile
        .events
        .iter()
        .map(|e| file_name_part(&e.name))
        .collect();
    let files = export::plan(&config.outputs, &parts)?;
    let written = write_outputs(&files, &profile, &config.flame)?;
    for (_, path) in written {
        say!("prof: wrote {}", path.display());
    }
    Ok(0)
}

/// Event `name` of the profile, or the sum of events `a+b+...` (`cpu-clock+off-cpu`: all of a
/// thread's time, running and blocked, in one graph).
fn selected_event(profile: &Profile, name: &str) -> Result<EventProfile> {
    if profile.event_index(name).is_none() && name.contains('+') {
        let mut indices = Vec::new();
        for part in name.split('+') {
            if part.is_empty() {
                bail!("`{name}`: a sum of events is EVENT+EVENT, e.g. cpu-clock+off-cpu");
            }
            indices.push(event_index(profile, part)?);
        }
        return profile
            .sum_events(&indices, name.to_owned())
            .map_err(anyhow::Error::msg);
    }
    Ok(profile.events[event_index(profile, name)?].clone())
}

/// The index of event `name` (a perf name, or the pprof sample type it maps to), or an
/// error that lists the events the profile has.
pub fn event_index(profile: &Profile, name: &str) -> Result<usize> {
    if let Some(index) = pprof::find_event(profile, name) {
        return Ok(index);
    }
    let known: Vec<&str> = profile.events.iter().map(|e| e.name.as_str()).collect();
    bail!(
        "the profile has no event `{name}`; it has: {}",
        known.join(", ")
    )
}

fn write_ratio(
    profile: &Profile,
    numerator: &str,
    denominator: &str,
    config: &ReportConfig,
) -> Result<u8> {
    let num = event_index(profile, numerator)?;
    let den = event_index(profile, denominator)?;
    if config.outputs.is_empty() {
        bail!("--ratio draws a flame graph: give it an output, e.g. -o ratio.svg");
    }
    for path in &config.outputs {
        if Format::from_path(path)?.0 != Format::Svg {
            bail!(
                "--ratio draws a flame graph: `{}` must be an .svg file",
                path.display()
            );
        }
        export::check_writable(path)?;
    }
    for (index, path) in config.outputs.iter().enumerate() {
        prof::interrupt::set_message(&discarded_line(
            "interrupted",
            &config.outputs[..index],
            &config.outputs[index..],
        ));
        export::write_atomic(path, |out| {
            ratio::write(profile, num, den, &config.flame, out)
        })?;
        say!("prof: wrote {}", path.display());
    }
    Ok(0)
}
