//! The PLC programs (`firmware-io/plc/linesight_gate.st` for client mode,
//! `firmware-io/plc/linesight_server_client.st` for server mode): blark, an IEC 61131-3 parser we
//! did not write, accepts them and refuses a broken copy; their settings, word order, addresses
//! and offsets equal `firmware-io/register-map.toml`; every rule of `plc-program.md` is marked in
//! them.
//!
//! blark is in the venv `make setup` makes (`scripts/setup.sh`); without it these tests fail
//! with a message saying so, never pass silently.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use linesight::actuate::{GateCommandWords, GateVerdict, PlcTracking, RegisterMap};
use linesight::simulate::plc_program::{InputImage, PlcProgram};

use crate::repo;

const PROGRAM: &str = "firmware-io/plc/linesight_gate.st";
/// Server mode's PLC side: `FB_LinesightCameraClient`, against `[server]`.
const SERVER_PROGRAM: &str = "firmware-io/plc/linesight_server_client.st";

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

fn program_text(program: &str) -> String {
    std::fs::read_to_string(repo().join(program)).expect("the PLC program")
}

fn assert_parses(program: &str) {
    let output = blark_parse(&repo().join(program));
    assert!(
        output.status.success(),
        "blark refused {program} ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn assert_broken_copy_refused(program: &str) {
    let text = program_text(program);
    assert!(
        text.contains("END_IF;"),
        "{program} has no END_IF; to remove"
    );
    let broken = text.replacen("END_IF;", "", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let name = Path::new(program).file_name().expect("a file name");
    let path = dir.path().join(name);
    std::fs::write(&path, broken).expect("write the broken copy");
    let output = blark_parse(&path);
    assert!(
        !output.status.success(),
        "blark accepted {program} with an END_IF; missing:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[test]
fn the_plc_program_is_valid_structured_text() {
    assert_parses(PROGRAM);
}

#[test]
fn a_broken_program_is_refused_by_the_parser() {
    assert_broken_copy_refused(PROGRAM);
}

#[test]
fn the_server_client_program_is_valid_structured_text() {
    assert_parses(SERVER_PROGRAM);
}

#[test]
fn a_broken_server_client_program_is_refused_by_the_parser() {
    assert_broken_copy_refused(SERVER_PROGRAM);
}

/// The program's `NAME : TYPE := VALUE;` lines with an upper-case name (its constants), as
/// name -> (type, value). A name declared twice fails the test: which one counts is unclear.
fn constants(program: &str, text: &str) -> HashMap<String, (String, String)> {
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
        assert!(previous.is_none(), "{program} declares {name} twice");
    }
    found
}

fn constant<'a>(
    program: &str,
    constants: &'a HashMap<String, (String, String)>,
    name: &str,
) -> (&'a str, &'a str) {
    let (kind, value) = constants
        .get(name)
        .unwrap_or_else(|| panic!("{program} has no `{name} : TYPE := VALUE;` line"));
    (kind.as_str(), value.as_str())
}

/// A `NAME : TIME := T#<n>MS;` constant, in milliseconds.
fn time_ms(program: &str, constants: &HashMap<String, (String, String)>, name: &str) -> i64 {
    let (kind, value) = constant(program, constants, name);
    assert_eq!(kind, "TIME", "{name} is not a TIME");
    value
        .to_ascii_uppercase()
        .strip_prefix("T#")
        .and_then(|v| v.strip_suffix("MS"))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} := {value}: expected T#<n>MS"))
}

/// A `NAME : UINT := <n>;` constant.
fn uint(program: &str, constants: &HashMap<String, (String, String)>, name: &str) -> i64 {
    let (kind, value) = constant(program, constants, name);
    assert_eq!(kind, "UINT", "{name} is not a UINT");
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name} := {value}: expected a number"))
}

