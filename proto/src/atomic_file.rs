//! Replacing a file atomically and durably, for the daemon's state and key
//! files and the installer's CNI config and shim binary.
//!
//! The bytes go to a fresh temporary file beside the target (created with
//! `O_EXCL`, so nothing else's file is ever reused), which is given its mode,
//! synced, renamed over the target, and the directory is synced. A reader
//! sees the old file or the new one, never a torn mix, and after a crash the
//! target is one of the two. Temporary names start with `.` and end in
//! `.tmp.<pid>.<n>`: CNI config loaders skip them, and
//! [`parse_temp_file_name`] recognises them to clean up after a crash.
//! [`atomic_replace`] renames only if the target is still the file that was
//! read, for files another program rewrites too.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Marks a temporary file: `.<target>.tmp.<pid>.<n>`.
const TEMP_INFIX: &str = ".tmp.";
/// Fresh temporary names tried before giving up when names are taken
/// (left behind by a crashed process that had the same pid).
const TEMP_NAME_ATTEMPTS: usize = 8;

/// The step of [`atomic_write`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// Creating the temporary file (or the target has no file name).
    CreateTemp,
    /// Writing the bytes to the temporary file.
    Write,
    /// Setting the temporary file's mode.
    SetMode,
    /// Flushing the temporary file to disk.
    SyncFile,
    /// Checking that the target is still what was read, before replacing it.
    Verify,
    /// Renaming the temporary file over the target.
    Rename,
    /// Removing the temporary file when the target changed after it was read.
    RemoveTemp,
    /// Flushing the directory, so the rename survives a crash.
    SyncDir,
}

impl WriteStep {
    /// What the step does, as a verb phrase for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteStep::CreateTemp => "creating a temporary file",
            WriteStep::Write => "writing",
            WriteStep::SetMode => "setting the mode of",
            WriteStep::SyncFile => "syncing",
            WriteStep::Verify => "checking for a concurrent change to",
            WriteStep::Rename => "renaming into place",
            WriteStep::RemoveTemp => "removing the unused temporary file",
            WriteStep::SyncDir => "syncing directory",
        }
    }
}

impl fmt::Display for WriteStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An [`atomic_write`] that failed; the target is unchanged unless `step`
/// is [`WriteStep::SyncDir`] (then the new file is in place but may not
/// survive a crash).
#[derive(Debug, thiserror::Error)]
#[error("{step} {}: {source}", path.display())]
pub struct AtomicWriteError {
    /// The step that failed.
    pub step: WriteStep,
    /// The file or directory the step acted on.
    pub path: PathBuf,
    /// The I/O error the step returned.
    #[source]
    pub source: io::Error,
}

impl AtomicWriteError {
    fn at(step: WriteStep, path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| AtomicWriteError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Replaces `path` with `bytes`, atomically and durably; the new file has
/// exactly `mode` (whatever the umask), and is never wider than `mode` while
/// it is written. The parent directory must exist. On failure no temporary
/// file is left behind.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    replace_if(path, bytes, mode, || Ok(true)).map(drop)
}

/// The steps of [`atomic_write`], with `precondition` checked after the
/// temporary file is complete and just before the rename: when it says no,
/// the temporary file is removed, the target is left alone and the result
/// is `Ok(false)`.
fn replace_if(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    precondition: impl FnOnce() -> Result<bool, AtomicWriteError>,
) -> Result<bool, AtomicWriteError> {
    let file_name = path.file_name().ok_or_else(|| AtomicWriteError {
        step: WriteStep::CreateTemp,
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));

    let (tmp, mut file) = create_temp(dir, file_name, mode)?;
    let written = fill(&mut file, &tmp, bytes, mode)
        .and_then(|()| precondition())
        .and_then(|holds| {
            if holds {
                fs::rename(&tmp, path).map_err(AtomicWriteError::at(WriteStep::Rename, path))?;
            }
            Ok(holds)
        });
    match written {
        Ok(true) => {}
        Ok(false) => {
            fs::remove_file(&tmp).map_err(AtomicWriteError::at(WriteStep::RemoveTemp, &tmp))?;
            return Ok(false);
        }
        Err(error) => {
            // Best effort: the error that matters is the one being returned.
            fs::remove_file(&tmp).ok();
            return Err(error);
        }
    }
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(AtomicWriteError::at(WriteStep::SyncDir, dir))?;
    Ok(true)
}

/// What the name of one of [`atomic_write`]'s temporary files tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TempFileName<'a> {
    /// The file name of the file it was to replace.
    pub target: &'a str,
    /// The process that created it.
    pub writer_pid: u32,
}

/// Recognises the name of one of [`atomic_write`]'s temporary files, so
/// leftovers of an interrupted write can be found and removed.
pub fn parse_temp_file_name(name: &OsStr) -> Option<TempFileName<'_>> {
    let rest = name.to_str()?.strip_prefix('.')?;
    let (target, tail) = rest.rsplit_once(TEMP_INFIX)?;
    let (pid, counter) = tail.split_once('.')?;
    counter.parse::<u64>().ok()?;
    Some(TempFileName {
        target,
        writer_pid: pid.parse().ok()?,
    })
}

/// Creates a temporary file for `file_name` in `dir` that did not exist
/// before (`O_EXCL`).
fn create_temp(
    dir: &Path,
    file_name: &OsStr,
    mode: u32,
) -> Result<(PathBuf, File), AtomicWriteError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let mut attempts = 0;
    loop {
        let mut name = OsString::from(".");
        name.push(file_name);
        name.push(format!(
            "{TEMP_INFIX}{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e)
                if e.kind() == io::ErrorKind::AlreadyExists
                    && attempts + 1 < TEMP_NAME_ATTEMPTS =>
            {
                attempts += 1;
            }
            Err(e) => return Err(AtomicWriteError::at(WriteStep::CreateTemp, &tmp)(e)),
        }
    }
}

/// Writes, sets the exact mode and syncs the temporary file.
fn fill(file: &mut File, tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    file.write_all(bytes)
        .map_err(AtomicWriteError::at(WriteStep::Write, tmp))?;
    // The umask narrowed the mode at creation; set exactly what was asked.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(AtomicWriteError::at(WriteStep::SetMode, tmp))?;
    file.sync_all()
        .map_err(AtomicWriteError::at(WriteStep::SyncFile, tmp))
}

mod conditional;

pub use conditional::{atomic_replace, FileSnapshot, Replace};

#[cfg(test)]
mod tests;
