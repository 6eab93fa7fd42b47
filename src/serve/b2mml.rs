//! B2MML export: the station's quality records as an ISA-95 (IEC 62264) B2MML V0700 document
//! that the plant MES pulls.
//!
//! In comes a page of [`QaResult`]s, borrowed views of quality records (this module does not
//! know the record store, so a store rewrite does not touch it), and the station's place in the
//! plant as a [`PlantScope`]. Out comes one `MaterialInformation` document that validates
//! against the MESA V0700 schema `B2MML-Material.xsd`:
//!
//! - A *part* is a **material sublot** (`MaterialSubLot`, ID `<station>-<part id>`). A part with
//!   a work order sits inside the `MaterialLot` of that work order (lot ID = work order ID, also
//!   stated as the lot property `WorkOrder`; the lot's `MaterialDefinitionID` is the product when
//!   all its parts agree on one). A part without a work order is a stand-alone sublot.
//! - Each inspection is a **QA test result** (`TestResult`) under the sublot's
//!   `MaterialSublotProperty` `QualityInspection`. Its ID is `<station>-seq-<seq>`, the verdict
//!   is `EvaluatedCriterionResult`, and `PropertyMeasurement`s carry `Sequence` (for the MES to
//!   deduplicate), `Disposition`, `Score`, `Threshold`, `ModelVersion` and `DefectClass` when
//!   known. A part never inspected (rejected by policy) has no `EvaluatedCriterionResult`.
//! - An engineer's correction is a **new, superseding** `TestResult`, never an edit: its ID is
//!   `<station>-seq-<seq>-supersedes-seq-<old seq>` and its `Supersedes` measurement holds the
//!   full ID of the result it replaces; `CorrectedBy` says who. A part's results appear in
//!   sequence order, so the last one not superseded is the part's current verdict.
//! - Every lot, every stand-alone sublot and the document itself carry the station's
//!   `HierarchyScope`, nested top-down: Enterprise, Site, Area, ProductionLine, WorkCell.
//!
//! Why `MaterialInformation`: it is the one plain global element of `B2MML-Material.xsd` that
//! holds many lots and stand-alone sublots in one document (the global `MaterialLot` holds one
//! lot, and the `ShowMaterialLot` BOD needs a transaction `ApplicationArea` the pull does not).
//!
//! All text goes through quick-xml's escaping; characters XML 1.0 cannot carry at all (most
//! control characters) become U+FFFD, so hostile names still give a well-formed document.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

use chrono::{DateTime, Utc};
use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};

/// The B2MML namespace, the default namespace of every exported document.
pub const B2MML_NAMESPACE: &str = "http://www.mesa.org/xml/B2MML";

/// Where the station sits in the plant's ISA-95 role-based equipment hierarchy.
///
/// Each level becomes one nested `HierarchyScope` with that `EquipmentID`, so the MES can file
/// every lot under the right enterprise, site, area, line and station.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlantScope<'a> {
    /// `EquipmentElementLevel` Enterprise.
    pub enterprise: &'a str,
    /// `EquipmentElementLevel` Site.
    pub site: &'a str,
    /// `EquipmentElementLevel` Area.
    pub area: &'a str,
    /// `EquipmentElementLevel` ProductionLine.
    pub line: &'a str,
    /// `EquipmentElementLevel` WorkCell; also the prefix of every sublot and test result ID.
    pub station: &'a str,
}

/// One quality record as the export needs it: an inspection, or an engineer's correction of one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QaResult<'a> {
    /// The record's sequence number: unique per station, so the MES deduplicates on it.
    pub seq: u64,
    /// The part the result is about; results of one part share one sublot.
    pub part_id: u64,
    /// The work order the part was made for; it names the part's material lot. An empty string
    /// counts as none.
    pub work_order: Option<&'a str>,
    /// The product (ISA-95 material definition) the part is.
    pub product: Option<&'a str>,
    /// When the part was inspected or, for a correction, when the correction was made.
    pub tested_at: DateTime<Utc>,
    /// `"pass"`, `"fail"` or `"error"`; `None` when the part was never inspected (rejected by
    /// policy), which leaves out `EvaluatedCriterionResult`.
    pub verdict: Option<&'a str>,
    /// What happened to the part: `"pass"`, `"reject_failed"`, `"reject_error"` or
    /// `"reject_no_verdict"`.
    pub disposition: &'a str,
    /// The model's anomaly or defect score.
    pub score: Option<f32>,
    /// The threshold the score was judged against.
    pub threshold: Option<f32>,
    /// The model that judged the part, so the MES can tie results to a model release.
    pub model_version: Option<&'a str>,
    /// The defect class, when the model or the engineer named one.
    pub defect_class: Option<&'a str>,
    /// `Some(seq)` for an engineer's correction of the result with that sequence number.
    pub supersedes_seq: Option<u64>,
    /// Who made the correction.
    pub corrected_by: Option<&'a str>,
}

