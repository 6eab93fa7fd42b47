//! The monitor: what turns data into alarm conditions while the station runs.
//!
//! Every second it hands each tag's newest good sample to the alarm manager (`tag:<name>`)
//! and tells it the station's health (FAULT, DEGRADED); every 30 s it computes the KPIs of the
//! last hour (`kpi:<name>`); every minute it evaluates the configured control charts
//! (`chart:<name>`: active while the newest point breaks a rule; for a count chart the newest
//! *completed* hour, shift or day, never the one still filling). It reads the stores, never
//! the live path, and an evaluation that fails is logged and tried again at the next round.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::alarms::{AlarmError, AlarmManager};
use super::{Period, Production};
use crate::record::Store;
use crate::sense::Sensors;

/// How often tags and the station's health are looked at.
const TAG_EVERY: Duration = Duration::from_secs(1);
/// How often the KPIs are computed.
const KPI_EVERY: Duration = Duration::from_secs(30);
/// The KPIs' rolling window.
const KPI_WINDOW: TimeDelta = TimeDelta::hours(1);
/// How often the configured control charts are evaluated.
const CHART_EVERY: Duration = Duration::from_secs(60);

/// What the station is, as alarms see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StationHealth {
    /// The station stopped on an error: parts go to reject.
    pub fault: bool,
    /// Running, but something is failing (the PLC link, frames, records, sensor sources).
    pub degraded: bool,
    pub message: String,
}

/// Everything the monitor reads and whom it tells.
pub struct Monitor {
    pub alarms: AlarmManager,
    pub sensors: Sensors,
    pub production: Production,
    pub store: Store,
    /// Asked once a second.
    pub health: Arc<dyn Fn() -> StationHealth + Send + Sync>,
    /// The recording delay: KPI time after `now − this` is not counted yet.
    pub as_of_delay: Duration,
    /// The configured control charts (`chart:<name>` alarms watch their newest point).
    pub charts: Arc<Vec<super::ChartDefinition>>,
}

/// The KPIs an alarm can watch, as `kpi:<name>`.
pub const KPI_NAMES: [&str; 6] = [
    "oee",
    "availability",
    "effectiveness",
    "quality_ratio",
    "first_pass_yield",
    "scrap_ratio",
];

