//! Which pretrained weights a model was trained on, and where a station finds them.
//!
//! A model on the backbone computes its features with one particular file of weights; the same
//! bank or head on other weights would judge parts by features it never saw. So the card names
//! the weights by content ([`WeightsId`]: a name and the file's SHA-256), and loading a model
//! looks for a file with that content ([`WeightsSearch`]) wherever the model folder has been put:
//! the path the station or the command was given, the folder beside the model, the registry, a
//! weights folder named by `LINESIGHT_WEIGHTS`, the user's cache, and the `models/` folder of
//! the source tree the binary was built from. A file found under the right name with other content is never used; when nothing
//! fits, the error lists every place looked at and what was there.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackboneError;

/// The name of the only backbone so far, which cards written before [`WeightsId`] mean.
pub const LITE0: &str = "efficientnet-lite0";

/// The environment variable naming a folder of weights files.
pub const WEIGHTS_DIR_ENV: &str = "LINESIGHT_WEIGHTS";

/// Pretrained weights, by content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsId {
    /// The network the weights are for: the file is looked for as `<name>/<name>.safetensors`
    /// or `<name>.safetensors` in a folder.
    pub name: String,
    /// SHA-256 of the safetensors file, 64 hex digits; a file by this name is also found as
    /// `<sha256>.safetensors` in a folder (the layout of a cache).
    pub sha256: String,
}

impl WeightsId {
    /// The id of the weights in `path`.
    pub fn of_file(name: &str, path: &Path) -> Result<WeightsId, BackboneError> {
        Ok(WeightsId {
            name: name.to_owned(),
            sha256: file_sha256(path)?,
        })
    }
}

/// Whether the safetensors file at `path` holds EfficientNet-Lite0 (16 blocks), read from its
/// header alone.
fn holds_lite0(path: &Path) -> Result<bool, BackboneError> {
    let read_error = |source| BackboneError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut length = [0u8; 8];
    file.read_exact(&mut length).map_err(read_error)?;
    // A header of more than 16 MiB is no weights file of ours.
    let length = u64::from_le_bytes(length);
    if length > 1 << 24 {
        return Ok(false);
    }
    let mut header = vec![0u8; length as usize];
    file.read_exact(&mut header).map_err(read_error)?;
    let Ok(names) = serde_json::from_slice::<HashMap<String, serde_json::Value>>(&header) else {
        return Ok(false);
    };
    let block = |i: usize| names.contains_key(&format!("_blocks.{i}._project_conv.weight"));
    Ok(block(15) && !block(16))
}

impl std::fmt::Display for WeightsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (sha256 {})", self.name, short(&self.sha256))
    }
}

/// Where to look for a model's backbone weights, in order.
#[derive(Debug, Clone, Default)]
pub struct WeightsSearch {
    /// A file named by the station's config or on the command line: looked at first.
    file: Option<PathBuf>,
    /// Folders, each looked in as [`WeightsSearch::candidates`] says.
    folders: Vec<PathBuf>,
}

impl WeightsSearch {
    /// Looks at `file` (weights a test or a command chose), then beside the model.
    pub fn file(file: impl Into<PathBuf>) -> WeightsSearch {
        WeightsSearch {
            file: Some(file.into()),
            folders: Vec::new(),
        }
    }

    /// Looks at `file` when given, then beside the model, in `registry` (the folder of model
    /// versions), and in the usual places ([`WeightsSearch::usual_folders`]).
    pub fn station(file: Option<PathBuf>, registry: &Path) -> WeightsSearch {
        let mut folders = vec![registry.to_owned()];
        folders.extend(Self::usual_folders());
        WeightsSearch { file, folders }
    }

    /// The places every search ends with: the folder `LINESIGHT_WEIGHTS` names, the user's
    /// cache (`$XDG_CACHE_HOME/linesight/weights`, else `~/.cache/linesight/weights`), and the
    /// `models/` folder of the source tree this binary was built from, where `make weights`
    /// installs them.
    pub fn usual_folders() -> Vec<PathBuf> {
        let mut folders = Vec::new();
        if let Some(dir) = std::env::var_os(WEIGHTS_DIR_ENV).filter(|d| !d.is_empty()) {
            folders.push(PathBuf::from(dir));
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
        if let Some(cache) = cache {
            folders.push(cache.join("linesight/weights"));
        }
        folders.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("models"));
        folders
    }

