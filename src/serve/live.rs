//! The live stream: verdicts and alarms as Server-Sent Events, as they become durable.
//!
//! Each event's `id` is the record's sequence number, so a browser's `EventSource` (or any
//! client sending `Last-Event-ID`) resumes after the last one it saw without losing or
//! repeating any. A new client without one starts at the newest record. The stream follows
//! the journal, so it shows only what is on disk.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;

use super::{ApiError, ApiState};
use crate::record::{Filter, RawRecord, RecordKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Start at this sequence number (instead of `Last-Event-ID` + 1 or the newest record).
    from: Option<u64>,
    /// Only these kinds, comma-separated, of `inspection`, `alarm` and `label` (the default,
    /// all three). The live page leaves labels out: a label can carry a large mask.
    kinds: Option<String>,
}

/// The kinds the live stream carries (audit entries and the like are not for every reader).
const STREAMED: [RecordKind; 3] = [RecordKind::Inspection, RecordKind::Alarm, RecordKind::Label];

fn streamed_kinds(kinds: Option<&str>) -> Result<Vec<RecordKind>, ApiError> {
    let Some(kinds) = kinds else {
        return Ok(STREAMED.to_vec());
    };
    let mut chosen = Vec::new();
    for name in kinds.split(',').map(str::trim) {
        match name.parse::<RecordKind>() {
            Ok(kind) if STREAMED.contains(&kind) => {
                if !chosen.contains(&kind) {
                    chosen.push(kind);
                }
            }
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "kinds: `{name}` is not one of inspection, alarm, label"
                )));
            }
        }
    }
    Ok(chosen)
}

/// Records sent per wake-up at most, so a client far behind catches up in steps.
const BATCH: usize = 256;

/// Live streams open at once: each holds a connection and reads the journal on every change.
const MAX_STREAMS: usize = 32;

static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_STREAMS);

pub(super) async fn events(
    State(api): State<ApiState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = Filter {
        kinds: streamed_kinds(query.kinds.as_deref())?,
        ..Filter::default()
    };
    follow(&api, &headers, query.from, filter, |_| true)
}

/// A stream of the journal's records that pass `filter` and `keep`, from `from`, else
/// `Last-Event-ID` + 1, else the newest record; each event's `id` is the record's sequence
/// number and its `event` the record's kind.
pub(super) fn follow(
    api: &ApiState,
    headers: &HeaderMap,
    from: Option<u64>,
    filter: Filter,
    keep: fn(&RawRecord) -> bool,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>> + use<>>, ApiError> {
    // Held for the stream's life, released when the client goes.
    let permit = STREAMS.try_acquire().map_err(|_| {
        ApiError::Unavailable(format!(
            "{MAX_STREAMS} live streams are open already; try later"
        ))
    })?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be a sequence number".into())
                })?,
        ),
        None => None,
    };
    let store = api.store.clone();
    let next = store.last_seq().saturating_add(1);
    let mut from = match (from, last_event_id) {
        (Some(from), _) => super::cursor_in_history(&store, from)?,
        // A browser resends the last id it saw, also after the station's history was started
        // anew: it goes on with what comes next.
        (None, Some(seen)) => seen.saturating_add(1).min(next),
        (None, None) => next,
    }
    .max(store.first_seq());
    let mut durable = store.subscribe();
    let stream = async_stream::stream! {
        let _permit = permit;
        loop {
            let page = {
                let store = store.clone();
                let filter = filter.clone();
                tokio::task::spawn_blocking(move || store.pull(from, BATCH, &filter)).await
            };
            let page = match page {
                Ok(Ok(page)) => page,
                Ok(Err(error)) => {
                    tracing::warn!(%error, "live stream ends: cannot read the journal");
                    break;
                }
                Err(_) => break,
            };
            for record in page.records.iter().filter(|r| keep(r)) {
                let data = String::from_utf8_lossy(record.json());
                yield Ok(Event::default()
                    .id(record.seq.to_string())
                    .event(record.kind.as_str())
                    .data(data));
            }
            from = page.next_seq;
            if !page.more && durable.changed().await.is_err() {
                break;
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(10))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_takes_the_kinds_asked_for_and_no_others() {
        assert_eq!(streamed_kinds(None).expect("default"), STREAMED);
        assert_eq!(
            streamed_kinds(Some("inspection, alarm,inspection")).expect("two"),
            [RecordKind::Inspection, RecordKind::Alarm]
        );
        for refused in ["audit", "", "inspection,nope"] {
            assert!(
                streamed_kinds(Some(refused)).is_err(),
                "{refused} was taken"
            );
        }
    }
}
