//! Server mode (issue 17): the station as its PLC's Modbus TCP server, the way Cognex and
//! Keyence cameras serve theirs. The station is the real binary on the simulated line with
//! `[plc] type = "server"`; the PLC is `tests/interop/server_mode_plc.py`, a pymodbus client
//! running the port of `firmware-io/plc/linesight_server_client.st`: its belt carries parts past
//! a photo-eye (which triggers the capture with a tracking id) and on to the diverter, tracked
//! by encoder counts. mbpoll reads the status block beside it.
//!
//! For every part the PLC logs what it did at the gate; the rule the tests hold it all to: a
//! part passes only when a PASS for its tracking id was in hand, and every other part (no
//! result, a reject, a missed trigger, a fault) is diverted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use linesight::serve::{Role, Tokens};
use serde_json::Value;

use crate::station_process::{StationProcess, config_file, log_tail};
use crate::{CPU_HEAVY, KillOnDrop, free_port, get_json, poll_within, python, repo};

/// Where the shipped register map puts the status block, and its counters.
const STATUS: u16 = 300;

/// A station config for server mode on a free port, its data folder, a token to read records
/// and the address the PLC connects to.
fn server_station() -> (tempfile::TempDir, PathBuf, PathBuf, String, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    // The [plc] section's own lines, exactly: other sections have `type` keys too.
    let simulated = "[plc]\n# \"simulated\": the built-in PLC simulator on loopback; \"tcp\": a real PLC at `address`.\ntype = \"simulated\"\n";
    let server = format!("[plc]\ntype = \"server\"\nlisten = \"127.0.0.1:{port}\"\n");
    let config = config_file(dir.path(), &[(simulated, &server)]);
    let token = Tokens::open(&data, None)
        .expect("tokens")
        .create("server-mode-test", Role::MesClient, "test")
        .expect("token")
        .token;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    (dir, data, config, token, address)
}

/// What a failing test shows: the PLC program's stderr and the station's last log lines.
fn evidence(plc_log: &Path, station_log: &Path) -> String {
    format!(
        "PLC:\n{}\nstation:\n{}",
        stderr_of(plc_log),
        log_tail(station_log, 30)
    )
}

/// One run of the pymodbus PLC program.
struct Plc {
    process: KillOnDrop,
    log: PathBuf,
}

