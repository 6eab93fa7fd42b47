//! The model card: what every model says about itself, in `card.json` beside its weights.
//!
//! One [`ModelCard`] for every family: a [`CardHead`] with the fields every model has (name,
//! version, kind, architecture, the threshold and how it was chosen) and the family's own
//! section `F` (what it was trained on, how it prepares images, what it measured). On disk the
//! two are one flat JSON object.
//!
//! Cards written by earlier versions still load: [`ModelCard::from_json`] brings them up to
//! date first. The only change so far: the defect network's cards had no `kind`, and were
//! known by their architecture.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The card's file inside a model folder.
pub const CARD_FILE: &str = "card.json";

/// Why a card could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error("model {dir}: cannot read {CARD_FILE}: {source}")]
    Read {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("model {dir}: {CARD_FILE}: {source}")]
    Parse {
        dir: PathBuf,
        source: serde_json::Error,
    },
    #[error("model {dir}: {CARD_FILE} is a {got:?} model, not a {want:?} one")]
    Kind {
        dir: PathBuf,
        want: &'static str,
        got: String,
    },
    #[error("model {dir}: {CARD_FILE}: {message}")]
    Invalid { dir: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The fields every model's card has: enough to list, load and run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CardHead {
    pub name: String,
    /// `name@` and the first 12 hex digits of a hash of what the station runs (weights, bank,
    /// threshold): two models that could judge a part differently never share a version.
    pub version: String,
    /// The model family ([`Family::KIND`]): what the registry loads it as.
    pub kind: String,
    /// What computes the score, in words an engineer can look up.
    pub architecture: String,
    /// FAIL when the score reaches this; the family says on which scale.
    pub threshold: f32,
    /// How the threshold was chosen, and on which images.
    pub threshold_rule: String,
    /// What the threshold promises for new parts of the product, when it was chosen by split
    /// conformal prediction on enough calibration images; absent otherwise, and from cards
    /// older than the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_guarantee: Option<crate::learn::eval::ThresholdGuarantee>,
    /// What the model's inputs and scores looked like in training, which the station's drift
    /// watch compares live parts with; absent from cards older than the field and from runs
    /// with too few good images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::learn::drift::DriftReference>,
}

/// A family's section of the card.
pub trait Family: Serialize + DeserializeOwned {
    /// The card's `kind` for this family.
    const KIND: &'static str;
}

/// A model's card: the head every model has and its family's section `F`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelCard<F> {
    #[serde(flatten)]
    pub head: CardHead,
    #[serde(flatten)]
    pub family: F,
}

impl<F: Family> ModelCard<F> {
    /// A new card of family `F`.
    pub fn new(
        name: &str,
        version: String,
        architecture: String,
        (threshold, threshold_rule): (f32, String),
        family: F,
    ) -> ModelCard<F> {
        ModelCard {
            head: CardHead {
                name: name.to_owned(),
                version,
                kind: F::KIND.to_owned(),
                architecture,
                threshold,
                threshold_rule,
                threshold_guarantee: None,
                drift: None,
            },
            family,
        }
    }

    /// The card with what its threshold promises (see [`CardHead::threshold_guarantee`]).
    pub fn with_guarantee(
        mut self,
        guarantee: Option<crate::learn::eval::ThresholdGuarantee>,
    ) -> ModelCard<F> {
        self.head.threshold_guarantee = guarantee;
        self
    }

    /// The card with its drift reference (see [`CardHead::drift`]).
    pub fn with_drift(
        mut self,
        drift: Option<crate::learn::drift::DriftReference>,
    ) -> ModelCard<F> {
        self.head.drift = drift;
        self
    }

    /// A card from its JSON, written by this version or an earlier one, which must be of
    /// family `F`.
    pub fn from_json(text: &str) -> Result<ModelCard<F>, CardJsonError> {
        let value = upgraded(text)?;
        // The kind first: another family's card would fail on a field it lacks, which says
        // less than "this is an anomaly model".
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("(none)");
        if kind != F::KIND {
            return Err(CardJsonError::Kind(kind.to_owned()));
        }
        Ok(serde_json::from_value(value)?)
    }

    /// Reads `dir/card.json`.
    pub fn read(dir: &Path) -> Result<ModelCard<F>, CardError> {
        let text = read_card_text(dir)?;
        ModelCard::from_json(&text).map_err(|error| match error {
            CardJsonError::Json(source) => CardError::Parse {
                dir: dir.to_owned(),
                source,
            },
            CardJsonError::Kind(got) => CardError::Kind {
                dir: dir.to_owned(),
                want: F::KIND,
                got,
            },
        })
    }

