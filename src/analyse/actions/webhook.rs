//! Webhooks: alarm transitions POSTed as JSON alerts, e.g. to open a work order in a CMMS.
//!
//! `[[webhooks]]` in the station TOML ([`WebhookSection`]) names a receiver, which alarms
//! trigger it (by name, category, least priority) and on which events (activated, returned,
//! acknowledged). [`run_webhooks`] follows the journal's alarm transitions from a durable
//! cursor and, in one sled transaction per page, moves the cursor and puts one delivery per
//! matching webhook in the outbox (`<data_dir>/actions`, tree `webhook_outbox`). So an alarm
//! raised through the alarm manager is all it takes, and a transition is queued exactly once
//! even across a crash.
//!
//! Delivery is at least once: each POST carries an `Idempotency-Key` header (the same on every
//! retry) so a receiver can drop repeats. A receiver that is down, times out, or answers 5xx,
//! 408 or 429 is retried with exponential back-off (honouring `Retry-After`), for as long as it
//! takes, across restarts; any other answer outside 2xx is a permanent failure, moved to the
//! `webhook_failed` tree and logged. Alarms shelved, suppressed or out of service are not
//! annunciated, so they send nothing.
//!
//! The body ([`Alert`]) follows the alert record of `mes-anchors.md` §4 (B2MML WorkAlert
//! compatible): `alert_id`, `equipment_id`, `category`, `priority`, `message_text`, the
//! horizon and its interval when known, `evidence`, `state`, `created_at`, and what the
//! transition was.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sled::Transactional;
use tokio_util::sync::CancellationToken;

use super::{ActionsDb, ActionsError};
use crate::analyse::alarms::{AlarmDefinition, valid_name};
use crate::metrics::Metrics;
use crate::record::{
    AlarmEvent, AlarmRecord, AlarmSeverity, AlarmState, Filter, RecordBody, RecordError,
    RecordKind, Store,
};

/// Longest timeout of one delivery.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// Longest wait between two attempts: one day.
pub const MAX_RETRY_MS: u64 = 86_400_000;

/// Tree of the deliveries still to make, keyed by webhook name, 0, transition seq.
const OUTBOX_TREE: &str = "webhook_outbox";
/// Tree of the deliveries that failed for good, same keys.
const FAILED_TREE: &str = "webhook_failed";
/// Tree of the follower's cursor and each alarm's current activation.
const META_TREE: &str = "webhook_meta";
const CURSOR_KEY: &[u8] = b"cursor";
const ACTIVATION_PREFIX: &str = "activation/";

/// Journal records read per step.
const PAGE: usize = 256;

/// One `[[webhooks]]` table: a receiver and what it is sent.
///
/// ```toml
/// [[webhooks]]
/// name = "cmms"
/// url = "http://cmms.plant.local:8080/api/work-requests"
/// categories = ["predictive_maintenance", "quality_excursion"]
/// min_priority = "high"
/// events = ["activated", "returned"]
/// headers = { "X-Site" = "plant-1" }
/// secret_headers = { Authorization = "CMMS_AUTHORIZATION" }   # value from that variable
/// timeout_ms = 5000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Stable code (like an alarm name): keys the outbox, so it must not change while
    /// deliveries are pending.
    pub name: String,
    /// Where alerts are POSTed (`http://`; this build has no TLS client: put a
    /// TLS-terminating proxy in front of an `https` receiver).
    pub url: String,
    /// Only these alarms (by name); empty: any alarm.
    #[serde(default)]
    pub alarms: Vec<String>,
    /// Only alerts of these categories (see [`Alert::category`]); empty: any category.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Only alarms of at least this priority; absent: any priority.
    #[serde(default)]
    pub min_priority: Option<AlarmSeverity>,
    /// The transitions sent; by default only activations (a new alert).
    #[serde(default = "default_events")]
    pub events: Vec<AlertEvent>,
    /// Extra request headers, sent as written.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers whose values are secrets: header name → environment variable holding the
    /// value, read at start (never written in the file or the logs).
    #[serde(default)]
    pub secret_headers: BTreeMap<String, String>,
    /// Deadline of one POST, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Wait before the first retry; doubles per failed attempt.
    #[serde(default = "default_first_retry_ms")]
    pub first_retry_ms: u64,
    /// Longest wait between attempts.
    #[serde(default = "default_max_retry_ms")]
    pub max_retry_ms: u64,
}