/// A `NAME : DINT := <n>;` constant.
fn dint(program: &str, constants: &HashMap<String, (String, String)>, name: &str) -> i64 {
    let (kind, value) = constant(program, constants, name);
    assert_eq!(kind, "DINT", "{name} is not a DINT");
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
    let text = program_text(PROGRAM);
    let found = constants(PROGRAM, &text);
    let map = register_map();

    for (name, key) in [
        ("WATCHDOG_MS", "watchdog_ms"),
        ("PULSE_MS", "pulse_ms"),
        ("MATCH_BEFORE_MS", "match_before_ms"),
        ("EYE_TO_GATE_MS", "eye_to_gate_ms"),
        ("PLC_HEARTBEAT_MS", "plc_heartbeat_ms"),
    ] {
        assert_eq!(
            time_ms(PROGRAM, &found, name),
            integer(&map, "plc_program", key),
            "{PROGRAM} {name} vs register-map.toml [plc_program] {key}"
        );
    }
    assert_eq!(
        uint(PROGRAM, &found, "FIFO_DEPTH"),
        integer(&map, "plc_program", "fifo_depth"),
        "{PROGRAM} FIFO_DEPTH vs register-map.toml [plc_program] fifo_depth"
    );
    for (name, key) in [
        ("MATCH_BEFORE_COUNTS", "match_before_counts"),
        ("EYE_TO_GATE_COUNTS", "eye_to_gate_counts"),
    ] {
        assert_eq!(
            dint(PROGRAM, &found, name),
            integer(&map, "plc_program", key),
            "{PROGRAM} {name} vs register-map.toml [plc_program] {key}"
        );
    }
    assert_tracking(PROGRAM, &found, &map);

    for (name, table, key) in [
        ("HR_HEARTBEAT", "heartbeat", "address"),
        ("HR_STATION_STATE", "station_state", "address"),
        ("HR_GATE_COMMAND", "gate_command", "address"),
        ("HR_PLC_STATUS", "plc_status", "address"),
        ("HR_ENCODER", "encoder", "address"),
        ("COIL_HALT_LINE", "halt_line", "coil"),
    ] {
        assert_eq!(
            uint(PROGRAM, &found, name),
            integer(&map, table, key),
            "{PROGRAM} {name} vs register-map.toml [{table}] {key}"
        );
    }

    assert_word_order(PROGRAM, &found, &map);
    assert_rules_marked(PROGRAM, &text, 'R', 11);
}

/// register-map.toml as plain TOML (the crate's `RegisterMap` need not know every table).
fn register_map() -> toml::Table {
    std::fs::read_to_string(repo().join("firmware-io/register-map.toml"))
        .expect("register map")
        .parse()
        .expect("register-map.toml is TOML")
}

/// `WORDS_HIGH_FIRST : BOOL := ...;` agrees with `[words] order`.
fn assert_word_order(program: &str, found: &HashMap<String, (String, String)>, map: &toml::Table) {
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
    let (kind, value) = constant(program, found, "WORDS_HIGH_FIRST");
    assert_eq!(kind, "BOOL", "WORDS_HIGH_FIRST is not a BOOL");
    assert_eq!(
        value.to_ascii_uppercase(),
        high_first,
        "{program} WORDS_HIGH_FIRST vs register-map.toml [words] order = {order:?}"
    );
}

/// `TRACK_BY_ENCODER : BOOL := ...;` agrees with `[plc_program] tracking`.
fn assert_tracking(program: &str, found: &HashMap<String, (String, String)>, map: &toml::Table) {
    let tracking = map
        .get("plc_program")
        .and_then(|t| t.get("tracking"))
        .and_then(toml::Value::as_str)
        .expect("register-map.toml [plc_program] tracking");
    let by_encoder = match tracking {
        "encoder" => "TRUE",
        "time" => "FALSE",
        other => panic!("register-map.toml [plc_program] tracking = {other:?}: not a tracking"),
    };
    let (kind, value) = constant(program, found, "TRACK_BY_ENCODER");
    assert_eq!(kind, "BOOL", "TRACK_BY_ENCODER is not a BOOL");
    assert_eq!(
        value.to_ascii_uppercase(),
        by_encoder,
        "{program} TRACK_BY_ENCODER vs register-map.toml [plc_program] tracking = {tracking:?}"
    );
}

/// Rules `<letter>1 ..= <letter><count>` are stated (`**R1 `) and mapped (`| R1 |`) in
/// plc-program.md and marked (`(* R1`) in the program.
fn assert_rules_marked(program: &str, text: &str, letter: char, count: u32) {
    let rules =
        std::fs::read_to_string(repo().join("firmware-io/plc-program.md")).expect("plc-program.md");
    for n in 1..=count {
        assert!(
            rules.contains(&format!("**{letter}{n} "))
                && rules.contains(&format!("| {letter}{n} |")),
            "plc-program.md does not state rule {letter}{n} and map it in its table"
        );
        let marker = format!("(* {letter}{n}");
        let marked = text
            .match_indices(&marker)
            .any(|(at, _)| !text[at + marker.len()..].starts_with(|c: char| c.is_ascii_digit()));
        assert!(
            marked,
            "{program} has no `{marker}` marker for rule {letter}{n}"
        );
    }
}

