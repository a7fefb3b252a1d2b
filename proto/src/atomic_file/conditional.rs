//! Replacing a file only if nobody else changed it since it was read: a
//! read-modify-write of a file another program also rewrites (the CNI
//! conflist, which k3s rewrites when its agent starts) must not lose that
//! program's update.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{replace_if, AtomicWriteError, WriteStep};

/// What a file held when it was read: its bytes and the metadata that
/// changes when it is written or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSnapshot {
    bytes: Vec<u8>,
    stamp: Stamp,
}

/// The metadata that tells whether a file was written or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    mode: u32,
}

impl Stamp {
    fn of(metadata: &Metadata) -> Self {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: metadata.mtime(),
            mtime_nsec: metadata.mtime_nsec(),
            mode: metadata.mode(),
        }
    }
}

impl FileSnapshot {
    /// Reads `path`, with the metadata of the very file read (not of
    /// whatever the path names a moment later).
    pub fn read(path: &Path) -> io::Result<Self> {
        let mut file = File::open(path)?;
        let stamp = Stamp::of(&file.metadata()?);
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(FileSnapshot { bytes, stamp })
    }

    /// The bytes read.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file's permission bits when it was read.
    pub fn permissions(&self) -> u32 {
        self.stamp.mode & 0o7777
    }

    /// Whether `path` still names this file, unwritten since it was read.
    fn still_at(&self, path: &Path) -> io::Result<bool> {
        match FileSnapshot::read(path) {
            Ok(now) => Ok(now == *self),
            // Removed (or replaced by something else) since: changed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// What [`atomic_replace`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace {
    /// The file was replaced.
    Done,
    /// The file changed after it was read; it was left as it is, for the
    /// caller to read again and redo its edit.
    TargetChanged,
}

/// Replaces `path` with `bytes` like [`super::atomic_write`], but only if it
/// is still the file `read` was taken from, unwritten since; otherwise
/// leaves it alone and returns [`Replace::TargetChanged`].
///
/// The check runs once the new contents are complete on disk, just before
/// the rename, and compares both the file's identity and modification time
/// and its bytes: a writer that replaces the file by rename gets a new inode,
/// one that rewrites it in place a new mtime or new bytes. What remains is
/// the window between that check and the rename (a stat, a read of the
/// file, the rename): a write landing in it is overwritten, or goes to the
/// replaced inode. That is acceptable because the rename itself is atomic
/// (no reader ever sees a torn file) and the window is microseconds against
/// writers that rewrite the file seldom (k3s once per agent start); no lock
/// can close it, since the other writers take none.
pub fn atomic_replace(
    path: &Path,
    read: &FileSnapshot,
    bytes: &[u8],
    mode: u32,
) -> Result<Replace, AtomicWriteError> {
    let unchanged = || {
        read.still_at(path)
            .map_err(AtomicWriteError::at(WriteStep::Verify, path))
    };
    if replace_if(path, bytes, mode, unchanged)? {
        Ok(Replace::Done)
    } else {
        Ok(Replace::TargetChanged)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    use super::*;

    /// A file holding `contents` in a fresh directory, and its snapshot.
    fn snapshot_of(contents: &[u8]) -> (tempfile::TempDir, PathBuf, FileSnapshot) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("10-net.conflist");
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let read = FileSnapshot::read(&path).unwrap();
        (dir, path, read)
    }

    #[test]
    fn an_unchanged_file_is_replaced() {
        let (dir, path, read) = snapshot_of(b"ours to edit");
        assert_eq!(read.bytes(), b"ours to edit");
        assert_eq!(read.permissions(), 0o640);

        let outcome = atomic_replace(&path, &read, b"edited", read.permissions()).unwrap();

        assert_eq!(outcome, Replace::Done);
        assert_eq!(fs::read(&path).unwrap(), b"edited");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_rewritten_in_place_after_the_read_is_left_alone() {
        let (dir, path, read) = snapshot_of(b"first");
        // Same inode, same size: only the bytes (and mtime) tell.
        fs::write(&path, b"other").unwrap();

        let outcome = atomic_replace(&path, &read, b"edited", 0o644).unwrap();

        assert_eq!(outcome, Replace::TargetChanged);
        assert_eq!(fs::read(&path).unwrap(), b"other");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left"
        );
    }

    #[test]
    fn a_file_replaced_by_rename_after_the_read_is_left_alone() {
        let (dir, path, read) = snapshot_of(b"same");
        // Same bytes, but another file: only its identity tells.
        let other = dir.path().join("incoming");
        fs::write(&other, b"same").unwrap();
        fs::rename(&other, &path).unwrap();

        let outcome = atomic_replace(&path, &read, b"edited", 0o644).unwrap();

        assert_eq!(outcome, Replace::TargetChanged);
        assert_eq!(fs::read(&path).unwrap(), b"same");
    }

    #[test]
    fn a_file_removed_after_the_read_is_not_recreated() {
        let (dir, path, read) = snapshot_of(b"gone soon");
        fs::remove_file(&path).unwrap();

        let outcome = atomic_replace(&path, &read, b"edited", 0o644).unwrap();

        assert_eq!(outcome, Replace::TargetChanged);
        assert!(!path.exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