fn default_events() -> Vec<AlertEvent> {
    vec![AlertEvent::Activated]
}

fn default_timeout_ms() -> u64 {
    5000
}

fn default_first_retry_ms() -> u64 {
    1000
}

fn default_max_retry_ms() -> u64 {
    300_000
}

/// The alarm transitions a webhook can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    /// The alarm became active: a new alert.
    Activated,
    /// Its condition returned to normal.
    Returned,
    /// An operator acknowledged it.
    Acknowledged,
}

impl AlertEvent {
    fn from_alarm_event(event: AlarmEvent) -> Option<AlertEvent> {
        match event {
            AlarmEvent::Activated => Some(AlertEvent::Activated),
            AlarmEvent::Returned => Some(AlertEvent::Returned),
            AlarmEvent::Acknowledged => Some(AlertEvent::Acknowledged),
            _ => None,
        }
    }
}

/// What a raiser knows about an alert beyond its alarm definition (put with
/// [`ActionsDb::put_alert_details`] before raising the alarm).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertDetails {
    /// `predictive_maintenance`, `quality_excursion`, `drift`, …; absent: from the source.
    #[serde(default)]
    pub category: Option<String>,
    /// The equipment concerned (ISA-95 hierarchy scope); absent: the station.
    #[serde(default)]
    pub equipment_id: Option<String>,
    /// Expected time to failure, hours.
    #[serde(default)]
    pub horizon_h: Option<f64>,
    /// Its interval, hours.
    #[serde(default)]
    pub interval_lo_h: Option<f64>,
    #[serde(default)]
    pub interval_hi_h: Option<f64>,
    /// Why: the signals behind the alert.
    #[serde(default)]
    pub evidence: Vec<Evidence>,
    #[serde(default)]
    pub model_id: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    /// A work order this alert concerns.
    #[serde(default)]
    pub work_order_ref: Option<String>,
}

/// One piece of evidence of an alert.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The signal, e.g. a tag name or `defects`.
    pub feature: String,
    /// Its lag before the effect, seconds.
    #[serde(default)]
    pub lag_s: Option<f64>,
    /// Rate lift where it is high.
    #[serde(default)]
    pub lift: Option<f64>,
    /// Its importance in a model.
    #[serde(default)]
    pub importance: Option<f64>,
    /// A value that says it, e.g. a count or a slope.
    #[serde(default)]
    pub value: Option<f64>,
    /// The same in words.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The JSON body of one delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The alert: the alarm's activation, `<station>/<alarm>/<seq of the activation>`; its
    /// later transitions (returned, acknowledged) carry the same id.
    pub alert_id: String,
    /// The same on every retry of this delivery: `<store instance>/<seq of the transition>`.
    pub idempotency_key: String,
    /// What happened to the alert.
    pub event: AlertEvent,
    /// The alarm's name.
    pub alarm: String,
    pub equipment_id: String,
    /// From [`AlertDetails`]; else from the source: `chart:` quality_excursion, `tag:` process,
    /// `kpi:` production, `station` station.
    pub category: String,
    pub priority: AlarmSeverity,
    /// The alarm definition's message.
    pub message_text: String,
    /// Why the transition happened (e.g. "value 231 above high limit 230").
    pub condition: String,
    /// The ISA-18.2 state after the transition.
    pub state: AlarmState,
    /// What the alarm watches.
    pub source: Option<String>,
    /// The value behind the transition (limit alarms).
    pub value: Option<f64>,
    pub horizon_h: Option<f64>,
    pub interval_lo_h: Option<f64>,
    pub interval_hi_h: Option<f64>,
    pub evidence: Vec<Evidence>,
    pub model_id: Option<String>,
    pub model_version: Option<String>,
    pub work_order_ref: Option<String>,
    /// When the alert (the activation) took effect.
    pub created_at: DateTime<Utc>,
    /// When this transition took effect.
    pub at: DateTime<Utc>,
    /// The transition's journal sequence number.
    pub seq: u64,
    pub station: String,
    /// Who made the transition (`station` or an operator's credential name).
    pub by: Option<String>,
}

