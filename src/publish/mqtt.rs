//! MQTT: every record to the plant's broker under an ISA-95 topic path,
//! `enterprise/site/area/line/station/<kind>`, QoS 1, the record's JSON as stored.
//!
//! [`run_mqtt`] reads the journal page by page from its cursor (kept in the store as the
//! acknowledgement of client `mqtt:<client id>`, so it survives restarts), publishes a page,
//! waits for the broker's PUBACK of every message in it, then moves the cursor. A lost
//! connection republishes the page from the cursor: records may repeat, none is skipped.
//!
//! A record whose JSON would not fit an MQTT packet ([`MAX_PACKET`]; a label's regions may
//! make it up to 16 MiB) goes out as a stub instead (see [`payload`]): its `seq` and `kind`,
//! `"too_large": true` and its size, for the subscriber to fetch it over the HTTP API.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::record::{Filter, RecordKind, Store};

/// Messages published before waiting for their acknowledgements.
const PAGE: usize = 100;

/// The largest MQTT packet this publisher sends (and takes). rumqttc checks an outgoing packet
/// against it only when the event loop writes it (`OutgoingPacketTooLarge`), which fails the
/// whole round; the next round would start from the same cursor and fail on the same record
/// for ever, so a record is checked against it before it is handed to the client.
pub const MAX_PACKET: usize = 1 << 20;

/// What a QoS 1 PUBLISH adds to its topic and payload: the fixed header's first byte, up to
/// four bytes of remaining length, the topic's two-byte length and the two-byte packet id.
const PUBLISH_OVERHEAD: usize = 1 + 4 + 2 + 2;

/// What is published for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// The record's JSON as stored.
    Record(Vec<u8>),
    /// A stub standing in for a record whose JSON (`bytes` long) would not fit a packet.
    TooLarge { stub: Vec<u8>, bytes: usize },
}

/// The payload of record `seq` of `kind`, whose stored JSON is `json`, under `topic`: the
/// JSON itself when the packet stays within [`MAX_PACKET`], else a stub of the same `seq` and
/// `kind` fields, `{"seq":…,"kind":"…","too_large":true,"bytes":…}`, so that subscribers
/// learn the record exists (and fetch it over the HTTP API) and the cursor moves past it.
pub fn payload(topic: &str, seq: u64, kind: RecordKind, json: &[u8]) -> Payload {
    let room = MAX_PACKET.saturating_sub(PUBLISH_OVERHEAD + topic.len());
    if json.len() <= room {
        return Payload::Record(json.to_vec());
    }
    // Written by hand: every value is a number or a fixed snake_case name, nothing to escape,
    // and nothing here can fail. A topic is at most 64 KiB, so the stub always fits.
    let stub = format!(
        r#"{{"seq":{seq},"kind":"{}","too_large":true,"bytes":{}}}"#,
        kind.as_str(),
        json.len()
    );
    Payload::TooLarge {
        stub: stub.into_bytes(),
        bytes: json.len(),
    }
}

/// Where and as whom to publish.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// `host:port`.
    pub broker: String,
    pub client_id: String,
    /// `enterprise/site/area/line/station`.
    pub topic_root: String,
}

/// Why a publishing round stopped; the task reconnects and goes on.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("MQTT broker {broker}: {message}")]
    Broker { broker: String, message: String },
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error("the broker address {0:?} is not host:port")]
    Address(String),
}

/// The topic of a record of `kind`.
pub fn topic(root: &str, kind: RecordKind) -> String {
    format!("{root}/{}", kind.as_str())
}

/// The store client name that holds this publisher's cursor.
pub fn cursor_client(settings: &MqttSettings) -> String {
    format!("mqtt:{}", settings.client_id)
}

