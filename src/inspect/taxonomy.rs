//! The defect-class taxonomy: what each defect class is called, the colour the pages draw it
//! in, how severe it is, and whether a part the model gives that class is rejected.
//!
//! Why `rejects`: a plant tolerates some defects (a cosmetic spot on a face nobody sees) and
//! scraps parts for others. The gate passes a part whose defect is of a tolerated class; its
//! record keeps the class beside the pass, so the MES and the labelling queue still see it.
//! Fail-safe rules: a class the taxonomy does not list rejects, and so does a defect from a
//! model that names no class (the anomaly family) — an unknown never passes.
//!
//! Severity follows the usual classification of defects (critical, major, minor; ANSI/ASQ
//! Z1.4): it orders classes in the pages and the Pareto's legend, and says nothing to the gate.
//!
//! Where it lives: the station TOML's `[[defect_classes]]` seeds it; an engineer's edit
//! (`PUT /api/v1/defect-classes`) is kept in `<data_dir>/defect-classes.json`, written whole
//! and renamed into place, and audited. Once that file exists it wins over the TOML, so an edit
//! survives a restart with the same config.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::learn::dataset::class_folder;
use crate::models::Judgement;
use crate::part::Verdict;
use crate::record::{LabelRecord, Region};

/// The name of the file in the data folder that keeps the engineers' taxonomy.
pub const FILE_NAME: &str = "defect-classes.json";

/// Classes a taxonomy holds at most: a picker of more is no help to anyone labelling.
pub const MAX_CLASSES: usize = 64;

/// The longest class name: what an upload set's class folder takes.
pub const MAX_NAME_CHARS: usize = 40;

/// How bad a defect of a class is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Unsafe, or the part cannot do its job.
    Critical,
    /// Likely to make the part fail or lose value.
    Major,
    /// A departure from the drawing that hardly matters in use.
    Minor,
}

/// One defect class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefectClass {
    /// The name models, labels and records use: 1 to 40 letters, digits, `-` and `_`.
    pub name: String,
    /// `#rrggbb`: the colour of its shapes, masks and chips in the pages.
    pub colour: String,
    pub severity: Severity,
    /// Whether the gate rejects a part the model gives this class. Default: it does.
    #[serde(default = "rejects_by_default")]
    pub rejects: bool,
    /// What it looks like, for the people who label it.
    #[serde(default)]
    pub description: String,
}

fn rejects_by_default() -> bool {
    true
}

/// The station's defect classes, checked: names unique and usable, colours well formed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Taxonomy {
    classes: Vec<DefectClass>,
}

/// Why a taxonomy cannot be used or kept.
#[derive(Debug, thiserror::Error)]
pub enum TaxonomyError {
    #[error("{}", .0.iter().map(|(field, message)| format!("{field}: {message}")).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<(String, String)>),
    #[error(
        "the defect classes changed since version {expected} was read (now {current}): read \
         them again and redo the change"
    )]
    Changed { expected: String, current: String },
    #[error("defect classes {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("defect classes {path} is not a taxonomy: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// The file's shape: an object, so that fields can be added beside the classes later.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxonomyFile {
    classes: Vec<DefectClass>,
}

impl Taxonomy {
    /// Checks `classes` and keeps them in the order given (the pages' order, and the labelling
    /// page's number keys).
    pub fn new(classes: Vec<DefectClass>) -> Result<Taxonomy, TaxonomyError> {
        let problems = problems(&classes, "classes");
        if problems.is_empty() {
            Ok(Taxonomy { classes })
        } else {
            Err(TaxonomyError::Invalid(problems))
        }
    }

    pub fn classes(&self) -> &[DefectClass] {
        &self.classes
    }