/// Why a webhook could not be set up or run.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook {webhook}: environment variable {variable} (header {header}) is not set")]
    MissingSecret {
        webhook: String,
        header: String,
        variable: String,
    },
    #[error("webhook {webhook}: header {header}: {why}")]
    BadHeader {
        webhook: String,
        header: String,
        why: String,
    },
    #[error("webhook {webhook}: url {url:?}: {why}")]
    BadUrl {
        webhook: String,
        url: String,
        why: String,
    },
    #[error("webhook {webhook}: cannot build the HTTP client: {source}")]
    Client {
        webhook: String,
        source: reqwest::Error,
    },
    #[error(transparent)]
    Actions(#[from] ActionsError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl From<sled::Error> for WebhookError {
    fn from(error: sled::Error) -> WebhookError {
        WebhookError::Actions(ActionsError::Sled(error))
    }
}

/// Every problem of the `[[webhooks]]` tables at once, as `(field, message)`. `alarm_names`
/// are the alarms the station has (for the `alarms` filter).
pub fn check_webhooks(webhooks: &[WebhookSection], alarm_names: &[&str]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (i, webhook) in webhooks.iter().enumerate() {
        let mut problem = |field: &str, message: String| {
            problems.push((format!("webhooks[{i}].{field}"), message));
        };
        if !valid_name(&webhook.name) {
            problem(
                "name",
                format!(
                    "{:?} must be 1 to 64 of a-z, 0-9, '_', '-', '.', not starting with '.'",
                    webhook.name
                ),
            );
        }
        if webhooks[..i].iter().any(|w| w.name == webhook.name) {
            problem("name", format!("{:?} is defined twice", webhook.name));
        }
        if let Err(why) = parse_url(&webhook.url) {
            problem("url", why);
        }
        for (j, alarm) in webhook.alarms.iter().enumerate() {
            if !alarm_names.contains(&alarm.as_str()) {
                problem(
                    &format!("alarms[{j}]"),
                    format!("no alarm named {alarm:?} (see [[alarms]])"),
                );
            }
        }
        for (j, category) in webhook.categories.iter().enumerate() {
            if category.trim().is_empty() || category.len() > 64 {
                problem(
                    &format!("categories[{j}]"),
                    "expected 1 to 64 characters".into(),
                );
            }
        }
        if webhook.events.is_empty() {
            problem(
                "events",
                "expected at least one of \"activated\", \"returned\", \"acknowledged\"".into(),
            );
        }
        for (header, value) in &webhook.headers {
            if let Err(why) = header_pair(header, value) {
                problem(&format!("headers.{header}"), why);
            }
        }
        for (header, variable) in &webhook.secret_headers {
            if let Err(why) = header_pair(header, "x") {
                problem(&format!("secret_headers.{header}"), why);
            }
            if webhook.headers.contains_key(header) {
                problem(
                    &format!("secret_headers.{header}"),
                    "also given in `headers`".into(),
                );
            }
            if variable.is_empty() || variable.contains('=') || variable.contains('\0') {
                problem(
                    &format!("secret_headers.{header}"),
                    format!("expected an environment variable name, got {variable:?}"),
                );
            }
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&webhook.timeout_ms) {
            problem(
                "timeout_ms",
                format!(
                    "expected 1 to {MAX_TIMEOUT_MS} ms, got {}",
                    webhook.timeout_ms
                ),
            );
        }
        if !(1..=MAX_RETRY_MS).contains(&webhook.first_retry_ms) {
            problem(
                "first_retry_ms",
                format!(
                    "expected 1 to {MAX_RETRY_MS} ms, got {}",
                    webhook.first_retry_ms
                ),
            );
        }
        if !(webhook.first_retry_ms..=MAX_RETRY_MS).contains(&webhook.max_retry_ms) {
            problem(
                "max_retry_ms",
                format!(
                    "expected first_retry_ms ({}) to {MAX_RETRY_MS} ms, got {}",
                    webhook.first_retry_ms, webhook.max_retry_ms
                ),
            );
        }
    }
    problems
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    match parsed.scheme() {
        "http" if parsed.host().is_some() => Ok(parsed),
        "http" => Err("expected a host".into()),
        "https" => Err(
            "https is not built into this station: put a TLS-terminating proxy in front of the receiver and give its http:// URL"
                .into(),
        ),
        other => Err(format!("expected http://, got {other}://")),
    }
}

