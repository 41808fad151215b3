//! Noticing that a file changed, by polling its metadata (like the peers file).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::SystemTime;

/// What identifies a version of a file: its modification time, size and inode. A
/// Kubernetes Secret or ConfigMap update swaps a symlink, which changes the inode of
/// the file the path resolves to even when the time and size stay the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    ino: u64,
    dev: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` (following symlinks), or `None` when it cannot
    /// be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp { modified: m.modified().ok(), len: m.len(), ino: m.ino(), dev: m.dev() })
    }

    /// The stamps of several files at once (`None` when any of them is missing).
    pub fn of_all(paths: &[&Path]) -> Option<Vec<FileStamp>> {
        paths.iter().map(|p| FileStamp::of(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_gets_a_new_stamp_and_a_missing_one_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert_eq!(FileStamp::of(&path), None);
        std::fs::write(&path, "one").unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path), Some(first));
        // Replaced the way Kubernetes and careful tools do it: write aside, rename.
        let aside = dir.path().join("f.new");
        std::fs::write(&aside, "two").unwrap();
        std::fs::rename(&aside, &path).unwrap();
        assert_ne!(FileStamp::of(&path), Some(first));
    }
}