/// Writes `results` as one B2MML `MaterialInformation` document for the station at `scope`.
///
/// Results are grouped by part, whatever their order in the slice: each part appears once, its
/// results (original and corrections) in sequence order. Lots and stand-alone sublots come in
/// the order of their first sequence number. Sequence numbers are expected to be unique.
pub fn quality_document(scope: &PlantScope<'_>, results: &[QaResult<'_>]) -> String {
    // Results in (part, seq) order, so each part's results form one run.
    let mut sorted: Vec<&QaResult<'_>> = results.iter().collect();
    sorted.sort_unstable_by_key(|result| (result.part_id, result.seq));
    let mut parts: Vec<Part<'_, '_>> = sorted
        .chunk_by(|a, b| a.part_id == b.part_id)
        .map(Part::new)
        .collect();
    // Parts with a work order first, grouped by it; within a group by first sequence number.
    parts.sort_unstable_by_key(|part| (part.work_order.is_none(), part.work_order, part.first_seq));
    let mut lots: Vec<&[Part<'_, '_>]> = parts
        .chunk_by(|a, b| a.work_order == b.work_order)
        .collect();
    // The run without a work order sorts last; its parts are stand-alone sublots.
    let standalone: &[Part<'_, '_>] = if lots.last().is_some_and(|lot| lot[0].work_order.is_none())
    {
        lots.pop().unwrap_or_default()
    } else {
        &[]
    };
    lots.sort_unstable_by_key(|lot| lot[0].first_seq);

    // About 1.5 KB of XML per result; one up-front allocation instead of repeated doubling.
    let mut doc = Doc::with_capacity(2048 + results.len() * 1536);
    doc.event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    doc.event(Event::Start(
        BytesStart::new("MaterialInformation").with_attributes([("xmlns", B2MML_NAMESPACE)]),
    ));
    let seq_range = results.iter().map(|result| result.seq);
    if let (Some(first), Some(last)) = (seq_range.clone().min(), seq_range.max()) {
        doc.formatted(
            "ID",
            format_args!("{}-quality-seq-{first}-{last}", scope.station),
        );
    }
    doc.hierarchy_scope(scope);
    for lot in &lots {
        doc.material_lot(scope, lot);
    }
    for part in standalone {
        doc.material_sublot(scope, part, None);
    }
    doc.close("MaterialInformation");
    doc.finish()
}

/// One part's results, in sequence order.
struct Part<'r, 'a> {
    part_id: u64,
    first_seq: u64,
    /// The work order of the part's earliest result that names one.
    work_order: Option<&'a str>,
    results: &'r [&'r QaResult<'a>],
}

impl<'r, 'a> Part<'r, 'a> {
    /// `results` is non-empty (a `chunk_by` run) and sorted by sequence number.
    fn new(results: &'r [&'r QaResult<'a>]) -> Self {
        Part {
            part_id: results.first().map_or(0, |result| result.part_id),
            first_seq: results.first().map_or(0, |result| result.seq),
            work_order: results
                .iter()
                .filter_map(|result| result.work_order)
                .find(|work_order| !work_order.is_empty()),
            results,
        }
    }

    /// The product, if every result that names one names the same.
    fn product(&self) -> Option<&'a str> {
        unanimous(self.results.iter().filter_map(|result| result.product))
    }
}

/// The one value `values` holds, or `None` if it holds none or several different ones.
fn unanimous<'a>(mut values: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let first = values.next()?;
    values.all(|value| value == first).then_some(first)
}

/// The document being written: a quick-xml writer over a byte buffer, plus a reused scratch
/// string for numbers, IDs and timestamps, so writing a result allocates nothing.
struct Doc {
    writer: Writer<Vec<u8>>,
    scratch: String,
}

