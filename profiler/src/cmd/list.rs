//! `prof list`: every event name and whether it works here, and why not, and the kernel's
//! tracepoint categories; `prof list CATEGORY`: the tracepoints of one category.

use std::io::{self, Write};

use anyhow::Result;

use prof::events::{self, EventKind};
use prof::perf;
use prof::tracefs::Tracefs;

/// Prints the event table, or with `category` that category's tracepoints, to stdout.
pub fn run(category: Option<&str>) -> Result<u8> {
    if let Some(category) = category {
        return list_category(category);
    }
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
    let tracefs = Tracefs::open();
    let off_cpu = match &tracefs {
        Ok(fs) => match fs.id(events::SCHED_SWITCH.0, events::SCHED_SWITCH.1) {
            Ok(_) => "yes (prof record --off-cpu)".to_owned(),
            Err(err) => format!("no: {err}"),
        },
        Err(err) => format!("no: {err}"),
    };
    writeln!(
        out,
        "{:<34} {:<15} {}",
        events::OFF_CPU,
        EventKind::OffCpu.label(),
        off_cpu
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Modifiers: append :u to sample only user code, :k for only kernel code (e.g. cpu-clock:u);"
    )?;
    writeln!(
        out,
        "on tracepoints and off-cpu they choose the stacks taken (user only, kernel only)."
    )?;
    writeln!(out)?;
    let categories = tracefs.and_then(|fs| {
        let categories = fs.categories()?;
        let mut counted = Vec::with_capacity(categories.len());
        for category in categories {
            let events = fs.events(&category)?.len();
            counted.push((category, events));
        }
        Ok(counted)
    });
    match categories {
        Ok(categories) => {
            writeln!(
                out,
                "Tracepoint categories ({}), with their number of tracepoints. Record one as \
                 -e category:name; `prof list CATEGORY` lists a category's tracepoints:",
                categories.len()
            )?;
            let cells: Vec<String> = categories
                .iter()
                .map(|(category, events)| format!("{category} ({events})"))
                .collect();
            for row in cells.chunks(4) {
                let row: Vec<String> = row.iter().map(|cell| format!("{cell:<24}")).collect();
                writeln!(out, "  {}", row.join("").trim_end())?;
            }
        }
        Err(err) => writeln!(out, "Tracepoints: not available here: {err}")?,
    }
    Ok(0)
}

/// Prints `category:name` for each tracepoint of `category`.
fn list_category(category: &str) -> Result<u8> {
    let fs = Tracefs::open()?;
    let names = fs.events(category)?;
    let mut out = io::stdout().lock();
    for name in &names {
        writeln!(out, "{category}:{name}")?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{} tracepoints. Record one with: prof record -e {category}:{} ...",
        names.len(),
        names.first().map_or("NAME", String::as_str)
    )?;
    Ok(0)
}

fn availability(event: &events::Event) -> String {
    match perf::probe(event) {
        Ok(()) => "yes".to_owned(),
        Err(err) => format!("no: {}", events::unsupported_reason(event, &err)),
    }
}
