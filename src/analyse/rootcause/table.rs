//! The table root cause reads: one row per part, one column per tag or setting, and the
//! target (which parts had the defect). Built from a CSV file here, or by the caller from the
//! station's own parts lined up with their sensor values.

use std::path::Path;

use super::RootCauseError;

/// One row per part, columns of equal length.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// How many parts (rows) the table holds.
    pub rows: usize,
    /// The columns, each `rows` long.
    pub columns: Vec<Column>,
}

/// One tag or setting over all parts.
#[derive(Debug, Clone)]
pub struct Column {
    /// The name findings use ("Torque [Nm]", "press_temperature").
    pub name: String,
    /// The unit, when known ("Nm", "K"): same-unit pairs are differenced, and a few products
    /// get a physical unit (Nm × rpm → W).
    pub unit: Option<String>,
    /// The values.
    pub values: ColumnValues,
}

/// A column's values.
#[derive(Debug, Clone)]
pub enum ColumnValues {
    /// Measurements; `NaN` is a missing value.
    Numeric(Vec<f64>),
    /// Labels such as a product type: `codes[row]` indexes `levels`, `None` is missing.
    Categorical {
        /// The distinct labels, in order of first appearance.
        levels: Vec<String>,
        /// Each part's label.
        codes: Vec<Option<u32>>,
    },
}

/// Which parts had the defect the analysis explains.
#[derive(Debug, Clone)]
pub struct Target {
    /// The defect class ("Cracks", "HDF").
    pub name: String,
    /// One flag per table row: whether that part had the defect.
    pub positive: Vec<bool>,
}

impl Column {
    /// A numeric column; the unit is read from a trailing `[unit]` in the name when present.
    pub fn numeric(name: impl Into<String>, values: Vec<f64>) -> Self {
        let name = name.into();
        let unit = unit_in_name(&name);
        Self {
            name,
            unit,
            values: ColumnValues::Numeric(values),
        }
    }

    /// A categorical column from one label per part (`None` missing).
    pub fn categorical(name: impl Into<String>, labels: &[Option<&str>]) -> Self {
        let mut levels: Vec<String> = Vec::new();
        let codes = labels
            .iter()
            .map(|label| {
                label.map(
                    |label| match levels.iter().position(|level| level == label) {
                        Some(code) => code as u32,
                        None => {
                            levels.push(label.to_string());
                            (levels.len() - 1) as u32
                        }
                    },
                )
            })
            .collect();
        Self {
            name: name.into(),
            unit: None,
            values: ColumnValues::Categorical { levels, codes },
        }
    }

    /// How many values the column holds.
    pub fn len(&self) -> usize {
        match &self.values {
            ColumnValues::Numeric(values) => values.len(),
            ColumnValues::Categorical { codes, .. } => codes.len(),
        }
    }