impl Monitor {
    /// Runs until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tags = tokio::time::interval(TAG_EVERY);
        tags.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut kpis = tokio::time::interval(KPI_EVERY);
        kpis.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut charts = tokio::time::interval(CHART_EVERY);
        charts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = TagWatch::default();
        let mut health = StationHealth::default();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tags.tick() => {
                    observe_tags(&self.sensors, &self.alarms, &mut watch, Utc::now()).await;
                    let now = (self.health)();
                    if now != health {
                        if let Err(error) = self
                            .alarms
                            .set_station(now.fault, now.degraded, Utc::now(), &now.message)
                            .await
                        {
                            tracing::warn!(%error, "cannot record the station's state as an alarm");
                            continue;
                        }
                        health = now;
                    }
                }
                _ = kpis.tick() => self.observe_kpis(Utc::now()).await,
                _ = charts.tick() => self.observe_charts(Utc::now()).await,
            }
        }
    }

    /// Every configured chart over its window: a `chart:<name>` alarm is active while the
    /// newest point breaks a rule. A count chart ends at the start of its current period
    /// ([`super::charts::evaluate_completed`]): a partial period's few parts would trip its
    /// rules by chance, and would clear an excursion of the period just finished at every
    /// turn; so the last completed period decides until the next one completes. A chart
    /// without enough data yet says nothing.
    async fn observe_charts(&self, now: DateTime<Utc>) {
        if self.charts.is_empty() {
            return;
        }
        let sources = super::ChartSources {
            production: self.production.clone(),
            sensors: Some(self.sensors.clone()),
        };
        let charts = self.charts.clone();
        // Parts still on their way to the record: the period they close is not complete yet.
        let as_of = now - TimeDelta::from_std(self.as_of_delay).unwrap_or(TimeDelta::zero());
        let evaluated = tokio::task::spawn_blocking(move || {
            charts
                .iter()
                .map(|definition| {
                    let verdict =
                        super::charts::evaluate_completed(definition, &sources, now, as_of)
                            .map(|chart| super::latest_violation(&chart));
                    (definition.name.clone(), verdict)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(evaluated) = evaluated else {
            tracing::warn!("chart evaluation task failed");
            return;
        };
        for (name, verdict) in evaluated {
            let (active, message) = match verdict {
                Ok(Some(message)) => (true, message),
                Ok(None) => (false, "the newest point breaks no rule".to_owned()),
                Err(error) => {
                    tracing::debug!(chart = %name, %error, "chart not evaluated");
                    continue;
                }
            };
            match self
                .alarms
                .set_condition(&format!("chart:{name}"), active, now, &message)
                .await
            {
                // A chart no alarm watches: nothing to tell.
                Ok(_) | Err(super::alarms::AlarmError::UnknownSource(_)) => {}
                Err(error) => {
                    tracing::warn!(chart = %name, %error, "cannot evaluate the chart's alarms")
                }
            }
        }
    }

    /// The KPIs of the last hour.
    async fn observe_kpis(&self, now: DateTime<Utc>) {
        let production = self.production.clone();
        let sensors = self.sensors.clone();
        let work_orders = super::work_order_spans(&self.store);
        let as_of = now - TimeDelta::from_std(self.as_of_delay).unwrap_or(TimeDelta::zero());
        let range = super::measured_range(&self.store, now - KPI_WINDOW, now, as_of);
        let computed = tokio::task::spawn_blocking(move || {
            production.with_input(Some(&sensors), &work_orders, range, |input| {
                input.report(range, Period::Hour).total
            })
        })
        .await;
        let kpis = match computed {
            Ok(Ok(kpis)) => kpis,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot compute the KPIs for alarms");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "KPI task failed");
                return;
            }
        };
        for (name, value) in KPI_NAMES.iter().zip([
            kpis.oee,
            kpis.availability,
            kpis.effectiveness,
            kpis.quality_ratio,
            kpis.first_pass_yield,
            kpis.scrap_ratio,
        ]) {
            let Some(value) = value else { continue };
            if let Err(error) = self
                .alarms
                .observe(&format!("kpi:{name}"), value, now)
                .await
            {
                tracing::warn!(kpi = name, %error, "cannot evaluate the KPI's alarms");
            }
        }
    }
}

/// The newest good sample of every tag not seen yet, judged by the tag's alarms at `now`.
///
/// `now` is the time the station sees the sample, not the sample's own: the manager's tick
/// measures on- and off-delays on the station's clock, and a batch backfilled an hour late
/// would otherwise have waited out its delay before it arrived.
async fn observe_tags(
    sensors: &Sensors,
    alarms: &AlarmManager,
    watch: &mut TagWatch,
    now: DateTime<Utc>,
) {
    for tag in sensors.tags.iter() {
        let Some((t, value, flag)) = sensors.store.latest(&tag.name) else {
            continue;
        };
        // Bad and uncertain samples say nothing about the process: limits judge good ones.
        if !flag.is_good() || watch.seen.get(&tag.name) == Some(&t) {
            continue;
        }
        match alarms
            .observe(&format!("tag:{}", tag.name), value, now)
            .await
        {
            // A transition the journal could not take is not marked seen: the next pass
            // judges the sample again, so it is not lost when the tag then falls silent.
            // Said once while it lasts, not every second.
            Err(AlarmError::Record(error)) => {
                if watch.failing.insert(tag.name.clone()) {
                    tracing::warn!(tag = %tag.name, %error, "cannot record the tag's alarms");
                }
            }
            Err(error) => {
                tracing::warn!(tag = %tag.name, %error, "cannot evaluate the tag's alarms");
                watch.seen.insert(tag.name.clone(), t);
            }
            Ok(_) => {
                if watch.failing.remove(&tag.name) {
                    tracing::info!(tag = %tag.name, "the tag's alarms are recorded again");
                }
                watch.seen.insert(tag.name.clone(), t);
            }
        }
    }
}

/// What [`observe_tags`] remembers between passes.
#[derive(Debug, Default)]
struct TagWatch {
    /// Per tag, the time of the newest sample its alarms judged.
    seen: HashMap<String, i64>,
    /// Tags whose alarms the journal refuses now (warned once while it lasts).
    failing: HashSet<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyse::alarms::AlarmDefinition;
    use crate::analyse::alarms::manager::tests::oven;
    use crate::analyse::charts::tests::{
        T0, minute_of, rejects_chart, steady_hours_then_a_few_parts,
    };
    use crate::analyse::{ProductionCounts, ProductionPlan};
    use crate::sense::{Incoming, SensorsSection};

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("in range")
    }

    async fn is_active(alarms: &AlarmManager, name: &str) -> bool {
        alarms.alarm(name).await.expect("alarm").active
    }

    /// A p chart of the reject rate per hour watched by an alarm: 2 rejects of 20 parts in
    /// the hour still filling raise nothing; the same counts once their hour is over raise
    /// it, and clean parts of the next hour, still filling, do not clear it before that hour
    /// is over and judged.
    #[tokio::test]
    async fn a_chart_alarm_judges_completed_hours_and_keeps_the_last_ones_verdict() {
        const HOUR: i64 = 3_600_000;
        let dir = tempfile::tempdir().expect("tempdir");
        let sensors =
            Sensors::open(dir.path(), SensorsSection::default(), Vec::new()).expect("sensors");
        let store = Store::open(dir.path(), "station").expect("store");
        let rule: AlarmDefinition = toml::from_str(
            "name = \"rejects_rule\"\nmessage = \"Reject rate out of control\"\n\
             priority = \"medium\"\nsource = \"chart:rejects\"\non = \"violation\"\n",
        )
        .expect("alarm");
        let alarms = AlarmManager::open(store.clone(), &[rule])
            .await
            .expect("alarms");
        let production = Production {
            counts: ProductionCounts::open(dir.path()).expect("counts"),
            plan: Arc::new(ProductionPlan::default()),
        };
        production
            .counts
            .write_buckets(&steady_hours_then_a_few_parts())
            .expect("buckets");
        let monitor = Monitor {
            alarms: alarms.clone(),
            sensors,
            production: production.clone(),
            store,
            health: Arc::new(StationHealth::default),
            as_of_delay: Duration::from_secs(2),
            charts: Arc::new(vec![rejects_chart()]),
        };

        // 20 s into hour 24, whose 2 rejects of 20 parts would break Nelson 1.
        monitor.observe_charts(at(T0 + 24 * HOUR + 20_000)).await;
        assert!(
            !is_active(&alarms, "rejects_rule").await,
            "raised on the hour still filling"
        );
        // Hour 24 is over: the same counts, judged now.
        monitor.observe_charts(at(T0 + 25 * HOUR + 20_000)).await;
        assert!(
            is_active(&alarms, "rejects_rule").await,
            "not raised on the completed hour"
        );
        // Clean parts in hour 25, still filling: hour 24 still decides.
        production
            .counts
            .write_buckets(&[minute_of(T0 / 60_000 + 25 * 60 + 5, 20, 0)])
            .expect("bucket");
        monitor
            .observe_charts(at(T0 + 25 * HOUR + 30 * 60_000))
            .await;
        assert!(
            is_active(&alarms, "rejects_rule").await,
            "cleared by the hour still filling"
        );
        // Hour 25 is over and breaks nothing: the alarm returns.
        monitor.observe_charts(at(T0 + 26 * HOUR + 20_000)).await;
        assert!(
            !is_active(&alarms, "rejects_rule").await,
            "still active after a completed hour in control"
        );
    }

    /// A sample that arrives an hour after it was taken, above a limit with a 5 s on-delay:
    /// the delay runs on the station's clock from when the sample is seen.
    #[tokio::test]
    async fn a_backfilled_sample_waits_out_the_on_delay_from_when_it_is_seen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = toml::from_str("name = \"oven\"\nperiod_ms = 1000\n").expect("tag");
        let sensors =
            Sensors::open(dir.path(), SensorsSection::default(), vec![tag]).expect("sensors");
        let store = Store::open(dir.path(), "station").expect("store");
        let alarms = AlarmManager::open(store, &[oven()]).await.expect("alarms");
        let now = Utc::now();
        let taken = now - TimeDelta::hours(1);
        let sample = Incoming {
            tag: "oven".into(),
            at: taken,
            value: Some(240.0),
        };
        let report = sensors.store.ingest_at(&[sample], now).expect("ingest");
        assert_eq!(report.accepted, 1, "{report:?}");

        let mut watch = TagWatch::default();
        observe_tags(&sensors, &alarms, &mut watch, now).await;
        assert_eq!(watch.seen.get("oven"), Some(&taken.timestamp_millis()));
        let active = |alarms: &AlarmManager| {
            let alarms = alarms.clone();
            async move { alarms.alarm("oven_hot").await.expect("alarm").active }
        };
        alarms
            .tick(now + TimeDelta::seconds(1))
            .await
            .expect("tick");
        assert!(!active(&alarms).await, "active a second after it was seen");
        alarms
            .tick(now + TimeDelta::seconds(6))
            .await
            .expect("tick");
        assert!(active(&alarms).await, "still waiting past its on-delay");
    }
}
