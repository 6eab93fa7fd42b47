//! Publishing to the plant's MQTT broker (Debian's mosquitto): a subscriber receives every
//! record of a run under its ISA-95 topic, at least once, across a broker restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use linesight::metrics::Metrics;
use linesight::publish::mqtt::{MqttSettings, cursor_client, run_mqtt};
use linesight::record::{AlarmRecord, AlarmSeverity, AlarmState, RecordBody, Store};
use linesight::station::RunOptions;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{CPU_HEAVY, KillOnDrop, free_port, simulated_station, station_config};

/// Starts mosquitto with persistence in `dir` and waits until it accepts connections.
pub async fn broker(dir: &Path, port: u16) -> KillOnDrop {
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
            dir.display()
        ),
    )
    .expect("conf");
    // Debian installs the broker in /usr/sbin, which a non-login PATH may lack.
    let mosquitto = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("mosquitto");
    let child = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto runs (scripts/setup.sh installs it)");
    let up = tokio::time::timeout(Duration::from_secs(20), async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(up.is_ok(), "mosquitto did not listen on {port}");
    KillOnDrop(child)
}

/// A persistent-session subscriber printing `topic payload` lines into `out`.
///
/// Line-buffered (`stdbuf -oL`): mosquitto_sub acknowledges a message when it receives it,
/// and its output to a file is otherwise block-buffered, so a subscriber killed mid-run lost
/// the messages still in its buffer, which the broker rightly never sent again.
fn subscriber(port: u16, out: &Path, extra: &[&str]) -> std::process::Command {
    let mut command = Command::new("stdbuf");
    command
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-c",
            "-i",
            "linesight-test-sub",
        ])
        .args(["-t", "acme/#", "-v"])
        .args(extra)
        .stdout(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(out)
                .map(Stdio::from)
                .expect("output file"),
        )
        .stderr(Stdio::null());
    command
}

