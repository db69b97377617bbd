//! `prof list`: every event name and whether it works here, and why not, and the kernel's
//! tracepoint categories; `prof list CATEGORY`: the tracepoints of one category.

use std::fmt::Write as _;
use std::io::{self, Write};

use anyhow::{Context, Result};

use prof::events::{self, EventKind};
use prof::perf;
use prof::tracefs::Tracefs;

/// Prints the event table, or with `category` that category's tracepoints, to stdout.
pub fn run(category: Option<&str>) -> Result<u8> {
    if let Some(category) = category {
        return list_category(category);
    }
    let mut rows = Vec::new();
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
        rows.push([name, named.kind.label().to_owned(), status]);
    }
    for (name, _) in events::cache_events() {
        let event = events::Event::parse(&name)?;
        let status = availability(&event);
        rows.push([name, EventKind::HardwareCache.label().to_owned(), status]);
    }
    let raw = if events::hardware_pmu_present() {
        "depends on the CPU model".to_owned()
    } else {
        "no: this machine has no hardware PMU".to_owned()
    };
    rows.push([
        "rNNNN (hex config)".to_owned(),
        EventKind::Raw.label().to_owned(),
        raw,
    ]);
    let tracefs = Tracefs::open();
    let off_cpu = match &tracefs {
        Ok(fs) => match fs.id(events::SCHED_SWITCH.0, events::SCHED_SWITCH.1) {
            Ok(_) => "yes (prof record --off-cpu)".to_owned(),
            Err(err) => format!("no: {err}"),
        },
        Err(err) => format!("no: {err}"),
    };
    rows.push([
        events::OFF_CPU.to_owned(),
        EventKind::OffCpu.label().to_owned(),
        off_cpu,
    ]);
    let mut text = table(&rows);
    text.push_str(
        "\nModifiers: append :u to sample only user code, :k for only kernel code (e.g. \
         cpu-clock:u);\non tracepoints and off-cpu they choose the stacks taken (user only, \
         kernel only).\n\n",
    );
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
            let _ = writeln!(
                text,
                "Tracepoint categories ({}), with their number of tracepoints. Record one as \
                 -e category:name; `prof list CATEGORY` lists a category's tracepoints:",
                categories.len()
            );
            let cells: Vec<String> = categories
                .iter()
                .map(|(category, events)| format!("{category} ({events})"))
                .collect();
            for row in cells.chunks(4) {
                let row: Vec<String> = row.iter().map(|cell| format!("{cell:<24}")).collect();
                let _ = writeln!(text, "  {}", row.join("").trim_end());
            }
        }
        Err(err) => {
            let _ = writeln!(text, "Tracepoints: not available here: {err}");
        }
    }
    print(&text)
}

/// Prints `category:name` for each tracepoint of `category`.
fn list_category(category: &str) -> Result<u8> {
    let fs = Tracefs::open()?;
    let names = fs.events(category)?;
    let mut text = String::new();
    for name in &names {
        let _ = writeln!(text, "{category}:{name}");
    }
    let _ = writeln!(
        text,
        "\n{} tracepoints. Record one with: prof record -e {category}:{} ...",
        names.len(),
        names.first().map_or("NAME", String::as_str)
    );
    print(&text)
}

/// Writes `text` to stdout.
fn print(text: &str) -> Result<u8> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    Ok(0)
}

/// The rows under a header, each column as wide as its widest cell.
fn table(rows: &[[String; 3]]) -> String {
    let header = ["EVENT", "KIND", "AVAILABLE HERE"].map(str::to_owned);
    let width = |column: usize| {
        rows.iter()
            .chain([&header])
            .map(|row| row[column].chars().count())
            .max()
            .unwrap_or(0)
    };
    let (name, kind) = (width(0), width(1));
    let mut text = String::new();
    for row in [&header].into_iter().chain(rows) {
        text.push_str(&format!(
            "{:<name$}  {:<kind$}  {}\n",
            row[0], row[1], row[2]
        ));
    }
    text
}

fn availability(event: &events::Event) -> String {
    match perf::probe(event) {
        Ok(()) => "yes".to_owned(),
        Err(err) => format!("no: {}", events::unsupported_reason(event, &err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's second and third columns start where the header's do, however long an
    /// event's name and aliases are (stalled-cycles-frontend (idle-cycles-frontend)).
    #[test]
    fn columns_align() {
        let rows = [
            ["cpu-clock", "software", "yes"],
            [
                "stalled-cycles-frontend (idle-cycles-frontend)",
                "hardware",
                "no: no PMU",
            ],
            ["L1-dcache-load-misses", "hardware cache", "no"],
        ]
        .map(|row| row.map(str::to_owned));
        let text = table(&rows);
        let lines: Vec<&str> = text.lines().collect();
        let kind = lines[0].find("KIND").unwrap();
        let available = lines[0].find("AVAILABLE HERE").unwrap();
        for (line, row) in lines[1..].iter().zip(&rows) {
            assert_eq!(line.find(&row[1]), Some(kind), "{text}");
            assert_eq!(line.rfind(&row[2]), Some(available), "{text}");
        }
    }
}