impl Doc {
    fn with_capacity(capacity: usize) -> Self {
        Doc {
            writer: Writer::new_with_indent(Vec::with_capacity(capacity), b' ', 1),
            scratch: String::with_capacity(128),
        }
    }

    fn event(&mut self, event: Event<'_>) {
        // `io::Write` for `Vec<u8>` only appends to the buffer and never returns an error.
        self.writer
            .write_event(event)
            .expect("writing XML into a Vec<u8> cannot fail");
    }

    fn open(&mut self, name: &str) {
        self.event(Event::Start(BytesStart::new(name)));
    }

    fn close(&mut self, name: &str) {
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name>text</name>`, the text escaped by quick-xml.
    fn text(&mut self, name: &str, text: &str) {
        self.open(name);
        self.event(Event::Text(BytesText::new(&xml_chars(text))));
        self.close(name);
    }

    /// `<name>…</name>` with the formatted `args` as text.
    fn formatted(&mut self, name: &str, args: fmt::Arguments<'_>) {
        let text = self.format(args);
        self.text(name, &text);
        self.scratch = text;
    }

    /// Formats `args` into the scratch buffer, which the caller hands back after use.
    fn format(&mut self, args: fmt::Arguments<'_>) -> String {
        let mut text = std::mem::take(&mut self.scratch);
        text.clear();
        // Formatting into a `String` fails only if a `Display` impl does; ours are numbers,
        // `&str`, `XsFloat` and a chrono format string with only valid specifiers.
        text.write_fmt(args)
            .expect("formatting into a String cannot fail");
        text
    }

    /// The station's scope as nested `HierarchyScope`s, enterprise outermost.
    fn hierarchy_scope(&mut self, scope: &PlantScope<'_>) {
        let levels = [
            (scope.enterprise, "Enterprise"),
            (scope.site, "Site"),
            (scope.area, "Area"),
            (scope.line, "ProductionLine"),
            (scope.station, "WorkCell"),
        ];
        for (equipment_id, level) in levels {
            self.open("HierarchyScope");
            self.text("EquipmentID", equipment_id);
            self.text("EquipmentElementLevel", level);
        }
        for _ in levels {
            self.close("HierarchyScope");
        }
    }

    /// A `Value` with its `ValueString` and `DataType`.
    fn value(&mut self, value_string: &str, data_type: &str) {
        self.open("Value");
        self.text("ValueString", value_string);
        self.text("DataType", data_type);
        self.close("Value");
    }

    /// The lot of one work order with its parts as sublots.
    fn material_lot(&mut self, scope: &PlantScope<'_>, parts: &[Part<'_, '_>]) {
        let work_order = parts[0].work_order.unwrap_or_default();
        self.open("MaterialLot");
        self.text("ID", work_order);
        self.hierarchy_scope(scope);
        let product = unanimous(parts.iter().filter_map(Part::product));
        if let Some(product) = product {
            self.text("MaterialDefinitionID", product);
        }
        self.open("MaterialLotProperty");
        self.text("ID", "WorkOrder");
        self.value(work_order, "string");
        self.close("MaterialLotProperty");
        for part in parts {
            self.material_sublot(scope, part, Some(work_order));
        }
        self.close("MaterialLot");
    }

    /// One part as a sublot; `lot_id` is the work order of the enclosing lot, `None` for a
    /// stand-alone sublot, which then carries the hierarchy scope itself.
    fn material_sublot(
        &mut self,
        scope: &PlantScope<'_>,
        part: &Part<'_, '_>,
        lot_id: Option<&str>,
    ) {
        self.open("MaterialSubLot");
        self.formatted("ID", format_args!("{}-{}", scope.station, part.part_id));
        if lot_id.is_none() {
            self.hierarchy_scope(scope);
        }
        if let Some(product) = part.product() {
            self.open("MaterialSublotProperty");
            self.text("ID", "Product");
            self.value(product, "string");
            self.close("MaterialSublotProperty");
        }
        self.open("MaterialSublotProperty");
        self.text("ID", "QualityInspection");
        for result in part.results {
            self.test_result(scope, result);
        }
        self.close("MaterialSublotProperty");
        if let Some(lot_id) = lot_id {
            self.text("MaterialLotID", lot_id);
        }
        self.close("MaterialSubLot");
    }

    /// One inspection or correction as a `TestResult`.
    fn test_result(&mut self, scope: &PlantScope<'_>, result: &QaResult<'_>) {
        let station = scope.station;
        self.open("TestResult");
        match result.supersedes_seq {
            Some(old_seq) => self.formatted(
                "ID",
                format_args!("{station}-seq-{}-supersedes-seq-{old_seq}", result.seq),
            ),
            None => self.formatted("ID", format_args!("{station}-seq-{}", result.seq)),
        }
        match (result.supersedes_seq, result.verdict) {
            (Some(old_seq), _) => self.formatted(
                "Description",
                format_args!("engineer's correction, superseding {station}-seq-{old_seq}"),
            ),
            (None, None) => self.text(
                "Description",
                "no verdict: the part was not inspected and was rejected by policy",
            ),
            (None, Some(_)) => {}
        }
        self.formatted(
            "EvaluationDate",
            format_args!("{}", result.tested_at.format("%Y-%m-%dT%H:%M:%S%.fZ")),
        );
        if let Some(verdict) = result.verdict {
            self.text("EvaluatedCriterionResult", verdict);
        }

        let text = self.format(format_args!("{}", result.seq));
        self.measurement("Sequence", &text, "unsignedLong");
        self.scratch = text;
        self.measurement("Disposition", result.disposition, "string");
        for (id, number) in [("Score", result.score), ("Threshold", result.threshold)] {
            if let Some(number) = number {
                let text = self.format(format_args!("{}", XsFloat(number)));
                self.measurement(id, &text, "float");
                self.scratch = text;
            }
        }
        if let Some(model_version) = result.model_version {
            self.measurement("ModelVersion", model_version, "string");
        }
        if let Some(defect_class) = result.defect_class {
            self.measurement("DefectClass", defect_class, "string");
        }
        if let Some(old_seq) = result.supersedes_seq {
            let text = self.format(format_args!("{station}-seq-{old_seq}"));
            self.measurement("Supersedes", &text, "string");
            self.scratch = text;
        }
        if let Some(corrected_by) = result.corrected_by {
            self.measurement("CorrectedBy", corrected_by, "string");
        }
        self.close("TestResult");
    }

    /// A `PropertyMeasurement` of a test result.
    fn measurement(&mut self, id: &str, value_string: &str, data_type: &str) {
        self.open("PropertyMeasurement");
        self.text("ID", id);
        self.value(value_string, data_type);
        self.close("PropertyMeasurement");
    }

    fn finish(self) -> String {
        // Every byte came from a `&str` or from ASCII markup, so the buffer is UTF-8.
        String::from_utf8(self.writer.into_inner()).expect("the XML buffer holds only UTF-8")
    }
}

/// An `f32` in xs:float's lexical form: Rust writes infinities as `inf`, XML Schema as `INF`.
struct XsFloat(f32);

impl fmt::Display for XsFloat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            number if number.is_nan() => f.write_str("NaN"),
            f32::INFINITY => f.write_str("INF"),
            f32::NEG_INFINITY => f.write_str("-INF"),
            number => write!(f, "{number}"),
        }
    }
}

/// `text` with every character XML 1.0 cannot carry, escaped or not (control characters other
/// than tab, newline and carriage return; U+FFFE, U+FFFF), replaced by U+FFFD. Borrows when
/// there is none, which is nearly always.
fn xml_chars(text: &str) -> Cow<'_, str> {
    fn allowed(ch: char) -> bool {
        matches!(ch, '\t' | '\n' | '\r' | '\u{20}'..='\u{FFFD}' | '\u{10000}'..)
    }
    if text.chars().all(allowed) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .map(|ch| if allowed(ch) { ch } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b2mml_numbers_and_text_in_xml_form() {
        assert_eq!(XsFloat(0.1).to_string(), "0.1");
        assert_eq!(XsFloat(f32::INFINITY).to_string(), "INF");
        assert_eq!(XsFloat(f32::NEG_INFINITY).to_string(), "-INF");
        assert_eq!(XsFloat(f32::NAN).to_string(), "NaN");
        assert!(matches!(xml_chars("Ölfleck ✓\t"), Cow::Borrowed(_)));
        assert_eq!(xml_chars("a\u{0}b\u{FFFF}"), "a\u{FFFD}b\u{FFFD}");
    }
}
