//! The content hash behind every training-data hash and model version.
//!
//! A model card names the data its model learnt from (the SHA-256 of that data) and a version
//! derived from what the station runs (weights, bank, threshold). Every such digest is built
//! here, from the same few kinds of input, so that two trainings that differ in anything the
//! station uses get different names, and the same training gets the same name on every machine.

use std::path::Path;

use sha2::{Digest, Sha256};

/// A SHA-256 over a sequence of byte strings, floats and files.
#[derive(Debug, Clone, Default)]
pub struct ContentHash(Sha256);

impl ContentHash {
    pub fn new() -> ContentHash {
        ContentHash::default()
    }

    /// Adds raw bytes.
    pub fn bytes(&mut self, bytes: &[u8]) -> &mut ContentHash {
        self.0.update(bytes);
        self
    }

    /// Adds floats, each as its four little-endian bytes.
    pub fn floats(&mut self, values: &[f32]) -> &mut ContentHash {
        for v in values {
            self.0.update(v.to_le_bytes());
        }
        self
    }

    /// Adds a file: its name (not its folder: the same images elsewhere hash alike), its
    /// length and its bytes. An unreadable file is an error, never left out.
    pub fn file(&mut self, path: &Path) -> std::io::Result<&mut ContentHash> {
        let bytes = std::fs::read(path)?;
        self.0.update(
            path.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(&bytes);
        Ok(self)
    }

    /// The whole digest, 64 hex digits: a card's training-data hash.
    pub fn hex(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }

    /// The first 12 hex digits: the suffix of a model version (`name@…`).
    pub fn version_suffix(&self) -> String {
        self.hex()[..12].to_owned()
    }
}

/// `name@` plus the version suffix of `hash`.
pub fn version(name: &str, hash: &ContentHash) -> String {
    format!("{name}@{}", hash.version_suffix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // SHA-256 of the empty string and of "abc".
        assert_eq!(
            ContentHash::new().hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            ContentHash::new().bytes(b"abc").version_suffix(),
            "ba7816bf8f01"
        );
        // Floats are their little-endian bytes.
        let mut by_bytes = ContentHash::new();
        by_bytes.bytes(&1.5f32.to_le_bytes());
        assert_eq!(ContentHash::new().floats(&[1.5]).hex(), by_bytes.hex());
        assert_eq!(version("m", &ContentHash::new()), "m@e3b0c44298fc");
    }

    #[test]
    fn files_count_their_name_and_bytes_not_their_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (folder, name, bytes) in [
            ("a", "x.png", b"12"),
            ("b", "x.png", b"12"),
            ("c", "y.png", b"12"),
        ] {
            std::fs::create_dir_all(dir.path().join(folder)).expect("mkdir");
            std::fs::write(dir.path().join(folder).join(name), bytes).expect("write");
        }
        let hash = |folder: &str, name: &str| {
            ContentHash::new()
                .file(&dir.path().join(folder).join(name))
                .expect("readable")
                .hex()
        };
        assert_eq!(hash("a", "x.png"), hash("b", "x.png"));
        assert_ne!(hash("a", "x.png"), hash("c", "y.png"));
        assert!(
            ContentHash::new()
                .file(&dir.path().join("missing"))
                .is_err()
        );
    }
}
