//! Server mode: the station is the PLC's Modbus TCP server, as Cognex and Keyence cameras are.
//!
//! The PLC writes a control block and reads a status block (`[server]` in the register map):
//! it triggers each capture with a tracking id it latched at its photo-eye, reads each part's
//! verdict from a results buffer that echoes that id, acknowledges what it took, and times the
//! gate itself. Its program (`firmware-io/plc/linesight_server_client.st`) diverts every part
//! for which no PASS arrived in time, so a station that stops answering, a result lost to a
//! full buffer and a missed trigger all end in the reject lane.
//!
//! [`ServerImage`] is the register image and the handshake's rules: plain state, no I/O,
//! tested on its own. [`PlcServer`] shares it between the Modbus connections, capture (which
//! it tells which part each trigger became, as a [`TriggerSink`]) and [`run_results`], which
//! publishes each part's verdict as soon as the tracker settles it. [`run_server`] serves the
//! connections and, every heartbeat, beats, watches the PLC's heartbeat and keeps the status
//! bits current.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};
use tokio_util::sync::CancellationToken;

use super::register_map::{SERVER_CONTROL_LEN, SERVER_STATUS_HEADER_LEN, ServerBlocks};
use super::{GateCommand, GateVerdict, PlcHeartbeat, PlcWatch, WordOrder, gate_verdict};
use crate::metrics::Metrics;
use crate::part::{Actuation, ExternalTrigger, PartId, PartOutcome, StationClock, TriggerSink};

/// Control block bits (`control + 0`).
mod control_bit {
    pub const TRIGGER_ENABLE: u16 = 1 << 0;
    pub const TRIGGER: u16 = 1 << 1;
    pub const CLEAR_ERROR: u16 = 1 << 2;
    pub const SET_OFFLINE: u16 = 1 << 3;
}

/// Status block bits (`status + 0`).
pub mod status_bit {
    pub const TRIGGER_READY: u16 = 1 << 0;
    pub const TRIGGER_ACK: u16 = 1 << 1;
    pub const BUSY: u16 = 1 << 2;
    pub const RESULTS_VALID: u16 = 1 << 3;
    pub const ONLINE: u16 = 1 << 4;
    pub const DEGRADED: u16 = 1 << 5;
    pub const ERROR: u16 = 1 << 6;
    pub const OVERRUN: u16 = 1 << 7;
    pub const STOP_LINE: u16 = 1 << 8;
}

/// The most registers one FC3 request may read.
const MAX_READ: u16 = 125;

/// Where each word sits in the control block.
const CONTROL_TRACKING_ID: usize = 1;
const CONTROL_RESULTS_ACK: usize = 3;
const CONTROL_PLC_HEARTBEAT: usize = 4;

/// One part's result as the PLC reads it from the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultEntry {
    /// The PLC's tracking id, echoed.
    pub tracking_id: u32,
    pub verdict: GateVerdict,
    /// Defect class code, 0 for none.
    pub class: u16,
    /// Confidence in the verdict, per mille.
    pub confidence_permille: u16,
    /// From the PLC's trigger to the verdict, in 0.1 ms (saturating).
    pub processing_tenths_ms: u16,
}

/// The buffer was full: the result was not published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("results buffer full ({depth} results waiting for the PLC's acknowledge)")]
pub struct ResultsFull {
    pub depth: u16,
}

/// What a write to the control block set off.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ControlEffect {
    /// A trigger the station took: capture the part.
    pub trigger: Option<ExternalTrigger>,
    /// A trigger the station was not ready for (its tracking id): the PLC rejects that part.
    pub missed: Option<u32>,
}

/// The station's counters in the status block, each u32 on the wire (wrapping).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerCounts {
    pub good: u32,
    pub reject: u32,
    pub missed_triggers: u32,
    pub errors: u32,
    pub overruns: u32,
}

/// The register image of server mode and the rules of its handshake.
#[derive(Debug)]
pub struct ServerImage {
    blocks: ServerBlocks,
    order: WordOrder,
    control: [u16; SERVER_CONTROL_LEN as usize],
    /// The station is running its line (cleared at stop: the PLC sees it offline).
    running: bool,
    trigger_ack: bool,
    last_tracking_id: u32,
    busy: bool,
    degraded: bool,
    stop_line: bool,
    error: bool,
    overrun: bool,
    heartbeat: u16,
    /// Pending results, oldest first, with their sequence numbers.
    results: VecDeque<(u16, ResultEntry)>,
    /// The newest result's sequence number (0: none yet).
    sequence: u16,
    counts: ServerCounts,
}

