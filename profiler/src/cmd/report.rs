//! `prof report`: read a saved profile (pprof from prof or any other program, or folded
//! stacks), then print its hottest functions or render it again: flame graphs, folded
//! stacks, pprof, or a ratio flame graph of two of its events.

use std::path::PathBuf;

use anyhow::{Result, bail};

use prof::events::file_name_part;
use prof::export::{self, Format, flamegraph, pprof, ratio};
use prof::profile::Profile;
use prof::summary;

use crate::cmd::record::write_outputs;

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
    /// How to draw flame graphs.
    pub flame: flamegraph::Options,
}

/// Runs `prof report`.
pub fn run(config: ReportConfig) -> Result<u8> {
    let mut profile = export::read_profile(&config.input)?;
    if let Some((numerator, denominator)) = &config.ratio {
        return write_ratio(&profile, numerator, denominator, &config);
    }
    if !config.events.is_empty() {
        let mut wanted = Vec::new();
        for name in &config.events {
            wanted.push(event_index(&profile, name)?);
        }
        let events = std::mem::take(&mut profile.events);
        profile.events = wanted.into_iter().map(|i| events[i].clone()).collect();
    }
    if config.outputs.is_empty() {
        for index in 0..profile.events.len() {
            if index > 0 {
                println!();
            }
            print!("{}", summary::top_table(&profile, index, config.top));
        }
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
        eprintln!("prof: wrote {}", path.display());
    }
    Ok(0)
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
    for path in &config.outputs {
        export::write_atomic(path, |out| {
            ratio::write(profile, num, den, &config.flame, out)
        })?;
        eprintln!("prof: wrote {}", path.display());
    }
    Ok(0)
}