    /// The files looked at for `name` (weights with `sha256`, when the card names them) for a
    /// model in `model_dir`, in order, without repeats.
    pub fn candidates(&self, name: &str, sha256: Option<&str>, model_dir: &Path) -> Vec<PathBuf> {
        let mut folders = self.folders.clone();
        // Beside the model: a registry whatever it is called.
        if let Some(parent) = model_dir.parent() {
            folders.insert(0, parent.to_owned());
        }
        let mut files: Vec<PathBuf> = self.file.iter().cloned().collect();
        for folder in folders {
            files.push(folder.join(name).join(format!("{name}.safetensors")));
            files.push(folder.join(format!("{name}.safetensors")));
            if let Some(sha256) = sha256 {
                files.push(folder.join(format!("{sha256}.safetensors")));
            }
        }
        let mut seen = Vec::new();
        files.retain(|file| {
            let key = std::path::absolute(file).unwrap_or_else(|_| file.clone());
            let new = !seen.contains(&key);
            seen.push(key);
            new
        });
        files
    }

    /// The file holding the weights `wanted` for the model in `model_dir`. `None` is a card
    /// written before cards named their weights: the first Lite0 file found is taken, as then.
    pub fn find(
        &self,
        wanted: Option<&WeightsId>,
        model_dir: &Path,
    ) -> Result<PathBuf, BackboneError> {
        let name = wanted.map_or(LITE0, |w| w.name.as_str());
        let candidates = self.candidates(name, wanted.map(|w| w.sha256.as_str()), model_dir);
        let mut looked = Vec::new();
        for file in candidates {
            // A file named in the config or on the command line that cannot serve is worth a
            // word even when weights are found elsewhere: it may be a typo.
            let named = self.file.as_ref() == Some(&file);
            if !file.is_file() {
                if named {
                    tracing::warn!(file = %file.display(), "the backbone weights file named does not exist; looking elsewhere");
                }
                looked.push(format!("{}: no such file", file.display()));
                continue;
            }
            let Some(wanted) = wanted else {
                // Cards that name no weights were all trained on Lite0: never another variant.
                match holds_lite0(&file) {
                    Ok(true) => {
                        tracing::debug!(file = %file.display(), "backbone weights of a card that names none");
                        return Ok(file);
                    }
                    Ok(false) => looked.push(format!(
                        "{}: not {LITE0} weights (a card that names none was trained on them)",
                        file.display()
                    )),
                    Err(error) => looked.push(error.to_string()),
                }
                continue;
            };
            match file_sha256(&file) {
                Ok(sha256) if sha256.eq_ignore_ascii_case(&wanted.sha256) => return Ok(file),
                Ok(sha256) => {
                    if named {
                        tracing::warn!(file = %file.display(), wanted = %wanted, found = short(&sha256), "the backbone weights file named holds other weights than the model's; looking elsewhere");
                    }
                    looked.push(format!(
                        "{}: other weights (sha256 {})",
                        file.display(),
                        short(&sha256)
                    ))
                }
                Err(error) => looked.push(error.to_string()),
            }
        }
        Err(BackboneError::NotFound {
            wanted: wanted.map_or_else(|| format!("{LITE0} (any file of them)"), |w| w.to_string()),
            looked,
        })
    }
}

