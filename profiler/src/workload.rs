//! The command prof records (`prof record -- COMMAND`): started held just before exec, so
//! that its pid can join the BPF target set and the side band can see its exec and mappings
//! before it runs a single instruction of its own.
//!
//! std's `Command::spawn` returns only once the child has exec'd, so the child is spawned on a
//! helper thread; between fork and exec it reports its pid through one pipe and waits on a
//! second, which [`Workload::release`] writes to.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::{self, JoinHandle};

use rustix::pipe::{PipeFlags, pipe_with};
use rustix::process::{Pid, Signal, kill_process};
use thiserror::Error;

/// Why the command could not be run.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// Not found on PATH or at the given path.
    #[error("cannot run `{0}`: command not found")]
    NotFound(String),
    /// Found but not an executable file.
    #[error("cannot run `{0}`: not an executable file")]
    NotExecutable(String),
    /// fork or exec failed.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
}

/// A started command, held before exec until released.
#[derive(Debug)]
pub struct Workload {
    program: String,
    pid: u32,
    go: Option<OwnedFd>,
    spawner: Option<JoinHandle<io::Result<Child>>>,
    child: Option<Child>,
}

/// Finds `program` the way execvp would: as a path if it has a slash, else on PATH.
pub fn find_program(program: &OsStr) -> Result<PathBuf, WorkloadError> {
    let name = program.to_string_lossy().into_owned();
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.as_encoded_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return match path.metadata() {
            Err(_) => Err(WorkloadError::NotFound(name)),
            Ok(_) if !executable(&path) => Err(WorkloadError::NotExecutable(name)),
            Ok(_) => Ok(path),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&search)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
        .ok_or(WorkloadError::NotFound(name))
}

impl Workload {
    /// Forks `argv` and holds it before exec. Returns once its pid is known.
    pub fn prepare(argv: &[OsString]) -> Result<Workload, WorkloadError> {
        let (program, args) = argv.split_first().expect("clap requires a command");
        let name = program.to_string_lossy().into_owned();
        find_program(program)?;
        let spawn_error = |source: io::Error| WorkloadError::Spawn {
            program: name.clone(),
            source,
        };
        let (pid_read, pid_write) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        let (go_read, go_write) =
            pipe_with(PipeFlags::CLOEXEC).map_err(|e| spawn_error(e.into()))?;
        let go_write_raw = std::os::fd::AsRawFd::as_raw_fd(&go_write);

        // Runs in the child between fork and exec: report the pid, then wait for `go`.
        let hold = move || -> io::Result<()> {
            // Our copy of the write end would keep `go` open if prof died; close it so a dead
            // prof means EOF, and the command never runs unrecorded.
            // SAFETY: this fd number is the child's inherited copy of `go_write`, which
            // nothing else in the child uses or closes.
            unsafe { rustix::io::close(go_write_raw) };
            let pid = rustix::process::getpid().as_raw_nonzero().get();
            rustix::io::write(&pid_write, &pid.to_ne_bytes())?;
            let mut byte = [0u8; 1];
            match rustix::io::read(&go_read, &mut byte) {
                Ok(1) => Ok(()),
                _ => Err(io::Error::from_raw_os_error(libc::ECANCELED)),
            }
        };
        let mut command = Command::new(program);
        command.args(args);
        // SAFETY: `hold` is async-signal-safe, as code between fork and exec must be: it makes
        // only raw syscalls through rustix (close, getpid, write, read) and allocates nothing.
        unsafe {
            command.pre_exec(hold);
        }
        let spawner = thread::Builder::new()
            .name("prof-spawn".into())
            .spawn(move || command.spawn())
            .map_err(spawn_error)?;

        let mut bytes = [0u8; 4];
        let pid = match rustix::io::read(&pid_read, &mut bytes) {
            Ok(4) => u32::from_ne_bytes(bytes),
            _ => {
                // The fork itself failed: the spawner has the reason.
                drop(go_write);
                let err = match spawner.join() {
                    Ok(Err(err)) => err,
                    _ => io::Error::other("the command did not start"),
                };
                return Err(spawn_error(err));
            }
        };
        Ok(Workload {
            program: name,
            pid,
            go: Some(go_write),
            spawner: Some(spawner),
            child: None,
        })
    }

    /// The command's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Lets the command exec. Fails if exec fails.
    pub fn release(&mut self) -> Result<(), WorkloadError> {
        if let Some(go) = self.go.take() {
            // A failed write means the child is already gone; spawn() reports why below.
            let _ = rustix::io::write(go.as_fd(), &[1]);
        }
        if let Some(spawner) = self.spawner.take() {
            let child = spawner
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the spawning thread panicked")))
                .map_err(|source| WorkloadError::Spawn {
                    program: self.program.clone(),
                    source,
                })?;
            self.child = Some(child);
        }
        Ok(())
    }

    /// The exit status, if the command has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// Asks the command to stop (SIGTERM), as perf does when recording ends first.
    pub fn terminate(&mut self) {
        if let (Some(_), Some(pid)) = (&self.child, Pid::from_raw(self.pid as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
    }

    /// Waits for the command to exit.
    pub fn wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match &mut self.child {
            Some(child) => child.wait().map(Some),
            None => Ok(None),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Never released: closing `go` makes the held child exit without running.
        self.go.take();
        if let Some(spawner) = self.spawner.take()
            && let Ok(Ok(mut child)) = spawner.join()
        {
            let _ = child.wait();
        }
    }
}

/// The shell-style exit code of `status`: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PATH lookup finds real programs and refuses missing and non-executable ones.
    #[test]
    fn finding_programs() {
        assert!(find_program(OsStr::new("sh")).is_ok());
        assert!(matches!(
            find_program(OsStr::new("no-such-prog-xyz")),
            Err(WorkloadError::NotFound(_))
        ));
        assert!(matches!(
            find_program(OsStr::new("/nonexistent/x")),
            Err(WorkloadError::NotFound(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "not a program").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            find_program(data.as_os_str()),
            Err(WorkloadError::NotExecutable(_))
        ));
    }

    /// The command waits for release, then runs and reports its status.
    #[test]
    fn held_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let argv: Vec<OsString> = vec![
            "sh".into(),
            "-c".into(),
            format!("touch {}; exit 3", marker.display()).into(),
        ];
        let mut workload = Workload::prepare(&argv).unwrap();
        assert!(workload.pid() > 0);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!marker.exists(), "the command must not run before release");
        workload.release().unwrap();
        let status = workload.wait().unwrap().unwrap();
        assert_eq!(exit_code(status), 3);
        assert!(marker.exists());
    }

    /// A workload dropped before release never runs.
    #[test]
    fn dropped_before_release_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let argv: Vec<OsString> = vec!["touch".into(), marker.clone().into()];
        drop(Workload::prepare(&argv).unwrap());
        assert!(!marker.exists());
    }
}
