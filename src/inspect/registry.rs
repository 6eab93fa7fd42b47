//! The model registry and the models a station is running.
//!
//! A registry is a folder of model folders, one per version, each with its `card.json` (which
//! names the version) and weights: what `linesight train` writes. Each loads as a
//! [`Detector`], whatever its family ([`crate::models::load`]). [`ActiveModels`] is the swap
//! point between the control plane and the inspect thread: the live model, and the candidate
//! in shadow, each an `Arc` the inspect thread clones per frame. A new model is loaded
//! completely *before* it is swapped in, so a promotion never makes the inspect thread wait
//! and no frame is dropped for it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use candle_core::Device;
use serde::Serialize;

use super::taxonomy::Taxonomy;
use crate::config::ModelDevice;
use crate::models::backbone::WeightsSearch;
use crate::models::backbone::bf16::{self, Precision};
use crate::models::card::{CARD_FILE, CardHead};
use crate::models::{self, Detector, KINDS, ModelError};
use crate::part::{GrayImage, PartId, Verdict};

/// Why a model could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("model registry {dir}: {source}")]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no model version {version:?} in the registry {dir}")]
    UnknownVersion { version: String, dir: PathBuf },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("model device: {0}")]
    Device(String),
}

/// The candle device for `device`: the CPU, or CUDA GPU 0.
pub fn open_device(device: ModelDevice) -> Result<Device, RegistryError> {
    match device {
        ModelDevice::Cpu => Ok(Device::Cpu),
        ModelDevice::Cuda if !cfg!(feature = "cuda") => Err(RegistryError::Device(
            "`device = \"cuda\"` needs a build with the `cuda` feature \
             (cargo build --release --features cuda, on a box with the CUDA toolkit)"
                .into(),
        )),
        ModelDevice::Cuda => Device::new_cuda(0)
            .map_err(|e| RegistryError::Device(format!("cannot open CUDA GPU 0: {e}"))),
    }
}

/// One model version in the registry.
#[derive(Debug, Clone, Serialize)]
pub struct ModelEntry {
    pub version: String,
    /// `defect-net`, `supervised` or `anomaly`.
    pub kind: String,
    pub threshold: f32,
    pub dir: PathBuf,
}

/// A folder of model folders.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
    /// The station's configured model, listed even when its folder lies outside `root`: a
    /// station whose registry starts empty can still roll back to it.
    configured: Option<PathBuf>,
    /// Where the pretrained backbone is found, for models built on it.
    weights: WeightsSearch,
    /// Where loaded models run.
    device: Device,
    /// How their backbones' 1×1 convolutions compute on the CPU; `None`: the process's
    /// default ([`crate::models::backbone::bf16`]).
    precision: Option<Precision>,
}

impl Registry {
    /// The registry in `root`; `backbone` is a weights file named in the station's config,
    /// looked at before the registry and the usual places ([`WeightsSearch::station`]).
    pub fn new(root: PathBuf, backbone: Option<PathBuf>, device: Device) -> Registry {
        Registry {
            weights: WeightsSearch::station(backbone, &root),
            root,
            configured: None,
            device,
            precision: None,
        }
    }

    /// Loads every model with its backbone's 1×1 convolutions in `precision` (`[model]
    /// precision`), whatever the process's default.
    pub fn with_precision(mut self, precision: Precision) -> Registry {
        self.precision = Some(precision);
        self
    }

    /// Also lists the model in `dir` (the station's configured one) wherever it lies.
    pub fn with_configured(mut self, dir: PathBuf) -> Registry {
        self.configured = Some(dir);
        self
    }

    /// The folder the versions live in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the pretrained backbone is looked for.
    pub fn weights(&self) -> &WeightsSearch {
        &self.weights
    }