impl ServerImage {
    /// A fresh image: offline, nothing pending.
    pub fn new(blocks: ServerBlocks, order: WordOrder) -> ServerImage {
        ServerImage {
            blocks,
            order,
            control: [0; SERVER_CONTROL_LEN as usize],
            running: false,
            trigger_ack: false,
            last_tracking_id: 0,
            busy: false,
            degraded: false,
            stop_line: false,
            error: false,
            overrun: false,
            heartbeat: 0,
            results: VecDeque::new(),
            sequence: 0,
            counts: ServerCounts::default(),
        }
    }

    /// Online: the station runs its line and the PLC has not set it offline.
    pub fn online(&self) -> bool {
        self.running && self.control[0] & control_bit::SET_OFFLINE == 0
    }

    /// Ready for the next trigger: online, triggers enabled by the PLC, the last trigger's
    /// handshake finished (the PLC cleared its trigger bit).
    pub fn trigger_ready(&self) -> bool {
        self.online() && self.control[0] & control_bit::TRIGGER_ENABLE != 0 && !self.trigger_ack
    }

    pub fn set_running(&mut self, running: bool) {
        self.running = running;
    }

    pub fn set_busy(&mut self, busy: bool) {
        self.busy = busy;
    }

    pub fn set_degraded(&mut self, degraded: bool) {
        self.degraded = degraded;
    }

    pub fn set_stop_line(&mut self, stop_line: bool) {
        self.stop_line = stop_line;
    }

    /// One station heartbeat.
    pub fn beat(&mut self) {
        self.heartbeat = self.heartbeat.wrapping_add(1);
    }

    /// The PLC's heartbeat word as last written.
    pub fn plc_heartbeat(&self) -> u16 {
        self.control[CONTROL_PLC_HEARTBEAT]
    }

    pub fn counts(&self) -> ServerCounts {
        self.counts
    }

    /// Results waiting for the PLC's acknowledge.
    pub fn pending(&self) -> usize {
        self.results.len()
    }

    /// A trigger the camera never answered with a frame: counted as missed.
    pub fn camera_missed(&mut self) {
        self.counts.missed_triggers = self.counts.missed_triggers.wrapping_add(1);
        self.error = true;
    }

    /// Publishes a result; its sequence number, or [`ResultsFull`] (counted, latched in the
    /// status bits: the part's verdict never reaches the PLC, which rejects it).
    pub fn push_result(&mut self, entry: ResultEntry) -> Result<u16, ResultsFull> {
        if self.results.len() >= usize::from(self.blocks.results_depth) {
            self.counts.overruns = self.counts.overruns.wrapping_add(1);
            self.counts.reject = self.counts.reject.wrapping_add(1);
            self.overrun = true;
            self.error = true;
            return Err(ResultsFull {
                depth: self.blocks.results_depth,
            });
        }
        // 0 means "none yet", so the sequence skips it when it wraps.
        self.sequence = match self.sequence.wrapping_add(1) {
            0 => 1,
            next => next,
        };
        self.results.push_back((self.sequence, entry));
        if entry.verdict == GateVerdict::Pass {
            self.counts.good = self.counts.good.wrapping_add(1);
        } else {
            self.counts.reject = self.counts.reject.wrapping_add(1);
        }
        if entry.verdict == GateVerdict::RejectError {
            self.counts.errors = self.counts.errors.wrapping_add(1);
        }
        Ok(self.sequence)
    }

    /// A Modbus read (FC3): 1 to 125 registers (the protocol's limit: the reply's byte count
    /// is one byte), the whole span in one block.
    pub fn read(&self, address: u16, count: u16) -> Result<Vec<u16>, ExceptionCode> {
        if !(1..=MAX_READ).contains(&count) {
            return Err(ExceptionCode::IllegalDataValue);
        }
        if let Some(range) = within(
            address,
            count,
            self.blocks.control,
            u32::from(SERVER_CONTROL_LEN),
        ) {
            return Ok(self.control[range].to_vec());
        }
        if let Some(range) = within(address, count, self.blocks.status, self.blocks.status_len()) {
            return Ok(self.status_words()[range].to_vec());
        }
        Err(ExceptionCode::IllegalDataAddress)
    }