    /// Writes `dir/card.json` (pretty JSON, one trailing newline).
    pub fn write(&self, dir: &Path) -> Result<(), CardError> {
        let path = dir.join(CARD_FILE);
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other);
        json.and_then(|json| std::fs::write(&path, json + "\n"))
            .map_err(|source| CardError::Write { path, source })
    }
}

/// Why a card's JSON is not a card of the family asked for.
#[derive(Debug, thiserror::Error)]
pub enum CardJsonError {
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("a {0:?} model's card")]
    Kind(String),
}

impl CardHead {
    /// Reads the head of `dir/card.json`, whatever the family.
    pub fn read(dir: &Path) -> Result<CardHead, CardError> {
        let text = read_card_text(dir)?;
        upgraded(&text)
            .and_then(serde_json::from_value)
            .map_err(|source| CardError::Parse {
                dir: dir.to_owned(),
                source,
            })
    }
}

fn read_card_text(dir: &Path) -> Result<String, CardError> {
    std::fs::read_to_string(dir.join(CARD_FILE)).map_err(|source| CardError::Read {
        dir: dir.to_owned(),
        source,
    })
}

/// A card's JSON, brought to today's shape.
fn upgraded(text: &str) -> Result<serde_json::Value, serde_json::Error> {
    let mut value = serde_json::from_str(text)?;
    upgrade(&mut value);
    Ok(value)
}

