//! `prof list`: every event name and whether it works here, and why not.

use std::io::{self, Write};

use anyhow::Result;

use prof::events::{self, EventKind};
use prof::perf;

/// Prints the event table to stdout.
pub fn run() -> Result<u8> {
    let mut out = io::stdout().lock();
    writeln!(out, "{:<34} {:<15} AVAILABLE HERE", "EVENT", "KIND")?;
    for named in events::NAMED_EVENTS {
        let mut name = named.name.to_owned();
        if !named.aliases.is_empty() {
            name.push_str(&format!(" ({})", named.aliases.join(", ")));
        }
        let event = events::Event::parse(named.name)?;
        let mut status = availability(&event);
        if named.name == "cpu-cycles" && status != "yes" {
            status.push_str("; prof record falls back to cpu-clock");
        }
        writeln!(out, "{:<34} {:<15} {}", name, named.kind.label(), status)?;
    }
    for (name, _) in events::cache_events() {
        let event = events::Event::parse(&name)?;
        writeln!(
            out,
            "{:<34} {:<15} {}",
            name,
            EventKind::HardwareCache.label(),
            availability(&event)
        )?;
    }
    let raw = if events::hardware_pmu_present() {
        "depends on the CPU model".to_owned()
    } else {
        "no: this machine has no hardware PMU".to_owned()
    };
    writeln!(
        out,
        "{:<34} {:<15} {}",
        "rNNNN (hex config)",
        EventKind::Raw.label(),
        raw
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Modifiers: append :u to sample only user code, :k for only kernel code (e.g. cpu-clock:u)."
    )?;
    Ok(0)
}

fn availability(event: &events::Event) -> String {
    match perf::probe(event) {
        Ok(()) => "yes".to_owned(),
        Err(err) => format!("no: {}", events::unsupported_reason(event, &err)),
    }
}
