//! The PLC program (`firmware-io/plc/linesight_gate.st`): blark, an IEC 61131-3 parser we did
//! not write, accepts it and refuses a broken copy; its settings, word order and addresses equal
//! `firmware-io/register-map.toml`; every rule of `plc-program.md` is marked in it.
//!
//! blark is in the venv `make setup` makes (`scripts/setup.sh`); without it these tests fail
//! with a message saying so, never pass silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::repo;

const PROGRAM: &str = "firmware-io/plc/linesight_gate.st";

/// The venv's blark.
fn blark() -> PathBuf {
    let blark = repo().join(".venv/bin/blark");
    assert!(
        blark.exists(),
        "{} is missing: run `make setup` (make test does), which installs blark into .venv",
        blark.display()
    );
    blark
}

/// `blark parse file`.
fn blark_parse(file: &Path) -> Output {
    Command::new(blark())
        .arg("parse")
        .arg(file)
        .output()
        .expect("run blark")
}

fn program_text() -> String {
    std::fs::read_to_string(repo().join(PROGRAM)).expect("the PLC program")
}

#[test]
fn the_plc_program_is_valid_structured_text() {
    let output = blark_parse(&repo().join(PROGRAM));
    assert!(
        output.status.success(),
        "blark refused {PROGRAM} ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_broken_program_is_refused_by_the_parser() {
    let text = program_text();
    assert!(
        text.contains("END_IF;"),
        "{PROGRAM} has no END_IF; to remove"
    );
    let broken = text.replacen("END_IF;", "", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("linesight_gate.st");
    std::fs::write(&path, broken).expect("write the broken copy");
    let output = blark_parse(&path);
    assert!(
        !output.status.success(),
        "blark accepted a program with an END_IF; missing:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The program's `NAME : TYPE := VALUE;` lines with an upper-case name (its constants), as
/// name -> (type, value). A name declared twice fails the test: which one counts is unclear.
fn constants(text: &str) -> HashMap<String, (String, String)> {
    let mut found = HashMap::new();
    for line in text.lines() {
        let Some(body) = line.trim().strip_suffix(';') else {
            continue;
        };
        let Some((left, value)) = body.split_once(":=") else {
            continue;
        };
        let Some((name, kind)) = left.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let constant = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if !constant {
            continue;
        }
        let previous = found.insert(
            name.to_string(),
            (kind.trim().to_string(), value.trim().to_string()),
        );
        assert!(previous.is_none(), "{PROGRAM} declares {name} twice");
    }
    found
}

fn constant<'a>(
    constants: &'a HashMap<String, (String, String)>,
    name: &str,
) -> (&'a str, &'a str) {
    let (kind, value) = constants
        .get(name)
        .unwrap_or_else(|| panic!("{PROGRAM} has no `{name} : TYPE := VALUE;` line"));
    (kind.as_str(), value.as_str())
}

/// A `NAME : TIME := T#<n>MS;` constant, in milliseconds.
fn time_ms(constants: &HashMap<String, (String, String)>, name: &str) -> i64 {
    let (kind, value) = constant(constants, name);
    assert_eq!(kind, "TIME", "{name} is not a TIME");
    value
        .to_ascii_uppercase()
        .strip_prefix("T#")
        .and_then(|v| v.strip_suffix("MS"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} := {value}: expected T#<n>MS"))
}

/// A `NAME : UINT := <n>;` constant.
fn uint(constants: &HashMap<String, (String, String)>, name: &str) -> i64 {
    let (kind, value) = constant(constants, name);
    assert_eq!(kind, "UINT", "{name} is not a UINT");
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} := {value}: expected a number"))
}

/// `map[table][key]` as an integer.
fn integer(map: &toml::Table, table: &str, key: &str) -> i64 {
    map.get(table)
        .and_then(|t| t.get(key))
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| panic!("register-map.toml has no integer [{table}] {key}"))
}

#[test]
fn the_program_constants_match_the_register_map() {
    let text = program_text();
    let found = constants(&text);
    let map: toml::Table = std::fs::read_to_string(repo().join("firmware-io/register-map.toml"))
        .expect("register map")
        .parse()
        .expect("register-map.toml is TOML");

    for (name, key) in [
        ("WATCHDOG_MS", "watchdog_ms"),
        ("PULSE_MS", "pulse_ms"),
        ("MATCH_BEFORE_MS", "match_before_ms"),
        ("EYE_TO_GATE_MS", "eye_to_gate_ms"),
        ("PLC_HEARTBEAT_MS", "plc_heartbeat_ms"),
    ] {
        assert_eq!(
            time_ms(&found, name),
            integer(&map, "plc_program", key),
            "{PROGRAM} {name} vs register-map.toml [plc_program] {key}"
        );
    }
    assert_eq!(
        uint(&found, "FIFO_DEPTH"),
        integer(&map, "plc_program", "fifo_depth"),
        "{PROGRAM} FIFO_DEPTH vs register-map.toml [plc_program] fifo_depth"
    );

    for (name, table, key) in [
        ("HR_HEARTBEAT", "heartbeat", "address"),
        ("HR_STATION_STATE", "station_state", "address"),
        ("HR_GATE_COMMAND", "gate_command", "address"),
        ("HR_PLC_STATUS", "plc_status", "address"),
        ("COIL_HALT_LINE", "halt_line", "coil"),
    ] {
        assert_eq!(
            uint(&found, name),
            integer(&map, table, key),
            "{PROGRAM} {name} vs register-map.toml [{table}] {key}"
        );
    }

    let order = map
        .get("words")
        .and_then(|t| t.get("order"))
        .and_then(toml::Value::as_str)
        .expect("register-map.toml [words] order");
    let high_first = match order {
        "high_first" => "TRUE",
        "low_first" => "FALSE",
        other => panic!("register-map.toml [words] order = {other:?}: not a word order"),
    };
    let (kind, value) = constant(&found, "WORDS_HIGH_FIRST");
    assert_eq!(kind, "BOOL", "WORDS_HIGH_FIRST is not a BOOL");
    assert_eq!(
        value.to_ascii_uppercase(),
        high_first,
        "{PROGRAM} WORDS_HIGH_FIRST vs register-map.toml [words] order = {order:?}"
    );

    let rules =
        std::fs::read_to_string(repo().join("firmware-io/plc-program.md")).expect("plc-program.md");
    for n in 1..=9 {
        assert!(
            rules.contains(&format!("**R{n} ")) && rules.contains(&format!("| R{n} |")),
            "plc-program.md does not state rule R{n} and map it in its table"
        );
        let marker = format!("(* R{n}");
        let marked = text
            .match_indices(&marker)
            .any(|(at, _)| !text[at + marker.len()..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(marked, "{PROGRAM} has no `{marker}` marker for rule R{n}");
    }
}