/// Publishes the journal until `stop`, reconnecting after every failure (backing off up to
/// 10 s). Records already durable when the broker was away go out when it is back.
pub async fn run_mqtt(
    settings: MqttSettings,
    store: Store,
    metrics: Metrics,
    stop: CancellationToken,
) {
    const FIRST_BACKOFF: Duration = Duration::from_millis(200);
    let mut backoff = FIRST_BACKOFF;
    loop {
        let mut connected = false;
        let round = tokio::select! {
            _ = stop.cancelled() => return,
            round = publish_until_error(&settings, &store, &metrics, &mut connected) => round,
        };
        if connected {
            // The broker was there: a later blip starts the back-off afresh.
            backoff = FIRST_BACKOFF;
        }
        if let Err(error) = round {
            metrics.mqtt_errors.inc();
            tracing::warn!(%error, retry_in = ?backoff, "MQTT publishing interrupted");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection: publishes from the cursor until an error.
async fn publish_until_error(
    settings: &MqttSettings,
    store: &Store,
    metrics: &Metrics,
    connected: &mut bool,
) -> Result<(), PublishError> {
    let (host, port) = settings
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        .ok_or_else(|| PublishError::Address(settings.broker.clone()))?;
    let mut options = MqttOptions::new(&settings.client_id, host, port);
    options.set_keep_alive(Duration::from_secs(15));
    options.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut events) = AsyncClient::new(options, PAGE * 2);
    let broker_error = |message: String| PublishError::Broker {
        broker: settings.broker.clone(),
        message,
    };
    wait_for(&mut events, &broker_error, |packet| {
        matches!(packet, Packet::ConnAck(_))
    })
    .await?;
    tracing::info!(broker = %settings.broker, "MQTT connected");
    *connected = true;
    let cursor_name = cursor_client(settings);
    let mut durable = store.subscribe();
    loop {
        let mut from = store.acknowledged(&cursor_name)? + 1;
        if from < store.first_seq() {
            // Archived before the broker took them: say so once, then go on from what is kept.
            tracing::warn!(
                from,
                first_seq = store.first_seq(),
                "records were archived before they were published to MQTT; they are in the archive files"
            );
            metrics.mqtt_skipped.inc_by(store.first_seq() - from);
            from = store.first_seq();
            store.acknowledge(&cursor_name, from - 1).await?;
        }
        let page = {
            let store = store.clone();
            // A pull that finds its records archived meanwhile fails this round; the next
            // round says what was skipped.
            tokio::task::spawn_blocking(move || store.pull(from, PAGE, &Filter::default()))
                .await
                .map_err(|e| broker_error(format!("reader task: {e}")))??
        };
        if page.records.is_empty() {
            // Idle: keep the connection alive until something new is durable.
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                event = events.poll() => {
                    event.map_err(|e| broker_error(e.to_string()))?;
                }
            }
            continue;
        }
        for record in &page.records {
            let record_topic = topic(&settings.topic_root, record.kind);
            let message = match payload(&record_topic, record.seq, record.kind, record.json()) {
                Payload::Record(json) => json,
                Payload::TooLarge { stub, bytes } => {
                    metrics.mqtt_too_large.inc();
                    // Said again if the page is republished after a lost connection.
                    tracing::warn!(
                        seq = record.seq,
                        kind = record.kind.as_str(),
                        bytes,
                        max_packet = MAX_PACKET,
                        "record too large for an MQTT message: published a stub; subscribers fetch it over the HTTP API"
                    );
                    stub
                }
            };
            client
                .publish(record_topic, QoS::AtLeastOnce, false, message)
                .await
                .map_err(|e| broker_error(e.to_string()))?;
        }
        let mut unacknowledged = page.records.len();
        while unacknowledged > 0 {
            wait_for(&mut events, &broker_error, |packet| {
                matches!(packet, Packet::PubAck(_))
            })
            .await?;
            unacknowledged -= 1;
        }
        let last = page.records.last().map_or(from, |r| r.seq);
        store.acknowledge(&cursor_name, last).await?;
        metrics.mqtt_published.inc_by(page.records.len() as u64);
    }
}

/// Polls the connection until a packet `wanted` arrives.
async fn wait_for(
    events: &mut EventLoop,
    broker_error: &impl Fn(String) -> PublishError,
    wanted: impl Fn(&Packet) -> bool,
) -> Result<(), PublishError> {
    loop {
        match events.poll().await {
            Ok(Event::Incoming(packet)) if wanted(&packet) => return Ok(()),
            Ok(_) => {}
            Err(error) => return Err(broker_error(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "acme/basel/press-shop/line-2/sim-1/label";

    fn stub_of(payload: Payload) -> (serde_json::Value, usize) {
        match payload {
            Payload::TooLarge { stub, bytes } => {
                let stub = serde_json::from_slice(&stub).expect("the stub is JSON");
                (stub, bytes)
            }
            Payload::Record(json) => panic!("expected a stub, got {} bytes", json.len()),
        }
    }

    #[test]
    fn a_record_past_the_packet_limit_becomes_a_stub_that_fits() {
        // The largest JSON that still fits goes out whole.
        let room = MAX_PACKET - PUBLISH_OVERHEAD - TOPIC.len();
        let fits = vec![b'x'; room];
        assert_eq!(
            payload(TOPIC, 7, RecordKind::Label, &fits),
            Payload::Record(fits.clone())
        );
        // One byte more, or a 16 MiB label, is a stub naming it.
        for size in [room + 1, 16 << 20] {
            let json = vec![b'x'; size];
            let (stub, bytes) = stub_of(payload(TOPIC, 7, RecordKind::Label, &json));
            assert_eq!(bytes, size);
            assert_eq!(
                stub,
                serde_json::json!({"seq": 7, "kind": "label", "too_large": true, "bytes": size})
            );
        }
        // However long the topic may be (MQTT allows 64 KiB), the stub fits a packet.
        let long_topic = "t".repeat(u16::MAX as usize);
        let json = vec![b'x'; MAX_PACKET];
        let Payload::TooLarge { stub, .. } = payload(&long_topic, 1, RecordKind::Label, &json)
        else {
            panic!("expected a stub");
        };
        assert!(stub.len() + long_topic.len() + PUBLISH_OVERHEAD <= MAX_PACKET);
    }
}
