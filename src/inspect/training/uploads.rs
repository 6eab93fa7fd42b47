//! Images an engineer uploads from a computer to train on: a product's good parts before the
//! station has recorded any (a folder of images from a lab camera, say), and labelled defects.
//!
//! An upload set is a folder of its own, `<root>/<set>/<class>/<sha256>.png`, kept until it
//! is deleted: retention never evicts it, because nothing else holds these images. Every image
//! is decoded as it arrives and stored as a grey PNG under the digest of that PNG, so a bad
//! file is refused at once with the reason, and the same image uploaded twice is one image.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::check_name;
use crate::learn::dataset::class_folder;
use crate::part::GrayImage;
use crate::record::gray_png;

/// The widest and tallest image an upload may be (a 50-megapixel camera's frame fits).
pub const MAX_UPLOAD_SIDE: u32 = 10_000;

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(
        "an upload set's name is 1 to 40 letters, digits, `-` or `_` (it names a folder), not {0:?}"
    )]
    SetName(String),
    #[error("a class is `good` or a defect class of 1 to 40 characters, not {0:?}")]
    Class(String),
    #[error("not an image this station reads (PNG, JPEG or BMP): {0}")]
    NotAnImage(String),
    #[error("the image is {width}×{height}; at most {MAX_UPLOAD_SIDE} pixels a side")]
    TooLarge { width: u32, height: u32 },
    #[error("no upload set {0:?}")]
    UnknownSet(String),
    #[error("not a zip this station reads: {0}")]
    NotAZip(String),
    #[error("the zip holds more than {MAX_ZIP_ENTRIES} files")]
    TooManyEntries,
    #[error("the zip unpacks to more than {MAX_ZIP_UNPACKED_BYTES} bytes; send it in parts")]
    ZipTooLarge,
    #[error("upload folder {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Files a zip may hold at most (folders and skipped files included).
pub const MAX_ZIP_ENTRIES: usize = 20_000;

/// The most one file in a zip may unpack to: a 10,000-pixel-square 8-bit BMP, with room.
pub const MAX_ZIP_ENTRY_BYTES: u64 = 128 * 1024 * 1024;

/// The most a whole zip may unpack to: about 4,000 five-megapixel PNGs.
pub const MAX_ZIP_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// The most files any end-of-central-directory record in `bytes` declares (a zip64 record's
/// count where the classic one says to look there), read from the last 64 KiB alone. Every
/// candidate record counts, not only the one a reader would pick: a forged record in the
/// comment then cannot hide the real one's count.
fn declared_entries(bytes: &[u8]) -> Result<u64, UploadError> {
    const RECORD: &[u8] = b"PK\x05\x06";
    const RECORD_LEN: usize = 22;
    const LOCATOR: &[u8] = b"PK\x06\x07";
    const LOCATOR_LEN: usize = 20;
    const ZIP64_RECORD: &[u8] = b"PK\x06\x06";
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |at: usize| {
        let b = bytes.get(at..at + 8)?;
        Some(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    };
    let last = bytes
        .len()
        .checked_sub(RECORD_LEN)
        .ok_or_else(|| UploadError::NotAZip("too short to be a zip".into()))?;
    // The record ends the file, followed only by a comment of at most 65,535 bytes.
    let first = last.saturating_sub(usize::from(u16::MAX));
    let mut most = None;
    for at in (first..=last).filter(|&at| bytes[at..].starts_with(RECORD)) {
        let Some(total) = u16_at(at + 10) else {
            continue;
        };
        let count = if total != u16::MAX {
            u64::from(total)
        } else {
            // Zip64: the locator just before the record says where the zip64 record is;
            // without one, the classic count stands.
            at.checked_sub(LOCATOR_LEN)
                .filter(|&locator| bytes[locator..].starts_with(LOCATOR))
                .and_then(|locator| u64_at(locator + 8))
                .and_then(|offset| usize::try_from(offset).ok())
                .filter(|&offset| {
                    bytes
                        .get(offset..)
                        .is_some_and(|r| r.starts_with(ZIP64_RECORD))
                })
                .and_then(|offset| u64_at(offset + 32))
                .unwrap_or(u64::from(total))
        };
        most = most.max(Some(count));
    }
    most.ok_or_else(|| UploadError::NotAZip("no end of central directory".into()))
}

/// What a zip upload stored and what it refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ZipUpload {
    pub set: String,
    /// New images, by class.
    pub added: BTreeMap<String, u64>,
    /// Images the set held already.
    pub duplicates: u64,
    /// Files that are not images the station reads, or have no class, with the reason.
    pub refused: Vec<RefusedFile>,
}