    /// Whether the column holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The unit in a trailing `[unit]` of a column name ("Torque [Nm]" → "Nm").
pub fn unit_in_name(name: &str) -> Option<String> {
    let trimmed = name.trim_end();
    let inner = trimmed.strip_suffix(']')?;
    let open = inner.rfind('[')?;
    let unit = inner[open + 1..].trim();
    (!unit.is_empty()).then(|| unit.to_string())
}

/// A table read from a CSV file, with what was left out and why.
#[derive(Debug)]
pub struct CsvTable {
    /// The usable columns (the target and excluded columns are not among them).
    pub table: Table,
    /// The target column as flags.
    pub target: Target,
    /// Columns left out, each with the reason ("identifier: every value distinct").
    pub skipped: Vec<(String, String)>,
}

/// Reads a CSV file (comma, semicolon or tab separated; header row; a UTF-8 BOM is tolerated)
/// into a table and the target column `target`. Columns named in `exclude` are left out;
/// identifier-like text columns (every value distinct) and constant or empty columns are
/// skipped with a note.
pub fn read_csv(path: &Path, target: &str, exclude: &[String]) -> Result<CsvTable, RootCauseError> {
    let bytes = std::fs::read(path).map_err(|source| RootCauseError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_csv(&bytes, target, exclude).map_err(|error| match error {
        RootCauseError::Csv { line, message, .. } => RootCauseError::Csv {
            path: path.display().to_string(),
            line,
            message,
        },
        other => other,
    })
}

/// [`read_csv`] on bytes already in memory (errors name the source as `<input>`).
pub fn parse_csv(
    bytes: &[u8],
    target: &str,
    exclude: &[String],
) -> Result<CsvTable, RootCauseError> {
    let text = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let header_line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    let delimiter = [b',', b';', b'\t']
        .into_iter()
        .max_by_key(|d| header_line.iter().filter(|b| *b == d).count())
        .unwrap_or(b',');
    let csv_error = |line: u64, message: String| RootCauseError::Csv {
        path: "<input>".to_string(),
        line,
        message,
    };
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_reader(text);
    let header: Vec<String> = reader
        .headers()
        .map_err(|error| csv_error(1, error.to_string()))?
        .iter()
        .map(|name| name.trim().to_string())
        .collect();
    if header.iter().all(|name| name.is_empty()) {
        return Err(csv_error(1, "no header row".to_string()));
    }
    let Some(target_index) = header.iter().position(|name| name == target) else {
        return Err(RootCauseError::MissingTarget {
            target: target.to_string(),
            columns: header.join(", "),
        });
    };
    for name in exclude {
        if !header.contains(name) {
            return Err(RootCauseError::UnknownColumn(name.clone()));
        }
    }
    let mut cells: Vec<Vec<String>> = vec![Vec::new(); header.len()];
    for record in reader.records() {
        let record = record.map_err(|error| {
            let line = error.position().map(|p| p.line()).unwrap_or(0);
            csv_error(line, error.to_string())
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() == 1 && record.get(0).is_some_and(|cell| cell.trim().is_empty()) {
            continue;
        }
        if record.len() != header.len() {
            return Err(csv_error(
                line,
                format!(
                    "{} fields where the header has {}",
                    record.len(),
                    header.len()
                ),
            ));
        }
        for (column, cell) in cells.iter_mut().zip(record.iter()) {
            column.push(cell.trim().to_string());
        }
    }
    let rows = cells[target_index].len();
    if rows == 0 {
        return Err(RootCauseError::Empty);
    }
    let target = parse_target(target, &cells[target_index])?;
    let mut skipped = Vec::new();
    let mut columns = Vec::new();
    for (index, name) in header.iter().enumerate() {
        if index == target_index || exclude.contains(name) {
            continue;
        }
        match column_from_cells(name, &cells[index]) {
            Ok(column) => columns.push(column),
            Err(reason) => skipped.push((name.clone(), reason)),
        }
    }
    if columns.is_empty() {
        return Err(RootCauseError::NoUsableColumns(
            skipped
                .iter()
                .map(|(name, why)| format!("{name} ({why})"))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    Ok(CsvTable {
        table: Table { rows, columns },
        target,
        skipped,
    })
}

fn is_missing(cell: &str) -> bool {
    cell.is_empty()
        || matches!(
            cell.to_ascii_lowercase().as_str(),
            "na" | "nan" | "null" | "n/a"
        )
}

/// The target column as flags: 0/1, true/false, yes/no, or any column with two values (the
/// rarer one counts as the defect).
fn parse_target(name: &str, cells: &[String]) -> Result<Target, RootCauseError> {
    let mut values: Vec<&str> = Vec::new();
    for (row, cell) in cells.iter().enumerate() {
        if is_missing(cell) {
            return Err(RootCauseError::TargetMissingValue {
                target: name.to_string(),
                row: row + 1,
            });
        }
        if !values.contains(&cell.as_str()) {
            values.push(cell);
            if values.len() > 2 {
                return Err(RootCauseError::TargetNotBinary {
                    target: name.to_string(),
                    values: values
                        .iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    if values.len() < 2 {
        return Err(RootCauseError::OneClass {
            target: name.to_string(),
            value: values.first().map(|v| v.to_string()).unwrap_or_default(),
        });
    }
    let positive_word = |value: &str| {
        matches!(
            value.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "y" | "defect" | "fail" | "failure" | "ng" | "nok" | "reject"
        )
    };
    let positive_value = match (positive_word(values[0]), positive_word(values[1])) {
        (true, false) => values[0],
        (false, true) => values[1],
        _ => {
            let first = cells
                .iter()
                .filter(|cell| cell.as_str() == values[0])
                .count();
            if first * 2 <= cells.len() {
                values[0]
            } else {
                values[1]
            }
        }
    };
    Ok(Target {
        name: name.to_string(),
        positive: cells.iter().map(|cell| cell == positive_value).collect(),
    })
}

/// A column from its text cells, or why it is skipped.
fn column_from_cells(name: &str, cells: &[String]) -> Result<Column, String> {
    let present: Vec<&String> = cells.iter().filter(|cell| !is_missing(cell)).collect();
    if present.is_empty() {
        return Err("empty: no values".to_string());
    }
    let numbers: Option<Vec<f64>> = cells
        .iter()
        .map(|cell| {
            if is_missing(cell) {
                Some(f64::NAN)
            } else {
                cell.parse::<f64>().ok().filter(|value| value.is_finite())
            }
        })
        .collect();
    if let Some(values) = numbers {
        let first = values.iter().copied().find(|v| !v.is_nan());
        if values.iter().all(|v| v.is_nan() || Some(*v) == first) {
            return Err("constant".to_string());
        }
        return Ok(Column::numeric(name, values));
    }
    let mut distinct: Vec<&str> = present.iter().map(|cell| cell.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() == 1 {
        return Err("constant".to_string());
    }
    if distinct.len() == present.len() {
        return Err("identifier: every value distinct".to_string());
    }
    if distinct.len() > 50 {
        return Err(format!("text with {} distinct values", distinct.len()));
    }
    let labels: Vec<Option<&str>> = cells
        .iter()
        .map(|cell| (!is_missing(cell)).then_some(cell.as_str()))
        .collect();
    Ok(Column::categorical(name, &labels))
}
