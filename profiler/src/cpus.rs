//! CPU lists: which CPUs are online, and `-C` lists such as `0-3,6`.

use std::collections::BTreeSet;
use std::fs;

use thiserror::Error;

/// A bad `-C` list or an unavailable CPU.
#[derive(Debug, Error)]
pub enum CpuError {
    /// The list does not parse.
    #[error("bad CPU list `{0}`: use numbers and ranges such as 0-3,6")]
    Syntax(String),
    /// A listed CPU is not online.
    #[error("CPU {cpu} is not online (online CPUs: {online})")]
    Offline {
        /// The CPU asked for.
        cpu: u32,
        /// The online list as the kernel prints it.
        online: String,
    },
    /// The online list could not be read.
    #[error("cannot read /sys/devices/system/cpu/online: {0}")]
    Read(#[from] std::io::Error),
}

/// Parses a CPU list like `0-3,6` (the format of `/sys/devices/system/cpu/online` and `-C`).
pub fn parse_list(text: &str) -> Result<Vec<u32>, CpuError> {
    let bad = || CpuError::Syntax(text.to_owned());
    let mut cpus = BTreeSet::new();
    for part in text.trim().split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>(), b.trim().parse::<u32>()),
            None => (part.trim().parse::<u32>(), part.trim().parse::<u32>()),
        };
        let (first, last) = (first.map_err(|_| bad())?, last.map_err(|_| bad())?);
        if first > last || last - first > 65536 {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(cpus.into_iter().collect())
}

/// The CPUs to sample: all online CPUs, or those of `requested`, which must all be online.
pub fn select(requested: Option<&str>) -> Result<Vec<u32>, CpuError> {
    let online_text = fs::read_to_string("/sys/devices/system/cpu/online")?;
    let online = parse_list(&online_text)?;
    let Some(requested) = requested else {
        return Ok(online);
    };
    let wanted = parse_list(requested)?;
    if let Some(&cpu) = wanted.iter().find(|cpu| !online.contains(cpu)) {
        return Err(CpuError::Offline {
            cpu,
            online: online_text.trim().to_owned(),
        });
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ranges and singles, sorted and deduplicated; junk is refused.
    #[test]
    fn cpu_lists() {
        assert_eq!(parse_list("0-3,6").unwrap(), vec![0, 1, 2, 3, 6]);
        assert_eq!(parse_list("1,1,0\n").unwrap(), vec![0, 1]);
        assert!(parse_list("3-1").is_err());
        assert!(parse_list("a").is_err());
        assert!(parse_list("").is_err());
    }

    /// Every online CPU is selectable; a CPU far beyond them is not.
    #[test]
    fn selection_respects_online_cpus() {
        let all = select(None).unwrap();
        assert!(!all.is_empty());
        assert_eq!(select(Some("0")).unwrap(), vec![0]);
        assert!(matches!(
            select(Some("4000")),
            Err(CpuError::Offline { cpu: 4000, .. })
        ));
    }
}
