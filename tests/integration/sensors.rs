//! Line sensor data end to end: a PLC we did not write (pymodbus) polled over real Modbus TCP,
//! its outage flagged and never filled in; batches pushed over HTTP and imported with the CLI,
//! bad samples named and the rest kept.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use linesight::metrics::Metrics;
use linesight::sense::modbus::{PollTarget, run_poller};
use linesight::sense::{Flag, Sensors, SensorsSection, TagConfig};
use linesight::serve::{Role, Tokens, router};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    KillOnDrop, eventually, get_json, poll_within, python, repo, simulated_station, station_config,
};

fn start_sensor_plc(port: u16) -> KillOnDrop {
    KillOnDrop(
        Command::new(python())
            .arg(repo().join("tests/interop/pymodbus_sensor_plc.py"))
            .arg(port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .expect("start the pymodbus sensor PLC"),
    )
}

async fn listening(address: SocketAddr) {
    eventually("the pymodbus PLC to listen", || async move {
        tokio::net::TcpStream::connect(address).await.is_ok()
    })
    .await;
}

fn tags() -> Vec<TagConfig> {
    toml::from_str::<toml::Table>(
        r#"
        [[tags]]
        name = "press_temp"
        period_ms = 100
        valid_range = [0.0, 400.0]
        modbus = { register = 1000, encoding = "f32" }
        [[tags]]
        name = "encoder"
        period_ms = 100
        stuck_after = 0
        modbus = { register = 1002, encoding = "u32", word_order = "low_first" }
        [[tags]]
        name = "humidity"
        period_ms = 100
        stuck_after = 0
        modbus = { register = 2000, kind = "input", encoding = "i16", scale = 0.1 }
        [[tags]]
        name = "ambient"
        period_ms = 100
        stuck_after = 0
        modbus = { register = 2001, kind = "input", encoding = "i16", scale = 0.1 }
        "#,
    )
    .expect("TOML")
    .remove("tags")
    .expect("tags")
    .try_into()
    .expect("valid tags")
}

fn whole_day(sensors: &Sensors, tag: &str) -> linesight::sense::Series {
    let now = Utc::now();
    sensors
        .store
        .read(
            tag,
            now - chrono::Duration::days(1),
            now + chrono::Duration::hours(1),
        )
        .expect("read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pymodbus_plc_is_polled_and_its_outage_is_flagged_never_filled_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sensors = Sensors::open(dir.path(), SensorsSection::default(), tags()).expect("open");
    let port = crate::free_port();
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    let plc = start_sensor_plc(port);
    listening(address).await;
    let stop = CancellationToken::new();
    let poller = tokio::spawn(run_poller(
        sensors.clone(),
        PollTarget {
            address,
            unit: 1,
            request_timeout: Duration::from_millis(300),
        },
        Metrics::new(),
        stop.clone(),
    ));
    let good = |tag: &'static str| {
        let sensors = sensors.clone();
        move || {
            let sensors = sensors.clone();
            async move {
                whole_day(&sensors, tag)
                    .flag
                    .iter()
                    .filter(|f| f.is_good())
                    .count()
                    >= 10
            }
        }
    };
    for tag in ["press_temp", "encoder", "humidity", "ambient"] {
        eventually(&format!("good {tag} samples"), good(tag)).await;
    }
    // Every encoding decoded as the PLC wrote it.
    let press = whole_day(&sensors, "press_temp");
    assert!(
        press.v.iter().all(|v| (175.0..=185.0).contains(v)),
        "{:?}",
        &press.v[..5]
    );
    let encoder = whole_day(&sensors, "encoder");
    assert!(encoder.v.windows(2).all(|w| w[1] >= w[0]) && encoder.v[0] >= 70_000.0);
    assert!(
        whole_day(&sensors, "humidity")
            .v
            .iter()
            .all(|v| (51.9..=58.1).contains(v))
    );
    assert!(
        whole_day(&sensors, "ambient")
            .v
            .iter()
            .all(|v| (*v - -12.5).abs() < 1e-9)
    );

    // The PLC goes away: polls fail and each leaves a source_lost placeholder, no value.
    drop(plc);
    let lost = |sensors: Sensors| async move {
        whole_day(&sensors, "press_temp")
            .flag
            .iter()
            .filter(|f| **f == Flag::SourceLost)
            .count()
            >= 3
    };
    eventually("source_lost placeholders", || lost(sensors.clone())).await;
    // Back on the same port: good samples again.
    let before_return = whole_day(&sensors, "press_temp").len();
    let _plc = start_sensor_plc(port);
    listening(address).await;
    eventually("good samples after the PLC returned", || {
        let sensors = sensors.clone();
        async move {
            let series = whole_day(&sensors, "press_temp");
            series.len() > before_return + 5 && series.flag.last().is_some_and(|f| f.is_good())
        }
    })
    .await;
    stop.cancel();
    poller.await.expect("poller ends");

    let series = whole_day(&sensors, "press_temp");
    assert!(
        series.t.windows(2).all(|w| w[1] > w[0]),
        "times strictly increase"
    );
    // good…, lost…, good…: one outage, every sample in it without a value.
    let first_lost = series
        .flag
        .iter()
        .position(|f| *f == Flag::SourceLost)
        .expect("lost");
    let back = first_lost
        + series.flag[first_lost..]
            .iter()
            .position(|f| f.is_good())
            .expect("good again");
    assert!(series.flag[..first_lost].iter().all(|f| f.is_good()));
    assert!(
        series.flag[first_lost..back]
            .iter()
            .all(|f| *f == Flag::SourceLost)
    );
    assert!(series.v[first_lost..back].iter().all(|v| v.is_nan()));
    assert!(series.flag[back..].iter().all(|f| *f != Flag::SourceLost));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_and_imported_batches_keep_good_samples_and_name_bad_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The shipped tags (press_temp, humidity, …); the line is not run, so nothing polls them
    // and every sample here is pushed.
    let config = station_config(dir.path(), &[]);
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let engineer = tokens
        .create("gateway", Role::Engineer, "test")
        .expect("token")
        .token;
    let operator = tokens
        .create("op", Role::Operator, "test")
        .expect("token")
        .token;
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, router(station.api())).into_future());
    let http = reqwest::Client::new();
    let push = |body: Value, token: &str| {
        http.post(format!("{base}/api/v1/samples"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };

    let t0 = Utc::now() - chrono::Duration::hours(1);
    let ts = |s: i64| (t0 + chrono::Duration::seconds(s)).to_rfc3339();
    let response = push(
        json!({"samples": [
            {"tag": "press_temp", "timestamp": ts(0), "value": 181.0},
            {"tag": "press_temp", "timestamp": ts(1), "value": "hot"},
            {"tag": "press_temp", "timestamp": ts(2), "value": 182.0},
            {"tag": "press_temp", "timestamp": ts(1), "value": 183.0},
            {"tag": "press_temp", "timestamp": (Utc::now() + chrono::Duration::days(1)).to_rfc3339(), "value": 1.0},
            {"tag": "no_such_tag", "timestamp": ts(3), "value": 1.0},
            {"tag": "press_temp", "timestamp": ts(6), "value": 999.0},
            {"tag": "humidity", "value": 55.0},
            {"tag": "humidity", "timestamp": ts(5), "value": 55.0},
            {"tag": "humidity", "timestamp": (Utc::now() - chrono::Duration::days(400)).to_rfc3339(), "value": 1.0},
        ]}),
        &engineer,
    )
    .await
    .expect("push");
    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(outcome["accepted"], 4, "{outcome}");
    assert_eq!(outcome["flagged"]["out_of_range"], 1, "{outcome}");
    let refused: Vec<(String, String)> = outcome["refused"]
        .as_array()
        .expect("refused")
        .iter()
        .map(|r| {
            (
                r["at"].as_str().unwrap_or("").into(),
                r["field"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let refused: Vec<(&str, &str)> = refused
        .iter()
        .map(|(a, f)| (a.as_str(), f.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("samples[1]", "value"),
            ("samples[7]", "(sample)"),
            ("samples[9]", "timestamp"),
            ("samples[3]", "timestamp"),
            ("samples[4]", "timestamp"),
            ("samples[5]", "tag"),
        ],
        "{outcome}"
    );
    assert!(
        outcome["refused"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("hot"),
        "{outcome}"
    );

    // CSV: a broken line and a NaN among good lines.
    let csv = format!(
        "timestamp,tag,value\n{},humidity,56\n{},humidity\n{},humidity,NaN\n{},humidity,57.5\n",
        ts(6),
        ts(7),
        ts(8),
        ts(9)
    );
    let response = http
        .post(format!("{base}/api/v1/samples"))
        .bearer_auth(&engineer)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("push CSV");
    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().await.expect("JSON");
    assert_eq!(outcome["accepted"], 3, "{outcome}");
    assert_eq!(outcome["flagged"]["not_a_number"], 1, "{outcome}");
    assert_eq!(outcome["refused"][0]["at"], "line 3", "{outcome}");

    // Read back: raw samples with flags and the gap, minute aggregates of good samples.
    // `Z`, not `+00:00`: the times go into query strings unescaped.
    let zulu = |at: DateTime<Utc>| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let from = zulu(t0 - chrono::Duration::seconds(1));
    let to = zulu(t0 + chrono::Duration::seconds(60));
    let page = get_json(
        &http,
        &format!("{base}/api/v1/tags/press_temp/samples?from={from}&to={to}"),
        &operator,
    )
    .await;
    let flags: Vec<&str> = page["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .map(|s| s["flag"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(flags, ["good", "good", "out_of_range"], "{page}");
    assert_eq!(
        page["gaps"].as_array().map(Vec::len),
        Some(1),
        "4 s silence at a 1 s period: {page}"
    );
    let humidity = get_json(
        &http,
        &format!("{base}/api/v1/tags/humidity/samples?from={from}&to={to}&resolution=minute"),
        &operator,
    )
    .await;
    let minutes = humidity["minutes"].as_array().expect("minutes");
    let (count, bad): (u64, u64) = minutes.iter().fold((0, 0), |(c, b), m| {
        (
            c + m["count"].as_u64().unwrap_or(0),
            b + m["bad"].as_u64().unwrap_or(0),
        )
    });
    assert_eq!((count, bad), (3, 1), "{humidity}");
    let tag = get_json(&http, &format!("{base}/api/v1/tags/press_temp"), &operator).await;
    assert_eq!(tag["transport_delay_ms"], 20000, "{tag}");
    assert_eq!(tag["latest"]["flag"], "out_of_range", "{tag}");

    // Roles and media types.
    let status = push(json!({"samples": []}), &operator)
        .await
        .expect("push")
        .status();
    assert_eq!(status, 403);
    let status = http
        .post(format!("{base}/api/v1/samples"))
        .json(&json!({"samples": []}))
        .send()
        .await
        .expect("push")
        .status();
    assert_eq!(status, 401);
    let status = http
        .post(format!("{base}/api/v1/samples"))
        .bearer_auth(&engineer)
        .header("content-type", "text/plain")
        .body("1")
        .send()
        .await
        .expect("push")
        .status();
    assert_eq!(status, 415);

    // The CLI imports a file into the running station, numbering problems by file line.
    let file = dir.path().join("history.csv");
    let mut csv = String::from("timestamp,press_temp,humidity\n");
    for s in 20..2020 {
        csv.push_str(&format!(
            "{},{},{}\n",
            ts(s),
            180.0 + (s % 7) as f64,
            50 + s % 5
        ));
    }
    csv.push_str("not a time,1,2\n");
    std::fs::write(&file, csv).expect("write CSV");
    let output = Command::new(env!("CARGO_BIN_EXE_linesight"))
        .args(["sensors", "import", "--push", "--station", &base])
        .arg(&file)
        .env("LINESIGHT_TOKEN", &engineer)
        .output()
        .expect("run the CLI");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "a refused line fails the import: {stdout}"
    );
    assert!(stdout.contains("4000 samples stored"), "{stdout}");
    assert!(stdout.contains("refused line 2002 (timestamp)"), "{stdout}");
    let last: DateTime<Utc> = (t0 + chrono::Duration::seconds(2019)).trunc_subsecs_ms();
    let latest = station
        .api()
        .sensors
        .as_ref()
        .and_then(|s| s.store.latest("humidity"))
        .expect("latest");
    assert_eq!(latest.0, last.timestamp_millis());
}

trait TruncMs {
    fn trunc_subsecs_ms(self) -> Self;
}

impl TruncMs for DateTime<Utc> {
    fn trunc_subsecs_ms(self) -> Self {
        DateTime::from_timestamp_millis(self.timestamp_millis()).unwrap_or(self)
    }
}

/// The MES view on the running simulated line: its sensors travel over Modbus into the store,
/// a tag limit raises an ISA-18.2 alarm an operator acknowledges and shelves (each transition a
/// journal record with who), the alarm stream shows it, and KPIs and a tag's control chart
/// answer from what the line made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_line_feeds_sensors_alarms_kpis_and_charts() {
    let _one = crate::CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The press alarm's limit below the press's range: it goes active at once.
    let config = station_config(
        dir.path(),
        &[
            (
                "high = 185.0\ndeadband = 1.0\non_delay_s = 5",
                "high = 100.0\ndeadband = 1.0\non_delay_s = 1",
            ),
            ("parts_per_min = 120", "parts_per_min = 240"),
        ],
    );
    let tokens = Tokens::open(dir.path(), None).expect("tokens");
    let operator = tokens
        .create("op-1", Role::Operator, "test")
        .expect("token")
        .token;
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(axum::serve(listener, router(station.api())).into_future());
    let stop = CancellationToken::new();
    let line = tokio::spawn(station.run(
        linesight::station::RunOptions { max_parts: None },
        stop.clone(),
    ));
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, operator) = (http.clone(), operator.clone());
        async move { get_json(&http, &path, &operator).await }
    };

    // Every shipped tag arrives over Modbus, good.
    eventually("good samples of every tag", || {
        let get = &get;
        let base = base.clone();
        async move {
            let tags = get(format!("{base}/api/v1/tags")).await;
            tags.as_array().is_some_and(|tags| {
                tags.len() == 6 && tags.iter().all(|t| t["latest"]["quality"] == "good")
            })
        }
    })
    .await;
    // The alarm stream, opened before the operator acts.
    let mut stream = http
        .get(format!("{base}/api/v1/alarms/events"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("alarm stream");
    eventually("the press alarm to go active", || {
        let get = &get;
        let base = base.clone();
        async move {
            get(format!("{base}/api/v1/alarms/press_hot")).await["state"] == "active_unacknowledged"
        }
    })
    .await;
    let act = |action: &'static str, body: Value| {
        let (http, operator, base) = (http.clone(), operator.clone(), base.clone());
        async move {
            http.post(format!("{base}/api/v1/alarms/press_hot/{action}"))
                .bearer_auth(&operator)
                .json(&body)
                .send()
                .await
                .expect("POST")
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        act("acknowledge", json!({"comment": "checking the heater"})).await,
        200
    );
    assert_eq!(
        get(format!("{base}/api/v1/alarms/press_hot")).await["state"],
        "active_acknowledged"
    );
    // Acknowledging twice is a conflict, not a silent success.
    assert_eq!(act("acknowledge", json!({})).await, 409);
    assert_eq!(act("shelve", json!({"duration_s": 600})).await, 200);
    assert_eq!(
        get(format!("{base}/api/v1/alarms/press_hot")).await["state"],
        "shelved"
    );
    let history = get(format!("{base}/api/v1/alarms/press_hot/history")).await;
    let events: Vec<(String, String)> = history["transitions"]
        .as_array()
        .expect("history")
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap_or("").to_owned(),
                r["by"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert!(
        events.contains(&("acknowledged".into(), "op-1".into())),
        "{history}"
    );
    assert!(
        events.contains(&("shelved".into(), "op-1".into())),
        "{history}"
    );
    assert!(
        events.contains(&("activated".into(), "station".into())),
        "{history}"
    );
    // The stream carried the operator's acknowledgement.
    let mut seen = String::new();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(chunk)) = stream.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("\"acknowledged\"") && seen.contains("op-1") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(found, Ok(true)), "alarm stream: {seen}");

    // KPIs and a tag's chart from what the line made.
    eventually("KPIs with parts", || {
        let get = &get;
        let base = base.clone();
        async move {
            let kpis = get(format!("{base}/api/v1/kpis?period=hour")).await;
            kpis["total"]["produced_quantity"].as_u64().unwrap_or(0) > 0
                && kpis["total"]["quality_ratio"].is_number()
        }
    })
    .await;
    eventually("a control chart of the press", || {
        let get = &get;
        let base = base.clone();
        async move {
            let chart = get(format!(
                "{base}/api/v1/tags/press_temp/chart?kind=xbar_r&subgroup_size=5"
            ))
            .await;
            chart["points"].as_array().is_some_and(|p| p.len() >= 5)
                && chart["capability"]["cpk"].is_number()
        }
    })
    .await;
    // The guide roller wears towards failure: its maintenance watch forecasts when, and its
    // alarm goes active with the forecast in words. The trend firms up as the wear grows (the
    // watch looks every 15 s), so on a busy machine this may take longer than a minute. Near
    // the limit one look can still find no trend while the alarm it raised stays active
    // (unacknowledged), so the forecast read is one whose watch is active.
    let maintenance = std::sync::Mutex::new(serde_json::Value::Null);
    let forecast = poll_within(Duration::from_secs(240), || {
        let get = &get;
        let base = base.clone();
        let maintenance = &maintenance;
        async move {
            let alarm = get(format!("{base}/api/v1/alarms/roller_bearing")).await;
            if alarm["state"] != "active_unacknowledged" {
                return false;
            }
            let now = get(format!("{base}/api/v1/maintenance")).await;
            let active = now["watches"][0]["active"] == true;
            *maintenance.lock().expect("maintenance") = now;
            active
        }
    })
    .await;
    let maintenance = maintenance.into_inner().expect("maintenance");
    assert!(
        forecast,
        "timed out waiting for the roller bearing's failure forecast: {maintenance}"
    );
    let watch = &maintenance["watches"][0];
    assert_eq!(watch["name"], "roller_bearing", "{maintenance}");
    assert!(watch["active"] == true, "{maintenance}");
    let message = watch["message"].as_str().unwrap_or_default();
    // The README quotes one of these.
    eprintln!("maintenance alarm: {message}");
    assert!(
        message.starts_with("Guide roller bearing: roller_vibration trend consistent with failure (above 8.5 mm/s) in "),
        "{message}"
    );
    let forecast = &watch["forecast"];
    let (low, central) = (
        forecast["low"].as_f64().expect("low"),
        forecast["time_to_limit"].as_f64().expect("central"),
    );
    // The simulated roller fails about 9 minutes after the line starts (its wear is half-way
    // at the start, and grows with the square of time over 20 min).
    assert!(low <= central && central < 1.0, "{forecast}");
    // Root cause of the parts so far, on demand.
    let hour_ago = (chrono::Utc::now() - chrono::TimeDelta::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let analysis = get(format!("{base}/api/v1/rootcause?from={hour_ago}")).await;
    assert!(analysis["parts"].as_u64().unwrap_or(0) > 0, "{analysis}");
    assert_eq!(analysis["targets"][0]["target"], "rejects", "{analysis}");
    assert_eq!(
        analysis["tags"].as_array().map(Vec::len),
        Some(6),
        "{analysis}"
    );
    stop.cancel();
    line.await.expect("joins").expect("station stops cleanly");
}

fn publish(port: u16, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub runs (scripts/setup.sh installs mosquitto-clients)");
    assert!(status.success(), "mosquitto_pub {topic} {payload}");
}

/// Tags subscribed from mosquitto: numbers and stamped objects are stored, malformed payloads
/// are refused and counted, and what is published while the station is away arrives when it
/// is back (persistent session, QoS 1, acknowledged after the write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_tags_arrive_from_mosquitto_and_nothing_published_while_away_is_lost() {
    use linesight::sense::mqtt::{SubscribeSettings, run_subscriber};
    let dir = tempfile::tempdir().expect("tempdir");
    let port = crate::free_port();
    let _broker = crate::mqtt::broker(dir.path(), port).await;
    let tags: Vec<TagConfig> = toml::from_str::<toml::Table>(
        r#"
        [[tags]]
        name = "press"
        period_ms = 1000
        stuck_after = 0
        mqtt = { topic = "plant/line-1/press/temp" }
        "#,
    )
    .expect("TOML")
    .remove("tags")
    .expect("tags")
    .try_into()
    .expect("valid tags");
    let sensors =
        Sensors::open(&dir.path().join("station"), SensorsSection::default(), tags).expect("open");
    let metrics = Metrics::new();
    let settings = SubscribeSettings {
        broker: format!("127.0.0.1:{port}"),
        client_id: "linesight-test-sensors".into(),
    };
    let topic = "plant/line-1/press/temp";
    let t0 = Utc::now() - chrono::Duration::minutes(30);
    let stamped = |s: i64, v: f64| {
        format!(
            r#"{{"value": {v}, "timestamp": "{}"}}"#,
            (t0 + chrono::Duration::seconds(s)).to_rfc3339()
        )
    };
    let stored = |sensors: &Sensors| {
        sensors
            .store
            .read(
                "press",
                t0 - chrono::Duration::hours(1),
                Utc::now() + chrono::Duration::hours(1),
            )
            .expect("read")
    };

    let stop = CancellationToken::new();
    let subscriber = tokio::spawn(run_subscriber(
        sensors.clone(),
        settings.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    // Until the subscription exists, published messages have nobody to go to: probe with
    // stamped samples until one is stored.
    let mut probe = 0;
    eventually("the subscription to take a sample", || {
        probe += 1;
        publish(port, topic, &stamped(probe, 100.0 + probe as f64));
        let sensors = sensors.clone();
        async move { !stored(&sensors).is_empty() }
    })
    .await;
    let base = probe + 10;
    publish(port, topic, "hot");
    publish(port, topic, r#"{"value": "hot"}"#);
    publish(port, topic, &stamped(base, 181.5));
    eventually("the stamped sample", || {
        let sensors = sensors.clone();
        async move { stored(&sensors).v.last() == Some(&181.5) }
    })
    .await;
    assert_eq!(
        metrics.sensor_samples_refused.get(),
        2,
        "two malformed payloads"
    );

    // Away: the broker keeps what comes meanwhile.
    stop.cancel();
    subscriber.await.expect("subscriber ends");
    for (i, v) in [(1, 182.0), (2, 183.0), (3, 184.0)] {
        publish(port, topic, &stamped(base + i, v));
    }
    let stop = CancellationToken::new();
    let subscriber = tokio::spawn(run_subscriber(
        sensors.clone(),
        settings,
        metrics,
        stop.clone(),
    ));
    eventually("the samples published while away", || {
        let sensors = sensors.clone();
        async move { stored(&sensors).v.ends_with(&[181.5, 182.0, 183.0, 184.0]) }
    })
    .await;
    stop.cancel();
    subscriber.await.expect("subscriber ends");
    let series = stored(&sensors);
    assert!(series.t.windows(2).all(|w| w[1] > w[0]));
    assert!(series.flag.iter().all(|f| f.is_good()));
}