/// Brings a card written by an earlier version to today's shape, in place.
fn upgrade(card: &mut serde_json::Value) {
    let Some(fields) = card.as_object_mut() else {
        return;
    };
    // Before the one card, the defect network's had no `kind`: its architecture named it.
    if !fields.contains_key("kind")
        && fields.get("architecture").and_then(|a| a.as_str())
            == Some(crate::models::defect_net::ARCHITECTURE)
    {
        fields.insert("kind".into(), crate::models::defect_net::KIND.into());
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::Value;

    use super::*;
    use crate::models::anomaly::AnomalyCard;
    use crate::models::backbone::Resampling;
    use crate::models::defect_net::DefectNetCard;
    use crate::models::supervised::SupervisedCard;

    fn repo_file(path: &str) -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A card of an earlier shape, from `tests/fixtures/cards` (named by the commit that last
    /// wrote that shape).
    fn fixture(name: &str) -> String {
        repo_file(&format!("tests/fixtures/cards/{name}"))
    }

    /// The JSON a card writes today, as a value.
    fn written<F: Family>(card: &ModelCard<F>) -> Value {
        serde_json::from_str(&serde_json::to_string(card).expect("serialises")).expect("JSON")
    }

    #[test]
    fn the_shipped_card_loads_and_gains_its_kind() {
        let text = repo_file("models/defect-net-sim/card.json");
        let card = ModelCard::<DefectNetCard>::from_json(&text).expect("the shipped card loads");
        assert_eq!(card.head.kind, "defect-net");
        assert_eq!(card.head.version, "defect-net-sim@5fb28c4f1789");
        assert_eq!(card.head.threshold, 0.63767374);
        assert_eq!(
            (card.family.input.width, card.family.input.height),
            (224, 224)
        );
        // Written today, it is the shipped card with its kind added, nothing else.
        let mut shipped: Value = serde_json::from_str(&text).expect("JSON");
        shipped["kind"] = "defect-net".into();
        assert_eq!(written(&card), shipped);
        assert_eq!(
            card.head.threshold_guarantee, None,
            "a card from before the field"
        );

        // A threshold's promise is written and read back whole.
        let promise = crate::learn::eval::conformal_false_reject_threshold(
            &(0..40).map(|i| i as f32).collect::<Vec<_>>(),
            0.05,
        )
        .expect("40 good scores promise 5 %")
        .1;
        let card = card.with_guarantee(Some(promise));
        let text = serde_json::to_string(&card).expect("JSON");
        assert!(text.contains("\"threshold_guarantee\""), "{text}");
        let read = ModelCard::<DefectNetCard>::from_json(&text).expect("reads back");
        assert_eq!(read.head.threshold_guarantee, Some(promise));
    }

    #[test]
    fn every_earlier_anomaly_card_loads_with_what_it_lacks_defaulted() {
        // (fixture, resampling, scale, head spread, coarse size, painted defects per image)
        let cases = [
            (
                "anomaly-ff80e07.json",
                Resampling::Bilinear,
                false,
                false,
                None,
                0,
            ),
            (
                "anomaly-74048ce.json",
                Resampling::Bilinear,
                true,
                false,
                None,
                0,
            ),
            (
                "anomaly-b1dfe11.json",
                Resampling::Bilinear,
                true,
                true,
                None,
                4,
            ),
            (
                "anomaly-296dec3.json",
                Resampling::Antialiased,
                true,
                true,
                Some(96),
                4,
            ),
        ];
        for (name, resampling, scaled, head, coarse, painted) in cases {
            let card = ModelCard::<AnomalyCard>::from_json(&fixture(name))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(card.head.kind, "anomaly", "{name}");
            assert!(
                card.head.version.starts_with("magnetic-tile-anomaly@"),
                "{name}"
            );
            let family = &card.family;
            assert_eq!(family.input.input_size, 128, "{name}");
            assert_eq!(family.input.resampling, resampling, "{name}");
            assert_eq!(family.score_scale.is_some(), scaled, "{name}");
            let scale = family.score_scale;
            assert_eq!(scale.is_some_and(|s| s.head.is_some()), head, "{name}");
            assert_eq!(family.coarse_input_size, coarse, "{name}");
            assert_eq!(family.synthetic_defects_per_good, painted, "{name}");
            assert_eq!(family.metrics.per_class["MT_Crack"].flagged, 15, "{name}");
            assert!(family.metrics.score_auroc.is_empty(), "{name}");
            // What it writes reads back the same.
            let again = ModelCard::<AnomalyCard>::from_json(&written(&card).to_string())
                .expect("reads back");
            assert_eq!(written(&again), written(&card), "{name}");
        }
        // The latest shape is written exactly as it was read: the file format is unchanged.
        let latest = fixture("anomaly-296dec3.json");
        let card = ModelCard::<AnomalyCard>::from_json(&latest).expect("loads");
        assert_eq!(
            written(&card),
            serde_json::from_str::<Value>(&latest).expect("JSON")
        );
    }

    #[test]
    fn every_earlier_supervised_card_loads() {
        for (name, resampling, dropout) in [
            ("supervised-ff80e07.json", Resampling::Bilinear, 0.0),
            ("supervised-53ae035.json", Resampling::Antialiased, 0.1),
            ("supervised-d0e8f25.json", Resampling::Antialiased, 0.1),
        ] {
            let text = fixture(name);
            let card = ModelCard::<SupervisedCard>::from_json(&text)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(card.head.kind, "supervised");
            assert_eq!(card.family.classes.len(), 7, "{name}");
            assert_eq!(card.family.feature_mean.len(), 152, "{name}");
            assert_eq!(card.family.input.resampling, resampling, "{name}");
            assert_eq!(card.family.feature_dropout, dropout, "{name}");
            assert_eq!(card.family.metrics.confusion.len(), 7, "{name}");
        }
        // Cards from before images tagged without a mask count none.
        let before = ModelCard::<SupervisedCard>::from_json(&fixture("supervised-53ae035.json"))
            .expect("loads");
        assert_eq!(before.family.n_tagged_train, 0);
        let latest = fixture("supervised-d0e8f25.json");
        let card = ModelCard::<SupervisedCard>::from_json(&latest).expect("loads");
        assert_eq!(
            written(&card),
            serde_json::from_str::<Value>(&latest).expect("JSON")
        );
    }

    #[test]
    fn a_card_of_another_family_is_refused_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(CARD_FILE), fixture("anomaly-296dec3.json")).expect("write");
        let error = ModelCard::<SupervisedCard>::read(dir.path()).expect_err("an anomaly card");
        assert!(
            error
                .to_string()
                .contains("is a \"anomaly\" model, not a \"supervised\" one"),
            "{error}"
        );
        // Its head reads whatever the family; a broken or missing card says which file.
        let head = CardHead::read(dir.path()).expect("head");
        assert_eq!((head.kind.as_str(), head.threshold), ("anomaly", 3.5));
        std::fs::write(dir.path().join(CARD_FILE), "{\"name\": 1}").expect("write");
        let error = CardHead::read(dir.path()).expect_err("broken");
        assert!(error.to_string().contains("card.json"), "{error}");
        let missing = CardHead::read(&dir.path().join("nothing")).expect_err("missing");
        assert!(
            missing.to_string().contains("cannot read card.json"),
            "{missing}"
        );
    }

    #[test]
    fn only_the_defect_network_gains_a_kind() {
        // A card without `kind` of any other architecture stays without one and is refused.
        let mut value: Value =
            serde_json::from_str(&fixture("anomaly-296dec3.json")).expect("JSON");
        value.as_object_mut().expect("object").remove("kind");
        upgrade(&mut value);
        assert!(value.get("kind").is_none());
        assert!(ModelCard::<AnomalyCard>::from_json(&value.to_string()).is_err());
    }
}
