//! Tags subscribed from the plant's MQTT broker (a unified namespace): one topic per tag.
//!
//! A payload is a bare number (stamped with the arrival time) or
//! `{"value": 181.5, "timestamp": "2026-12-01T08:00:00Z"}` (the timestamp may also be epoch
//! milliseconds). The session is persistent and subscribed at QoS 1 with manual
//! acknowledgements: the broker keeps what arrives while the station is away, and a message
//! is acknowledged only once its sample is on disk, so a crash makes the broker send it again
//! rather than lose it (a repeat is refused as not newer than the stored sample).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio_util::sync::CancellationToken;

use super::{Incoming, Sensors};
use crate::metrics::Metrics;

/// Where to subscribe and as whom.
#[derive(Debug, Clone)]
pub struct SubscribeSettings {
    /// `host:port`.
    pub broker: String,
    pub client_id: String,
}

/// Turns one payload into a sample of `tag`, or says why it cannot. A payload without its own
/// timestamp is stamped `arrived`; `None` for a retained message, which the broker replays at
/// every (re)subscription from whenever it was published: its arrival says nothing of when it
/// was measured (a dead publisher's last value would come back as fresh at each reconnect).
pub fn parse_payload(
    tag: &str,
    payload: &[u8],
    arrived: Option<DateTime<Utc>>,
) -> Result<Incoming, String> {
    let json: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let arrived = || {
        arrived.ok_or_else(|| {
            "a retained message without a `timestamp` of its own: when it was measured is \
             unknown"
                .to_owned()
        })
    };
    let (value, at) = match &json {
        serde_json::Value::Number(n) => (n.as_f64(), arrived()?),
        serde_json::Value::Object(fields) => {
            let value = match fields.get("value") {
                Some(serde_json::Value::Number(n)) => n.as_f64(),
                Some(other) => {
                    return Err(format!("field `value`: expected a number, got {other}"));
                }
                None => return Err("field `value` is missing".into()),
            };
            let at = match fields.get("timestamp") {
                None => arrived()?,
                Some(serde_json::Value::String(text)) => {
                    super::csv::parse_time(text).map_err(|e| format!("field `timestamp`: {e}"))?
                }
                Some(serde_json::Value::Number(ms)) => ms
                    .as_i64()
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or_else(|| format!("field `timestamp`: {ms} is not epoch milliseconds"))?,
                Some(other) => {
                    return Err(format!(
                        "field `timestamp`: expected RFC 3339 text or epoch milliseconds, got {other}"
                    ));
                }
            };
            (value, at)
        }
        other => {
            return Err(format!(
                "expected a number or {{\"value\": …}}, got {other}"
            ));
        }
    };
    let value = value.ok_or("the value is not representable as a number")?;
    Ok(Incoming {
        tag: tag.to_owned(),
        at,
        value: Some(value),
    })
}

/// Subscribes to every `mqtt` tag's topic until `cancel`, reconnecting with back-off.
pub async fn run_subscriber(
    sensors: Sensors,
    settings: SubscribeSettings,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let topics: HashMap<String, String> = sensors
        .tags
        .iter()
        .filter_map(|t| Some((t.mqtt.as_ref()?.topic.clone(), t.name.clone())))
        .collect();
    if topics.is_empty() {
        return;
    }
    let mut backoff = Duration::from_millis(200);
    loop {
        let round = tokio::select! {
            _ = cancel.cancelled() => return,
            round = subscribe_until_error(&sensors, &settings, &topics, &metrics, &mut backoff) => round,
        };
        metrics.sensor_source_errors.inc();
        tracing::warn!(broker = %settings.broker, error = %round, retry_in = ?backoff, "MQTT sensor subscription interrupted");
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One connection; returns why it ended.
async fn subscribe_until_error(
    sensors: &Sensors,
    settings: &SubscribeSettings,
    topics: &HashMap<String, String>,
    metrics: &Metrics,
    backoff: &mut Duration,
) -> String {
    let Some((host, port)) = settings
        .broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
    else {
        return format!("the broker address {:?} is not host:port", settings.broker);
    };
    let mut options = MqttOptions::new(&settings.client_id, host, port);
    options.set_keep_alive(Duration::from_secs(15));
    // The broker keeps the subscription and queues QoS 1 messages while we are away.
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 1024);
    for topic in topics.keys() {
        if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
            return e.to_string();
        }
    }
    loop {
        let publish: Publish = match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %settings.broker, topics = topics.len(), "MQTT sensor subscription connected");
                *backoff = Duration::from_millis(200);
                continue;
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => publish,
            Ok(_) => continue,
            Err(e) => return e.to_string(),
        };
        let Some(tag) = topics.get(&publish.topic) else {
            let _ = client.ack(&publish).await;
            continue;
        };
        let arrived = (!publish.retain).then(Utc::now);
        match parse_payload(tag, &publish.payload, arrived) {
            Ok(sample) => match sensors.ingest(vec![sample]).await {
                Ok(report) => {
                    metrics.count_sensor_report(&report);
                    for refusal in &report.refused {
                        tracing::debug!(topic = %publish.topic, why = %refusal.message, "MQTT sample refused");
                    }
                }
                Err(error) => {
                    // Not acknowledged: the broker sends it again after the reconnect.
                    metrics.sensor_store_errors.inc();
                    return format!("cannot store the sample: {error}");
                }
            },
            Err(why) => {
                metrics.sensor_samples_refused.inc();
                tracing::warn!(topic = %publish.topic, %why, "MQTT sample refused");
            }
        }
        if let Err(e) = client.ack(&publish).await {
            return e.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_numbers_or_value_objects() {
        let now = Utc::now();
        let bare = parse_payload("t", b"181.5", Some(now)).expect("a number");
        assert_eq!((bare.value, bare.at), (Some(181.5), now));
        let stamped = parse_payload(
            "t",
            br#"{"value": 2, "timestamp": "2026-12-01T08:00:00Z"}"#,
            Some(now),
        )
        .expect("an object");
        assert_eq!(stamped.at.to_rfc3339(), "2026-12-01T08:00:00+00:00");
        let ms = parse_payload(
            "t",
            br#"{"value": 2, "timestamp": 1796112000000}"#,
            Some(now),
        )
        .expect("epoch ms");
        assert_eq!(ms.at, stamped.at);
        for (payload, needle) in [
            (&b"hot"[..], "not JSON"),
            (br#"{"value": "hot"}"#, "`value`"),
            (br#"{"temp": 1}"#, "missing"),
            (br#"{"value": 1, "timestamp": true}"#, "`timestamp`"),
            (br#"[1]"#, "expected a number"),
        ] {
            let message = parse_payload("t", payload, Some(now)).unwrap_err();
            assert!(message.contains(needle), "{message}");
        }
        // Retained: only a payload that says when it was measured is a sample.
        for payload in [&b"181.5"[..], br#"{"value": 2}"#] {
            let message = parse_payload("t", payload, None).unwrap_err();
            assert!(message.contains("retained"), "{message}");
        }
        let retained = parse_payload("t", br#"{"value": 2, "timestamp": 1796112000000}"#, None)
            .expect("stamped");
        assert_eq!(retained.at, stamped.at);
    }
}