    /// A Modbus write (FC6, FC16): only inside the control block; the words of one request
    /// are taken together, so a tracking id written with its trigger bit is latched with it.
    pub fn write(
        &mut self,
        address: u16,
        words: &[u16],
        at: Instant,
    ) -> Result<ControlEffect, ExceptionCode> {
        let count = u16::try_from(words.len()).map_err(|_| ExceptionCode::IllegalDataValue)?;
        let range = within(
            address,
            count,
            self.blocks.control,
            u32::from(SERVER_CONTROL_LEN),
        )
        .ok_or(ExceptionCode::IllegalDataAddress)?;
        let before = self.control;
        let acknowledge_written = range.contains(&CONTROL_RESULTS_ACK);
        self.control[range].copy_from_slice(words);
        let (was, now) = (before[0], self.control[0]);
        let rose = |bit: u16| was & bit == 0 && now & bit != 0;
        let mut effect = ControlEffect::default();
        if rose(control_bit::CLEAR_ERROR) {
            self.error = false;
            self.overrun = false;
        }
        if was & control_bit::TRIGGER != 0 && now & control_bit::TRIGGER == 0 {
            // The PLC saw the acknowledge: the handshake is over, the next trigger may come.
            self.trigger_ack = false;
        }
        if rose(control_bit::TRIGGER) {
            let tracking_id = self.order.join([
                self.control[CONTROL_TRACKING_ID],
                self.control[CONTROL_TRACKING_ID + 1],
            ]);
            if self.trigger_ready() {
                self.trigger_ack = true;
                self.last_tracking_id = tracking_id;
                effect.trigger = Some(ExternalTrigger { tracking_id, at });
            } else {
                self.counts.missed_triggers = self.counts.missed_triggers.wrapping_add(1);
                self.error = true;
                effect.missed = Some(tracking_id);
            }
        }
        if acknowledge_written {
            // Everything up to the acknowledged result leaves; an acknowledge that names no
            // pending result (stale, or repeated) changes nothing.
            let acknowledged = self.control[CONTROL_RESULTS_ACK];
            if let Some(index) = self
                .results
                .iter()
                .position(|(sequence, _)| *sequence == acknowledged)
            {
                self.results.drain(..=index);
            }
        }
        Ok(effect)
    }

    /// The status block as the PLC reads it.
    pub fn status_words(&self) -> Vec<u16> {
        let mut words = Vec::with_capacity(self.blocks.status_len() as usize);
        let bits = [
            (status_bit::TRIGGER_READY, self.trigger_ready()),
            (status_bit::TRIGGER_ACK, self.trigger_ack),
            (status_bit::BUSY, self.busy),
            (status_bit::RESULTS_VALID, !self.results.is_empty()),
            (status_bit::ONLINE, self.online()),
            (status_bit::DEGRADED, self.degraded),
            (status_bit::ERROR, self.error),
            (status_bit::OVERRUN, self.overrun),
            (status_bit::STOP_LINE, self.stop_line),
        ]
        .iter()
        .filter(|(_, on)| *on)
        .fold(0u16, |bits, (bit, _)| bits | bit);
        words.push(bits);
        words.push(self.heartbeat);
        words.extend(self.order.split(self.last_tracking_id));
        words.push(self.results.len() as u16);
        words.push(self.sequence);
        for count in [
            self.counts.good,
            self.counts.reject,
            self.counts.missed_triggers,
            self.counts.errors,
            self.counts.overruns,
        ] {
            words.extend(self.order.split(count));
        }
        words.resize(usize::from(SERVER_STATUS_HEADER_LEN), 0);
        for (sequence, entry) in &self.results {
            let [id_a, id_b] = self.order.split(entry.tracking_id);
            words.extend([
                *sequence,
                id_a,
                id_b,
                entry.verdict as u16,
                entry.class,
                entry.confidence_permille,
                entry.processing_tenths_ms,
            ]);
        }
        words.resize(self.blocks.status_len() as usize, 0);
        words
    }
}

/// The indexes of `[address, address + count)` within a block of `len` registers at `first`,
/// if the span lies wholly inside it.
fn within(address: u16, count: u16, first: u16, len: u32) -> Option<std::ops::Range<usize>> {
    let start = u32::from(address).checked_sub(u32::from(first))?;
    let end = start + u32::from(count);
    (count > 0 && end <= len).then_some(start as usize..end as usize)
}

