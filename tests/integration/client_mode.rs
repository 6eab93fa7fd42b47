//! Client mode against a PLC we did not write (issue 17): the station is the real binary,
//! tracking parts by encoder counts; the PLC is `tests/interop/client_mode_plc.py`, a pymodbus
//! Modbus TCP server running the port of `firmware-io/plc/linesight_gate.st` with encoder
//! tracking, on a belt that carries one part per frame past the station's camera (a GStreamer
//! `tcpserversrc` the PLC's line sends each frame to as the part passes) and on to the diverter.
//! On the way the belt stops, speeds up by 30 %, the PLC restarts (down 1.5 s, its registers
//! cleared, its program started afresh).
//!
//! For every part the PLC logs what the diverter did; the rules the test holds it to:
//! - a part passes only with its own delivered PASS (the command's part id is the part's);
//! - every part the station judged a reject, or could not act on, is diverted;
//! - outside the restart, every delivered PASS lets its part by: the stop and the speed
//!   changes lose nothing; around the restart a delivered PASS may be lost only to the PLC's
//!   own fail-safe (its start-up hold, a command the restarted program never saw, a station
//!   not yet trusted), and every part the station could not command is recorded as failed.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use linesight::part::Disposition;
use linesight::record::{ActuationStatus, Store};
use linesight::simulate::{FRAME_SIZE, PartGenerator};
use serde_json::Value;

use crate::station_process::{StationProcess, config_file, log_tail};
use crate::{CPU_HEAVY, KillOnDrop, free_port, python, repo};

/// When the PLC restarts, for how long, in seconds after the belt started.
const RESTART_AT_S: f64 = 5.0;
const RESTART_FOR_S: f64 = 1.5;

/// The station's config for this line: the PLC at `plc`, the camera listening at `camera`,
/// encoder tracking (6,200 counts from camera to diverter: the PLC's 6,000 to its eye plus
/// the map's 200 from eye to diverter), without the built-in simulator.
fn client_station(dir: &Path, plc: SocketAddr, camera: SocketAddr) -> std::path::PathBuf {
    let shipped =
        std::fs::read_to_string(repo().join("firmware-io/register-map.toml")).expect("shipped map");
    let map = dir.join("register-map.toml");
    std::fs::write(
        &map,
        shipped.replace("tracking = \"time\"", "tracking = \"encoder\""),
    )
    .expect("map");
    let pipeline = dir.join("camera.gst");
    std::fs::write(
        &pipeline,
        format!(
            "tcpserversrc host={} port={}\n  ! rawvideoparse format=gray8 width={FRAME_SIZE} \
             height={FRAME_SIZE} framerate=0/1\n  ! videoconvert\n  ! appsink name=frames \
             sync=false\n",
            camera.ip(),
            camera.port()
        ),
    )
    .expect("pipeline");
    let shipped_map = format!(
        "register_map = \"{}/firmware-io/register-map.toml\"",
        repo().display()
    );
    let shipped_pipeline = format!(
        "pipeline = \"{}/pipelines/simulated.gst\"",
        repo().display()
    );
    let simulated = "type = \"simulated\"\n";
    let path = config_file(
        dir,
        &[
            (
                "travel_ms = 1200",
                "travel_ms = 620\ntracking = \"encoder\"\ntravel_counts = 6200",
            ),
            ("verdict_margin_ms = 300", "verdict_margin_ms = 150"),
            // 350 counts at nominal speed, near the far end of the PLC's 450-count window: the
            // most room for the link's and the PLC's own latency (a Python PLC on a busy
            // machine takes tens of ms); faster, the station's last check holds each command
            // until its part is inside the window.
            ("actuation_lead_ms = 20", "actuation_lead_ms = 35"),
            (simulated, &format!("type = \"tcp\"\naddress = \"{plc}\"\n")),
            (
                &shipped_map,
                &format!("register_map = {:?}", map.display().to_string()),
            ),
            (
                &shipped_pipeline,
                &format!("pipeline = {:?}", pipeline.display().to_string()),
            ),
        ],
    );
    // No simulated camera: the PLC's line shows the camera its parts.
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(&path, without_simulator(&text)).expect("config");
    path
}

/// The config without `[camera.simulator]` and its sub-tables, and without the simulated
/// line's further camera (`[[views]]`), which shows the simulated parts.
fn without_simulator(text: &str) -> String {
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        let header = line.trim_start();
        if header.starts_with('[') {
            skipping = header.starts_with("[camera.simulator")
                || header.starts_with("[[camera.simulator")
                || header.starts_with("[[views]]")
                || header.starts_with("[views.");
        }
        if !skipping {
            kept.push(line);
        }
    }
    kept.join("\n")
}

