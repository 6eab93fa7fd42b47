//! Actions on alarms against peers we did not write: webhooks delivered to Python's
//! http.server, and the halt-line coil on a pymodbus PLC, across station restarts.
//!
//! These need the venv `make test` installs (`scripts/setup.sh`); without it each test fails
//! with a message saying what to install, never passes silently.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linesight::actuate::{GateLink, RegisterMap};
use linesight::analyse::actions::webhook::Outbox;
use linesight::analyse::actions::{
    ActionsDb, AlertEvent, HALT_LINE_ALARM, Webhook, WebhookContext, WebhookSection, run_halt_line,
    run_webhooks,
};
use linesight::analyse::alarms::{AlarmDefinition, AlarmManager, DiscreteOn, builtin_definitions};
use linesight::config::StationConfig;
use linesight::metrics::Metrics;
use linesight::part::{Disposition, Verdict};
use linesight::record::{
    ActuationStatus, AlarmSeverity, InspectionRecord, RecordBody, RecordKind, Store,
};
use linesight::serve::{Role, Tokens, router};
use linesight::simulate::SimulatedLine;
use linesight::station::{Attachments, Station, StationError};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{KillOnDrop, eventually, free_port, python, repo, station_config};

/// Starts `tests/interop/SCRIPT ARGS…` and waits until it accepts connections on `port`.
async fn start_peer(script: &str, port: u16, args: &[String]) -> KillOnDrop {
    let child = Command::new(python())
        .arg(repo().join("tests/interop").join(script))
        .arg(port.to_string())
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let guard = KillOnDrop(child);
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(&format!("{script} listening on {address}"), || async {
        tokio::net::TcpStream::connect(address).await.is_ok()
    })
    .await;
    guard
}

// ---- webhooks ---------------------------------------------------------------------------

fn roller() -> AlarmDefinition {
    AlarmDefinition {
        name: "roller_2_bearing".into(),
        message: "Roller 2 bearing: vibration trend consistent with failure".into(),
        priority: AlarmSeverity::High,
        source: "tag:roller_vibration".into(),
        high: None,
        low: None,
        deadband: 0.0,
        on_delay_s: 0.0,
        off_delay_s: 0.0,
        on: Some(DiscreteOn::Violation),
        max_shelve_s: 3600,
    }
}

/// What a restart reopens: the journal, the alarms, the actions database.
struct Opened {
    store: Store,
    alarms: AlarmManager,
    db: ActionsDb,
}

async fn open_station(dir: &Path) -> Opened {
    let store = Store::open(dir, "station-1").expect("store");
    let db = ActionsDb::open(dir).expect("actions db");
    // As `Station::prepare` does: the cursor before the alarms open.
    Outbox::open(&db)
        .expect("outbox")
        .start_at(store.last_seq() + 1)
        .expect("cursor");
    let alarms = AlarmManager::open(store.clone(), &[roller()])
        .await
        .expect("alarms");
    Opened { store, alarms, db }
}

fn webhook_table(name: &str, port: u16) -> WebhookSection {
    toml::from_str(&format!(
        r#"
        name = "{name}"
        url = "http://127.0.0.1:{port}/work-requests"
        min_priority = "high"
        events = ["activated", "returned"]
        headers = {{ "X-Site" = "plant-1" }}
        secret_headers = {{ Authorization = "CMMS_AUTHORIZATION" }}
        timeout_ms = 2000
        first_retry_ms = 50
        max_retry_ms = 200
        "#
    ))
    .expect("webhook table")
}

fn start_webhooks(
    opened: &Opened,
    sections: &[WebhookSection],
    metrics: &Metrics,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let webhooks = sections
        .iter()
        .map(|s| {
            Webhook::build(s, |name| {
                (name == "CMMS_AUTHORIZATION").then(|| "Bearer cmms-secret".to_owned())
            })
            .expect("webhook builds")
        })
        .collect();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_webhooks(
        WebhookContext {
            db: opened.db.clone(),
            store: opened.store.clone(),
            webhooks,
            definitions: builtin_definitions()
                .into_iter()
                .chain([roller()])
                .collect(),
            equipment_id: "acme/plant-1/assembly/line-1/station-1".into(),
            metrics: metrics.clone(),
        },
        stop.clone(),
    ));
    (stop, task)
}