/// A `NAME : WORD := 16#<hex>;` constant.
fn word(program: &str, constants: &HashMap<String, (String, String)>, name: &str) -> u32 {
    let (kind, value) = constant(program, constants, name);
    assert_eq!(kind, "WORD", "{name} is not a WORD");
    value
        .strip_prefix("16#")
        .and_then(|v| u32::from_str_radix(&v.replace('_', ""), 16).ok())
        .unwrap_or_else(|| panic!("{name} := {value}: expected 16#<hex>"))
}

/// The `[server]` table's text in register-map.toml, comments included (they define the
/// blocks' layout): `#` markers dropped and whitespace collapsed, so a phrase wrapped over two
/// comment lines still reads as one.
fn server_section_text() -> String {
    let raw = std::fs::read_to_string(repo().join("firmware-io/register-map.toml"))
        .expect("register map");
    let mut inside = false;
    let mut words = Vec::new();
    for line in raw.lines() {
        let trimmed = line.trim();
        if trimmed == "[server]" {
            inside = true;
            continue;
        }
        let body = trimmed.trim_start_matches('#').trim();
        if inside && (trimmed.starts_with('[') || (body.starts_with('[') && body.ends_with(']'))) {
            break;
        }
        if inside {
            words.extend(body.split_whitespace().map(str::to_string));
        }
    }
    assert!(!words.is_empty(), "register-map.toml has no [server] table");
    words.join(" ")
}

