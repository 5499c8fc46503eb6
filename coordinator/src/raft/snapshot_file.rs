//! The current snapshot on disk: one file, replaced atomically.
//!
//! Invariant: `snapshot.json` is either absent or a complete snapshot that was fsynced before
//! it was renamed into place (and the rename itself is fsynced through the directory), so a
//! crash at any point leaves the previous snapshot or the new one, never a torn file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "snapshot.json";
const TEMP: &str = "snapshot.json.tmp";

#[derive(Debug, Clone)]
pub struct SnapshotFile {
    dir: PathBuf,
}

impl SnapshotFile {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The stored snapshot's bytes, if there is one.
    pub fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(FILE)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The stored snapshot's size in bytes (0 without one).
    pub fn len(&self) -> io::Result<u64> {
        match fs::metadata(self.dir.join(FILE)) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Replaces the stored snapshot with `bytes`, durably.
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let temp = self.dir.join(TEMP);
        {
            let mut file = File::create(&temp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        fs::rename(&temp, self.dir.join(FILE))?;
        File::open(&self.dir)?.sync_all()
    }
}
