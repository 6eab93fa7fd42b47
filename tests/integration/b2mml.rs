//! The ISA-95 B2MML export: valid against the MESA V0700 schemas (xmllint), and a correction
//! is a second result naming the first.

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::TimeZone;
use quick_xml::Reader;

use chrono::{DateTime, Utc};
use linesight::serve::b2mml::{PlantScope, QaResult, quality_document};
use quick_xml::events::Event;

const SCOPE: PlantScope<'static> = PlantScope {
    enterprise: "Acme <&\"'> Gruppe",
    site: "Zürich-Süd",
    area: "Pressen & Schweißen",
    line: "L<1>",
    station: "st-1 \"Prüfplatz\" 'Ω'",
};

const CORRECTOR: &str = "O'Brien & <Søren>\u{7}";
const HOSTILE_DEFECT: &str = "scratch <&\"'> Kratzer-ü ✓";

fn at(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 14, 9, 26, second)
        .single()
        .expect("a valid fixed date")
}

/// An inspection of `part_id` that passed, work order `WO-7<&>`.
fn passed(seq: u64, part_id: u64) -> QaResult<'static> {
    QaResult {
        seq,
        part_id,
        work_order: Some("WO-7<&>"),
        product: Some("bracket-A"),
        tested_at: at(seq as u32),
        verdict: Some("pass"),
        disposition: "pass",
        score: Some(0.125),
        threshold: Some(0.5),
        model_version: Some("magnetic-tile@bcf89edcbf72"),
        defect_class: None,
        supersedes_seq: None,
        corrected_by: None,
    }
}

/// The test page: a pass, a fail with a hostile defect class, a policy reject with no
/// verdict and no work order, a fail corrected to pass by an engineer (the correction after
/// another part's result), in shuffled order.
fn page() -> Vec<QaResult<'static>> {
    let failed = QaResult {
        verdict: Some("fail"),
        disposition: "reject_failed",
        score: Some(0.91),
        defect_class: Some(HOSTILE_DEFECT),
        ..passed(2, 101)
    };
    let no_verdict = QaResult {
        work_order: None,
        product: None,
        verdict: None,
        disposition: "reject_no_verdict",
        score: None,
        threshold: None,
        model_version: None,
        ..passed(3, 102)
    };
    let corrected = QaResult {
        verdict: Some("fail"),
        disposition: "reject_failed",
        score: Some(0.55),
        defect_class: Some("dent"),
        ..passed(4, 103)
    };
    let other_order = QaResult {
        work_order: Some("WO-8"),
        ..passed(5, 104)
    };
    let correction = QaResult {
        verdict: Some("pass"),
        disposition: "reject_failed",
        defect_class: None,
        supersedes_seq: Some(4),
        corrected_by: Some(CORRECTOR),
        // Fractional seconds must come out in xs:dateTime form too.
        tested_at: at(6) + chrono::TimeDelta::microseconds(250_500),
        ..passed(6, 103)
    };
    vec![
        correction,
        passed(1, 100),
        no_verdict,
        failed,
        other_order,
        corrected,
    ]
}

/// Where the MESA V0700 schemas are: `LINESIGHT_B2MML_SCHEMAS`, else the shared checkout.
fn schema_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("LINESIGHT_B2MML_SCHEMAS").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/standards/b2mml")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("B2MML-Material.xsd").is_file())
}