#[test]
fn the_server_client_constants_match_the_register_map() {
    let program = SERVER_PROGRAM;
    let text = program_text(program);
    let found = constants(program, &text);
    let map = register_map();

    // The blocks and the buffer: [server]'s keys.
    for (name, key) in [
        ("HR_CONTROL", "control"),
        ("HR_STATUS", "status"),
        ("RESULTS_DEPTH", "results_depth"),
    ] {
        assert_eq!(
            uint(program, &found, name),
            integer(&map, "server", key),
            "{program} {name} vs register-map.toml [server] {key}"
        );
    }
    // The settings it shares with client mode's program.
    for (name, key) in [
        ("WATCHDOG_MS", "watchdog_ms"),
        ("PULSE_MS", "pulse_ms"),
        ("PLC_HEARTBEAT_MS", "plc_heartbeat_ms"),
    ] {
        assert_eq!(
            time_ms(program, &found, name),
            integer(&map, "plc_program", key),
            "{program} {name} vs register-map.toml [plc_program] {key}"
        );
    }
    assert_word_order(program, &found, &map);

    // The layout is in [server]'s comments: each offset and bit the program uses must be the
    // one the map's text gives it.
    let server = server_section_text();
    let (_, status) = server
        .split_once("Status block")
        .expect("[server] describes a Status block");
    let (_, control) = server
        .split_once("Control block")
        .expect("[server] describes a Control block");
    let control = control.split("Status block").next().unwrap_or(control);
    let header = uint(program, &found, "HEADER_WORDS");
    let entry = uint(program, &found, "ENTRY_WORDS");
    for phrase in [
        format!("entries of {entry} words"),
        format!("entry k at status + {header} + {entry}k"),
        format!("status + {header} .. the results buffer"),
    ] {
        assert!(
            server.contains(&phrase),
            "{program} HEADER_WORDS = {header}, ENTRY_WORDS = {entry}: register-map.toml \
             [server] does not say {phrase:?}"
        );
    }
    let offsets: [(&str, &str, &str, bool); 15] = [
        ("CONTROL_BITS", "control", "bits:", false),
        ("CONTROL_TRACKING_ID", "control", "tracking id", true),
        ("CONTROL_ACK", "control", "results acknowledge", false),
        ("CONTROL_HEARTBEAT", "control", "PLC heartbeat", false),
        ("STATUS_BITS", "status", "bits:", false),
        ("STATUS_HEARTBEAT", "status", "station heartbeat", false),
        (
            "STATUS_LAST_ID",
            "status",
            "tracking id of the last trigger taken",
            true,
        ),
        ("STATUS_PENDING", "status", "results pending", false),
        (
            "STATUS_NEWEST",
            "status",
            "sequence number of the newest result",
            false,
        ),
        ("ENTRY_SEQUENCE", "", "sequence number", false),
        ("ENTRY_TRACKING_ID", "", "tracking id (u32)", true),
        ("ENTRY_VERDICT", "", "verdict", false),
        ("ENTRY_CLASS", "", "defect class code", false),
        ("ENTRY_CONFIDENCE", "", "confidence", false),
        ("ENTRY_PROCESSING", "", "processing time", false),
    ];
    for (name, block, what, u32_pair) in offsets {
        let n = uint(program, &found, name);
        let at = if u32_pair {
            format!("+ {n}, + {}", n + 1)
        } else {
            format!("+ {n}")
        };
        let phrase = if block.is_empty() {
            format!("{at} {what}")
        } else {
            format!("{block} {at} {what}")
        };
        let within = if block == "control" { control } else { status };
        assert!(
            within.contains(&phrase),
            "{program} {name} = {n}: register-map.toml [server] does not say {phrase:?}"
        );
    }
    assert_eq!(
        uint(program, &found, "CONTROL_WORDS"),
        uint(program, &found, "CONTROL_HEARTBEAT") + 1,
        "{program} CONTROL_WORDS: the control block ends with the PLC heartbeat"
    );
    let (kind, value) = constant(program, &found, "STATUS_WORDS");
    assert_eq!(
        (kind, value),
        ("UINT", "HEADER_WORDS + RESULTS_DEPTH * ENTRY_WORDS"),
        "{program} STATUS_WORDS is the header and the whole results buffer"
    );
    assert_eq!(
        uint(program, &found, "MAX_READ_WORDS"),
        125,
        "{program} MAX_READ_WORDS: FC3 reads at most 125 registers"
    );
    assert_eq!(
        uint(program, &found, "VERDICT_PASS"),
        1,
        "only verdict 1 is a PASS"
    );

    let bits: [(&str, &str, &str); 13] = [
        ("CTRL_TRIGGER_ENABLE", "control", "trigger enable"),
        ("CTRL_TRIGGER", "control", "trigger (its rising edge"),
        ("CTRL_CLEAR_ERROR", "control", "clear error"),
        ("CTRL_SET_OFFLINE", "control", "set offline"),
        ("STS_TRIGGER_READY", "status", "trigger ready"),
        ("STS_TRIGGER_ACK", "status", "trigger acknowledge"),
        ("STS_BUSY", "status", "busy"),
        ("STS_RESULTS_VALID", "status", "results valid"),
        ("STS_ONLINE", "status", "online"),
        ("STS_DEGRADED", "status", "degraded"),
        ("STS_ERROR", "status", "error"),
        ("STS_OVERRUN", "status", "results buffer overrun"),
        ("STS_STOP_LINE", "status", "stop line"),
    ];
    for (name, block, what) in bits {
        let mask = word(program, &found, name);
        assert_eq!(
            mask.count_ones(),
            1,
            "{program} {name} = 16#{mask:04X} is not one bit"
        );
        let phrase = format!("b{} {what}", mask.trailing_zeros());
        let within = if block == "control" { control } else { status };
        assert!(
            within.contains(&phrase),
            "{program} {name} = 16#{mask:04X}: register-map.toml [server] {block} block does \
             not say {phrase:?}"
        );
    }

    assert_rules_marked(program, &text, 'S', 10);
}

/// The Python port of the program (`tests/interop/client_mode_plc.py`, the PLC of the client-mode
/// tests) declares the ST's constants as module constants: they must be the map's too, so the
/// tests run the program the map describes (with encoder tracking, which it runs).
#[test]
fn the_python_port_constants_match_the_register_map() {
    let path = repo().join("tests/interop/client_mode_plc.py");
    let text = std::fs::read_to_string(&path).expect("the Python port");
    let found: HashMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once(" = "))
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(name, value)| (name, value.trim()))
        .collect();
    let map = register_map();
    let value = |name: &str| -> i64 {
        found
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("client_mode_plc.py has no integer {name}"))
    };
    for (name, table, key) in [
        ("WATCHDOG_MS", "plc_program", "watchdog_ms"),
        ("PULSE_MS", "plc_program", "pulse_ms"),
        ("MATCH_BEFORE_MS", "plc_program", "match_before_ms"),
        ("EYE_TO_GATE_MS", "plc_program", "eye_to_gate_ms"),
        ("FIFO_DEPTH", "plc_program", "fifo_depth"),
        ("PLC_HEARTBEAT_MS", "plc_program", "plc_heartbeat_ms"),
        ("MATCH_BEFORE_COUNTS", "plc_program", "match_before_counts"),
        ("EYE_TO_GATE_COUNTS", "plc_program", "eye_to_gate_counts"),
        ("HR_HEARTBEAT", "heartbeat", "address"),
        ("HR_STATION_STATE", "station_state", "address"),
        ("HR_GATE_COMMAND", "gate_command", "address"),
        ("HR_PLC_STATUS", "plc_status", "address"),
        ("HR_ENCODER", "encoder", "address"),
    ] {
        assert_eq!(
            value(name),
            integer(&map, table, key),
            "client_mode_plc.py {name} vs register-map.toml [{table}] {key}"
        );
    }
    let high_first = map["words"]["order"].as_str() == Some("high_first");
    assert_eq!(
        found.get("WORDS_HIGH_FIRST").copied(),
        Some(if high_first { "True" } else { "False" }),
        "client_mode_plc.py WORDS_HIGH_FIRST vs [words] order"
    );
    assert_eq!(
        found.get("TRACK_BY_ENCODER").copied(),
        Some("True"),
        "the port runs encoder tracking"
    );
}