/// The first 12 hex digits, enough to tell files apart in a message.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// The SHA-256 of `path` in hex. Weights files are tens of MB and every model load asks, so
/// each file's digest is kept for as long as its length and modification time stay the same.
pub fn file_sha256(path: &Path) -> Result<String, BackboneError> {
    type Key = (PathBuf, u64, Option<SystemTime>);
    static KNOWN: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let read_error = |source: std::io::Error| BackboneError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_error)?;
    let key = (
        std::path::absolute(path).unwrap_or_else(|_| path.to_owned()),
        meta.len(),
        meta.modified().ok(),
    );
    let known = KNOWN.get_or_init(Default::default);
    // A cache that someone panicked holding is still a cache of correct digests.
    let lock = || {
        known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(sha256) = lock().get(&key) {
        return Ok(sha256.clone());
    }
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    let sha256 = hex::encode(hasher.finalize());
    lock().insert(key, sha256.clone());
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, bytes: &[u8]) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }

    fn id(bytes: &[u8]) -> WeightsId {
        WeightsId {
            name: LITE0.into(),
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }

    #[test]
    fn the_digest_is_the_files_sha256_and_follows_a_rewrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.safetensors");
        write(&path, b"abc");
        assert_eq!(
            file_sha256(&path).expect("digest"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Another length: the kept digest is not reused.
        write(&path, b"abcd");
        assert_eq!(file_sha256(&path).expect("digest"), id(b"abcd").sha256);
        assert!(matches!(
            file_sha256(&dir.path().join("none")),
            Err(BackboneError::Read { .. })
        ));
    }

    #[test]
    fn a_model_finds_its_weights_by_content_wherever_its_folder_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("elsewhere/my-model");
        std::fs::create_dir_all(&model).expect("mkdir");
        let registry = dir.path().join("registry");
        let cache = dir.path().join("cache");
        let search = WeightsSearch {
            file: Some(dir.path().join("configured.safetensors")),
            folders: vec![registry.clone(), cache.clone()],
        };
        let wanted = id(b"right");

        // Nothing anywhere: every place is named.
        let error = search.find(Some(&wanted), &model).expect_err("missing");
        let message = error.to_string();
        assert!(message.contains(&wanted.sha256[..12]), "{message}");
        for place in [
            "configured.safetensors",
            "registry/efficientnet-lite0/",
            "cache/",
        ] {
            assert!(message.contains(place), "{place} in {message}");
        }

        // The configured file and the registry's hold other weights: passed over, and said.
        write(&dir.path().join("configured.safetensors"), b"wrong");
        write(
            &registry.join("efficientnet-lite0/efficientnet-lite0.safetensors"),
            b"wrong too",
        );
        let message = search
            .find(Some(&wanted), &model)
            .expect_err("wrong")
            .to_string();
        assert!(message.contains(&id(b"wrong").sha256[..12]), "{message}");

        // A cache keeps files by digest.
        let cached = cache.join(format!("{}.safetensors", wanted.sha256));
        write(&cached, b"right");
        assert_eq!(search.find(Some(&wanted), &model).expect("found"), cached);

        // Beside the model comes before the search's folders.
        let beside = dir.path().join("elsewhere/efficientnet-lite0.safetensors");
        write(&beside, b"right");
        assert_eq!(search.find(Some(&wanted), &model).expect("found"), beside);

        // A card that names no weights was trained on Lite0: it takes the first Lite0 file,
        // passing over files that are no weights and weights of another variant.
        let lite1 = registry.join("efficientnet-lite0/efficientnet-lite0.safetensors");
        write(&lite1, &header_with_blocks(21));
        let message = search.find(None, &model).expect_err("no Lite0").to_string();
        assert!(
            message.contains(&format!(
                "{}: not efficientnet-lite0 weights",
                lite1.display()
            )),
            "{message}"
        );
        let lite0 = cache.join("efficientnet-lite0.safetensors");
        write(&lite0, &header_with_blocks(16));
        assert_eq!(search.find(None, &model).expect("found"), lite0);
    }

    /// The start of a safetensors file naming the tensors of an EfficientNet-Lite of `blocks`
    /// blocks (all [`holds_lite0`] reads).
    fn header_with_blocks(blocks: usize) -> Vec<u8> {
        let names: serde_json::Map<String, serde_json::Value> = (0..blocks)
            .map(|i| {
                (
                    format!("_blocks.{i}._project_conv.weight"),
                    serde_json::json!({}),
                )
            })
            .collect();
        let json = serde_json::to_vec(&names).expect("json");
        let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
        bytes.extend(json);
        bytes
    }

    #[test]
    fn candidates_come_once_each() {
        let search = WeightsSearch {
            file: None,
            folders: vec!["r".into(), "r".into()],
        };
        let files = search.candidates(LITE0, None, Path::new("r/model"));
        assert_eq!(
            files,
            [
                PathBuf::from("r/efficientnet-lite0/efficientnet-lite0.safetensors"),
                PathBuf::from("r/efficientnet-lite0.safetensors"),
            ]
        );
    }
}
