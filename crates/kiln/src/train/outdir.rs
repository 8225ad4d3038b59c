//! The output directory of a training run. A run holds an exclusive OS file lock on it from start
//! to exit (the kernel drops the lock when the process ends, however it ends, so a crash leaves
//! no stale lock), removes what a crashed run left half-written, and refuses a directory that
//! holds another run's files unless told to replace them — so two runs never interleave their
//! checkpoints and a finished model is never overwritten by accident.

use crate::checkpoint;
use crate::error::{Error, Result};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file inside an output directory; it holds the PID of the run that has the lock.
pub const LOCK_FILE: &str = ".kiln.lock";

/// Files of a run's output besides the model's own (`--overwrite` removes them along with the
/// model files and the `checkpoint-*` directories; anything else in the directory is left).
const RUN_FILES: &[&str] = &[
    "metrics.jsonl",
    "adapter_config.json",
    "adapter_model.safetensors",
];

/// An output directory under this process's exclusive lock; the lock is released on drop.
#[derive(Debug)]
pub struct OutDir {
    path: PathBuf,
    /// `None` on the ranks of a distributed run that only read it (rank 0 holds the lock).
    _lock: Option<std::fs::File>,
}

impl std::ops::Deref for OutDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

/// Whether a directory entry is a temporary one: a checkpoint being written
/// (`.tmp-checkpoint-STEP-PID`) or a file being written atomically (`.NAME.tmp-PID`).
pub fn is_temp(name: &str) -> bool {
    name.starts_with(".tmp-checkpoint-") || (name.starts_with('.') && name.contains(".tmp-"))
}

impl OutDir {
    /// Creates `path` if needed and takes its lock; refused, naming the holder's PID, while
    /// another run has it.
    pub fn lock(path: &Path) -> Result<OutDir> {
        std::fs::create_dir_all(path).map_err(|e| Error::io("create directory", path, e))?;
        let lock_path = path.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours the file names the run that holds it.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io("open", &lock_path, e))?;
        match f.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = f.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(Error::Input(format!(
                    "{} is in use by another Kiln run (PID {}); wait for it to end, or choose another --out",
                    path.display(),
                    if pid.is_empty() { "unknown" } else { pid }
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io("lock", &lock_path, e)),
        }
        f.set_len(0)
            .and_then(|_| f.rewind())
            .and_then(|_| writeln!(f, "{}", std::process::id()))
            .map_err(|e| Error::io("write", &lock_path, e))?;
        Ok(OutDir {
            path: path.to_path_buf(),
            _lock: Some(f),
        })
    }

    /// The directory as a rank other than 0 of a distributed run sees it: read, never written,
    /// so not locked (rank 0 holds the lock for the run).
    pub fn follow(path: &Path) -> OutDir {
        OutDir {
            path: path.to_path_buf(),
            _lock: None,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the temporary entries of runs that died while writing (any PID: the lock is
    /// ours, so no live run is writing them); returns their names.
    pub fn remove_temps(&self) -> Result<Vec<String>> {
        let mut removed = Vec::new();
        for (name, path) in self.entries()? {
            if is_temp(&name) {
                let r = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                r.map_err(|e| Error::io("remove", &path, e))?;
                removed.push(name);
            }
        }
        Ok(removed)
    }

    /// The entries that make the directory non-empty: everything but the lock and temporaries.
    pub fn contents(&self) -> Result<Vec<String>> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n != LOCK_FILE && !is_temp(n))
            .collect())
    }

    /// Removes a previous run's checkpoints, metrics and model files (`--overwrite`).
    pub fn clear_run(&self) -> Result<()> {
        for (name, path) in self.entries()? {
            // Checkpoints, and the model directories of a run that writes two (ELECTRA).
            let model_dir = [
                super::electra::DISCRIMINATOR_DIR,
                super::electra::GENERATOR_DIR,
            ]
            .contains(&name.as_str())
                && path.join("config.json").is_file();
            if super::state::step_of(&path).is_some() || model_dir {
                std::fs::remove_dir_all(&path).map_err(|e| Error::io("remove", &path, e))?;
            } else if RUN_FILES.contains(&name.as_str())
                || checkpoint::TOKENIZER_FILES.contains(&name.as_str())
                || checkpoint::CONFIG_FILES.contains(&name.as_str())
                || (name.starts_with("model") && name.ends_with(".safetensors"))
            {
                std::fs::remove_file(&path).map_err(|e| Error::io("remove", &path, e))?;
            }
        }
        Ok(())
    }

    fn entries(&self) -> Result<Vec<(String, PathBuf)>> {
        let rd = std::fs::read_dir(&self.path).map_err(|e| Error::io("read", &self.path, e))?;
        let mut v: Vec<(String, PathBuf)> = rd
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
            .collect();
        v.sort();
        Ok(v)
    }
}

/// Bytes free for an unprivileged writer on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `s` a writable statvfs.
        if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so it filled `s`.
        let s = unsafe { s.assume_init() };
        #[allow(clippy::unnecessary_cast)]
        Some(s.f_bavail as u64 * s.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether an error is the disk (or quota) running out of space.
pub fn is_disk_full(e: &Error) -> bool {
    match e {
        Error::Io { err, .. } => {
            err.kind() == std::io::ErrorKind::StorageFull
                || err.kind() == std::io::ErrorKind::QuotaExceeded
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-outdir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid_and_freed_on_drop() {
        let d = scratch("lock");
        let held = OutDir::lock(&d).unwrap();
        let err = OutDir::lock(&d).unwrap_err().to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
        drop(held);
        OutDir::lock(&d).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn temporaries_are_removed_and_do_not_count_as_contents() {
        let d = scratch("temps");
        let out = OutDir::lock(&d).unwrap();
        std::fs::create_dir_all(d.join(".tmp-checkpoint-4-999/x")).unwrap();
        std::fs::write(d.join(".model.safetensors.tmp-999"), b"half").unwrap();
        std::fs::write(d.join("notes.txt"), b"mine").unwrap();
        assert_eq!(out.contents().unwrap(), vec!["notes.txt".to_string()]);
        let removed = out.remove_temps().unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!d.join(".tmp-checkpoint-4-999").exists());
        assert!(d.join("notes.txt").exists() && d.join(LOCK_FILE).exists());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn clearing_a_run_keeps_foreign_files() {
        let d = scratch("clear");
        let out = OutDir::lock(&d).unwrap();
        std::fs::create_dir_all(d.join("checkpoint-6")).unwrap();
        for f in [
            "metrics.jsonl",
            "model.safetensors",
            "config.json",
            "notes.txt",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        out.clear_run().unwrap();
        assert_eq!(out.contents().unwrap(), vec!["notes.txt".to_string()]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn free_space_is_read() {
        assert!(free_bytes(&std::env::temp_dir()).is_some_and(|b| b > 0));
    }
}