    /// Every loadable-looking version, sorted by version. Folders without a readable card are
    /// not models and are left out.
    pub fn list(&self) -> Result<Vec<ModelEntry>, RegistryError> {
        let read_error = |source| RegistryError::Read {
            dir: self.root.clone(),
            source,
        };
        let mut entries = Vec::new();
        let mut dirs = Vec::new();
        // A registry folder that does not exist yet is empty (models trained here create it).
        match std::fs::read_dir(&self.root) {
            Ok(listing) => {
                for entry in listing {
                    dirs.push(entry.map_err(read_error)?.path());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(read_error(e)),
        }
        if let Some(configured) = &self.configured
            && !dirs.iter().any(|d| same_dir(d, configured))
        {
            dirs.push(configured.clone());
        }
        for dir in dirs {
            if !dir.join(CARD_FILE).is_file() {
                continue;
            }
            match CardHead::read(&dir) {
                Ok(head) if KINDS.contains(&head.kind.as_str()) => entries.push(ModelEntry {
                    version: head.version,
                    kind: head.kind,
                    threshold: head.threshold,
                    dir,
                }),
                Ok(head) => {
                    tracing::warn!(dir = %dir.display(), kind = head.kind, "model of an unknown kind; not listed");
                }
                Err(error) => tracing::warn!(%error, "unreadable model card; not listed"),
            }
        }
        entries.sort_by(|a, b| a.version.cmp(&b.version));
        // The configured model copied into the registry is one version, listed once.
        entries.dedup_by(|a, b| a.version == b.version);
        Ok(entries)
    }

    /// The entry of `version`.
    pub fn find(&self, version: &str) -> Result<ModelEntry, RegistryError> {
        self.list()?
            .into_iter()
            .find(|e| e.version == version)
            .ok_or_else(|| RegistryError::UnknownVersion {
                version: version.into(),
                dir: self.root.clone(),
            })
    }

    /// Loads the model in `dir` (which need not be inside the registry).
    pub fn load_dir(&self, dir: &Path) -> Result<Box<dyn Detector>, RegistryError> {
        let load = || models::load(dir, &self.weights, &self.device);
        Ok(match self.precision {
            Some(precision) => bf16::building_with(precision, load).0,
            None => load(),
        }?)
    }

    /// Loads `version`.
    pub fn load(&self, version: &str) -> Result<Box<dyn Detector>, RegistryError> {
        self.load_dir(&self.find(version)?.dir)
    }
}

/// Whether two paths name the same folder.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// A model as the station runs it: the detector and the threshold it applies.
#[derive(Debug)]
pub struct RunningModel {
    pub detector: Box<dyn Detector>,
    pub threshold: f32,
    /// Shared with every inspection that used it.
    pub version: Arc<str>,
}

impl RunningModel {
    pub fn new(detector: Box<dyn Detector>, threshold: f32) -> RunningModel {
        RunningModel {
            version: Arc::from(detector.head().version.as_str()),
            detector,
            threshold,
        }
    }
}

/// What decides a verdict now: the live model, the shadow candidate and the defect-class
/// taxonomy (which classes reject), each swapped as a whole.
#[derive(Debug)]
pub struct ActiveModels {
    live: RwLock<Arc<RunningModel>>,
    shadow: RwLock<Option<Arc<RunningModel>>>,
    taxonomy: RwLock<Arc<Taxonomy>>,
}

impl ActiveModels {
    /// `live`, no shadow, and an empty taxonomy (every defect rejects).
    pub fn new(live: RunningModel) -> ActiveModels {
        ActiveModels {
            live: RwLock::new(Arc::new(live)),
            shadow: RwLock::new(None),
            taxonomy: RwLock::default(),
        }
    }

    pub fn with_taxonomy(self, taxonomy: Taxonomy) -> ActiveModels {
        self.set_taxonomy(taxonomy);
        self
    }

    /// The defect classes now.
    pub fn taxonomy(&self) -> Arc<Taxonomy> {
        match self.taxonomy.read() {
            Ok(taxonomy) => taxonomy.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the defect classes; the next verdict uses them.
    pub fn set_taxonomy(&self, taxonomy: Taxonomy) {
        let mut current = match self.taxonomy.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = Arc::new(taxonomy);
    }

    /// The live model now. The lock is held only to clone the `Arc`.
    pub fn live(&self) -> Arc<RunningModel> {
        match self.live.read() {
            Ok(live) => live.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The shadow model now, if any.
    pub fn shadow(&self) -> Option<Arc<RunningModel>> {
        match self.shadow.read() {
            Ok(shadow) => shadow.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes `model` live; returns the one it replaces.
    pub fn set_live(&self, model: RunningModel) -> Arc<RunningModel> {
        let mut live = match self.live.write() {
            Ok(live) => live,
            Err(poisoned) => poisoned.into_inner(),
        };
        std::mem::replace(&mut *live, Arc::new(model))
    }

    /// Sets or clears the shadow model.
    pub fn set_shadow(&self, model: Option<RunningModel>) {
        let mut shadow = match self.shadow.write() {
            Ok(shadow) => shadow,
            Err(poisoned) => poisoned.into_inner(),
        };
        *shadow = model.map(Arc::new);
    }
}

/// A calibrated frame for the shadow model, with the live verdict to compare against.
pub struct ShadowJob {
    pub part_id: PartId,
    /// The calibrated image of every camera that saw the part (one with one camera): the
    /// shadow judges the part as the live model did, the worst of its views.
    pub images: Vec<GrayImage>,
    pub live_version: Arc<str>,
    pub live_verdict: Verdict,
    pub live_score: Option<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_always_opens_and_cuda_says_what_it_needs() {
        assert!(open_device(ModelDevice::Cpu).is_ok_and(|d| d.is_cpu()));
        if !cfg!(feature = "cuda") {
            let message = open_device(ModelDevice::Cuda)
                .expect_err("no cuda in this build")
                .to_string();
            assert!(message.contains("--features cuda"), "{message}");
        }
    }

    /// A registry holding the shipped model twice: as shipped, and re-versioned with another
    /// threshold.
    fn two_versions() -> (tempfile::TempDir, Registry) {
        let root = tempfile::tempdir().expect("tempdir");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/defect-net-sim");
        for (name, version, threshold) in [("a", None, None), ("b", Some("sim@b"), Some(0.9))] {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::copy(
                shipped.join("model.safetensors"),
                dir.join("model.safetensors"),
            )
            .expect("weights");
            let mut card: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(shipped.join("card.json")).expect("card"),
            )
            .expect("json");
            if let Some(version) = version {
                card["version"] = version.into();
            }
            if let Some(threshold) = threshold {
                card["threshold"] = serde_json::json!(threshold);
            }
            std::fs::write(dir.join("card.json"), card.to_string()).expect("write card");
        }
        std::fs::create_dir_all(root.path().join("not-a-model")).expect("mkdir");
        let registry = Registry::new(root.path().to_owned(), None, Device::Cpu);
        (root, registry)
    }

    #[test]
    fn the_configured_model_is_listed_once_wherever_it_lies() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/defect-net-sim");
        let empty = tempfile::tempdir().expect("tempdir");
        // A registry folder not made yet is empty, and the configured model outside it listed.
        let registry = Registry::new(empty.path().join("not-yet"), None, Device::Cpu)
            .with_configured(shipped.clone());
        let versions: Vec<String> = (registry.list().expect("lists").into_iter())
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, ["defect-net-sim@5fb28c4f1789"]);
        assert!(registry.load("defect-net-sim@5fb28c4f1789").is_ok());
        // Inside the registry as well (by another path): listed once.
        let (root, registry) = two_versions();
        let registry = registry.with_configured(root.path().join("b/../a"));
        let versions: Vec<String> = (registry.list().expect("lists").into_iter())
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, ["defect-net-sim@5fb28c4f1789", "sim@b"]);
    }

    #[test]
    fn lists_and_loads_versions() {
        let (_root, registry) = two_versions();
        let entries = registry.list().expect("lists");
        let versions: Vec<&str> = entries.iter().map(|e| e.version.as_str()).collect();
        assert_eq!(versions, ["defect-net-sim@5fb28c4f1789", "sim@b"]);
        assert!(entries.iter().all(|e| e.kind == "defect-net"));
        let b = registry.load("sim@b").expect("loads");
        assert_eq!(
            (b.head().version.as_str(), b.head().threshold),
            ("sim@b", 0.9)
        );
        assert_eq!(b.input_size(), Some((224, 224)));
    }

    #[test]
    fn unknown_version_and_broken_model_are_clear_errors() {
        let (root, registry) = two_versions();
        let error = registry.load("nope").expect_err("unknown");
        assert!(
            error.to_string().contains("no model version \"nope\""),
            "{error}"
        );
        std::fs::write(root.path().join("b/model.safetensors"), b"truncated").expect("write");
        let error = registry.load("sim@b").expect_err("broken");
        assert!(error.to_string().contains("weights"), "{error}");
    }

    #[test]
    fn swapping_keeps_models_in_use_alive() {
        let (_root, registry) = two_versions();
        let a = registry.load("defect-net-sim@5fb28c4f1789").expect("a");
        let b = registry.load("sim@b").expect("b");
        let active = ActiveModels::new(RunningModel::new(a, 0.6));
        let in_use = active.live();
        let replaced = active.set_live(RunningModel::new(b, 0.9));
        assert_eq!(&*replaced.version, "defect-net-sim@5fb28c4f1789");
        assert_eq!(&*in_use.version, "defect-net-sim@5fb28c4f1789");
        assert_eq!(&*active.live().version, "sim@b");
        assert!(active.shadow().is_none());
    }
}