fn header_pair(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))?;
    if matches!(
        name.as_str(),
        "content-type" | "content-length" | "idempotency-key" | "host"
    ) {
        return Err(format!("{name} is set by the station"));
    }
    let value = HeaderValue::from_str(value)
        .map_err(|_| "the value has characters a header cannot carry".to_owned())?;
    Ok((name, value))
}

/// One receiver, ready to send: its section, with the URL parsed and secrets resolved.
#[derive(Clone)]
pub struct Webhook {
    pub section: WebhookSection,
    url: reqwest::Url,
    headers: HeaderMap,
    client: reqwest::Client,
}

impl std::fmt::Debug for Webhook {
    /// Never prints header values: they may be secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("name", &self.section.name)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// Builds a checked section, reading secret header values with `variable` (the process
    /// environment in a station: `|name| std::env::var(name).ok()`).
    pub fn build(
        section: &WebhookSection,
        variable: impl Fn(&str) -> Option<String>,
    ) -> Result<Webhook, WebhookError> {
        let webhook = section.name.clone();
        let url = parse_url(&section.url).map_err(|why| WebhookError::BadUrl {
            webhook: webhook.clone(),
            url: section.url.clone(),
            why,
        })?;
        let mut headers = HeaderMap::new();
        let bad_header = |header: &str, why: String| WebhookError::BadHeader {
            webhook: webhook.clone(),
            header: header.to_owned(),
            why,
        };
        for (header, value) in &section.headers {
            let (name, value) =
                header_pair(header, value).map_err(|why| bad_header(header, why))?;
            headers.insert(name, value);
        }
        for (header, name_of_variable) in &section.secret_headers {
            let secret = variable(name_of_variable).ok_or_else(|| WebhookError::MissingSecret {
                webhook: webhook.clone(),
                header: header.clone(),
                variable: name_of_variable.clone(),
            })?;
            let (name, mut value) =
                header_pair(header, &secret).map_err(|why| bad_header(header, why))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(section.timeout_ms))
            .connect_timeout(Duration::from_millis(section.timeout_ms))
            .user_agent(concat!("linesight/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| WebhookError::Client {
                webhook: webhook.clone(),
                source,
            })?;
        Ok(Webhook {
            section: section.clone(),
            url,
            headers,
            client,
        })
    }

    /// Whether `alert` goes to this receiver.
    pub fn wants(&self, alert: &Alert) -> bool {
        let section = &self.section;
        section.events.contains(&alert.event)
            && (section.alarms.is_empty() || section.alarms.contains(&alert.alarm))
            && (section.categories.is_empty() || section.categories.contains(&alert.category))
            && section
                .min_priority
                .is_none_or(|least| alert.priority >= least)
    }

