//! The station's counters, exposed on `/metrics` in Prometheus text format.
//!
//! One [`Metrics`] is made at start and shared by every stage (cheap `Arc` clones inside).
//! Each stage counts what came in, what went out, what it dropped and what failed, so an
//! operator can see where parts go missing without reading logs.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::part::{Disposition, Verdict};

/// Label set with one `kind` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Label set with one `camera` label: a station's further views (`[[views]]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    pub camera: String,
}

/// Every metric of one station.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Frames handed over by the camera pipeline: one per part trigger.
    pub frames_captured: Counter,
    /// Frames dropped because inspection was behind; their parts are rejected by policy.
    pub frames_dropped: Counter,
    /// Parts a further view had no frame for (the camera lost, or silent in the part's
    /// window); each is rejected.
    pub view_frames_missing: Family<CameraLabel, Counter>,
    /// A further view's frames that showed no part (before a part's window, or farther from
    /// its trigger than another frame): discarded.
    pub view_frames_unmatched: Family<CameraLabel, Counter>,
    /// A further view's frames let go because its ring was full (its oldest first).
    pub view_frames_dropped: Family<CameraLabel, Counter>,
    /// Times a further view's capture lost its camera and started trying to get it back.
    pub view_camera_restarts: Family<CameraLabel, Counter>,
    /// Inspections by verdict.
    pub inspections: Family<KindLabel, Counter>,
    /// Inspections that arrived after their part's verdict deadline.
    pub inspections_late: Counter,
    /// Inspections that arrived after their part had been dispatched to the gate (with its
    /// fail-safe disposition, which stays its record): not used, and not among
    /// `inspections_late`.
    pub inspections_after_dispatch: Counter,
    /// Parts past the gate by disposition.
    pub dispositions: Family<KindLabel, Counter>,
    /// Gate commands (each part's verdict) acknowledged by the PLC in their window.
    pub gate_commands_ok: Counter,
    /// Gate commands that could not be delivered in time (the PLC diverts those parts).
    pub gate_commands_failed: Counter,
    /// Modbus requests that timed out or lost the link (the link is rebuilt after each).
    pub plc_link_errors: Counter,
    /// Heartbeat writes that failed.
    pub heartbeat_failures: Counter,
    /// Encoder tracking: encoder reads that failed.
    pub encoder_read_failures: Counter,
    /// Encoder tracking: times the encoder's count went back (its counter started again).
    pub encoder_resets: Counter,
    /// Encoder tracking: parts whose place on the belt was lost before their command could
    /// leave (rejected by policy: the PLC diverts a part without a command).
    pub parts_missed: Counter,
    /// 1 while the PLC's own heartbeat has stopped moving (the PLC is lost), else 0.
    pub plc_heartbeat_lost: Gauge,
    /// Times capture lost its camera and started trying to get it back.
    pub camera_restarts: Counter,
    /// Server mode: PLC triggers not taken (station not ready) or never answered by a frame.
    pub triggers_missed: Counter,
    /// Server mode: frames that arrived with no PLC trigger waiting for one (discarded).
    pub frames_untriggered: Counter,
    /// 1 while a GenICam camera is armed in trigger mode (one frame per trigger), else 0.
    pub camera_armed: Gauge,
    /// Times a triggered camera's source was started again after a pause with no trigger.
    pub camera_idle_restarts: Counter,
    /// Presence detection: frames the detector looked at (one per passage becomes a part).
    pub frames_watched: Counter,
    /// Presence detection: the last frame's measure in the detector's region.
    pub presence_level: Gauge<f64, AtomicU64>,
    /// Presence detection: the empty belt's measure as learnt; a part is a change from it.
    pub presence_empty_level: Gauge<f64, AtomicU64>,
    /// Server mode: results refused by a full results buffer (those parts are rejected).
    pub results_overruns: Counter,
    /// Records made durable.
    pub records_written: Counter,
    /// Records that could not be written (retried until they are).
    pub record_errors: Counter,
    /// Parts between trigger and gate.
    pub parts_in_flight: Gauge,
    /// Time from capture to verdict.
    pub inspection_latency_seconds: Histogram,
    /// Verdicts of the shadow model (recorded, never actuated).
    pub shadow_verdicts: Counter,
    /// Frames the shadow model skipped because it was still busy.
    pub shadow_frames_skipped: Counter,
    /// Images not saved because the data disk was short of space (their records were kept).
    pub images_skipped: Counter,
    /// Images that could not be written (their records were kept, without the image).
    pub image_errors: Counter,
    /// 1 while the data disk is short of space for images.
    pub disk_low: Gauge,
    /// Parts whose records wait in memory because the store cannot write (disk full).
    pub records_waiting: Gauge,
    /// Records the MQTT broker acknowledged.
    pub mqtt_published: Counter,
    /// MQTT connections lost or refused.
    pub mqtt_errors: Counter,
    /// Records archived before the broker took them (they are in the archive files).
    pub mqtt_skipped: Counter,
    /// Records too large for an MQTT message, published as a stub (counted each time sent).
    pub mqtt_too_large: Counter,
    /// Sensor samples stored, by quality flag.
    pub sensor_samples: Family<KindLabel, Counter>,
    /// Sensor samples refused (unknown tag, out of time order, in the future, malformed).
    pub sensor_samples_refused: Counter,
    /// Sensor sources that did not answer (failed polls, lost subscriptions).
    pub sensor_source_errors: Counter,
    /// Sensor batches the store could not write.
    pub sensor_store_errors: Counter,
    /// Alerts a webhook receiver accepted (2xx).
    pub webhook_delivered: Counter,
    /// Alerts a webhook receiver refused for good (4xx other than 408/429).
    pub webhook_failed: Counter,
    /// Webhook attempts that will be retried (receiver down, timed out, 5xx, 408, 429).
    pub webhook_retries: Counter,
    /// Alerts waiting in the webhook outbox.
    pub webhook_pending: Gauge,
    /// Times the halt-line coil was latched by a burst of defects.
    pub halt_line_trips: Counter,
    /// 1 while the halt line is latched (until an operator resets it).
    pub halt_line_latched: Gauge,
    /// 1 while the drift watch finds that the live model no longer fits the parts.
    pub model_drift: Gauge,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Metrics {
        Metrics {
            frames_captured: Counter::default(),
            frames_dropped: Counter::default(),
            view_frames_missing: Family::default(),
            view_frames_unmatched: Family::default(),
            view_frames_dropped: Family::default(),
            view_camera_restarts: Family::default(),
            inspections: Family::default(),
            inspections_late: Counter::default(),
            inspections_after_dispatch: Counter::default(),
            dispositions: Family::default(),
            gate_commands_ok: Counter::default(),
            gate_commands_failed: Counter::default(),
            plc_link_errors: Counter::default(),
            heartbeat_failures: Counter::default(),
            encoder_read_failures: Counter::default(),
            encoder_resets: Counter::default(),
            parts_missed: Counter::default(),
            plc_heartbeat_lost: Gauge::default(),
            camera_restarts: Counter::default(),
            triggers_missed: Counter::default(),
            frames_untriggered: Counter::default(),
            frames_watched: Counter::default(),
            camera_armed: Gauge::default(),
            camera_idle_restarts: Counter::default(),
            presence_level: Gauge::default(),
            presence_empty_level: Gauge::default(),
            results_overruns: Counter::default(),
            records_written: Counter::default(),
            record_errors: Counter::default(),
            parts_in_flight: Gauge::default(),
            inspection_latency_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            shadow_verdicts: Counter::default(),
            shadow_frames_skipped: Counter::default(),
            images_skipped: Counter::default(),
            image_errors: Counter::default(),
            disk_low: Gauge::default(),
            records_waiting: Gauge::default(),
            mqtt_published: Counter::default(),
            mqtt_errors: Counter::default(),
            mqtt_skipped: Counter::default(),
            mqtt_too_large: Counter::default(),
            sensor_samples: Family::default(),
            sensor_samples_refused: Counter::default(),
            sensor_source_errors: Counter::default(),
            sensor_store_errors: Counter::default(),
            webhook_delivered: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_retries: Counter::default(),
            webhook_pending: Gauge::default(),
            halt_line_trips: Counter::default(),
            halt_line_latched: Gauge::default(),
            model_drift: Gauge::default(),
        }
    }

    /// Counts one inspection.
    pub fn count_inspection(&self, verdict: Verdict) {
        self.inspections
            .get_or_create(&KindLabel {
                kind: verdict.as_str().into(),
            })
            .inc();
    }

    /// Counts one part past the gate.
    pub fn count_disposition(&self, disposition: Disposition) {
        self.dispositions
            .get_or_create(&KindLabel {
                kind: disposition.as_str().into(),
            })
            .inc();
    }

    /// How many parts went past the gate with this disposition.
    pub fn disposition_count(&self, disposition: Disposition) -> u64 {
        self.dispositions
            .get_or_create(&KindLabel {
                kind: disposition.as_str().into(),
            })
            .get()
    }

    /// Counts what became of one sensor batch.
    pub fn count_sensor_report(&self, report: &crate::sense::IngestReport) {
        let flagged: usize = report.flagged.values().sum();
        self.sensor_samples
            .get_or_create(&KindLabel {
                kind: "good".into(),
            })
            .inc_by((report.accepted - flagged) as u64);
        for (flag, count) in &report.flagged {
            self.sensor_samples
                .get_or_create(&KindLabel {
                    kind: flag.as_str().into(),
                })
                .inc_by(*count as u64);
        }
        self.sensor_samples_refused
            .inc_by(report.refused.len() as u64);
    }

    /// Renders every metric in Prometheus text exposition format.
    pub fn encode(&self, station: &str) -> String {
        let mut registry = Registry::with_prefix_and_labels(
            "linesight",
            [(
                std::borrow::Cow::Borrowed("station"),
                std::borrow::Cow::Owned(station.to_owned()),
            )]
            .into_iter(),
        );
        registry.register(
            "sensor_samples",
            "Sensor samples stored, by quality flag",
            self.sensor_samples.clone(),
        );
        registry.register(
            "sensor_samples_refused",
            "Sensor samples refused (unknown tag, out of order, future, malformed)",
            self.sensor_samples_refused.clone(),
        );
        registry.register(
            "sensor_source_errors",
            "Sensor polls or subscriptions that failed",
            self.sensor_source_errors.clone(),
        );
        registry.register(
            "sensor_store_errors",
            "Sensor batches the store could not write",
            self.sensor_store_errors.clone(),
        );
        registry.register(
            "frames_captured",
            "Frames handed over by the camera pipeline",
            self.frames_captured.clone(),
        );
        registry.register(
            "camera_restarts",
            "Times the camera was lost and capture started trying to get it back",
            self.camera_restarts.clone(),
        );
        registry.register(
            "triggers_missed",
            "PLC triggers not taken or never answered by a frame (server mode)",
            self.triggers_missed.clone(),
        );
        registry.register(
            "frames_untriggered",
            "Frames discarded because no PLC trigger was waiting (server mode)",
            self.frames_untriggered.clone(),
        );
        registry.register(
            "camera_armed",
            "1 while a GenICam camera is armed in trigger mode, else 0",
            self.camera_armed.clone(),
        );
        registry.register(
            "camera_idle_restarts",
            "Times a triggered camera's source was started again after a pause with no trigger",
            self.camera_idle_restarts.clone(),
        );
        registry.register(
            "frames_watched",
            "Frames the presence detector looked at; one per passage becomes a part",
            self.frames_watched.clone(),
        );
        registry.register(
            "presence_level",
            "The presence detector's measure of the last frame in its region",
            self.presence_level.clone(),
        );
        registry.register(
            "presence_empty_level",
            "The presence detector's measure of the empty belt, as learnt",
            self.presence_empty_level.clone(),
        );
        registry.register(
            "results_overruns",
            "Results refused by a full results buffer; their parts are rejected (server mode)",
            self.results_overruns.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames dropped because inspection was behind",
            self.frames_dropped.clone(),
        );
        registry.register(
            "view_frames_missing",
            "Parts a further camera view had no frame for (each rejected)",
            self.view_frames_missing.clone(),
        );
        registry.register(
            "view_frames_unmatched",
            "Frames of a further camera view that showed no part (discarded)",
            self.view_frames_unmatched.clone(),
        );
        registry.register(
            "view_frames_dropped",
            "Frames of a further camera view let go because its ring was full (oldest first)",
            self.view_frames_dropped.clone(),
        );
        registry.register(
            "view_camera_restarts",
            "Times a further camera view was lost and capture started trying to get it back",
            self.view_camera_restarts.clone(),
        );
        registry.register(
            "inspections",
            "Inspections by verdict",
            self.inspections.clone(),
        );
        registry.register(
            "inspections_late",
            "Inspections that missed their verdict deadline",
            self.inspections_late.clone(),
        );
        registry.register(
            "inspections_after_dispatch",
            "Inspections that came after their part was dispatched to the gate (not used)",
            self.inspections_after_dispatch.clone(),
        );
        registry.register(
            "parts",
            "Parts past the gate by disposition",
            self.dispositions.clone(),
        );
        registry.register(
            "gate_commands_ok",
            "Gate commands (each part's verdict) acknowledged by the PLC in their window",
            self.gate_commands_ok.clone(),
        );
        registry.register(
            "gate_commands_failed",
            "Gate commands not delivered in time (the PLC diverts those parts)",
            self.gate_commands_failed.clone(),
        );
        registry.register(
            "plc_link_errors",
            "Modbus requests that timed out or lost the link",
            self.plc_link_errors.clone(),
        );
        registry.register(
            "shadow_verdicts",
            "Verdicts of the shadow model (recorded, not actuated)",
            self.shadow_verdicts.clone(),
        );
        registry.register(
            "shadow_frames_skipped",
            "Frames the busy shadow model skipped",
            self.shadow_frames_skipped.clone(),
        );
        registry.register(
            "heartbeat_failures",
            "Heartbeat writes that failed",
            self.heartbeat_failures.clone(),
        );
        registry.register(
            "encoder_read_failures",
            "Encoder reads that failed (encoder tracking)",
            self.encoder_read_failures.clone(),
        );
        registry.register(
            "encoder_resets",
            "Times the PLC's encoder count went back: its counter started again",
            self.encoder_resets.clone(),
        );
        registry.register(
            "parts_missed",
            "Parts whose place on the belt was lost before their gate command could leave",
            self.parts_missed.clone(),
        );
        registry.register(
            "plc_heartbeat_lost",
            "1 while the PLC's own heartbeat has stopped moving",
            self.plc_heartbeat_lost.clone(),
        );
        registry.register(
            "records_written",
            "Records made durable",
            self.records_written.clone(),
        );
        registry.register(
            "record_errors",
            "Record writes that failed and were retried",
            self.record_errors.clone(),
        );
        registry.register(
            "images_skipped",
            "Images not saved because the data disk was short of space",
            self.images_skipped.clone(),
        );
        registry.register(
            "image_errors",
            "Images that could not be written (records kept without them)",
            self.image_errors.clone(),
        );
        registry.register(
            "disk_low",
            "1 while the data disk is short of space for images",
            self.disk_low.clone(),
        );
        registry.register(
            "records_waiting",
            "Parts whose records wait in memory because the store cannot write",
            self.records_waiting.clone(),
        );
        registry.register(
            "mqtt_published",
            "Records the MQTT broker acknowledged",
            self.mqtt_published.clone(),
        );
        registry.register(
            "mqtt_errors",
            "MQTT connections lost or refused",
            self.mqtt_errors.clone(),
        );
        registry.register(
            "mqtt_skipped",
            "Records archived before the MQTT broker took them",
            self.mqtt_skipped.clone(),
        );
        registry.register(
            "mqtt_too_large",
            "Records too large for an MQTT message, published as a stub to fetch over the API",
            self.mqtt_too_large.clone(),
        );
        registry.register(
            "parts_in_flight",
            "Parts between trigger and gate",
            self.parts_in_flight.clone(),
        );
        registry.register(
            "inspection_latency_seconds",
            "Time from capture to verdict",
            self.inspection_latency_seconds.clone(),
        );
        registry.register(
            "webhook_delivered",
            "Alerts a webhook receiver accepted",
            self.webhook_delivered.clone(),
        );
        registry.register(
            "webhook_failed",
            "Alerts a webhook receiver refused for good",
            self.webhook_failed.clone(),
        );
        registry.register(
            "webhook_retries",
            "Webhook attempts to be retried (receiver down, timeout, 5xx, 408, 429)",
            self.webhook_retries.clone(),
        );
        registry.register(
            "webhook_pending",
            "Alerts waiting in the webhook outbox",
            self.webhook_pending.clone(),
        );
        registry.register(
            "halt_line_trips",
            "Times a burst of defects latched the halt-line coil",
            self.halt_line_trips.clone(),
        );
        registry.register(
            "halt_line_latched",
            "1 while the halt line is latched",
            self.halt_line_latched.clone(),
        );
        registry.register(
            "model_drift",
            "1 while the live model no longer fits the parts (the model_drift alarm's condition)",
            self.model_drift.clone(),
        );
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_with_station_label() {
        let metrics = Metrics::new();
        metrics.frames_captured.inc();
        metrics.count_disposition(Disposition::RejectNoVerdict);
        let text = metrics.encode("sim-1");
        assert!(
            text.contains("linesight_frames_captured_total{station=\"sim-1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("linesight_parts_total{station=\"sim-1\",kind=\"reject_no_verdict\"} 1"),
            "{text}"
        );
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
