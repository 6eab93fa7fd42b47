//! Sensor samples from CSV: the shape historians and spreadsheets export.
//!
//! Two layouts, told apart by the header:
//! * long: `timestamp,tag,value` — one sample per line;
//! * wide: `timestamp,<tag>,<tag>,…` — one line per instant, an empty cell for no sample.
//!
//! Timestamps are RFC 3339 (`2026-12-01T08:00:00Z`), `YYYY-MM-DD HH:MM:SS[.fff]` taken as
//! UTC, or integer milliseconds since the Unix epoch. A broken line is named in the result and
//! skipped; the other lines are kept.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::{Incoming, SampleProblem};

/// The samples of a CSV file, each with the line it came from, and the lines that were not.
#[derive(Debug, Default)]
pub struct ParsedCsv {
    pub samples: Vec<Incoming>,
    /// 1-based line number of each sample.
    pub lines: Vec<usize>,
    pub problems: Vec<SampleProblem>,
}

/// Parses CSV text in either layout.
pub fn parse(text: &[u8]) -> Result<ParsedCsv, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text);
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| format!("line 1: cannot read the header: {e}"))?
        .iter()
        .map(str::to_owned)
        .collect();
    let lower: Vec<String> = header.iter().map(|h| h.to_ascii_lowercase()).collect();
    let time_names = ["timestamp", "time", "at"];
    if lower
        .first()
        .is_none_or(|h| !time_names.contains(&h.as_str()))
    {
        return Err(format!(
            "line 1: the first column must be the time (`timestamp`), got {:?}",
            header.first().map(String::as_str).unwrap_or("")
        ));
    }
    let long = lower.len() == 3 && lower[1] == "tag" && lower[2] == "value";
    if !long && header.len() < 2 {
        return Err("line 1: expected `timestamp,tag,value` or `timestamp,<tag>,<tag>,…`".into());
    }
    let mut parsed = ParsedCsv::default();
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line() as usize);
                parsed.problems.push(SampleProblem {
                    at: format!("line {line}"),
                    field: "line".into(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let line = record.position().map_or(0, |p| p.line() as usize);
        let problem = |field: &str, message: String| SampleProblem {
            at: format!("line {line}"),
            field: field.to_owned(),
            message,
        };
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() != header.len() {
            parsed.problems.push(problem(
                "line",
                format!(
                    "expected {} fields like the header, got {}",
                    header.len(),
                    record.len()
                ),
            ));
            continue;
        }
        let at = match parse_time(&record[0]) {
            Ok(at) => at,
            Err(message) => {
                parsed.problems.push(problem(&header[0], message));
                continue;
            }
        };
        let cells: Vec<(String, &str)> = if long {
            vec![(record[1].to_owned(), &record[2])]
        } else {
            header[1..]
                .iter()
                .cloned()
                .zip(record.iter().skip(1))
                .filter(|(_, cell)| !cell.is_empty())
                .collect()
        };
        for (tag, cell) in cells {
            let field = if long {
                "value".to_owned()
            } else {
                tag.clone()
            };
            match parse_value(cell) {
                Ok(value) => {
                    parsed.samples.push(Incoming {
                        tag,
                        at,
                        value: Some(value),
                    });
                    parsed.lines.push(line);
                }
                Err(message) => parsed.problems.push(problem(&field, message)),
            }
        }
    }
    Ok(parsed)
}

/// A sample value: a number, or `NaN` (stored, flagged not_a_number).
fn parse_value(cell: &str) -> Result<f64, String> {
    cell.parse::<f64>()
        .map_err(|_| format!("expected a number, got {cell:?}"))
}

/// RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]` (UTC) or integer epoch milliseconds.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(naive.and_utc());
        }
    }
    if let Ok(ms) = text.parse::<i64>()
        && let Some(at) = DateTime::from_timestamp_millis(ms)
    {
        return Ok(at);
    }
    Err(format!(
        "expected an RFC 3339 time (2026-12-01T08:00:00Z), `YYYY-MM-DD HH:MM:SS` (UTC) or epoch milliseconds, got {text:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_layout_keeps_good_lines_and_names_broken_ones() {
        let text = "timestamp,tag,value\n\
                    2026-12-01T08:00:00Z,press_temp,181.5\n\
                    2026-12-01T08:00:01Z,press_temp,hot\n\
                    2026-12-01T08:00:02Z,press_temp\n\
                    yesterday,press_temp,1\n\
                    2026-12-01 08:00:03,press_temp,NaN\n\
                    1764576004000,humidity,55\n";
        let parsed = parse(text.as_bytes()).expect("header is fine");
        assert_eq!(parsed.samples.len(), 3);
        assert_eq!(parsed.lines, [2, 6, 7]);
        assert!(parsed.samples[1].value.is_some_and(f64::is_nan));
        assert_eq!(
            parsed.samples[2].at,
            DateTime::from_timestamp_millis(1_764_576_004_000).expect("valid")
        );
        let problems: Vec<_> = parsed
            .problems
            .iter()
            .map(|p| (p.at.as_str(), p.field.as_str()))
            .collect();
        assert_eq!(
            problems,
            [
                ("line 3", "value"),
                ("line 4", "line"),
                ("line 5", "timestamp")
            ]
        );
        assert!(parsed.problems[0].message.contains("\"hot\""));
    }

    #[test]
    fn wide_layout_skips_empty_cells() {
        let text = "time,press_temp,humidity\n\
                    2026-12-01T08:00:00Z,181.5,55.0\n\
                    2026-12-01T08:00:01Z,,56.0\n";
        let parsed = parse(text.as_bytes()).expect("valid");
        let tags: Vec<_> = parsed.samples.iter().map(|s| s.tag.as_str()).collect();
        assert_eq!(tags, ["press_temp", "humidity", "humidity"]);
    }

    #[test]
    fn a_file_without_a_time_column_is_refused_whole() {
        let message = parse(b"tag,value\nx,1\n").unwrap_err();
        assert!(message.contains("line 1"), "{message}");
    }
}