    /// One POST of `alert`.
    async fn send(&self, alert: &Alert) -> Delivery {
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("Idempotency-Key", &alert.idempotency_key)
            .json(alert);
        match request.send().await {
            Err(error) => Delivery::Retry {
                why: format!("no answer: {}", error_chain(&error)),
                after: None,
            },
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return Delivery::Delivered;
                }
                let after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let text = response.text().await.unwrap_or_default();
                let why = format!(
                    "HTTP {status}: {}",
                    text.chars().take(200).collect::<String>()
                );
                if status.is_server_error()
                    || status == reqwest::StatusCode::REQUEST_TIMEOUT
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Delivery::Retry { why, after }
                } else {
                    Delivery::Refused { why }
                }
            }
        }
    }

    /// Wait before attempt `attempts + 1`, with ±20 % jitter so many stations do not retry in
    /// step.
    fn backoff(&self, attempts: u32, asked: Option<Duration>) -> Duration {
        let first = self.section.first_retry_ms as f64;
        let exponential = first * 2f64.powi(attempts.saturating_sub(1).min(30) as i32);
        let jitter = rand::thread_rng().gen_range(0.8..1.2);
        let ms = (exponential * jitter).min(self.section.max_retry_ms as f64);
        let wait = Duration::from_millis(ms as u64);
        match asked {
            Some(asked) => asked
                .max(wait)
                .min(Duration::from_millis(self.section.max_retry_ms)),
            None => wait,
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Delivery {
    Delivered,
    /// Down, timed out, 5xx, 408, 429: try again later.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Any other answer outside 2xx: the receiver will not take it.
    Refused {
        why: String,
    },
}

/// One delivery waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub webhook: String,
    pub alert: Alert,
    pub attempts: u32,
    /// Not before this time (ms since the Unix epoch).
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

fn outbox_key(webhook: &str, seq: u64) -> Vec<u8> {
    let mut key = webhook.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The activation an alarm's later transitions belong to.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Activation {
    seq: u64,
    at: DateTime<Utc>,
}

/// The outbox: the follower's cursor, the deliveries pending and those failed for good.
#[derive(Debug, Clone)]
pub struct Outbox {
    outbox: sled::Tree,
    failed: sled::Tree,
    meta: sled::Tree,
}

impl Outbox {
    /// The outbox trees of `db`.
    pub fn open(db: &ActionsDb) -> Result<Outbox, ActionsError> {
        Ok(Outbox {
            outbox: db.tree(OUTBOX_TREE)?,
            failed: db.tree(FAILED_TREE)?,
            meta: db.tree(META_TREE)?,
        })
    }

    /// Where the follower reads next; `None` before the first start.
    pub fn cursor(&self) -> Result<Option<u64>, ActionsError> {
        Ok(self.meta.get(CURSOR_KEY)?.map(|bytes| be_u64(&bytes)))
    }

    /// Sets the cursor to `next_seq` unless one is kept: a station that starts sending
    /// webhooks sends what happens from now on, not its history. Call it before the alarm
    /// manager opens, so transitions it makes while opening are sent.
    pub fn start_at(&self, next_seq: u64) -> Result<(), ActionsError> {
        self.meta
            .compare_and_swap(
                CURSOR_KEY,
                None as Option<&[u8]>,
                Some(&next_seq.to_be_bytes()[..]),
            )?
            .ok();
        self.meta.flush()?;
        Ok(())
    }

    /// Forgets the cursor (a station without webhooks): adding webhooks later starts from then.
    pub fn forget_cursor(&self) -> Result<(), ActionsError> {
        self.meta.remove(CURSOR_KEY)?;
        self.meta.flush()?;
        Ok(())
    }

    /// Deliveries still to make, in key order (webhook, then journal order).
    pub fn pending(&self) -> Result<Vec<OutboxEntry>, ActionsError> {
        entries(&self.outbox)
    }

    /// Deliveries that failed for good.
    pub fn failed(&self) -> Result<Vec<OutboxEntry>, ActionsError> {
        entries(&self.failed)
    }

    fn put(&self, entry: &OutboxEntry) -> Result<(), ActionsError> {
        self.outbox.insert(
            outbox_key(&entry.webhook, entry.alert.seq),
            serde_json::to_vec(entry).unwrap_or_default(),
        )?;
        self.outbox.flush()?;
        Ok(())
    }

    fn remove(&self, entry: &OutboxEntry) -> Result<(), ActionsError> {
        self.outbox
            .remove(outbox_key(&entry.webhook, entry.alert.seq))?;
        self.outbox.flush()?;
        Ok(())
    }

    fn fail(&self, entry: &OutboxEntry) -> Result<(), ActionsError> {
        let key = outbox_key(&entry.webhook, entry.alert.seq);
        let bytes = serde_json::to_vec(entry).unwrap_or_default();
        (&self.outbox, &self.failed)
            .transaction(|(outbox, failed)| {
                outbox.remove(key.as_slice())?;
                failed.insert(key.as_slice(), bytes.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<ActionsError>>(())
            })
            .map_err(ActionsError::from)?;
        self.outbox.flush()?;
        Ok(())
    }

    /// Reads the journal's alarm transitions from the cursor on and queues one delivery per
    /// webhook that wants each; the cursor moves in the same transaction. Returns how many
    /// deliveries were queued.
    fn catch_up(&self, follow: &Follow<'_>) -> Result<usize, WebhookError> {
        let Some(mut cursor) = self.cursor()? else {
            return Ok(0);
        };
        let filter = Filter {
            kinds: vec![RecordKind::Alarm],
            ..Filter::default()
        };
        let mut queued = 0;
        loop {
            let page = match follow.store.pull(cursor, PAGE, &filter) {
                Ok(page) => page,
                Err(RecordError::Pruned { first_seq, .. }) => {
                    tracing::warn!(
                        from = cursor,
                        first_seq,
                        "alarm transitions were archived before webhooks could queue them"
                    );
                    cursor = first_seq;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            let mut deliveries = Vec::new();
            let mut activations: BTreeMap<String, Activation> = BTreeMap::new();
            for raw in &page.records {
                let record = raw.decode()?;
                let RecordBody::Alarm(alarm) = record.body else {
                    continue;
                };
                let (Some(event), Some(at)) = (alarm.event, alarm.at.or(Some(record.recorded_at)))
                else {
                    continue;
                };
                if event == AlarmEvent::Activated {
                    activations.insert(
                        alarm.alarm.clone(),
                        Activation {
                            seq: record.seq,
                            at,
                        },
                    );
                }
                let Some(event) = AlertEvent::from_alarm_event(event) else {
                    continue;
                };
                if matches!(
                    alarm.state,
                    AlarmState::Shelved | AlarmState::Suppressed | AlarmState::OutOfService
                ) {
                    continue;
                }
                let activation = match activations.get(&alarm.alarm) {
                    Some(activation) => Some(activation.clone()),
                    None => self.activation(&alarm.alarm)?,
                };
                let alert = follow.alert(&alarm, event, record.seq, at, activation)?;
                for webhook in follow.webhooks.iter().filter(|w| w.wants(&alert)) {
                    deliveries.push(OutboxEntry {
                        webhook: webhook.section.name.clone(),
                        alert: alert.clone(),
                        attempts: 0,
                        next_attempt_ms: 0,
                        last_error: None,
                    });
                }
            }
            let next = page.next_seq;
            (&self.outbox, &self.meta)
                .transaction(|(outbox, meta)| {
                    for entry in &deliveries {
                        outbox.insert(
                            outbox_key(&entry.webhook, entry.alert.seq),
                            serde_json::to_vec(entry).unwrap_or_default(),
                        )?;
                    }
                    for (alarm, activation) in &activations {
                        meta.insert(
                            format!("{ACTIVATION_PREFIX}{alarm}").as_bytes(),
                            serde_json::to_vec(activation).unwrap_or_default(),
                        )?;
                    }
                    meta.insert(CURSOR_KEY, &next.to_be_bytes())?;
                    Ok::<(), sled::transaction::ConflictableTransactionError<ActionsError>>(())
                })
                .map_err(ActionsError::from)?;
            self.outbox.flush()?;
            queued += deliveries.len();
            cursor = next;
            if !page.more {
                return Ok(queued);
            }
        }
    }

    fn activation(&self, alarm: &str) -> Result<Option<Activation>, ActionsError> {
        let key = format!("{ACTIVATION_PREFIX}{alarm}");
        self.meta
            .get(key.as_bytes())?
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| ActionsError::Corrupt {
                    key: format!("{META_TREE}/{key}"),
                    why: e.to_string(),
                })
            })
            .transpose()
    }
}

fn entries(tree: &sled::Tree) -> Result<Vec<OutboxEntry>, ActionsError> {
    tree.iter()
        .map(|entry| {
            let (key, bytes) = entry?;
            serde_json::from_slice(&bytes).map_err(|e| ActionsError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                why: e.to_string(),
            })
        })
        .collect()
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = bytes.len().min(8);
    word[8 - n..].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(word)
}

/// What turning a transition into an alert needs.
struct Follow<'a> {
    store: &'a Store,
    db: &'a ActionsDb,
    webhooks: &'a [Webhook],
    definitions: &'a BTreeMap<String, AlarmDefinition>,
    equipment_id: &'a str,
}