    /// The version of these classes, as an HTTP entity tag (`"…"`): a digest of their JSON,
    /// so equal taxonomies share it and any change gives another.
    pub fn etag(&self) -> String {
        use sha2::Digest;
        let json = serde_json::to_vec(&self.classes).unwrap_or_default();
        format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&json))[..16])
    }

    /// Checks `renames` (old name → new name) for a change from these classes to `next`: each
    /// old class is listed now and not in `next`, each new one is in `next` and not listed
    /// now, and no two old classes become one. The labels of the old classes are then
    /// rewritten to the new names ([`relabelled`]), so that a rename keeps what was taught.
    pub fn check_renames(
        &self,
        next: &Taxonomy,
        renames: &BTreeMap<String, String>,
    ) -> Result<(), TaxonomyError> {
        let mut problems = Vec::new();
        let mut targets = BTreeMap::new();
        for (old, new) in renames {
            let field = format!("renames.{old}");
            let mut problem = |message: String| problems.push((field.clone(), message));
            if self.class(old).is_none() {
                problem(format!("{old:?} is not a defect class now"));
            } else if next.class(old).is_some() {
                problem(format!("{old:?} is still in the new classes"));
            }
            if next.class(new).is_none() {
                problem(format!("{new:?} is not in the new classes"));
            } else if self.class(new).is_some() {
                problem(format!(
                    "{new:?} is a defect class already: merging classes is not a rename"
                ));
            }
            if let Some(other) = targets.insert(new, old) {
                problem(format!("{other:?} is renamed {new:?} too"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(TaxonomyError::Invalid(problems))
        }
    }

    pub fn class(&self, name: &str) -> Option<&DefectClass> {
        self.classes.iter().find(|c| c.name == name)
    }

    /// Whether a defect of `class` rejects the part: yes unless the taxonomy lists the class
    /// and tolerates it.
    pub fn rejects(&self, class: Option<&str>) -> bool {
        class.and_then(|c| self.class(c)).is_none_or(|c| c.rejects)
    }

    /// The names of the classes the gate passes, for [`Detector::judge_tolerating`].
    ///
    /// [`Detector::judge_tolerating`]: crate::models::Detector::judge_tolerating
    pub fn tolerated(&self) -> Vec<&str> {
        self.classes
            .iter()
            .filter(|c| !c.rejects)
            .map(|c| c.name.as_str())
            .collect()
    }

    /// The verdict a judgement earns, and the defect class the record keeps. Below the
    /// threshold the part passes with no class, whatever class the model leaned to. At or
    /// above it the part fails, unless the class the model names is tolerated *and* the
    /// model's score of the other classes alone stays below the threshold: a tolerated stain
    /// must not hide a crack beside it. A model that cannot score its classes apart
    /// (`rejecting` is `None`) fails the part.
    pub fn verdict(&self, threshold: f32, judgement: &Judgement) -> (Verdict, Option<String>) {
        let class = judgement.defect_class.clone();
        if judgement.score < threshold {
            return (Verdict::Pass, None);
        }
        if self.rejects(class.as_deref()) {
            return (Verdict::Fail, class);
        }
        match &judgement.rejecting {
            Some(rejecting) if rejecting.score < threshold => (Verdict::Pass, class),
            // The defect that rejects it is named, not the tolerated one.
            Some(rejecting) => (Verdict::Fail, rejecting.class.clone().or(class)),
            None => (Verdict::Fail, class),
        }
    }

    /// The taxonomy an engineer saved in `data_dir`, if one was saved.
    pub fn load_saved(data_dir: &Path) -> Result<Option<Taxonomy>, TaxonomyError> {
        let path = data_dir.join(FILE_NAME);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(TaxonomyError::Io { path, source }),
        };
        let file: TaxonomyFile = serde_json::from_slice(&text)
            .map_err(|source| TaxonomyError::Parse { path, source })?;
        Taxonomy::new(file.classes).map(Some)
    }

    /// Keeps this taxonomy in `data_dir`: written to a temporary file, synced, renamed over the
    /// old one and the folder synced, so a crash leaves the old taxonomy or the new, never half.
    pub fn save(&self, data_dir: &Path) -> Result<(), TaxonomyError> {
        let path = data_dir.join(FILE_NAME);
        let io = |source| TaxonomyError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(&TaxonomyFile {
            classes: self.classes.clone(),
        })
        .map_err(|source| TaxonomyError::Parse {
            path: path.clone(),
            source,
        })?;
        std::fs::create_dir_all(data_dir).map_err(io)?;
        let mut tmp = tempfile::NamedTempFile::new_in(data_dir).map_err(io)?;
        tmp.write_all(&json).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        Ok(())
    }
}

/// What is wrong with `classes`, each problem with its field under `field` (`classes[2].colour`).
pub fn problems(classes: &[DefectClass], field: &str) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if classes.len() > MAX_CLASSES {
        problems.push((
            field.to_owned(),
            format!(
                "{} classes; a taxonomy holds at most {MAX_CLASSES}",
                classes.len()
            ),
        ));
    }
    for (i, class) in classes.iter().enumerate() {
        let mut problem = |name: &str, message: String| {
            problems.push((format!("{field}[{i}].{name}"), message));
        };
        // Models learn a class by its folder's name (`learn::dataset::class_folder`): a name
        // that is not one would never match what a model says, and tolerate nothing.
        if !(1..=MAX_NAME_CHARS).contains(&class.name.len())
            || class_folder(&class.name) != class.name
        {
            problem(
                "name",
                format!(
                    "{:?} must be 1 to {MAX_NAME_CHARS} of letters, digits, '-' and '_' (the \
                     name models learn a class by, e.g. {:?})",
                    class.name,
                    class_folder(class.name.trim()),
                ),
            );
        } else if class.name.eq_ignore_ascii_case("good") {
            // `good` is the good parts' folder in the MVTec layout and the upload sets.
            problem("name", "\"good\" is not a defect class".into());
        } else if classes[..i].iter().any(|c| c.name == class.name) {
            problem("name", format!("{:?} is named twice", class.name));
        }
        let hex = class.colour.strip_prefix('#').unwrap_or("");
        if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            problem(
                "colour",
                format!("{:?} is not a colour like \"#d62728\"", class.colour),
            );
        }
        if class.description.chars().count() > 500
            || class
                .description
                .chars()
                .any(|c| c.is_control() && c != '\n')
        {
            problem(
                "description",
                "at most 500 characters, no control characters but new lines".into(),
            );
        }
    }
    problems
}