/// The station's side of server mode, shared by the Modbus connections, capture and the
/// results task.
#[derive(Clone)]
pub struct PlcServer {
    image: Arc<Mutex<ServerImage>>,
    /// Triggers taken, on their way to capture.
    triggers: std::sync::mpsc::Sender<ExternalTrigger>,
    /// Which trigger each captured part came from, until its result is published.
    parts: Arc<Mutex<HashMap<PartId, ExternalTrigger>>>,
    metrics: Metrics,
}

/// The serving side of a [`PlcServer`]: where it listens, and the triggers capture takes.
pub struct ServerEnds {
    pub listener: TcpListener,
    pub triggers: std::sync::mpsc::Receiver<ExternalTrigger>,
}

impl PlcServer {
    /// Binds `listen` and makes the image; the station hands the triggers to capture.
    pub async fn bind(
        listen: std::net::SocketAddr,
        blocks: ServerBlocks,
        order: WordOrder,
        metrics: Metrics,
    ) -> std::io::Result<(PlcServer, ServerEnds)> {
        let listener = TcpListener::bind(listen).await?;
        let (triggers, trigger_rx) = std::sync::mpsc::channel();
        Ok((
            PlcServer {
                image: Arc::new(Mutex::new(ServerImage::new(blocks, order))),
                triggers,
                parts: Arc::new(Mutex::new(HashMap::new())),
                metrics,
            },
            ServerEnds {
                listener,
                triggers: trigger_rx,
            },
        ))
    }

    fn image(&self) -> std::sync::MutexGuard<'_, ServerImage> {
        // Every change to the image is a plain store, so it stays consistent after a panic.
        self.image.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of the status block, for logs and tests.
    pub fn status_words(&self) -> Vec<u16> {
        self.image().status_words()
    }

    fn handle(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        match request {
            Request::ReadHoldingRegisters(address, count) => self
                .image()
                .read(address, count)
                .map(Response::ReadHoldingRegisters),
            Request::WriteSingleRegister(address, value) => {
                self.apply(address, &[value])?;
                Ok(Response::WriteSingleRegister(address, value))
            }
            Request::WriteMultipleRegisters(address, values) => {
                self.apply(address, &values)?;
                Ok(Response::WriteMultipleRegisters(
                    address,
                    values.len() as u16,
                ))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn apply(&self, address: u16, words: &[u16]) -> Result<(), ExceptionCode> {
        let effect = self.image().write(address, words, Instant::now())?;
        if let Some(trigger) = effect.trigger {
            tracing::debug!(tracking_id = trigger.tracking_id, "PLC trigger taken");
            if self.triggers.send(trigger).is_err() {
                // Capture has stopped: nothing will answer this trigger.
                self.image().camera_missed();
                self.metrics.triggers_missed.inc();
            }
        }
        if let Some(tracking_id) = effect.missed {
            self.metrics.triggers_missed.inc();
            tracing::warn!(
                tracking_id,
                "PLC trigger while the station was not ready; the PLC rejects that part"
            );
        }
        Ok(())
    }

    /// Publishes a settled part's result; the actuation to record for it.
    fn publish(&self, outcome: &PartOutcome, hold_pass: bool, now: Instant) -> Actuation {
        let Some(trigger) = self
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&outcome.part_id)
        else {
            return Actuation::Failed {
                at: outcome.decided_at,
                error: "no PLC trigger for this part (none taken, or forgotten a minute after \
                        it): nothing to publish a result under"
                    .into(),
            };
        };
        let mut verdict = gate_verdict(outcome.disposition);
        let held = verdict == GateVerdict::Pass && hold_pass;
        if held {
            verdict = GateVerdict::RejectByPolicy;
        }
        let inspection = outcome.inspection.as_ref();
        let score = inspection.and_then(|inspection| inspection.score);
        let confidence = match (verdict, score) {
            (GateVerdict::Pass, Some(score)) => 1.0 - score,
            (GateVerdict::RejectDefect, Some(score)) => score,
            _ => 0.0,
        };
        let processing = now.saturating_duration_since(trigger.at);
        let entry = ResultEntry {
            tracking_id: trigger.tracking_id,
            verdict,
            class: 0,
            confidence_permille: (confidence.clamp(0.0, 1.0) * 1000.0).round() as u16,
            processing_tenths_ms: u16::try_from(processing.as_micros() / 100).unwrap_or(u16::MAX),
        };
        match self.image().push_result(entry) {
            Ok(sequence) => {
                tracing::debug!(part_id = %outcome.part_id, tracking_id = trigger.tracking_id, sequence, ?verdict, "result published");
                if held {
                    Actuation::Failed {
                        at: outcome.decided_at,
                        error: "the PLC's heartbeat is lost: published as reject by policy".into(),
                    }
                } else if verdict == GateVerdict::Pass {
                    Actuation::NotRequired
                } else {
                    Actuation::Done {
                        at: outcome.decided_at,
                    }
                }
            }
            Err(full) => {
                self.metrics.results_overruns.inc();
                tracing::error!(part_id = %outcome.part_id, tracking_id = trigger.tracking_id, "{full}; the PLC rejects the part");
                Actuation::Failed {
                    at: outcome.decided_at,
                    error: format!("{full}: the PLC rejects the part"),
                }
            }
        }
    }
}

/// A captured part whose result has not been published this long after its trigger never
/// will be: the PLC stopped waiting long before (its part is in the reject lane), and a part
/// the station let go unpublished (turned away by a full gate queue, or lost to a fault) would
/// otherwise stay in the map for good.
const FORGET_TRIGGER_AFTER: Duration = Duration::from_secs(60);

impl TriggerSink for PlcServer {
    fn captured(&self, trigger: ExternalTrigger, part_id: PartId) {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let before = parts.len();
        parts.retain(|_, old| trigger.at.saturating_duration_since(old.at) < FORGET_TRIGGER_AFTER);
        let forgotten = before - parts.len();
        if forgotten > 0 {
            tracing::warn!(
                forgotten,
                "captured parts never got a result for the PLC within {FORGET_TRIGGER_AFTER:?}: \
                 forgotten (the PLC rejected them when its wait ran out)"
            );
        }
        parts.insert(part_id, trigger);
    }

    fn missed(&self, trigger: ExternalTrigger) {
        self.metrics.triggers_missed.inc();
        tracing::warn!(
            tracking_id = trigger.tracking_id,
            "no frame answered the PLC's trigger; the PLC rejects that part"
        );
        self.image().camera_missed();
    }
}

struct ServerService {
    server: PlcServer,
}

impl Service for ServerService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let result = self.server.handle(request);
        Box::pin(std::future::ready(result))
    }
}