impl Follow<'_> {
    fn alert(
        &self,
        alarm: &AlarmRecord,
        event: AlertEvent,
        seq: u64,
        at: DateTime<Utc>,
        activation: Option<Activation>,
    ) -> Result<Alert, ActionsError> {
        let details = self.db.alert_details(&alarm.alarm)?.unwrap_or_default();
        let definition = self.definitions.get(&alarm.alarm);
        let source = alarm
            .source
            .clone()
            .or_else(|| definition.map(|d| d.source.clone()));
        let category = details
            .category
            .clone()
            .unwrap_or_else(|| category_of_source(source.as_deref()).to_owned());
        let (activation_seq, created_at) = match activation {
            Some(activation) => (activation.seq, activation.at),
            // A return or acknowledgement of an activation nobody saw (before the webhooks
            // started): the transition stands for its alert.
            None => (seq, at),
        };
        Ok(Alert {
            alert_id: format!("{}/{}/{activation_seq}", self.store.station(), alarm.alarm),
            idempotency_key: format!("{}/{seq}", self.store.instance_id()),
            event,
            alarm: alarm.alarm.clone(),
            equipment_id: details
                .equipment_id
                .clone()
                .unwrap_or_else(|| self.equipment_id.to_owned()),
            category,
            priority: alarm.severity,
            message_text: definition
                .map(|d| d.message.clone())
                .unwrap_or_else(|| alarm.message.clone()),
            condition: alarm.message.clone(),
            state: alarm.state,
            source,
            value: alarm.value,
            horizon_h: details.horizon_h,
            interval_lo_h: details.interval_lo_h,
            interval_hi_h: details.interval_hi_h,
            evidence: details.evidence,
            model_id: details.model_id,
            model_version: details.model_version,
            work_order_ref: details.work_order_ref,
            created_at,
            at,
            seq,
            station: self.store.station().to_owned(),
            by: alarm.by.clone(),
        })
    }
}