/// A file of a zip that was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusedFile {
    pub name: String,
    pub reason: String,
}

/// One stored upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadedImage {
    pub set: String,
    pub class: String,
    /// SHA-256 of the stored grey PNG.
    pub image: String,
    pub width: u32,
    pub height: u32,
    /// Whether the set held this image already.
    pub duplicate: bool,
}

/// An upload set: its images by class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UploadSet {
    pub name: String,
    pub classes: BTreeMap<String, u64>,
    pub bytes: u64,
}

/// The folder the upload sets live in.
#[derive(Debug, Clone)]
pub struct Uploads {
    root: PathBuf,
}

/// The folder a class's images go in: `good` for good parts, a safe name for a defect class.
pub(super) fn folder_of(class: &str) -> String {
    if class == "good" {
        "good".into()
    } else {
        class_folder(class)
    }
}

impl Uploads {
    pub fn new(root: PathBuf) -> Uploads {
        Uploads { root }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UploadError + '_ {
        move |source| UploadError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Decodes `bytes` and stores the image in `set` as `class`.
    pub fn add(&self, set: &str, class: &str, bytes: &[u8]) -> Result<UploadedImage, UploadError> {
        check_name(set).map_err(|_| UploadError::SetName(set.to_owned()))?;
        let class = class.trim();
        if class.is_empty() || class.chars().count() > 40 || class.chars().any(char::is_control) {
            return Err(UploadError::Class(class.to_owned()));
        }
        let (width, height) = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| UploadError::NotAnImage(e.to_string()))?
            .into_dimensions()
            .map_err(|e| UploadError::NotAnImage(e.to_string()))?;
        if width > MAX_UPLOAD_SIDE || height > MAX_UPLOAD_SIDE {
            return Err(UploadError::TooLarge { width, height });
        }
        let grey = image::load_from_memory(bytes)
            .map_err(|e| UploadError::NotAnImage(e.to_string()))?
            .into_luma8();
        let png = gray_png(&GrayImage {
            width,
            height,
            pixels: grey.into_raw(),
        })
        .map_err(|e| UploadError::NotAnImage(e.to_string()))?;
        let digest = hex::encode(Sha256::digest(&png));
        let dir = self.root.join(set).join(folder_of(class));
        let path = dir.join(format!("{digest}.png"));
        let duplicate = path.is_file();
        if !duplicate {
            std::fs::create_dir_all(&dir).map_err(Self::io(&dir))?;
            // Written whole or not at all: a half-written image would fail training later.
            let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(Self::io(&dir))?;
            tmp.write_all(&png).map_err(Self::io(&path))?;
            tmp.as_file().sync_all().map_err(Self::io(&path))?;
            tmp.persist(&path).map_err(|e| UploadError::Io {
                path: path.clone(),
                source: e.error,
            })?;
        }
        Ok(UploadedImage {
            set: set.to_owned(),
            class: class.to_owned(),
            image: digest,
            width,
            height,
            duplicate,
        })
    }