/// Everything [`run_server`] needs.
pub struct ServerRun {
    pub server: PlcServer,
    pub listener: TcpListener,
    /// The station's heartbeat period (`plc.heartbeat_ms`).
    pub heartbeat: Duration,
    pub watch: PlcWatch,
    pub metrics: Metrics,
    /// Stops the server: the station goes offline and its heartbeat stands still.
    pub stop: CancellationToken,
}

/// Serves the PLC until `stop`: online from the start, a heartbeat every period, the PLC's
/// heartbeat watched (lost: DEGRADED, the alarm, no PASS published, and by policy the stop-line
/// bit). At stop the station shows offline for two more heartbeats, so a PLC polling it reads
/// that before the heartbeat stands still and its watchdog trips.
pub async fn run_server(run: ServerRun) {
    let ServerRun {
        server,
        listener,
        heartbeat,
        watch,
        metrics,
        stop,
    } = run;
    server.image().set_running(true);
    let modbus = Server::new(listener);
    let service_server = server.clone();
    let on_connected = move |stream, socket_addr| {
        let server = service_server.clone();
        async move {
            tracing::info!(plc = %socket_addr, "PLC connected");
            accept_tcp_connection(stream, socket_addr, move |_| {
                Ok(Some(ServerService {
                    server: server.clone(),
                }))
            })
        }
    };
    let on_process_error = |error| tracing::info!(%error, "PLC connection ended");
    let serving = modbus.serve(&on_connected, on_process_error);
    tokio::pin!(serving);
    let mut ticks = tokio::time::interval(heartbeat);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut plc = PlcHeartbeat::new();
    // Whether `serving` has ended: a finished future is never polled again.
    let mut served = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            result = &mut serving => {
                if let Err(error) = result {
                    tracing::error!(%error, "the PLC server stopped accepting connections");
                }
                served = true;
                break;
            }
            _ = ticks.tick() => {}
        }
        let reading = {
            let mut image = server.image();
            image.beat();
            image.set_busy(metrics.parts_in_flight.get() > 0);
            image.plc_heartbeat()
        };
        let (lost, changed) = plc.observe(Some(reading), watch.timeout);
        if changed {
            {
                let mut image = server.image();
                image.set_degraded(lost);
                image.set_stop_line(lost && watch.policy == crate::config::PlcLostPolicy::StopLine);
            }
            watch.changed(lost, &metrics, "the PLC client (server mode)");
        }
    }
    server.image().set_running(false);
    // Offline for two more heartbeats, then silence.
    if !served {
        let offline_until = tokio::time::Instant::now() + heartbeat * 2;
        let _ = tokio::time::timeout_at(offline_until, &mut serving).await;
    }
}

