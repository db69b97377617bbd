//! Labels that say which process a sample came from: its executable, and its cgroup and
//! container where `/proc` says so.
//!
//! In: a pid (read from `/proc` while the process lives), or what the process table knows of
//! a process that already exited. Out: [`ProcessLabels`]. A [`LabelCache`] reads each live
//! process once, and forgets the processes the agent forgets.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::procs::{Backing, Process};

/// What the agent attaches to every sample of a process, besides its pid and comm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessLabels {
    /// The executable's path.
    pub executable: Option<Arc<str>>,
    /// The cgroup v2 path (`/system.slice/nginx.service`), or the first v1 one.
    pub cgroup: Option<Arc<str>>,
    /// A container id found in the cgroup path (docker, containerd, CRI-O, podman).
    pub container: Option<Arc<str>>,
}

/// Reads the labels of a live process; `None` once it is gone.
pub fn read(pid: u32) -> Option<ProcessLabels> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let cgroup_text = std::fs::read_to_string(proc_dir.join("cgroup")).ok()?;
    let executable = std::fs::read_link(proc_dir.join("exe"))
        .ok()
        .map(|path| Arc::from(path.to_string_lossy().trim_end_matches(" (deleted)")));
    let cgroup = cgroup_path(&cgroup_text);
    let container = cgroup.as_deref().and_then(container_id);
    Some(ProcessLabels {
        executable,
        cgroup: cgroup.map(Arc::from),
        container: container.map(Arc::from),
    })
}

/// The labels of a process that can no longer be read: its executable is the file mapped
/// lowest, which is where the kernel loads the program (libraries and the dynamic loader go
/// higher up).
pub fn from_table(process: &Process) -> ProcessLabels {
    let executable = process.mappings.iter().find_map(|m| match &m.backing {
        Backing::File(path) => Some(Arc::from(path.to_string_lossy().as_ref())),
        _ => None,
    });
    ProcessLabels {
        executable,
        ..ProcessLabels::default()
    }
}

/// The cgroup path in `/proc/<pid>/cgroup`: the v2 line (`0::/path`), else the first v1
/// line's path. The root cgroup (`/`) says nothing and gives `None`.
pub fn cgroup_path(text: &str) -> Option<String> {
    let mut fallback = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" {
            return (path != "/").then(|| path.to_owned());
        }
        if fallback.is_none() && path != "/" {
            fallback = Some(path.to_owned());
        }
    }
    fallback
}

/// A 64-hex-digit container id in a cgroup path, as docker (`/docker/<id>`,
/// `docker-<id>.scope`), containerd (`cri-containerd-<id>.scope`), CRI-O (`crio-<id>.scope`)
/// and podman (`libpod-<id>.scope`) name them.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup.rsplit('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = part.rsplit(['-', ':']).next().unwrap_or(part);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// Labels by pid, read once per process.
#[derive(Debug, Default)]
pub struct LabelCache {
    labels: HashMap<u32, (Option<Arc<str>>, ProcessLabels)>,
}

impl LabelCache {
    /// The labels of `pid`, whose comm is now `comm` (a new comm means an exec, which may
    /// change the executable, so the process is read again). `process` is what the table
    /// knows, for a process that is gone.
    pub fn get(
        &mut self,
        pid: u32,
        comm: Option<&Arc<str>>,
        process: Option<&Process>,
    ) -> ProcessLabels {
        if let Some((seen_comm, labels)) = self.labels.get(&pid)
            && seen_comm.as_ref() == comm
        {
            return labels.clone();
        }
        let labels = match read(pid) {
            Some(labels) => labels,
            None => process.map(from_table).unwrap_or_default(),
        };
        self.labels.insert(pid, (comm.cloned(), labels.clone()));
        labels
    }

    /// Forgets the pids for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(u32) -> bool) {
        self.labels.retain(|&pid, _| keep(pid));
    }

    /// Processes cached.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f2d7e0c1b9a8d3e6f5c4b3a29180716f5e4d3c2b1a09f8e7d6c5b4a39281706";

    /// v2 paths win over v1; the root cgroup gives nothing.
    #[test]
    fn cgroup_paths() {
        assert_eq!(
            cgroup_path("0::/system.slice/nginx.service\n").as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(cgroup_path("0::/\n"), None);
        assert_eq!(
            cgroup_path("12:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n").as_deref(),
            Some("/docker/abc")
        );
    }

    /// Container ids are found in the runtimes' cgroup names.
    #[test]
    fn container_ids() {
        for path in [
            format!("/docker/{ID}"),
            format!("/system.slice/docker-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/kubepods/burstable/pod1/crio-{ID}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(
            container_id("/user.slice/user-0.slice/session-1.scope"),
            None
        );
    }

    /// Our own process has an executable; the cache answers for it and forgets on request.
    #[test]
    fn own_labels() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let labels = read(me).unwrap();
        assert_eq!(labels.executable.as_deref(), exe.to_str());
        let mut cache = LabelCache::default();
        assert_eq!(cache.get(me, None, None), labels);
        cache.retain(|pid| pid != me);
        assert!(cache.is_empty());
    }
}