/// `label` with the classes `renames` names (old → new) renamed, in its defect class and its
/// regions, as a new label by `by`; `None` when it names none of them.
pub fn relabelled(
    label: &LabelRecord,
    renames: &BTreeMap<String, String>,
    by: &str,
) -> Option<LabelRecord> {
    let renamed = |class: &str| renames.get(class).cloned();
    let class = label.defect_class.as_deref().and_then(renamed);
    let regions_touched = label.regions.iter().any(|r| renames.contains_key(&r.class));
    if class.is_none() && !regions_touched {
        return None;
    }
    let mut names: Vec<String> = (label.defect_class.iter())
        .chain(label.regions.iter().map(|r| &r.class))
        .filter_map(|c| {
            renames
                .get_key_value(c)
                .map(|(old, new)| format!("{old} → {new}"))
        })
        .collect();
    names.sort();
    names.dedup();
    Some(LabelRecord {
        defect_class: class.or_else(|| label.defect_class.clone()),
        regions: (label.regions.iter())
            .map(|r| Region {
                class: renamed(&r.class).unwrap_or_else(|| r.class.clone()),
                ..r.clone()
            })
            .collect(),
        note: Some(format!("class renamed: {}", names.join(", "))),
        by: by.to_owned(),
        ..label.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, rejects: bool) -> DefectClass {
        DefectClass {
            name: name.into(),
            colour: "#d62728".into(),
            severity: Severity::Major,
            rejects,
            description: String::new(),
        }
    }

    fn judged(score: f32, class: Option<&str>, rejecting: Option<(f32, &str)>) -> Judgement {
        Judgement {
            score,
            heat_map: crate::part::HeatMap {
                width: 1,
                height: 1,
                values: vec![score],
            },
            defect_class: class.map(str::to_owned),
            patch_class: Vec::new(),
            rejecting: rejecting.map(|(score, class)| crate::models::RejectingScore {
                score,
                class: Some(class.to_owned()),
            }),
            boxes: None,
        }
    }

    #[test]
    fn a_tolerated_class_passes_the_gate_only_when_nothing_else_would_reject() {
        let taxonomy = Taxonomy::new(vec![class("crack", true), class("spot", false)]).unwrap();
        assert_eq!(taxonomy.tolerated(), ["spot"]);
        let cases = [
            (
                judged(0.9, Some("crack"), None),
                Verdict::Fail,
                Some("crack"),
            ),
            // A spot and nothing else the model knows: passed, the class kept.
            (
                judged(0.9, Some("spot"), Some((0.2, "crack"))),
                Verdict::Pass,
                Some("spot"),
            ),
            // A spot with a crack beside it: the crack rejects it, and is named.
            (
                judged(0.9, Some("spot"), Some((0.7, "crack"))),
                Verdict::Fail,
                Some("crack"),
            ),
            // A model that cannot score its classes apart: rejected.
            (judged(0.9, Some("spot"), None), Verdict::Fail, Some("spot")),
            // An unknown class and no class at all are rejected: nothing unknown passes.
            (
                judged(0.9, Some("dent"), Some((0.1, "dent"))),
                Verdict::Fail,
                Some("dent"),
            ),
            (judged(0.9, None, None), Verdict::Fail, None),
            // Below the threshold the part passes and the model's leaning is not kept.
            (judged(0.1, Some("crack"), None), Verdict::Pass, None),
            (
                judged(0.5, Some("spot"), Some((0.0, "crack"))),
                Verdict::Pass,
                Some("spot"),
            ),
        ];
        for (judgement, verdict, kept) in cases {
            assert_eq!(
                taxonomy.verdict(0.5, &judgement),
                (verdict, kept.map(str::to_owned)),
                "{judgement:?}"
            );
        }
        // With no taxonomy every defect rejects, as before there was one.
        assert_eq!(
            Taxonomy::default()
                .verdict(0.5, &judged(0.9, Some("spot"), Some((0.1, "crack"))))
                .0,
            Verdict::Fail
        );
    }

    #[test]
    fn bad_classes_are_refused_with_the_field_that_is_wrong() {
        let mut twice = class("crack", true);
        twice.colour = "red".into();
        let bad = vec![
            class("crack", true),
            twice,
            class("", true),
            class("Good", true),
            class(" spot", true),
            class("oil spot", true),
        ];
        let problems = problems(&bad, "defect_classes");
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "defect_classes[1].name",
                "defect_classes[1].colour",
                "defect_classes[2].name",
                "defect_classes[3].name",
                "defect_classes[4].name",
                "defect_classes[5].name",
            ],
            "{problems:?}"
        );
        assert!(problems[0].1.contains("named twice"), "{problems:?}");
        assert!(problems[5].1.contains("\"oil_spot\""), "{problems:?}");
        assert!(Taxonomy::new(bad).is_err());
        let many = (0..=MAX_CLASSES)
            .map(|i| class(&format!("c{i}"), true))
            .collect();
        assert!(Taxonomy::new(many).is_err());
    }

    #[test]
    fn a_class_is_served_as_the_api_document_says() {
        use crate::serve::openapi_check::{schema_fields, served_fields};
        let mut described = class("crack", true);
        described.description = "a line through the surface".into();
        let served = serde_json::to_value(&described).expect("json");
        assert_eq!(served_fields(&served), schema_fields("DefectClass"));
        let taxonomy = serde_json::to_value(Taxonomy::new(vec![described]).unwrap()).unwrap();
        assert_eq!(served_fields(&taxonomy), schema_fields("DefectClasses"));
    }

    #[test]
    fn renames_must_move_a_listed_class_to_a_new_name_and_labels_follow_them() {
        let now = Taxonomy::new(vec![class("crack", true), class("dent", true)]).unwrap();
        let next = Taxonomy::new(vec![class("hairline", true), class("dent", true)]).unwrap();
        let renames = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(
            now.check_renames(&next, &renames(&[("crack", "hairline")]))
                .is_ok()
        );
        assert!(now.check_renames(&next, &renames(&[])).is_ok());
        for (bad, says) in [
            (renames(&[("chip", "hairline")]), "not a defect class now"),
            (renames(&[("dent", "hairline")]), "still in the new classes"),
            (renames(&[("crack", "burr")]), "not in the new classes"),
            (renames(&[("crack", "dent")]), "merging"),
        ] {
            let error = now.check_renames(&next, &bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        let label = LabelRecord {
            part_id: 7,
            supersedes: 3,
            verdict: Verdict::Fail,
            defect_class: Some("dent".into()),
            note: Some("seen twice".into()),
            by: "eng-2".into(),
            image: None,
            regions: vec![],
        };
        assert_eq!(
            relabelled(&label, &renames(&[("crack", "hairline")]), "eng-1"),
            None
        );
        let renamed = relabelled(&label, &renames(&[("dent", "ding")]), "eng-1").expect("renamed");
        assert_eq!(
            (
                renamed.defect_class.as_deref(),
                renamed.by.as_str(),
                renamed.supersedes
            ),
            (Some("ding"), "eng-1", 3)
        );
        assert_eq!(renamed.note.as_deref(), Some("class renamed: dent → ding"));
    }

    #[test]
    fn the_version_follows_the_classes() {
        let one = Taxonomy::new(vec![class("crack", true)]).unwrap();
        let same = Taxonomy::new(vec![class("crack", true)]).unwrap();
        let other = Taxonomy::new(vec![class("crack", false)]).unwrap();
        assert_eq!(one.etag(), same.etag());
        assert_ne!(one.etag(), other.etag());
        assert!(
            one.etag().starts_with('"') && one.etag().len() == 18,
            "{}",
            one.etag()
        );
    }

    #[test]
    fn a_saved_taxonomy_reads_back_and_a_broken_file_says_where() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Taxonomy::load_saved(dir.path()).unwrap().is_none());
        let taxonomy = Taxonomy::new(vec![class("crack", true), class("spot", false)]).unwrap();
        taxonomy.save(dir.path()).unwrap();
        assert_eq!(Taxonomy::load_saved(dir.path()).unwrap(), Some(taxonomy));
        // No temporary file is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        std::fs::write(
            dir.path().join(FILE_NAME),
            b"{\"classes\": [{\"name\": 1}]}",
        )
        .unwrap();
        let error = Taxonomy::load_saved(dir.path()).unwrap_err().to_string();
        assert!(error.contains(FILE_NAME), "{error}");
        let duplicate = r##"{"classes": [
            {"name": "a", "colour": "#000000", "severity": "minor"},
            {"name": "a", "colour": "#000000", "severity": "minor"}]}"##;
        std::fs::write(dir.path().join(FILE_NAME), duplicate).unwrap();
        let error = Taxonomy::load_saved(dir.path()).unwrap_err().to_string();
        assert!(error.contains("named twice"), "{error}");
    }
}