/// `count` synthetic parts as raw GRAY8 frames, `part-0000.raw` on, in `dir`.
fn write_frames(dir: &Path, count: usize) {
    std::fs::create_dir_all(dir).expect("frames dir");
    let mut parts = PartGenerator::new(17, FRAME_SIZE, FRAME_SIZE, 0.3);
    for index in 0..count {
        let part = parts.next_part();
        std::fs::write(dir.join(format!("part-{index:04}.raw")), &part.image.pixels)
            .expect("frame");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymodbus_plc_gets_every_verdict_by_encoder_across_a_belt_stop_a_speed_change_and_its_own_restart()
 {
    let _cpu = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let parts = 90;
    write_frames(&dir.path().join("frames"), parts);
    let plc_address = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let camera = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = client_station(dir.path(), plc_address, camera);
    let data = dir.path().join("data");

    // The PLC first: the station checks the link as it starts.
    let log = dir.path().join("plc.jsonl");
    // Parts 700 counts apart: the PLC's window is 450, so a command that landed late by more
    // than a quarter pitch would be the next part's.
    let events =
        format!("stop@1.5:1.0,speed@3.0:1.3,restart@{RESTART_AT_S}:{RESTART_FOR_S},speed@8.5:0.8");
    let mut plc = KillOnDrop(
        Command::new(python())
            .arg(repo().join("tests/interop/client_mode_plc.py"))
            .args(["--listen", &plc_address.to_string()])
            .args(["--camera", &camera.to_string()])
            .arg("--frames")
            .arg(dir.path().join("frames"))
            .args(["--camera-to-eye-counts", "6000", "--pitch-counts", "700"])
            .args(["--events", &events])
            .arg("--log")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log.with_extension("stderr"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("start the pymodbus PLC"),
    );
    let listening = crate::poll_within(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(plc_address).await.is_ok()
    })
    .await;
    assert!(listening, "the PLC serves Modbus");
    let mut station = StationProcess::start(&config, &data).await;
    let evidence = |station: &StationProcess| {
        format!(
            "PLC:\n{}\nstation:\n{}",
            std::fs::read_to_string(log.with_extension("stderr")).unwrap_or_default(),
            log_tail(&station.log, 40)
        )
    };
    // The PLC ends its belt after the last part, closes the camera (the station drains and
    // stops by itself) and exits once the station has written its stopped state.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = plc.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the PLC's run did not end within 180 s\n{}",
            evidence(&station)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        status.success(),
        "the PLC failed: {status}\n{}",
        evidence(&station)
    );
    let text = std::fs::read_to_string(&log).expect("PLC log");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    let (summary, logged): (Vec<Value>, Vec<Value>) = lines
        .into_iter()
        .partition(|line| line.get("summary").is_some());
    let summary = &summary.first().expect("a summary")["summary"];
    assert_eq!(
        logged.len(),
        parts,
        "every part reached the diverter: {summary}"
    );
    assert_eq!(summary["restarts"], 1, "{summary}");

    // The station stopped by itself at the camera's end of stream; its records are all there.
    let stopped = crate::poll_within(Duration::from_secs(30), || {
        let exited = station.exited().is_some();
        async move { exited }
    })
    .await;
    assert!(
        stopped,
        "the station stops when its camera's stream ends\n{}",
        evidence(&station)
    );
    let station_log = std::fs::read_to_string(&station.log).unwrap_or_default();
    assert!(
        station_log.contains("cannot read the encoder"),
        "the station saw the PLC go\n{}",
        evidence(&station)
    );
    let store = Store::open(&data, "sim-1").expect("the station's records");
    let mut records = store.inspection_records(None, 1000).expect("records");
    records.sort_by_key(|r| r.part_id);
    assert_eq!(
        records.len(),
        parts,
        "one record a part\n{}",
        evidence(&station)
    );

    let restart = (RESTART_AT_S * 1000.0) as u64;
    // The PLC is back after RESTART_FOR_S; the station's links reconnect and beat within a
    // couple of seconds more.
    let recovered = ((RESTART_AT_S + RESTART_FOR_S) * 1000.0) as u64 + 2500;
    let (mut passed, mut lost_to_restart) = (0, 0);
    for (part, record) in logged.iter().zip(&records) {
        let diverted = part["diverted"].as_bool().expect("diverted");
        let at_ms = part["at_ms"].as_u64().expect("at_ms");
        let decision = &part["decision"];
        let delivered_pass = record.disposition == Disposition::Pass
            && record.actuation == ActuationStatus::NotRequired;
        if let Some(id) = decision["part_id"].as_u64() {
            assert_eq!(id, record.part_id, "its own command: {part} / {record:?}");
        }
        if !diverted {
            passed += 1;
            assert!(
                delivered_pass,
                "a part passes only with a delivered PASS: {part} / {record:?}"
            );
            assert_eq!(decision["reason"], "pass", "{part}");
            continue;
        }
        if !delivered_pass {
            continue;
        }
        // A delivered PASS, yet diverted: only the restart may cost that, and only through
        // the PLC's own fail-safe.
        let during_restart = (restart..recovered).contains(&at_ms);
        let fail_safe = part["hold"] == true
            || decision.is_null()
            || matches!(
                decision["reason"].as_str(),
                Some("no_command" | "watchdog_expired" | "station_stopped")
            );
        assert!(
            during_restart && fail_safe,
            "a delivered PASS diverted outside the PLC restart: {part} / {record:?}\n{summary}"
        );
        lost_to_restart += 1;
    }
    // Commands the station could not deliver, or parts whose place it lost, are recorded as
    // failed, and only around the restart.
    for (part, record) in logged.iter().zip(&records) {
        if record.actuation == ActuationStatus::Failed {
            let at_ms = part["at_ms"].as_u64().expect("at_ms");
            assert!(
                (restart..recovered).contains(&at_ms),
                "a failed actuation outside the restart: {record:?} / {part}"
            );
            assert!(record.actuation_error.is_some(), "{record:?}");
            assert!(
                record.disposition != Disposition::Pass || record.rejected_by_policy,
                "a PASS that could not be delivered is reported as rejected by policy: {record:?}"
            );
        }
    }
    let failed = records
        .iter()
        .filter(|r| r.actuation == ActuationStatus::Failed)
        .count();
    println!(
        "client mode by encoder: {passed} of {parts} parts passed, {lost_to_restart} delivered \
         PASSes lost to the PLC restart, {failed} actuations failed; the PLC: {summary}"
    );
    assert!(
        (30..parts - 5).contains(&passed),
        "both verdicts occur and most good parts pass: {passed} of {parts} passed, {lost_to_restart} lost to the restart\n{summary}"
    );
    drop(station);
}