/// Runs `xmllint --noout --schema <dir>/B2MML-Material.xsd` on `xml`; `Err` holds its output.
fn xmllint(schema_dir: &Path, xml: &str) -> Result<(), String> {
    let file = tempfile::Builder::new()
        .suffix(".xml")
        .tempfile()
        .expect("a temp file");
    std::fs::write(file.path(), xml).expect("writing the temp file");
    let output = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema_dir.join("B2MML-Material.xsd"))
        .arg(file.path())
        .output()
        .unwrap_or_else(|error| {
            panic!("xmllint did not run ({error}); install it: apt-get install -y libxml2-utils")
        });
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Panics unless `xml` validates against `B2MML-Material.xsd` (skips, saying so, when the
/// schemas are not on this machine).
pub fn assert_valid_b2mml(xml: &str) {
    let Some(schema_dir) = schema_dir() else {
        println!(
            "skipped: B2MML schemas not found (set LINESIGHT_B2MML_SCHEMAS or put them in ../shared/standards/b2mml)"
        );
        return;
    };
    if let Err(report) = xmllint(&schema_dir, xml) {
        panic!("xmllint rejects the export:\n{report}\ndocument:\n{xml}");
    }
}

#[test]
fn b2mml_document_validates_against_the_mesa_schema() {
    let Some(schema_dir) = schema_dir() else {
        println!(
            "skipped: B2MML schemas not found (set LINESIGHT_B2MML_SCHEMAS or put them in \
             ../shared/standards/b2mml)"
        );
        return;
    };
    let xml = quality_document(&SCOPE, &page());
    if let Err(report) = xmllint(&schema_dir, &xml) {
        panic!("xmllint rejects the export:\n{report}\ndocument:\n{xml}");
    }
    assert!(
        xmllint(&schema_dir, &quality_document(&SCOPE, &[])).is_ok(),
        "an empty page is a valid document too"
    );

    // The check can fail: a level the schema does not know is caught.
    let broken = xml.replacen(">WorkCell<", ">Station<", 1);
    assert_ne!(broken, xml);
    assert!(
        xmllint(&schema_dir, &broken).is_err(),
        "xmllint accepted a document with an unknown EquipmentElementLevel"
    );
}

/// A parsed element: its name, its text (entities resolved) and its children.
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn children<'n, 's>(&'n self, name: &'s str) -> impl Iterator<Item = &'n Node> + 's
    where
        'n: 's,
    {
        self.children.iter().filter(move |child| child.name == name)
    }

    fn child(&self, name: &str) -> Option<&Node> {
        self.children(name).next()
    }

    fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|child| child.text.as_str())
    }

    /// Every descendant named `name`, depth first.
    fn descendants<'n>(&'n self, name: &str, found: &mut Vec<&'n Node>) {
        for child in &self.children {
            if child.name == name {
                found.push(child);
            }
            child.descendants(name, found);
        }
    }

    /// The `ValueString` of the `PropertyMeasurement` with this ID.
    fn measurement(&self, id: &str) -> Option<&str> {
        self.children("PropertyMeasurement")
            .find(|measurement| measurement.child_text("ID") == Some(id))
            .and_then(|measurement| measurement.child("Value"))
            .and_then(|value| value.child_text("ValueString"))
    }
}

fn parse(xml: &str) -> Node {
    let mut reader = Reader::from_str(xml);
    let mut stack = vec![Node::default()];
    loop {
        let event = reader.read_event().expect("well-formed XML");
        let top = stack.last_mut().expect("the stack holds the document node");
        match event {
            Event::Start(start) => stack.push(Node {
                name: String::from_utf8(start.name().as_ref().to_vec()).expect("UTF-8 name"),
                ..Node::default()
            }),
            Event::End(_) => {
                let node = stack.pop().expect("an open element");
                stack.last_mut().expect("a parent").children.push(node);
            }
            Event::Text(text) => top.text.push_str(&text.decode().expect("UTF-8 text")),
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref().expect("a valid reference") {
                    Some(ch) => ch.to_string(),
                    None => {
                        let name = reference.decode().expect("UTF-8 reference");
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .expect("a predefined entity")
                            .to_string()
                    }
                };
                top.text.push_str(&resolved);
            }
            Event::Empty(_) => panic!("the export writes no empty elements"),
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "every element closed");
    stack.pop().expect("the document node")
}