/// The requests the receiver logged, in order.
fn received(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("receiver log line is JSON"))
        .collect()
}

fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("valid time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_retried_after_503s_and_refusals_are_recorded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("received.jsonl");
    let refusing_log = dir.path().join("refused.jsonl");
    let (port, refusing_port) = (free_port(), free_port());
    let _receiver = start_peer(
        "webhook_receiver.py",
        port,
        &[log.display().to_string(), "503".into(), "503".into()],
    )
    .await;
    let _refusing = start_peer(
        "webhook_receiver.py",
        refusing_port,
        &[refusing_log.display().to_string(), "400".into()],
    )
    .await;
    let opened = open_station(dir.path()).await;
    let metrics = Metrics::new();
    let (stop, task) = start_webhooks(
        &opened,
        &[
            webhook_table("cmms", port),
            webhook_table("strict", refusing_port),
        ],
        &metrics,
    );

    opened
        .alarms
        .set_condition(
            "roller_2_bearing",
            true,
            at(0),
            "vibration slope 0.12 mm/s per h",
        )
        .await
        .expect("raise");
    eventually("the alert accepted after two 503s", || async {
        received(&log).iter().any(|r| r["status"] == 200)
    })
    .await;
    eventually("the refusal recorded", || async {
        metrics.webhook_failed.get() == 1
    })
    .await;
    // The receiver logs its 200 before the station has read it: wait for the station too
    // (on a loaded machine the count lagged the log).
    eventually("the delivery recorded", || async {
        metrics.webhook_delivered.get() == 1
    })
    .await;

    let requests = received(&log);
    let statuses: Vec<&Value> = requests.iter().map(|r| &r["status"]).collect();
    assert_eq!(statuses, [503, 503, 200], "{requests:#?}");
    // Every attempt is the same delivery: same key, same body.
    let key = &requests[0]["headers"]["idempotency-key"];
    assert!(key.is_string(), "{:?}", requests[0]["headers"]);
    assert!(
        requests
            .iter()
            .all(|r| &r["headers"]["idempotency-key"] == key)
    );
    assert!(requests.iter().all(|r| r["body"] == requests[0]["body"]));
    let request = &requests[2];
    assert_eq!(request["path"], "/work-requests");
    assert_eq!(request["headers"]["authorization"], "Bearer cmms-secret");
    assert_eq!(request["headers"]["x-site"], "plant-1");
    assert_eq!(request["headers"]["content-type"], "application/json");
    let body = &request["body"];
    assert_eq!(body["event"], "activated");
    assert_eq!(body["alarm"], "roller_2_bearing");
    assert_eq!(body["priority"], "high");
    assert_eq!(body["category"], "process");
    assert_eq!(body["state"], "active_unacknowledged");
    assert_eq!(
        body["message_text"],
        "Roller 2 bearing: vibration trend consistent with failure"
    );
    assert_eq!(body["condition"], "vibration slope 0.12 mm/s per h");
    assert_eq!(
        body["equipment_id"],
        "acme/plant-1/assembly/line-1/station-1"
    );
    assert_eq!(body["created_at"], "2027-01-15T08:00:00Z");
    assert_eq!(body["idempotency_key"], *key);
    let seq = body["seq"].as_u64().expect("seq");
    assert_eq!(
        body["alert_id"],
        format!("station-1/roller_2_bearing/{seq}")
    );
    assert_eq!(metrics.webhook_delivered.get(), 1);
    assert_eq!(metrics.webhook_retries.get(), 2);

    // The refusing receiver saw it once and it was not retried.
    assert_eq!(received(&refusing_log).len(), 1);
    let outbox = Outbox::open(&opened.db).expect("outbox");
    let failed = outbox.failed().expect("failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].webhook, "strict");
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("400")),
        "{failed:?}"
    );

    // The return of the same alarm is the same alert.
    opened
        .alarms
        .set_condition("roller_2_bearing", false, at(60), "bearing replaced")
        .await
        .expect("return");
    eventually("the return delivered", || async {
        received(&log)
            .iter()
            .any(|r| r["body"]["event"] == "returned")
    })
    .await;
    let returned = received(&log)
        .into_iter()
        .find(|r| r["body"]["event"] == "returned")
        .expect("returned");
    assert_eq!(returned["body"]["alert_id"], body["alert_id"]);
    assert_eq!(returned["body"]["created_at"], body["created_at"]);
    eventually("the outbox drained", || async {
        outbox.pending().is_ok_and(|p| p.is_empty())
    })
    .await;
    stop.cancel();
    task.await.expect("webhook task");
    assert_eq!(metrics.webhook_pending.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_for_a_receiver_down_is_delivered_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("received.jsonl");
    let port = free_port();
    let section = webhook_table("cmms", port);

    // First run: nobody listens on the receiver's port.
    let opened = open_station(dir.path()).await;
    let metrics = Metrics::new();
    let (stop, task) = start_webhooks(&opened, std::slice::from_ref(&section), &metrics);
    opened
        .alarms
        .set_condition("roller_2_bearing", true, at(0), "vibration trend")
        .await
        .expect("raise");
    eventually("a failed attempt", || async {
        metrics.webhook_retries.get() >= 1
    })
    .await;
    stop.cancel();
    task.await.expect("webhook task");
    let pending = Outbox::open(&opened.db)
        .expect("outbox")
        .pending()
        .expect("pending");
    assert_eq!(pending.len(), 1, "the alert waits in the outbox");
    assert!(pending[0].attempts >= 1);
    drop(opened);

    // The receiver comes up while the station is down; the station starts again.
    let _receiver = start_peer("webhook_receiver.py", port, &[log.display().to_string()]).await;
    let opened = open_station(dir.path()).await;
    let metrics = Metrics::new();
    let (stop, task) = start_webhooks(&opened, &[section], &metrics);
    eventually("the alert delivered after the restart", || async {
        metrics.webhook_delivered.get() == 1
    })
    .await;
    let requests = received(&log);
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0]["status"], 200);
    assert_eq!(requests[0]["body"]["event"], "activated");
    assert_eq!(
        requests[0]["headers"]["idempotency-key"],
        pending[0].alert.idempotency_key.as_str()
    );
    assert_eq!(pending[0].alert.event, AlertEvent::Activated);
    // Nothing is queued twice by the restarted follower.
    assert!(
        Outbox::open(&opened.db)
            .expect("outbox")
            .pending()
            .expect("pending")
            .is_empty()
    );
    stop.cancel();
    task.await.expect("webhook task");
}