/// One line's inputs to the client-mode program, scan by scan (1 ms apart), drawn from `seed`:
/// a belt that runs at changing speeds and stops, parts at the gate eye with commands that
/// arrive early, in their window, late and far too late (inside the next part's window), or
/// not at all, with every verdict; a part the eye sees that the station never numbered, ids
/// the station numbered that the eye never sees, station silences long enough for the
/// watchdog, station stops, a halt and operator resets.
fn line_scenario(seed: u64, map: &RegisterMap, scans: u64) -> Vec<(u64, InputImage)> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let silences: Vec<u64> = (0..3)
        .map(|_| rng.gen_range(1_000..scans - 2_000))
        .collect();
    let stops: Vec<u64> = (0..2).map(|_| rng.gen_range(1_000..scans - 500)).collect();
    let resets: Vec<u64> = (0..4).map(|_| rng.gen_range(500..scans)).collect();
    let halt_at = rng.gen_range(1_000..scans - 500);
    let mut image = InputImage {
        encoder: u32::MAX - 50_000,
        ..InputImage::default()
    };
    let (mut speed, mut next_speed_change) = (10u32, 0u64);
    let (mut next_part_at, mut part_id, mut sequence) =
        (image.encoder.wrapping_add(400), 1u32, 0u16);
    let mut writes: std::collections::BTreeMap<u64, Vec<(u32, GateVerdict)>> = Default::default();
    let mut queued: std::collections::VecDeque<(u32, GateVerdict)> = Default::default();
    let mut line = Vec::new();
    for t in 0..scans {
        if t >= next_speed_change {
            speed = if rng.gen_bool(0.15) {
                0
            } else {
                rng.gen_range(5..=15)
            };
            next_speed_change = t + rng.gen_range(300..1_500);
        }
        let before = image.encoder;
        image.encoder = image.encoder.wrapping_add(speed);
        // A part's leading edge reaches the eye when the belt passes its position.
        image.gate_eye = speed > 0
            && (next_part_at.wrapping_sub(before) as i32) >= 0
            && (image.encoder.wrapping_sub(next_part_at) as i32) >= 0;
        if image.gate_eye {
            next_part_at = next_part_at.wrapping_add(rng.gen_range(500..900));
            // A part the station never numbered (the eye saw one part twice) is a ghost.
            if !rng.gen_bool(0.02) {
                // This part carries `part_id`. The station's command for the part after it
                // goes out 10..120 ms from now: before that part's window, in it, after it
                // or inside the window of the part after that, as the belt's speed has it.
                let skipped = u32::from(rng.gen_bool(0.03)); // numbered, never at the eye
                let next = part_id.wrapping_add(1 + skipped);
                if !rng.gen_bool(0.08) {
                    let verdict = if rng.gen_bool(0.6) {
                        GateVerdict::Pass
                    } else {
                        GateVerdict::from_word(rng.gen_range(0..=4))
                    };
                    let at = t + rng.gen_range(10..=120);
                    writes.entry(at).or_default().push((next, verdict));
                }
                part_id = next;
            }
        }
        if let Some(due) = writes.remove(&t) {
            queued.extend(due);
        }
        // One command write per scan, as the PLC takes them.
        if let Some((id, verdict)) = queued.pop_front() {
            sequence = sequence.wrapping_add(1);
            image.gate_command = map.encode_gate_command(GateCommandWords {
                part_id: id,
                verdict,
                class: 0,
                sequence,
            });
        }
        let silent = silences.iter().any(|&s| (s..s + 1_800).contains(&t));
        if t.is_multiple_of(100) && !silent {
            image.heartbeat = image.heartbeat.wrapping_add(1);
        }
        let stopped = stops.iter().any(|&s| (s..s + 300).contains(&t));
        image.station_state = u16::from(t >= 5 && !stopped);
        image.halt_coil = (halt_at..halt_at + 200).contains(&t);
        image.operator_reset = resets.contains(&t);
        line.push((t, image));
    }
    line
}

