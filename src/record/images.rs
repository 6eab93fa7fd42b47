//! Images beside the records: calibrated frames and heat maps as PNG, content-addressed by
//! SHA-256 (`images/ab/abcd….png`).
//!
//! A file is written to a temporary name, synced and renamed, and its folder synced, so a
//! digest in a record always names a whole file. Images are what fills a disk; records are
//! small. So images yield first: below [`ImageStore::min_free_bytes`] of free space on the
//! data disk, no image is saved (the record says so) and the recorder raises an alarm, and the
//! records keep being written in the space left. [`Store::save_image`](super::Store::save_image)
//! refuses an image below that floor whoever saves it; [`ImageStore::put`] itself does not
//! look.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::RecordError;

/// Free space the images leave to the records by default: 64 MiB.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// The image folder.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    min_free_bytes: AtomicU64,
}

impl ImageStore {
    pub(crate) fn open(dir: &Path) -> Result<ImageStore, RecordError> {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Image {
            path: dir.to_owned(),
            source,
        })?;
        Ok(ImageStore {
            dir: dir.to_owned(),
            min_free_bytes: AtomicU64::new(DEFAULT_MIN_FREE_BYTES),
        })
    }

    /// Sets how much free space images must leave on the data disk.
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free_bytes.store(bytes, Ordering::Relaxed);
    }

    /// How much free space images must leave on the data disk.
    pub fn min_free_bytes(&self) -> u64 {
        self.min_free_bytes.load(Ordering::Relaxed)
    }

    /// The image folder, on the data disk.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes free for an unprivileged writer on the disk holding the images.
    pub fn free_bytes(&self) -> Result<u64, RecordError> {
        free_bytes(&self.dir).map_err(|source| RecordError::Image {
            path: self.dir.clone(),
            source,
        })
    }

    /// Whether images may be saved now: enough space stays free for the records.
    pub fn has_room(&self) -> bool {
        self.free_bytes()
            .is_ok_and(|free| free >= self.min_free_bytes())
    }

    /// Stores PNG bytes under their SHA-256 and returns the hex digest, and whether the file
    /// is new (not there before). Idempotent. Does not look at the free-space floor: the
    /// station saves through [`Store::save_image`](super::Store::save_image), which keeps the
    /// floor and the image budget.
    pub fn put(&self, png: &[u8]) -> Result<(String, bool), RecordError> {
        let digest = hex::encode(Sha256::digest(png));
        let path = self.path_unchecked(&digest);
        if path.exists() {
            return Ok((digest, false));
        }
        let io = |source| RecordError::Image {
            path: path.clone(),
            source,
        };
        let dir = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(png).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        // The rename is durable only once the folder is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok((digest, true))
    }

    /// Deletes an image (evicted under the disk budget). A missing file is not an error.
    pub(crate) fn remove(&self, digest: &str) -> Result<(), RecordError> {
        let Some(path) = self.path(digest) else {
            return Ok(());
        };
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(RecordError::Image { path, source }),
        }
    }

    /// The file of an image digest, if the digest is well-formed and the file exists.
    pub fn path(&self, digest: &str) -> Option<PathBuf> {
        let well_formed = digest.len() == 64
            && digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !well_formed {
            return None;
        }
        let path = self.path_unchecked(digest);
        path.is_file().then_some(path)
    }

    /// Only for digests we computed or checked: 64 lowercase hex digits.
    fn path_unchecked(&self, digest: &str) -> PathBuf {
        self.dir.join(&digest[..2]).join(format!("{digest}.png"))
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path` (`statvfs`).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a writable statvfs.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between targets
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::GrayImage;
    use crate::record::gray_png;

    #[test]
    fn images_are_content_addressed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = ImageStore::open(dir.path()).expect("open");
        let png =
            gray_png(&GrayImage::new(2, 2, vec![0, 64, 128, 255]).expect("size")).expect("png");
        let (digest, new) = images.put(&png).expect("put");
        assert!(new);
        assert_eq!(images.put(&png).expect("again"), (digest.clone(), false));
        let path = images.path(&digest).expect("exists");
        assert_eq!(std::fs::read(path).expect("read"), png);
        assert_eq!(images.path("../../etc/passwd"), None);
        assert_eq!(images.path(&"0".repeat(64)), None);
        // Found by schemathesis: a multi-byte first character must not panic.
        assert_eq!(images.path("é"), None);
    }

    #[test]
    fn images_yield_when_free_space_is_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let images = ImageStore::open(dir.path()).expect("open");
        let free = images.free_bytes().expect("statvfs");
        assert!(free > 0);
        images.set_min_free_bytes(0);
        assert!(images.has_room());
        images.set_min_free_bytes(free.saturating_mul(2).max(1));
        assert!(!images.has_room());
    }
}
