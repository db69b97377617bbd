//! Privileges: whether this process may load BPF programs and open system-wide perf events,
//! and what to tell the user when it may not.

use std::fs;

use thiserror::Error;

/// `CAP_SYS_ADMIN`: implies everything prof needs.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_PERFMON` (Linux 5.8): system-wide perf events, tracing BPF programs.
const CAP_PERFMON: u32 = 38;
/// `CAP_BPF` (Linux 5.8): loading BPF programs and creating maps.
const CAP_BPF: u32 = 39;

/// Missing privileges, with the fix.
#[derive(Debug, Error)]
#[error(
    "{what} needs root, or the capabilities CAP_BPF and CAP_PERFMON (missing: {missing}; \
     kernel.perf_event_paranoid = {paranoid}). Run it with sudo, or grant the binary the \
     capabilities: sudo setcap cap_bpf,cap_perfmon+ep {exe}"
)]
pub struct PrivilegeError {
    /// What was attempted, e.g. "prof record".
    pub what: &'static str,
    /// The missing capability names, comma-separated.
    pub missing: String,
    /// `kernel.perf_event_paranoid`, or "unknown".
    pub paranoid: String,
    /// Path of the prof binary, for the setcap line.
    pub exe: String,
}

/// The effective capability set of this process.
fn effective_capabilities() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0)
}

/// `kernel.perf_event_paranoid` as text.
pub fn perf_event_paranoid() -> String {
    fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Checks that this process holds CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), which loading
/// the BPF program and sampling all CPUs need, whatever `perf_event_paranoid` says.
pub fn check(what: &'static str) -> Result<(), PrivilegeError> {
    missing_for(what, effective_capabilities())
}

fn missing_for(what: &'static str, caps: u64) -> Result<(), PrivilegeError> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect();
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "$(which prof)".to_owned());
    Err(PrivilegeError {
        what,
        missing: missing.join(", "),
        paranoid: perf_event_paranoid(),
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CAP_SYS_ADMIN alone, or CAP_BPF with CAP_PERFMON, is enough; the error names what is
    /// missing and how to fix it.
    #[test]
    fn capability_sets() {
        assert!(missing_for("prof record", 1 << CAP_SYS_ADMIN).is_ok());
        assert!(missing_for("prof record", 1 << CAP_BPF | 1 << CAP_PERFMON).is_ok());
        let err = missing_for("prof record", 1 << CAP_BPF)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing: CAP_PERFMON"), "{err}");
        assert!(err.contains("sudo setcap cap_bpf,cap_perfmon+ep"), "{err}");
        assert!(err.contains("perf_event_paranoid"), "{err}");
        let err = missing_for("prof record", 0).unwrap_err().to_string();
        assert!(err.contains("missing: CAP_BPF, CAP_PERFMON"), "{err}");
    }
}