/// What a port did in one scan, in the replay script's shape.
fn rust_port_scan(program: &mut PlcProgram, t: u64, image: &InputImage) -> serde_json::Value {
    let now = std::time::Duration::from_millis(t);
    let outcome = program.scan(now, image);
    let decided: Vec<serde_json::Value> = outcome
        .decided
        .iter()
        .map(|d| serde_json::json!([d.part_id, d.verdict, !d.diverted, d.reason]))
        .collect();
    serde_json::json!({
        "decided": decided,
        "status": program.status_words(),
        "gate": program.gate_output(now),
        "run": program.conveyor_run(),
    })
}

fn image_json(t: u64, image: &InputImage) -> String {
    serde_json::json!({
        "t": t, "hb": image.heartbeat, "state": image.station_state, "cmd": image.gate_command,
        "halt": image.halt_coil, "eye": image.gate_eye, "reset": image.operator_reset,
        "enc": image.encoder,
    })
    .to_string()
}

/// The two ports of `linesight_gate.st` (the Rust one the simulated PLC runs, the Python one
/// the pymodbus PLC runs) do the same thing in every scan of a long, eventful line: the same
/// parts decided the same way for the same reasons, the same status words, gate and conveyor
/// outputs. Both tracking modes; the scenario must reach every decision reason and R11's drop,
/// so a rule one port lacks cannot hide.
#[test]
fn the_rust_and_python_ports_do_the_same_in_every_scan() {
    // A fixed line that reaches every decision, and a fresh one each run to explore: both are
    // compared scan by scan, and the decisions are counted over both (one random line alone
    // may miss a rare decision without anything being wrong). PLC_REPLAY_SEED replays one.
    let seeds: Vec<u64> = match std::env::var("PLC_REPLAY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => vec![seed],
        None => vec![1, rand::random()],
    };
    let mut reasons: HashMap<String, usize> = HashMap::new();
    let mut dropped_behind = false;
    for (seed, tracking) in seeds
        .iter()
        .flat_map(|&seed| [(seed, PlcTracking::Time), (seed, PlcTracking::Encoder)])
    {
        println!("PLC_REPLAY_SEED={seed} ({tracking:?})");
        let mut map =
            RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("the map");
        map.plc_program.tracking = tracking;
        let line = line_scenario(seed, &map, 30_000);
        let input: String = line.iter().map(|(t, i)| image_json(*t, i) + "\n").collect();
        let mut replay = Command::new(crate::python());
        replay.arg(repo().join("tests/interop/plc_port_replay.py"));
        if tracking == PlcTracking::Encoder {
            replay.arg("--encoder");
        }
        let mut child = replay
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run plc_port_replay.py");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(input.as_bytes())
        });
        let output = child.wait_with_output().expect("plc_port_replay.py output");
        writer.join().expect("writer").expect("write the images");
        assert!(
            output.status.success(),
            "plc_port_replay.py failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let python: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(python.len(), line.len(), "one line per scan");
        let mut program = PlcProgram::new(map);
        for ((t, image), theirs) in line.iter().zip(&python) {
            let ours = rust_port_scan(&mut program, *t, image);
            assert_eq!(
                &ours,
                theirs,
                "{tracking:?}, scan {t} (PLC_REPLAY_SEED={seed}): Rust (left) and Python \
                 (right) differ; inputs {}",
                image_json(*t, image)
            );
            for decision in ours["decided"].as_array().into_iter().flatten() {
                *reasons
                    .entry(decision[3].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
            }
            dropped_behind |= ours["status"][1].as_u64().is_some_and(|b| b & 0x40 != 0);
        }
    }
    println!("decisions by reason over both modes: {reasons:?}");
    for reason in [
        "pass",
        "verdict",
        "no_command",
        "watchdog_expired",
        "station_stopped",
    ] {
        assert!(
            reasons.get(reason).is_some_and(|&n| n > 0),
            "the scenario never reached {reason}: {reasons:?} (seeds {seeds:?})"
        );
    }
    assert!(
        dropped_behind,
        "the scenario never dropped a command for a decided part (R11, seeds {seeds:?})"
    );
}
