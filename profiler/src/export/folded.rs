//! Collapsed ("folded") stacks: one `comm;outer;…;leaf count` line per unique stack, where
//! count is the estimated event count (the sum of sample periods), sorted by stack. This is
//! the input format of inferno and Brendan Gregg's flamegraph.pl.

use std::io::{self, Write};

use crate::profile::{EventProfile, Frame};

/// Writes `profile` as folded stacks.
pub fn write(profile: &EventProfile, out: &mut dyn Write) -> io::Result<()> {
    for line in lines(profile) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The folded lines of `profile`, sorted by stack.
pub fn lines(profile: &EventProfile) -> Vec<String> {
    profile
        .sorted_stacks()
        .into_iter()
        .filter(|(_, value)| value.period > 0)
        .map(|(frames, value)| format!("{} {}", join(frames), value.period))
        .collect()
}

fn join(frames: &[Frame]) -> String {
    let mut line = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            line.push(';');
        }
        line.push_str(frame);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Unit;
    use crate::profile::Value;

    /// Lines are `frames count`, count being the period sum, in a stable order.
    #[test]
    fn folded_lines() {
        let mut profile = EventProfile::new("cpu-clock".into(), Unit::Nanoseconds);
        let stack = |frames: &[&str]| frames.iter().map(|f| Frame::from(*f)).collect::<Vec<_>>();
        profile.add(
            stack(&["app", "main", "work"]),
            Value {
                samples: 2,
                period: 2_000_000,
            },
        );
        profile.add(
            stack(&["app", "main", "read", "ksys_read_[k]"]),
            Value {
                samples: 1,
                period: 1_000_000,
            },
        );
        let mut out = Vec::new();
        write(&profile, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "app;main;read;ksys_read_[k] 1000000\napp;main;work 2000000\n"
        );
    }
}