impl Plc {
    fn start(station: SocketAddr, log: &Path, args: &[&str]) -> Plc {
        let child = Command::new(python())
            .arg(repo().join("tests/interop/server_mode_plc.py"))
            .args(["--station", &station.to_string(), "--log"])
            .arg(log)
            .args(args)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log.with_extension("stderr"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start the pymodbus PLC");
        Plc {
            process: KillOnDrop(child),
            log: log.to_owned(),
        }
    }

    /// The parts that reached the gate so far, and the summary once it has ended.
    fn parts(&self) -> (Vec<Value>, Option<Value>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut parts = Vec::new();
        let mut summary = None;
        // A line being written is skipped until it is whole.
        for line in text.lines() {
            let Ok(value) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            match value.get("summary") {
                Some(s) => summary = Some(s.clone()),
                None => parts.push(value),
            }
        }
        (parts, summary)
    }

    /// Waits until the program has ended by itself, within `limit`; its parts and summary.
    async fn finished(&mut self, limit: Duration, why: impl Fn() -> String) -> (Vec<Value>, Value) {
        let deadline = tokio::time::Instant::now() + limit;
        let mut ended = false;
        while tokio::time::Instant::now() < deadline {
            if self.process.0.try_wait().ok().flatten().is_some() {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            ended,
            "the PLC program did not finish within {limit:?}\n{}",
            why()
        );
        let status = self.process.0.wait().expect("reaped");
        assert!(
            status.success(),
            "the PLC program failed: {status}\n{}",
            why()
        );
        let (parts, summary) = self.parts();
        (parts, summary.expect("the PLC logs a summary"))
    }

    fn stderr(&self) -> String {
        stderr_of(&self.log)
    }
}

/// The rule, part by part: only a PASS in hand lets a part by.
fn assert_every_part_obeys_the_rule(parts: &[Value]) {
    for part in parts {
        let verdict = part["result"]["verdict"].as_u64();
        let diverted = part["diverted"].as_bool().expect("diverted");
        assert_eq!(
            diverted,
            verdict != Some(1) || part["reason"] != "pass",
            "a part passes exactly when a PASS for it was in hand: {part}"
        );
        if !diverted {
            assert_eq!(verdict, Some(1), "only a PASS lets a part by: {part}");
        }
    }
}

/// mbpoll, a Modbus client we did not write, reads `count` holding registers from `first`.
fn mbpoll_read(address: SocketAddr, first: u16, count: u16) -> Vec<u16> {
    let output = Command::new("mbpoll")
        .args(["-m", "tcp", "-a", "1", "-t", "4", "-0", "-1", "-q"])
        .args(["-r", &first.to_string(), "-c", &count.to_string()])
        .args(["-p", &address.port().to_string(), "127.0.0.1"])
        .output()
        .expect("mbpoll is installed (apt-get install mbpoll; make test does)");
    assert!(
        output.status.success(),
        "mbpoll: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        // Lines look like "[300]: 	16".
        .filter_map(|line| line.split_once("]:"))
        .map(|(_, value)| value.trim().parse::<u16>().expect("a register value"))
        .collect()
}

fn u32_at(words: &[u16], index: usize) -> u32 {
    (u32::from(words[index]) << 16) | u32::from(words[index + 1])
}

/// The station's inspection records, in part order.
async fn inspection_records(base: &str, token: &str) -> Vec<Value> {
    let http = reqwest::Client::new();
    let page = get_json(
        &http,
        &format!("{base}/api/v1/records?from=1&limit=5000"),
        token,
    )
    .await;
    let mut records: Vec<Value> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["kind"] == "inspection")
        .cloned()
        .collect();
    records.sort_by_key(|r| r["part_id"].as_u64());
    records
}

/// Parts through both ends of the handshake while the belt stops and changes speed: each
/// part's result carries its own tracking id, each part obeys the rule, the station's records
/// say the same verdict the PLC acted on, and mbpoll reads the same counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymodbus_plc_runs_parts_through_the_handshake_across_a_belt_stop_and_speed_changes() {
    let _cpu = CPU_HEAVY.lock().await;
    let (dir, data, config, token, address) = server_station();
    let station = StationProcess::start(&config, &data).await;
    let parts = 60;
    let mut plc = Plc::start(
        address,
        &dir.path().join("plc.jsonl"),
        &[
            "--parts",
            &parts.to_string(),
            "--pitch-ms",
            "150",
            "--eye-to-gate-ms",
            "1500",
            "--events",
            "stop@2.0:1.5,speed@4.5:0.5,speed@7.0:1.3",
            // A stall of this (Python) PLC on a busy machine is run back scan by scan, each
            // part's eye time as it was: room for the stall within the acknowledge window
            // (the handshake's timing is not what this test is about; eye to gate is 1.5 s).
            "--trigger-ack-ms",
            "1000",
        ],
    );
    let plc_log = plc.log.clone();
    let why = || evidence(&plc_log, &station.log);
    let (logged, summary) = plc.finished(Duration::from_secs(180), why).await;
    assert_eq!(
        logged.len(),
        parts,
        "every part reached the gate: {summary}"
    );
    assert_every_part_obeys_the_rule(&logged);
    // Nothing went wrong on the way: every part had its own result in time.
    for (i, part) in logged.iter().enumerate() {
        assert_eq!(part["tracking_id"], 1000 + i as u64, "in order: {part}");
        assert!(
            part["result"].is_object(),
            "a result for every part: {part}\n{summary}"
        );
        assert!(
            matches!(part["reason"].as_str(), Some("pass" | "not_pass")),
            "{part}"
        );
    }
    let passed = logged.iter().filter(|p| p["reason"] == "pass").count();
    assert!(
        passed > 0 && passed < parts,
        "both verdicts occur: {passed} of {parts} passed"
    );

    // The station's records: the same parts, in order, with the verdict the PLC acted on.
    let records = inspection_records(&station.base, &token).await;
    assert_eq!(records.len(), parts, "one record a part");
    for (record, part) in records.iter().zip(&logged) {
        assert_eq!(
            record["disposition"] == "pass",
            part["reason"] == "pass",
            "the record and the PLC agree: {record} / {part}"
        );
        assert_ne!(record["actuation"], "failed", "{record}");
    }
    // mbpoll reads the status block: online, nothing pending, the counts the PLC saw.
    let status = mbpoll_read(address, STATUS, 20);
    assert_ne!(status[0] & (1 << 4), 0, "online: {status:?}");
    assert_eq!(status[4], 0, "every result acknowledged: {status:?}");
    assert_eq!(u32_at(&status, 6) as usize, passed, "good: {status:?}");
    assert_eq!(
        u32_at(&status, 8) as usize,
        parts - passed,
        "rejected: {status:?}"
    );
    assert_eq!(u32_at(&status, 10), 0, "no missed trigger: {status:?}");
    assert_eq!(u32_at(&status, 14), 0, "no overrun: {status:?}");
    drop(station);
    drop(plc);
}

/// The PLC restarts mid-run (killed, a new program connects) and then the station is killed
/// and restarted under the running PLC: every part obeys the rule throughout; the parts of the
/// new PLC get results again; the parts that went by while the station was down are diverted;
/// and the PLC takes results again once the station is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plc_and_the_station_restarting_mid_run_divert_only_what_could_not_be_judged() {
    let _cpu = CPU_HEAVY.lock().await;
    let (dir, data, config, _token, address) = server_station();
    let mut station = StationProcess::start(&config, &data).await;
    let args = ["--pitch-ms", "150", "--eye-to-gate-ms", "1500"];

