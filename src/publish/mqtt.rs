//! MQTT: every record to the plant's broker under an ISA-95 topic path,
//! `enterprise/site/area/line/station/<kind>`, QoS 1, the record's JSON as stored.
//!
//! [`run_mqtt`] reads the journal page by page from its cursor (kept in the store as the
//! acknowledgement of client `mqtt:<client id>`, so it survives restarts), publishes a page,
//! waits for the broker's PUBACK of every message in it, then moves the cursor. A lost
//! connection republishes the page from the cursor: records may repeat, none is skipped.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::record::{Filter, RecordKind, Store};

/// Messages published before waiting for their acknowledgements.
const PAGE: usize = 100;

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
    options.set_max_packet_size(1 << 20, 1 << 20);
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
            client
                .publish(
                    topic(&settings.topic_root, record.kind),
                    QoS::AtLeastOnce,
                    false,
                    record.json().to_vec(),
                )
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