/// The category of an alert without details, from what its alarm watches.
fn category_of_source(source: Option<&str>) -> &'static str {
    match source {
        Some(s) if s.starts_with("chart:") => "quality_excursion",
        Some(s) if s.starts_with("tag:") => "process",
        Some(s) if s.starts_with("kpi:") => "production",
        _ => "station",
    }
}

/// Everything [`run_webhooks`] needs.
pub struct WebhookContext {
    pub db: ActionsDb,
    pub store: Store,
    pub webhooks: Vec<Webhook>,
    /// Every alarm the station has (built-in ones included): their messages and sources.
    pub definitions: Vec<AlarmDefinition>,
    /// The default `equipment_id`: the station's place, `enterprise/site/area/line/station`.
    pub equipment_id: String,
    pub metrics: Metrics,
}

/// Longest sleep between two looks at the outbox when nothing is due.
const IDLE: Duration = Duration::from_secs(30);

/// Follows the journal's alarm transitions into the outbox and delivers what is due, until
/// `cancel`. Errors are logged and retried; nothing queued is lost.
pub async fn run_webhooks(ctx: WebhookContext, cancel: CancellationToken) {
    let outbox = match Outbox::open(&ctx.db) {
        Ok(outbox) => outbox,
        Err(error) => {
            tracing::error!(%error, "webhooks cannot open their outbox; no alerts are sent");
            return;
        }
    };
    let definitions: BTreeMap<String, AlarmDefinition> = ctx
        .definitions
        .iter()
        .map(|d| (d.name.clone(), d.clone()))
        .collect();
    let mut durable = ctx.store.subscribe();
    loop {
        durable.borrow_and_update();
        let queued = {
            let (outbox, store, db, webhooks, definitions, equipment_id) = (
                outbox.clone(),
                ctx.store.clone(),
                ctx.db.clone(),
                ctx.webhooks.clone(),
                definitions.clone(),
                ctx.equipment_id.clone(),
            );
            tokio::task::spawn_blocking(move || {
                outbox.catch_up(&Follow {
                    store: &store,
                    db: &db,
                    webhooks: &webhooks,
                    definitions: &definitions,
                    equipment_id: &equipment_id,
                })
            })
            .await
        };
        match queued {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(queued = n, "alerts queued for webhooks"),
            Ok(Err(error)) => tracing::warn!(%error, "webhooks could not read alarm transitions"),
            Err(error) => tracing::error!(%error, "webhook follower task failed"),
        }
        let next_due = match deliver_due(&outbox, &ctx.webhooks, &ctx.metrics, &cancel).await {
            Ok(next_due) => next_due,
            Err(error) => {
                tracing::warn!(%error, "webhook outbox unreadable; trying again shortly");
                Some(Utc::now() + chrono::Duration::seconds(1))
            }
        };
        let wait = next_due
            .map(|due| (due - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(IDLE)
            .min(IDLE);
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = durable.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Sends every delivery that is due, oldest first per webhook; a webhook whose receiver asks
/// for a retry gets nothing more this round (its order is kept). Returns when the next
/// delivery falls due.
async fn deliver_due(
    outbox: &Outbox,
    webhooks: &[Webhook],
    metrics: &Metrics,
    cancel: &CancellationToken,
) -> Result<Option<DateTime<Utc>>, ActionsError> {
    let pending = outbox.pending()?;
    let mut waiting: Vec<&str> = Vec::new();
    let mut next_due: Option<i64> = None;
    for mut entry in pending {
        if cancel.is_cancelled() {
            break;
        }
        let Some(webhook) = webhooks.iter().find(|w| w.section.name == entry.webhook) else {
            entry.last_error = Some("webhook no longer configured".into());
            tracing::error!(webhook = %entry.webhook, alert = %entry.alert.alert_id, "delivery dropped: webhook no longer configured");
            outbox.fail(&entry)?;
            metrics.webhook_failed.inc();
            continue;
        };
        let now_ms = Utc::now().timestamp_millis();
        if waiting.contains(&entry.webhook.as_str()) || entry.next_attempt_ms > now_ms {
            if !waiting.contains(&entry.webhook.as_str()) {
                waiting.push(webhook.section.name.as_str());
            }
            next_due =
                Some(next_due.map_or(entry.next_attempt_ms, |d| d.min(entry.next_attempt_ms)));
            continue;
        }
        entry.attempts += 1;
        match webhook.send(&entry.alert).await {
            Delivery::Delivered => {
                outbox.remove(&entry)?;
                metrics.webhook_delivered.inc();
                tracing::info!(webhook = %entry.webhook, alert = %entry.alert.alert_id, event = ?entry.alert.event, attempts = entry.attempts, "alert delivered");
            }
            Delivery::Refused { why } => {
                tracing::error!(webhook = %entry.webhook, alert = %entry.alert.alert_id, attempts = entry.attempts, error = %why, "alert refused for good");
                entry.last_error = Some(why);
                outbox.fail(&entry)?;
                metrics.webhook_failed.inc();
            }
            Delivery::Retry { why, after } => {
                let wait = webhook.backoff(entry.attempts, after);
                entry.next_attempt_ms = now_ms + wait.as_millis() as i64;
                tracing::warn!(webhook = %entry.webhook, alert = %entry.alert.alert_id, attempts = entry.attempts, retry_in = ?wait, error = %why, "alert not delivered; will retry");
                entry.last_error = Some(why);
                outbox.put(&entry)?;
                metrics.webhook_retries.inc();
                waiting.push(webhook.section.name.as_str());
                next_due =
                    Some(next_due.map_or(entry.next_attempt_ms, |d| d.min(entry.next_attempt_ms)));
            }
        }
    }
    metrics.webhook_pending.set(outbox.outbox.len() as i64);
    Ok(next_due.and_then(DateTime::from_timestamp_millis))
}

#[cfg(test)]
mod tests;