    // The first PLC program is killed after a few parts, mid-handshake as likely as not.
    let first = Plc::start(
        address,
        &dir.path().join("plc-1.jsonl"),
        &[&args[..], &["--parts", "200"]].concat(),
    );
    let gone_through = poll_within(Duration::from_secs(60), || async {
        first.parts().0.len() >= 8
    })
    .await;
    assert!(gone_through, "the first PLC ran parts\n{}", first.stderr());
    assert_every_part_obeys_the_rule(&first.parts().0);
    drop(first);

    // A new program (new tracking ids) connects to the same station and runs.
    let mut second = Plc::start(
        address,
        &dir.path().join("plc-2.jsonl"),
        &[
            &args[..],
            &["--parts", "120", "--first-tracking-id", "50000"],
        ]
        .concat(),
    );
    let running = poll_within(Duration::from_secs(60), || async {
        second
            .parts()
            .0
            .iter()
            .filter(|p| p["reason"] == "pass")
            .count()
            >= 3
    })
    .await;
    assert!(running, "the new PLC gets PASSes\n{}", second.stderr());

    // The station dies under it and comes back on the same port and data.
    station.kill_9();
    let killed_parts = second.parts().0.len();
    let station = StationProcess::start(&config, &data).await;
    let plc_log = second.log.clone();
    let why = || evidence(&plc_log, &station.log);
    let (logged, summary) = second.finished(Duration::from_secs(240), why).await;
    assert_eq!(logged.len(), 120, "{summary}");
    assert_every_part_obeys_the_rule(&logged);
    assert!(
        summary["reconnects"].as_u64().unwrap_or(0) >= 1,
        "the PLC reconnected: {summary}"
    );
    // While the station was gone, parts were diverted; after it came back, PASSes again.
    let after = &logged[killed_parts..];
    assert!(
        after
            .iter()
            .any(|p| p["diverted"] == true && p["reason"] != "not_pass"),
        "some parts were diverted for want of a result while the station was down: {summary}"
    );
    let last = &logged[logged.len() - 20..];
    assert!(
        last.iter().all(|p| p["result"].is_object()),
        "the last parts have results again: {last:?}"
    );
    assert!(last.iter().any(|p| p["reason"] == "pass"), "{last:?}");
    drop(station);
}

/// A PLC that stops acknowledging: the buffer fills, every later result is refused, its part
/// diverted, and the overrun is reported in the status block, the metrics and the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_results_buffer_overrun_rejects_the_parts_concerned_and_is_reported() {
    let _cpu = CPU_HEAVY.lock().await;
    let (dir, data, config, token, address) = server_station();
    let station = StationProcess::start(&config, &data).await;
    let parts = 50;
    let mut plc = Plc::start(
        address,
        &dir.path().join("plc.jsonl"),
        &[
            "--parts",
            &parts.to_string(),
            "--pitch-ms",
            "100",
            "--eye-to-gate-ms",
            "1500",
            "--ack-stops-after",
            "5",
        ],
    );
    let plc_log = plc.log.clone();
    let why = || evidence(&plc_log, &station.log);
    let (logged, summary) = plc.finished(Duration::from_secs(180), why).await;
    assert_eq!(logged.len(), parts, "{summary}");
    assert_every_part_obeys_the_rule(&logged);
    // 5 acknowledged, 32 more fill the buffer, the other 13 are refused.
    let refused = parts - 5 - 32;
    let status = mbpoll_read(address, STATUS, 20);
    assert_eq!(
        u32_at(&status, 14) as usize,
        refused,
        "overruns: {status:?}"
    );
    assert_ne!(
        status[0] & (1 << 7),
        0,
        "the overrun bit is latched: {status:?}"
    );
    assert_ne!(status[0] & (1 << 6), 0, "and the error bit: {status:?}");
    let no_result = logged.iter().filter(|p| p["result"].is_null()).count();
    assert_eq!(
        no_result, refused,
        "the refused parts had no result and were diverted"
    );
    let records = inspection_records(&station.base, &token).await;
    let overrun: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["actuation"] == "failed"
                && r["actuation_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("results buffer full"))
        })
        .collect();
    assert_eq!(
        overrun.len(),
        refused,
        "each refused part is recorded as such"
    );
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", station.base))
        .bearer_auth(&token)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let overruns = metrics
        .lines()
        .find(|line| line.starts_with("linesight_results_overruns_total"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<usize>().ok());
    assert_eq!(overruns, Some(refused), "the overruns are in /metrics");
}

/// What a PLC program run with log `log` wrote to stderr.
fn stderr_of(log: &Path) -> String {
    std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default()
}