/// Everything [`run_results`] needs.
pub struct ResultsContext {
    pub server: PlcServer,
    pub commands: mpsc::Receiver<GateCommand>,
    /// Outcomes go on to the recorder; a full channel makes this task wait.
    pub outcomes: mpsc::Sender<PartOutcome>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
    /// Set while the PLC's heartbeat is lost: no PASS is published then.
    pub plc_lost: Arc<AtomicBool>,
}

/// Server mode's gate task: publishes each settled part's result in the buffer and hands the
/// outcome to the recorder. Runs until the command channel closes, then until the last part
/// has reached the gate, so the PLC can still read its result.
pub async fn run_results(mut ctx: ResultsContext) {
    let mut last_gate = None;
    while let Some(GateCommand { mut outcome, .. }) = ctx.commands.recv().await {
        let hold_pass = ctx.plc_lost.load(Ordering::Relaxed);
        outcome.actuation = ctx.server.publish(&outcome, hold_pass, Instant::now());
        // A PASS held back, or with no trigger or slot to publish it under, leaves the part
        // diverted by the PLC: recorded as such, as the client-mode gate does.
        outcome.settle_undelivered_pass();
        match outcome.actuation {
            Actuation::Failed { .. } => ctx.metrics.gate_commands_failed.inc(),
            _ => ctx.metrics.gate_commands_ok.inc(),
        };
        last_gate = last_gate.max(Some(outcome.gate_at));
        if ctx.outcomes.send(outcome).await.is_err() {
            tracing::error!("recorder stopped; results can no longer be recorded");
            break;
        }
    }
    if let Some(gate_at) = last_gate {
        tokio::time::sleep_until(ctx.clock.instant(gate_at).into()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::Disposition;

    const BLOCKS: ServerBlocks = ServerBlocks {
        control: 200,
        status: 300,
        results_depth: 3,
    };

    fn online() -> ServerImage {
        let mut image = ServerImage::new(BLOCKS, WordOrder::HighFirst);
        image.set_running(true);
        image
            .write(200, &[control_bit::TRIGGER_ENABLE], Instant::now())
            .unwrap();
        image
    }

    fn entry(tracking_id: u32, verdict: GateVerdict) -> ResultEntry {
        ResultEntry {
            tracking_id,
            verdict,
            class: 0,
            confidence_permille: 900,
            processing_tenths_ms: 123,
        }
    }

    fn trigger(image: &mut ServerImage, tracking_id: u32) -> ControlEffect {
        let [a, b] = WordOrder::HighFirst.split(tracking_id);
        image
            .write(
                200,
                &[control_bit::TRIGGER_ENABLE | control_bit::TRIGGER, a, b],
                Instant::now(),
            )
            .unwrap()
    }

    fn release(image: &mut ServerImage) {
        image
            .write(200, &[control_bit::TRIGGER_ENABLE], Instant::now())
            .unwrap();
    }

    #[tokio::test]
    async fn a_part_never_published_is_forgotten_a_minute_after_its_trigger() {
        let (server, _ends) = PlcServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            BLOCKS,
            WordOrder::HighFirst,
            Metrics::new(),
        )
        .await
        .unwrap();
        let start = Instant::now();
        let at = |s: u64| ExternalTrigger {
            tracking_id: s as u32,
            at: start + Duration::from_secs(s),
        };
        server.captured(at(0), PartId(1));
        server.captured(at(30), PartId(2));
        let waiting = |server: &PlcServer| {
            let mut ids: Vec<u64> = server.parts.lock().unwrap().keys().map(|p| p.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(waiting(&server), [1, 2], "both still within the minute");
        server.captured(at(61), PartId(3));
        assert_eq!(
            waiting(&server),
            [2, 3],
            "part 1 forgotten, 61 s after its trigger"
        );
    }

    /// Server mode records a PASS held back while the PLC is lost as the client-mode gate
    /// does: rejected by policy, so the production counts never count the part good.
    #[tokio::test]
    async fn a_pass_held_while_the_plc_is_lost_is_recorded_as_rejected_by_policy() {
        let (server, _ends) = PlcServer::bind(
            "127.0.0.1:0".parse().expect("address"),
            BLOCKS,
            WordOrder::HighFirst,
            Metrics::new(),
        )
        .await
        .expect("server");
        server.image().set_running(true);
        let clock = StationClock::start();
        let (commands_tx, commands) = mpsc::channel(4);
        let (outcomes, mut outcomes_rx) = mpsc::channel(4);
        let plc_lost = Arc::new(AtomicBool::new(false));
        let results = tokio::spawn(run_results(ResultsContext {
            server: server.clone(),
            commands,
            outcomes,
            clock: clock.clone(),
            metrics: Metrics::new(),
            plc_lost: plc_lost.clone(),
        }));
        let mut settle = async |id: u64| {
            server.captured(
                ExternalTrigger {
                    tracking_id: id as u32,
                    at: Instant::now(),
                },
                PartId(id),
            );
            let now = clock.now();
            let outcome = PartOutcome {
                part_id: PartId(id),
                captured_at: now,
                gate_at: now,
                decided_at: now,
                disposition: Disposition::Pass,
                inspection: None,
                inspection_late: false,
                actuation: Actuation::NotRequired,
            };
            commands_tx
                .send(GateCommand {
                    outcome,
                    place: None,
                })
                .await
                .expect("the results task runs");
            tokio::time::timeout(Duration::from_secs(10), outcomes_rx.recv())
                .await
                .expect("an outcome within 10 s")
                .expect("an outcome")
        };
        let shipped = settle(1).await;
        assert_eq!(shipped.disposition, Disposition::Pass, "{shipped:?}");
        assert!(matches!(shipped.actuation, Actuation::NotRequired));
        plc_lost.store(true, Ordering::Relaxed);
        let held = settle(2).await;
        assert_eq!(held.disposition, Disposition::RejectNoVerdict, "{held:?}");
        assert!(
            matches!(&held.actuation, Actuation::Failed { error, .. } if error.contains("reject by policy")),
            "{held:?}"
        );
        drop(commands_tx);
        results.await.expect("the results task ends");
    }

    #[test]
    fn a_trigger_is_taken_acknowledged_with_its_id_and_released_by_the_plc() {
        let mut image = online();
        assert!(image.trigger_ready());
        let effect = trigger(&mut image, 0x0001_0002);
        assert_eq!(effect.trigger.map(|t| t.tracking_id), Some(0x0001_0002));
        let status = image.status_words();
        assert_eq!(status[0] & status_bit::TRIGGER_ACK, status_bit::TRIGGER_ACK);
        assert_eq!(status[0] & status_bit::TRIGGER_READY, 0);
        assert_eq!(&status[2..4], &[1, 2]);
        release(&mut image);
        assert!(image.trigger_ready());
        assert_eq!(image.status_words()[0] & status_bit::TRIGGER_ACK, 0);
    }

    #[test]
    fn a_trigger_while_not_ready_is_missed_counted_and_latches_the_error() {
        let mut image = ServerImage::new(BLOCKS, WordOrder::HighFirst);
        // Not running yet: offline.
        let effect = trigger(&mut image, 7);
        assert_eq!(effect.trigger, None);
        assert_eq!(effect.missed, Some(7));
        // Triggers not enabled by the PLC: missed too.
        let mut image = online();
        let effect = image
            .write(200, &[control_bit::TRIGGER, 0, 9], Instant::now())
            .unwrap();
        assert_eq!(effect.missed, Some(9));
        assert_eq!(image.counts().missed_triggers, 1);
        let status = image.status_words();
        assert_ne!(status[0] & status_bit::ERROR, 0);
        assert_eq!(&status[10..12], &[0, 1]);
        image
            .write(
                200,
                &[control_bit::TRIGGER_ENABLE | control_bit::CLEAR_ERROR],
                Instant::now(),
            )
            .unwrap();
        assert_eq!(image.status_words()[0] & status_bit::ERROR, 0);
    }

    #[test]
    fn set_offline_refuses_triggers_and_shows_offline() {
        let mut image = online();
        image
            .write(
                200,
                &[control_bit::TRIGGER_ENABLE | control_bit::SET_OFFLINE],
                Instant::now(),
            )
            .unwrap();
        assert!(!image.online());
        assert_eq!(image.status_words()[0] & status_bit::ONLINE, 0);
        let effect = image
            .write(
                200,
                &[control_bit::TRIGGER_ENABLE | control_bit::SET_OFFLINE | control_bit::TRIGGER],
                Instant::now(),
            )
            .unwrap();
        assert!(effect.trigger.is_none() && effect.missed.is_some());
    }

    #[test]
    fn results_wait_in_order_until_acknowledged_and_a_full_buffer_refuses_the_next() {
        let mut image = online();
        assert_eq!(image.push_result(entry(10, GateVerdict::Pass)), Ok(1));
        assert_eq!(
            image.push_result(entry(11, GateVerdict::RejectDefect)),
            Ok(2)
        );
        assert_eq!(image.push_result(entry(12, GateVerdict::Pass)), Ok(3));
        assert_eq!(
            image.push_result(entry(13, GateVerdict::Pass)),
            Err(ResultsFull { depth: 3 })
        );
        let status = image.status_words();
        assert_eq!(status.len(), 20 + 3 * 7);
        assert_ne!(status[0] & status_bit::RESULTS_VALID, 0);
        assert_ne!(status[0] & status_bit::OVERRUN, 0);
        assert_eq!((status[4], status[5]), (3, 3));
        // Counters: good 2, reject 2 (the refused one is rejected at the PLC), overruns 1.
        assert_eq!(&status[6..10], &[0, 2, 0, 2]);
        assert_eq!(&status[14..16], &[0, 1]);
        // Oldest first, with its tracking id echoed.
        assert_eq!(&status[20..27], &[1, 0, 10, 1, 0, 900, 123]);
        assert_eq!(&status[27..30], &[2, 0, 11]);
        // Acknowledging result 2 takes 1 and 2; acknowledging it again changes nothing.
        image.write(203, &[2], Instant::now()).unwrap();
        assert_eq!(image.pending(), 1);
        image.write(203, &[2], Instant::now()).unwrap();
        assert_eq!(image.pending(), 1);
        let status = image.status_words();
        assert_eq!(&status[20..23], &[3, 0, 12]);
        assert_eq!(&status[27..34], &[0; 7]);
        image.write(203, &[3], Instant::now()).unwrap();
        assert_eq!(image.status_words()[0] & status_bit::RESULTS_VALID, 0);
    }

    #[test]
    fn sequence_numbers_skip_zero_when_they_wrap() {
        let mut image = online();
        image.sequence = u16::MAX - 1;
        assert_eq!(image.push_result(entry(1, GateVerdict::Pass)), Ok(u16::MAX));
        assert_eq!(image.push_result(entry(2, GateVerdict::Pass)), Ok(1));
    }

    #[test]
    fn words_follow_the_configured_order() {
        let mut image = ServerImage::new(BLOCKS, WordOrder::LowFirst);
        image.set_running(true);
        image
            .write(
                200,
                &[
                    control_bit::TRIGGER_ENABLE | control_bit::TRIGGER,
                    0x0002,
                    0x0001,
                ],
                Instant::now(),
            )
            .unwrap();
        assert_eq!(image.last_tracking_id, 0x0001_0002);
        image
            .push_result(entry(0x0003_0004, GateVerdict::Pass))
            .unwrap();
        let status = image.status_words();
        assert_eq!(&status[2..4], &[0x0002, 0x0001]);
        assert_eq!(&status[21..23], &[0x0004, 0x0003]);
    }

    #[test]
    fn reads_and_writes_outside_the_blocks_are_illegal_addresses() {
        let mut image = online();
        assert_eq!(image.read(199, 2), Err(ExceptionCode::IllegalDataAddress));
        assert_eq!(image.read(300, 42), Err(ExceptionCode::IllegalDataAddress));
        // More than a reply can carry is an illegal value, whatever the block's size.
        let mut deep = online();
        deep.blocks.results_depth = 32;
        assert_eq!(deep.read(300, 126), Err(ExceptionCode::IllegalDataValue));
        assert_eq!(deep.read(300, 125).map(|w| w.len()), Ok(125));
        assert_eq!(image.read(300, 41).map(|w| w.len()), Ok(41));
        assert_eq!(image.read(204, 1).map(|w| w.len()), Ok(1));
        assert_eq!(image.read(0, 1), Err(ExceptionCode::IllegalDataAddress));
        // The status block is the station's: the PLC cannot write it.
        assert_eq!(
            image.write(300, &[0xffff], Instant::now()),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(
            image.write(203, &[1, 2, 3], Instant::now()),
            Err(ExceptionCode::IllegalDataAddress)
        );
        assert_eq!(image.read(200, 0), Err(ExceptionCode::IllegalDataValue));
    }
}