/// `seq → (topic, record)` of every message received so far.
fn received(out: &Path) -> BTreeMap<u64, (String, Value)> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (topic, payload) = line.split_once(' ')?;
            let record: Value = serde_json::from_str(payload).ok()?;
            Some((record["seq"].as_u64()?, (topic.to_owned(), record)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_every_record_across_a_broker_restart() {
    let _one = CPU_HEAVY.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut mosquitto = broker(dir.path(), port).await;
    let out = dir.path().join("received.txt");
    // Make the persistent session first (-E: exit once subscribed), so no message is missed.
    let made = subscriber(port, &out, &["-E"])
        .status()
        .expect("mosquitto_sub runs");
    assert!(made.success());
    let sub = KillOnDrop(subscriber(port, &out, &[]).spawn().expect("subscriber"));

    let config = station_config(
        &dir.path().join("data"),
        &[
            ("parts_per_min = 120", "parts_per_min = 300"),
            (
                "on_plc_lost = \"divert_all\"",
                &format!(
                    "on_plc_lost = \"divert_all\"\n\n[plant]\nenterprise = \"acme\"\nsite = \"basel\"\narea = \"press-shop\"\nline = \"line-2\"\n\n[mqtt]\nbroker = \"127.0.0.1:{port}\"\n"
                ),
            ),
        ],
    );
    let (_line, station) = simulated_station(config).await.expect("station starts");
    let (store, metrics) = (station.store(), station.metrics());
    let run = tokio::spawn(station.run(
        RunOptions {
            max_parts: Some(60),
        },
        CancellationToken::new(),
    ));

    // The broker goes away mid-run and comes back (SIGTERM: it saves the sessions).
    let published = tokio::time::timeout(Duration::from_secs(60), async {
        while metrics.mqtt_published.get() < 15 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(published.is_ok(), "nothing was published");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(mosquitto.0.id() as i32, libc::SIGTERM) };
    let _ = mosquitto.0.wait();
    drop(sub);
    let errors_before = metrics.mqtt_errors.get();
    tokio::time::timeout(Duration::from_secs(30), async {
        while metrics.mqtt_errors.get() == errors_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the publisher noticed the broker was gone");
    mosquitto = broker(dir.path(), port).await;
    let _sub = KillOnDrop(
        subscriber(port, &out, &[])
            .spawn()
            .expect("subscriber again"),
    );

    run.await.expect("joins").expect("line runs");
    // Every durable record reaches the subscriber: the station's cursor gets to the end, and
    // so does what the subscriber holds (repeats allowed, dropped by seq).
    let last = store.last_seq();
    let all = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let got = received(&out);
            if (1..=last).all(|seq| got.contains_key(&seq)) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let got = received(&out);
        let missing: Vec<u64> = (1..=last).filter(|s| !got.contains_key(s)).collect();
        panic!("missing sequence numbers after the run: {missing:?} of 1..={last}")
    });
    assert!(last >= 60, "60 inspections were recorded");
    for (seq, (topic, record)) in &all {
        let kind = record["kind"].as_str().expect("kind");
        assert_eq!(
            topic,
            &format!("acme/basel/press-shop/line-2/sim-1/{kind}"),
            "record {seq}"
        );
        let stored: Value =
            serde_json::from_slice(store.raw(*seq).expect("read").expect("kept").json())
                .expect("json");
        assert_eq!(record, &stored, "record {seq} differs from the store");
    }
    drop(mosquitto);
}

/// A record too large for an MQTT packet (a label's regions may make one up to 16 MiB) goes
/// out as a stub naming it, and the records after it are published as ever: the oversized
/// packet used to fail every round at the same cursor, and nothing after it went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_too_large_for_a_message_is_a_stub_and_the_rest_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _mosquitto = broker(dir.path(), port).await;
    let out = dir.path().join("received.txt");
    let made = subscriber(port, &out, &["-E"])
        .status()
        .expect("mosquitto_sub runs");
    assert!(made.success());
    let _sub = KillOnDrop(subscriber(port, &out, &[]).spawn().expect("subscriber"));

    let store = Store::open(&dir.path().join("data"), "sim-1").expect("store");
    let alarm = |message: String| {
        RecordBody::Alarm(AlarmRecord::condition(
            "big",
            AlarmState::Raised,
            AlarmSeverity::Low,
            message,
        ))
    };
    store
        .append_all(vec![
            alarm("before".into()),
            alarm("m".repeat(2 << 20)),
            alarm("after".into()),
        ])
        .await
        .expect("append");
    let metrics = Metrics::new();
    let settings = MqttSettings {
        broker: format!("127.0.0.1:{port}"),
        client_id: "linesight-test-pub".into(),
        topic_root: "acme/basel/press-shop/line-2/sim-1".into(),
    };
    let cursor = cursor_client(&settings);
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(run_mqtt(
        settings,
        store.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    // One more once the publisher runs: it follows the journal on past the stub.
    store.append(alarm("later".into())).await.expect("append");

    let got = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let got = received(&out);
            if (1..=4).all(|seq| got.contains_key(&seq)) {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        let seqs: Vec<u64> = received(&out).into_keys().collect();
        panic!(
            "received {seqs:?} of 1..=4; publishing rounds failed {} times",
            metrics.mqtt_errors.get()
        )
    });
    for seq in [1, 3, 4] {
        let stored: Value =
            serde_json::from_slice(store.raw(seq).expect("read").expect("kept").json())
                .expect("json");
        assert_eq!(got[&seq].1, stored, "record {seq} is published whole");
    }
    let (topic, stub) = &got[&2];
    assert_eq!(topic, "acme/basel/press-shop/line-2/sim-1/alarm");
    let size = store.raw(2).expect("read").expect("kept").json().len();
    assert_eq!(
        stub,
        &serde_json::json!({"seq": 2, "kind": "alarm", "too_large": true, "bytes": size})
    );
    assert!(metrics.mqtt_too_large.get() >= 1, "the stub is counted");
    // The cursor moves past it too (after the broker's acknowledgements).
    let acknowledged = tokio::time::timeout(Duration::from_secs(30), async {
        while store.acknowledged(&cursor).expect("cursor") < 4 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(acknowledged.is_ok(), "the cursor stayed before seq 4");
    stop.cancel();
    publisher.await.expect("the publisher stops");
}