    /// Stores every image of a zip in `set`: as `class` when given, else as the folder each
    /// image lies in (`good/…`, `scratch/…`: a dataset's folders, zipped). Folders, the files
    /// an OS adds (`__MACOSX/`, dot files) and nothing else are skipped silently; a file that is
    /// not an image, or has no class, is refused by name and the rest are still stored.
    ///
    /// Files not reached by `deadline` are refused as such (send them again), so that the
    /// work stops when the request's time is up instead of running on unseen.
    pub fn add_zip(
        &self,
        set: &str,
        class: Option<&str>,
        bytes: &[u8],
        deadline: std::time::Instant,
    ) -> Result<ZipUpload, UploadError> {
        check_name(set).map_err(|_| UploadError::SetName(set.to_owned()))?;
        if let Some(class) = class
            && class.trim().is_empty()
        {
            return Err(UploadError::Class(class.to_owned()));
        }
        // Counted before the archive is opened: opening parses and keeps every entry of the
        // central directory, and 64 MiB of headers would be over a million of them.
        if declared_entries(bytes)? > MAX_ZIP_ENTRIES as u64 {
            return Err(UploadError::TooManyEntries);
        }
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| UploadError::NotAZip(e.to_string()))?;
        if archive.len() > MAX_ZIP_ENTRIES {
            return Err(UploadError::TooManyEntries);
        }
        // Entries that share their bytes (a zip bomb's trick) and a total beyond the budget
        // are refused before anything is unpacked.
        if archive
            .has_overlapping_files()
            .map_err(|e| UploadError::NotAZip(e.to_string()))?
        {
            return Err(UploadError::NotAZip("its files overlap".into()));
        }
        let declared: u64 = (0..archive.len())
            .filter_map(|i| archive.by_index_raw(i).ok().map(|f| f.size()))
            .sum();
        if declared > MAX_ZIP_UNPACKED_BYTES {
            return Err(UploadError::ZipTooLarge);
        }
        let mut report = ZipUpload {
            set: set.to_owned(),
            ..ZipUpload::default()
        };
        let mut unpacked = 0u64;
        for index in 0..archive.len() {
            if std::time::Instant::now() >= deadline {
                report.refused.push(RefusedFile {
                    name: archive
                        .name_for_index(index)
                        .unwrap_or("(unnamed)")
                        .to_owned(),
                    reason: "not unpacked: the upload ran out of time; send it again".into(),
                });
                continue;
            }
            // Encrypted, or compressed in a way this station does not read: that file only.
            let entry_name = archive
                .name_for_index(index)
                .unwrap_or("(unnamed)")
                .to_owned();
            let mut file = match archive.by_index(index) {
                Ok(file) => file,
                Err(e) => {
                    report.refused.push(RefusedFile {
                        name: entry_name,
                        reason: format!("cannot unpack: {e}"),
                    });
                    continue;
                }
            };
            let name = file.name().to_owned();
            let mut refuse = |reason: String| {
                report.refused.push(RefusedFile {
                    name: name.clone(),
                    reason,
                })
            };
            // The path as the zip names it, checked (no `..`, no absolute path).
            let Some(path) = file.enclosed_name() else {
                refuse("a path outside the zip".into());
                continue;
            };
            // What an OS adds: macOS's `__MACOSX/` resource forks, `.DS_Store` and dot files.
            let hidden = path.components().any(|c| {
                let part = c.as_os_str().to_string_lossy();
                part.starts_with('.') || part == "__MACOSX"
            });
            if file.is_dir() || hidden {
                continue;
            }
            let folder = path
                .parent()
                .and_then(|p| p.file_name())
                .map(|f| f.to_string_lossy().into_owned());
            let Some(class) = class.map(str::to_owned).or(folder) else {
                refuse(
                    "no class: put it in a folder named `good` or its defect class, or give the class for the whole zip"
                        .into(),
                );
                continue;
            };
            if file.size() > MAX_ZIP_ENTRY_BYTES {
                refuse(format!(
                    "unpacks to {} bytes; at most {MAX_ZIP_ENTRY_BYTES}",
                    file.size()
                ));
                continue;
            }
            // Read at most one byte past the limit: a header that understates the size does
            // not get to fill the memory.
            let mut image = Vec::with_capacity(file.size() as usize);
            if let Err(e) = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut file, MAX_ZIP_ENTRY_BYTES + 1),
                &mut image,
            ) {
                refuse(format!("cannot unpack: {e}"));
                continue;
            }
            // Sizes in a zip's headers may lie: the bytes actually unpacked count too.
            unpacked += image.len() as u64;
            if unpacked > MAX_ZIP_UNPACKED_BYTES {
                return Err(UploadError::ZipTooLarge);
            }
            if image.len() as u64 > MAX_ZIP_ENTRY_BYTES {
                refuse(format!("unpacks to more than {MAX_ZIP_ENTRY_BYTES} bytes"));
                continue;
            }
            match self.add(set, &class, &image) {
                Ok(stored) if stored.duplicate => report.duplicates += 1,
                Ok(stored) => *report.added.entry(stored.class).or_default() += 1,
                Err(error @ UploadError::Io { .. }) => return Err(error),
                Err(error) => refuse(error.to_string()),
            }
        }
        Ok(report)
    }

    /// Every set, by name.
    pub fn list(&self) -> Result<Vec<UploadSet>, UploadError> {
        let mut sets = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(sets),
            Err(e) => return Err(Self::io(&self.root)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Self::io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && check_name(&name).is_ok() {
                sets.push(self.set(&name)?);
            }
        }
        sets.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(sets)
    }

    /// One set's counts.
    pub fn set(&self, name: &str) -> Result<UploadSet, UploadError> {
        let mut set = UploadSet {
            name: name.to_owned(),
            classes: BTreeMap::new(),
            bytes: 0,
        };
        for (class, images) in self.images(name)? {
            for path in &images {
                set.bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            }
            set.classes.insert(class, images.len() as u64);
        }
        Ok(set)
    }

    /// A set's images by class folder, each sorted by name.
    pub fn images(&self, name: &str) -> Result<BTreeMap<String, Vec<PathBuf>>, UploadError> {
        check_name(name).map_err(|_| UploadError::SetName(name.to_owned()))?;
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(UploadError::UnknownSet(name.to_owned()));
        }
        let mut classes = BTreeMap::new();
        for class in std::fs::read_dir(&dir).map_err(Self::io(&dir))? {
            let class = class.map_err(Self::io(&dir))?.path();
            if !class.is_dir() {
                continue;
            }
            let mut images: Vec<PathBuf> = std::fs::read_dir(&class)
                .map_err(Self::io(&class))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "png"))
                .collect();
            images.sort();
            let name = class
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            classes.insert(name, images);
        }
        Ok(classes)
    }

    /// Deletes a set and its images.
    pub fn remove(&self, name: &str) -> Result<(), UploadError> {
        check_name(name).map_err(|_| UploadError::SetName(name.to_owned()))?;
        let dir = self.root.join(name);
        if !dir.is_dir() {
            return Err(UploadError::UnknownSet(name.to_owned()));
        }
        std::fs::remove_dir_all(&dir).map_err(Self::io(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, level: u8) -> Vec<u8> {
        gray_png(&GrayImage {
            width,
            height,
            pixels: vec![level; (width * height) as usize],
        })
        .expect("png")
    }

    /// A zip of `files` (name, bytes), deflated as a computer's zip tool does.
    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let deflated = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in files {
            if name.ends_with('/') {
                zip.add_directory(*name, deflated).expect("folder");
            } else {
                zip.start_file(*name, deflated).expect("entry");
                zip.write_all(bytes).expect("write");
            }
        }
        zip.finish().expect("zip").into_inner()
    }

    fn later() -> std::time::Instant {
        std::time::Instant::now() + std::time::Duration::from_secs(600)
    }

    #[test]
    fn a_zip_declaring_too_many_files_is_refused_before_it_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = Uploads::new(dir.path().join("uploads"));
        let refusal = |bytes: &[u8]| uploads.add_zip("lab", None, bytes, later());
        let zip = zip_of(&[("good/a.png", &png(8, 6, 10))]);
        let record = zip.len() - 22;
        assert_eq!(declared_entries(&zip).expect("a zip"), 1);
        // Its end record claims 60,000 files that its central directory does not hold: opening
        // it would fail, counting refuses it first.
        let mut forged = zip.clone();
        forged[record + 8..record + 12].copy_from_slice(&[0x60, 0xea, 0x60, 0xea]);
        assert!(matches!(refusal(&forged), Err(UploadError::TooManyEntries)));
        // A second record in the comment that declares one file does not hide the first.
        let mut commented = forged.clone();
        let comment = [&b"PK\x05\x06"[..], &[0, 0, 0, 0, 1, 0, 1, 0], &[0; 10]].concat();
        commented[record + 20..record + 22].copy_from_slice(&(comment.len() as u16).to_le_bytes());
        commented.extend_from_slice(&comment);
        assert_eq!(declared_entries(&commented).expect("a zip"), 60_000);
        assert!(matches!(
            refusal(&commented),
            Err(UploadError::TooManyEntries)
        ));
        // Zip64: the classic record says "look in the zip64 record", which says a million.
        let mut zip64 = vec![0u8; 56];
        zip64[..4].copy_from_slice(b"PK\x06\x06");
        zip64[32..40].copy_from_slice(&1_000_000u64.to_le_bytes());
        let mut locator = vec![0u8; 20];
        locator[..4].copy_from_slice(b"PK\x06\x07");
        let mut end = vec![0u8; 22];
        end[..4].copy_from_slice(b"PK\x05\x06");
        end[8..12].copy_from_slice(&[0xff; 4]);
        let bytes = [zip64, locator, end].concat();
        assert_eq!(declared_entries(&bytes).expect("a zip64 end"), 1_000_000);
        assert!(matches!(refusal(&bytes), Err(UploadError::TooManyEntries)));
        // No end record at all: not a zip.
        assert!(matches!(
            refusal(b"not a zip at all, just some bytes"),
            Err(UploadError::NotAZip(_))
        ));
        assert!(matches!(refusal(b"PK"), Err(UploadError::NotAZip(_))));
    }

    #[test]
    fn a_zip_stores_its_images_by_folder_and_names_what_it_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = Uploads::new(dir.path().join("uploads"));
        let (a, b, c) = (png(8, 6, 10), png(8, 6, 20), png(8, 6, 30));
        let zip = zip_of(&[
            ("lab/good/", b""),
            ("lab/good/a.png", &a),
            ("lab/good/b.png", &b),
            ("lab/good/again.png", &a),
            ("lab/good/notes.txt", b"taken on line 2"),
            ("lab/scratch/c.png", &c),
            ("top.png", &c),
            ("__MACOSX/lab/good/._a.png", b"resource fork"),
            ("lab/good/.DS_Store", b"finder"),
        ]);
        let report = uploads.add_zip("lab", None, &zip, later()).expect("stored");
        assert_eq!(
            report.added,
            BTreeMap::from([("good".into(), 2), ("scratch".into(), 1)])
        );
        assert_eq!(report.duplicates, 1);
        let refused: Vec<&str> = report.refused.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(refused, ["lab/good/notes.txt", "top.png"], "{report:?}");
        assert!(
            report.refused[0].reason.contains("not an image"),
            "{report:?}"
        );
        assert!(report.refused[1].reason.contains("no class"), "{report:?}");
        let set = uploads.set("lab").expect("set");
        assert_eq!(set.classes.get("good"), Some(&2));

        // A class for the whole zip puts every image in it, the one at the top too.
        let report = uploads
            .add_zip("lab2", Some("good"), &zip, later())
            .expect("stored");
        assert_eq!(report.added, BTreeMap::from([("good".into(), 3)]));
        assert_eq!(report.refused.len(), 1, "{report:?}");

        // Out of time: nothing more is unpacked, and every file left is named.
        let late = uploads
            .add_zip("lab3", None, &zip, std::time::Instant::now())
            .expect("answers");
        assert!(late.added.is_empty() && late.refused.len() == 9, "{late:?}");
        assert!(
            late.refused[1].reason.contains("ran out of time"),
            "{late:?}"
        );
        // An empty class for the whole zip is refused at once.
        assert!(matches!(
            uploads.add_zip("lab", Some(" "), &zip, later()),
            Err(UploadError::Class(_))
        ));

        // Not a zip, or a bad set name: refused before anything is stored.
        assert!(matches!(
            uploads.add_zip("lab", None, &a, later()),
            Err(UploadError::NotAZip(_))
        ));
        assert!(matches!(
            uploads.add_zip("../x", None, &zip, later()),
            Err(UploadError::SetName(_))
        ));
    }

    #[test]
    fn uploads_are_checked_stored_once_and_counted_by_class() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uploads = Uploads::new(dir.path().join("uploads"));
        assert!(uploads.list().expect("empty").is_empty());
        let first = uploads.add("lab", "good", &png(8, 6, 10)).expect("stored");
        assert_eq!((first.width, first.height, first.duplicate), (8, 6, false));
        assert!(
            uploads
                .add("lab", "good", &png(8, 6, 10))
                .expect("again")
                .duplicate
        );
        uploads.add("lab", "good", &png(8, 6, 20)).expect("stored");
        uploads
            .add("lab", "deep scratch", &png(8, 6, 30))
            .expect("stored");
        let sets = uploads.list().expect("sets");
        assert_eq!(sets.len(), 1);
        assert_eq!(
            sets[0].classes,
            BTreeMap::from([("deep_scratch".into(), 1), ("good".into(), 2)])
        );
        assert!(matches!(
            uploads.add("lab", "good", b"not an image"),
            Err(UploadError::NotAnImage(_))
        ));
        assert!(matches!(
            uploads.add("../x", "good", &png(2, 2, 0)),
            Err(UploadError::SetName(_))
        ));
        assert!(matches!(
            uploads.add("lab", " ", &png(2, 2, 0)),
            Err(UploadError::Class(_))
        ));
        assert!(matches!(
            uploads.add("lab", "good", &png(MAX_UPLOAD_SIDE + 1, 1, 0)),
            Err(UploadError::TooLarge { .. })
        ));
        uploads.remove("lab").expect("removed");
        assert!(matches!(
            uploads.remove("lab"),
            Err(UploadError::UnknownSet(_))
        ));
        assert!(uploads.list().expect("sets").is_empty());
    }
}