// ---- halt line ----------------------------------------------------------------------------

/// A part decided now, passed or failed, without an image.
pub(crate) fn inspection(part_id: u64, failed: bool) -> RecordBody {
    let now = Utc::now();
    RecordBody::Inspection(InspectionRecord {
        part_id,
        work_order: None,
        product: None,
        captured_at: now,
        inspected_at: Some(now),
        decided_at: now,
        gate_at: now,
        actuated_at: None,
        verdict: Some(if failed { Verdict::Fail } else { Verdict::Pass }),
        score: None,
        threshold: None,
        disposition: if failed {
            Disposition::RejectFailed
        } else {
            Disposition::Pass
        },
        rejected_by_policy: false,
        inspection_late: false,
        actuation: ActuationStatus::NotRequired,
        actuation_error: None,
        model_version: None,
        defect_class: failed.then(|| "crack".to_owned()),
        image: None,
        heat_map: None,
        defect_at: None,
        defect_size: None,
        defect_boxes: Vec::new(),
        views: Vec::new(),
        calibration: None,
        novelty: None,
        error: None,
    })
}

/// The halt line's coil on the pymodbus PLC, read (and first written, with `write`) by
/// pymodbus's own client.
fn pymodbus_coil(plc: SocketAddr, coil: u16, write: Option<bool>) -> bool {
    let mut command = Command::new(python());
    command
        .arg(repo().join("tests/interop/pymodbus_coil.py"))
        .args([plc.port().to_string(), coil.to_string()]);
    if let Some(on) = write {
        command.arg(if on { "on" } else { "off" });
    }
    let output = command.output().expect("run pymodbus client");
    assert!(
        output.status.success(),
        "pymodbus client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("true or false")
}

async fn coil_is(plc: SocketAddr, coil: u16, on: bool) -> bool {
    tokio::task::spawn_blocking(move || pymodbus_coil(plc, coil, None))
        .await
        .expect("reader")
        == on
}

/// A prepared station whose PLC is the pymodbus server, serving its API on a real port, with
/// the halt line's task running as `Station::run` starts it.
struct Running {
    _line: SimulatedLine,
    station: Station,
    base: String,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn start(data_dir: &Path, plc: SocketAddr, map: RegisterMap) -> Running {
        let plc_line = format!("type = \"tcp\"\naddress = \"{plc}\"");
        let config = station_config(
            data_dir,
            &[
                ("type = \"simulated\"", plc_line.as_str()),
                (
                    "[production]",
                    "[halt_line]\nclasses = [\"crack\"]\nburst_defects = 3\nwithin_parts = 5\nreassert_ms = 200\n\n[production]",
                ),
            ],
        );
        let (line, station) = prepare_on_simulated_line(config).await;
        let station = station.expect("station prepares against pymodbus");
        let api = station.api();
        let halt_line = api.halt_line.clone().expect("[halt_line] is configured");
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = axum::serve(listener, router(api))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            }
        });
        let link = GateLink::new(plc, 1, Duration::from_secs(1), map);
        let task = tokio::spawn(run_halt_line(halt_line, link, stop.clone()));
        Running {
            _line: line,
            station,
            base,
            stop,
            tasks: vec![server, task],
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.expect("task");
        }
        drop(self.station);
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
        // A client per call: no pooled connection outlives the server at a restart.
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "POST" => http
                .post(url)
                .header("Content-Type", "application/json")
                .body(r#"{"comment": "die inspected and replaced"}"#),
            _ => http.get(url),
        };
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_latches_the_coil_across_a_restart_until_an_operator_resets_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let map = RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("map");
    let coil = map
        .halt_line
        .expect("the shipped map has the halt-line coil")
        .coil;
    let port = free_port();
    let _pymodbus = start_peer("pymodbus_server.py", port, &[]).await;
    let plc: SocketAddr = ([127, 0, 0, 1], port).into();
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let token = |name: &str, role| tokens.create(name, role, "test").expect("token").token;
    let (operator, mes) = (
        token("op-1", Role::Operator),
        token("mes-1", Role::MesClient),
    );
    drop(tokens);

    let running = Running::start(dir.path(), plc, map).await;
    let (status, view) = running
        .call("GET", "/api/v1/halt-line", Some(&operator))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["latched"], false);
    let (status, _) = running
        .call("POST", "/api/v1/halt-line/reset", Some(&operator))
        .await;
    assert_eq!(status, 409, "nothing to reset");
    eventually("the coil written OFF at start", || {
        coil_is(plc, coil, false)
    })
    .await;

    // Three cracks within five parts.
    let store = running.station.store();
    for (part_id, failed) in [(1, true), (2, false), (3, true), (4, false), (5, true)] {
        store
            .append(inspection(part_id, failed))
            .await
            .expect("append");
    }
    eventually("the coil latched ON", || coil_is(plc, coil, true)).await;
    let (_, view) = running
        .call("GET", "/api/v1/halt-line", Some(&operator))
        .await;
    assert_eq!(view["latched"], true, "{view}");
    assert_eq!(
        view["reason"],
        "3 crack defects in the last 5 parts (parts 1–5)"
    );
    let (_, alarm) = running
        .call(
            "GET",
            &format!("/api/v1/alarms/{HALT_LINE_ALARM}"),
            Some(&operator),
        )
        .await;
    assert_eq!(alarm["active"], true, "{alarm}");
    assert_eq!(alarm["priority"], "critical");
    drop(store);
    running.stop().await;

    // Started without `[halt_line]` while latched, a station would leave the PLC's halt ON
    // with nothing to release it or show why: it refuses to start, saying what to do.
    let refused = prepare_without_halt_line(dir.path(), plc)
        .await
        .expect_err("a latched halt line cannot be dropped");
    assert!(
        refused.contains("3 crack defects") && refused.contains("the [halt_line] section back"),
        "{refused}"
    );

    // While the station is down the PLC restarts and loses the coil.
    let cleared = tokio::task::spawn_blocking(move || pymodbus_coil(plc, coil, Some(false)))
        .await
        .expect("writer");
    assert!(!cleared);

    let running = Running::start(dir.path(), plc, map).await;
    eventually("the latch re-asserted after the restart", || {
        coil_is(plc, coil, true)
    })
    .await;
    let (_, view) = running
        .call("GET", "/api/v1/halt-line", Some(&operator))
        .await;
    assert_eq!(view["latched"], true);
    assert_eq!(view["trips"], 1);
    // Good parts do not unlatch it; nor does anyone but an operator and above.
    for part_id in 6..=12 {
        store_of(&running)
            .append(inspection(part_id, false))
            .await
            .expect("append");
    }
    let (status, _) = running.call("POST", "/api/v1/halt-line/reset", None).await;
    assert_eq!(status, 401);
    let (status, body) = running
        .call("POST", "/api/v1/halt-line/reset", Some(&mes))
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        coil_is(plc, coil, true).await,
        "a refused reset leaves the coil ON"
    );

    let (status, view) = running
        .call("POST", "/api/v1/halt-line/reset", Some(&operator))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["latched"], false);
    assert_eq!(view["reset_by"], "op-1");
    eventually("the coil OFF after the reset", || coil_is(plc, coil, false)).await;
    let (_, alarm) = running
        .call(
            "GET",
            &format!("/api/v1/alarms/{HALT_LINE_ALARM}"),
            Some(&operator),
        )
        .await;
    assert_eq!(alarm["active"], false, "{alarm}");
    let audit = store_of(&running)
        .records_of_kind(RecordKind::Audit)
        .expect("audit");
    assert!(
        audit.iter().any(|r| matches!(
            &r.body,
            RecordBody::Audit(a) if a.action == "halt_line.reset" && a.actor == "op-1"
        )),
        "{audit:#?}"
    );
    running.stop().await;
    // Once reset, the section may go.
    prepare_without_halt_line(dir.path(), plc)
        .await
        .expect("a station without [halt_line] starts once the halt is reset");
}

/// Prepares a station on `data_dir` whose PLC is at `plc`, with no `[halt_line]`, and drops it;
/// the error's text if it cannot be prepared.
async fn prepare_without_halt_line(data_dir: &Path, plc: SocketAddr) -> Result<(), String> {
    let plc_line = format!("type = \"tcp\"\naddress = \"{plc}\"");
    let config = station_config(data_dir, &[("type = \"simulated\"", plc_line.as_str())]);
    let (_line, station) = prepare_on_simulated_line(config).await;
    station.map(drop).map_err(|e| format!("{e:#}"))
}

/// The simulated line's camera for `config` (kept running while the station lives), and the
/// station prepared on it against the PLC the config names.
async fn prepare_on_simulated_line(
    config: StationConfig,
) -> (SimulatedLine, Result<Station, StationError>) {
    let line = SimulatedLine::start(&config)
        .await
        .expect("the simulated camera starts");
    let attachments = Attachments {
        plc_address: None,
        ..line.attachments()
    };
    let station = Station::prepare(config, attachments).await;
    (line, station)
}

fn store_of(running: &Running) -> Store {
    running.station.store()
}