#[test]
fn b2mml_correction_is_a_second_result_naming_the_first() {
    let xml = quality_document(&SCOPE, &page());
    let document = parse(&xml);
    let root = document.child("MaterialInformation").expect("root element");
    let station = SCOPE.station;

    // Each part is one sublot, with the station prefix and hostile text round-tripped.
    let mut sublots = Vec::new();
    root.descendants("MaterialSubLot", &mut sublots);
    let sublot_ids: Vec<&str> = sublots.iter().filter_map(|s| s.child_text("ID")).collect();
    let expected: Vec<String> = [100, 101, 103, 104, 102]
        .iter()
        .map(|part_id| format!("{station}-{part_id}"))
        .collect();
    assert_eq!(
        sublot_ids, expected,
        "sublots: lots in seq order, then stand-alone"
    );

    let results_of = |part_id: u64| -> Vec<&Node> {
        let id = format!("{station}-{part_id}");
        let sublot = sublots
            .iter()
            .find(|sublot| sublot.child_text("ID") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no sublot {id}"));
        let inspection = sublot
            .children("MaterialSublotProperty")
            .find(|property| property.child_text("ID") == Some("QualityInspection"))
            .expect("a QualityInspection property");
        inspection.children("TestResult").collect()
    };

    // The corrected part: the original, then the correction naming it.
    let corrected = results_of(103);
    assert_eq!(
        corrected.len(),
        2,
        "original and correction: {corrected:#?}"
    );
    let original_id = format!("{station}-seq-4");
    assert_eq!(corrected[0].child_text("ID"), Some(original_id.as_str()));
    assert_eq!(
        corrected[0].child_text("EvaluatedCriterionResult"),
        Some("fail")
    );
    assert_eq!(corrected[0].measurement("Supersedes"), None);
    assert_eq!(
        corrected[1].child_text("ID"),
        Some(format!("{station}-seq-6-supersedes-seq-4").as_str())
    );
    assert_eq!(
        corrected[1].child_text("EvaluatedCriterionResult"),
        Some("pass")
    );
    assert_eq!(
        corrected[1].child_text("EvaluationDate"),
        Some("2025-03-14T09:26:06.250500Z")
    );
    assert_eq!(
        corrected[1].measurement("Supersedes"),
        Some(original_id.as_str())
    );
    assert_eq!(corrected[1].measurement("Sequence"), Some("6"));
    assert_eq!(
        corrected[1].measurement("CorrectedBy"),
        Some("O'Brien & <Søren>\u{FFFD}"),
        "control character replaced, the rest escaped and back"
    );

    // Every record's sequence number is there exactly once.
    let mut results = Vec::new();
    root.descendants("TestResult", &mut results);
    let mut seqs: Vec<&str> = results
        .iter()
        .filter_map(|r| r.measurement("Sequence"))
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, ["1", "2", "3", "4", "5", "6"]);

    // The failed part keeps its defect class; the policy reject has no verdict.
    let failed = results_of(101);
    assert_eq!(failed[0].measurement("DefectClass"), Some(HOSTILE_DEFECT));
    assert_eq!(failed[0].measurement("Score"), Some("0.91"));
    let rejected = results_of(102);
    assert_eq!(rejected[0].child_text("EvaluatedCriterionResult"), None);
    assert_eq!(
        rejected[0].measurement("Disposition"),
        Some("reject_no_verdict")
    );
    assert_eq!(
        rejected[0].child_text("EvaluationDate"),
        Some("2025-03-14T09:26:03Z")
    );

    // Work orders are lots; their parts name the lot; the part without one stands alone.
    let lots: Vec<&Node> = root.children("MaterialLot").collect();
    let lot_ids: Vec<&str> = lots.iter().filter_map(|lot| lot.child_text("ID")).collect();
    assert_eq!(lot_ids, ["WO-7<&>", "WO-8"]);
    assert_eq!(
        lots[0].child_text("MaterialDefinitionID"),
        Some("bracket-A")
    );
    assert_eq!(lots[0].children("MaterialSubLot").count(), 3);
    for sublot in lots[0].children("MaterialSubLot") {
        assert_eq!(sublot.child_text("MaterialLotID"), Some("WO-7<&>"));
    }
    let standalone: Vec<&Node> = root.children("MaterialSubLot").collect();
    assert_eq!(standalone.len(), 1);
    assert_eq!(standalone[0].child_text("MaterialLotID"), None);

    // The scope nests enterprise to station on every lot and stand-alone sublot.
    for holder in lots.iter().chain(&standalone) {
        let mut scope = holder.child("HierarchyScope");
        let mut levels = Vec::new();
        while let Some(node) = scope {
            levels.push((
                node.child_text("EquipmentID").unwrap_or_default(),
                node.child_text("EquipmentElementLevel").unwrap_or_default(),
            ));
            scope = node.child("HierarchyScope");
        }
        assert_eq!(
            levels,
            [
                (SCOPE.enterprise, "Enterprise"),
                (SCOPE.site, "Site"),
                (SCOPE.area, "Area"),
                (SCOPE.line, "ProductionLine"),
                (SCOPE.station, "WorkCell"),
            ]
        );
    }
}
