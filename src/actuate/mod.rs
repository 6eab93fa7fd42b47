//! Reject gate actuation over Modbus TCP.
//!
//! [`GateLink`] owns the connection to the PLC. Every request has a deadline
//! (`plc.request_timeout_ms`; tokio-modbus sets none); after a timeout or a transport error the
//! connection is dropped and rebuilt on the next request, so a late reply is never read as the
//! answer to the next question. Failed connection attempts back off (100 ms doubling to 2 s,
//! ± 25 % jitter). PLC exception replies are kept apart from link errors.
//!
//! [`run_gate`] is the stage task: it sends each part's gate command (its verdict: only PASS
//! lets a part by) inside the part's gate window, never before it opens nor after it closes,
//! and hands every outcome on to the recorder with its actuation time.
//! [`run_heartbeat`] keeps the heartbeat going on a second connection, so a slow heartbeat
//! never delays a reject.
//!
//! Safe state: on a clean stop the heartbeat task writes `station_state = 0`; on any stop the
//! heartbeat ends. The PLC program (`firmware-io/plc/linesight_gate.st`) diverts every part in
//! either case, and any part whose PASS does not arrive in time, so a dead or late station
//! rejects rather than passes.

pub mod halt_line;
mod register_map;
pub mod server;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_modbus::client::{Client, Context, tcp};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

pub use self::halt_line::{Burst, BurstDetector, BurstRule, HaltLineSection};
pub use self::register_map::{
    GATE_COMMAND_LEN, GateCommandWords, GateVerdict, HaltLineCoil, PLC_STATUS_LEN,
    PlcProgramSettings, PlcTracking, Register, RegisterMap, RegisterMapError, SERVER_CONTROL_LEN,
    SERVER_RESULT_LEN, SERVER_STATUS_HEADER_LEN, ServerBlocks, WordOrder,
};
use crate::config::PlcLostPolicy;
use crate::metrics::Metrics;
use crate::part::{Actuation, Disposition, PartOutcome, StationClock};
use crate::track::{GatePlace, SharedEncoder};

/// The alarm raised while the PLC's own heartbeat has stopped.
pub const PLC_LOST_ALARM: &str = "plc_heartbeat_lost";

/// Why a request to the PLC failed.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("PLC {plc} (unit {unit}): connect timed out after {timeout:?}")]
    ConnectTimeout {
        plc: SocketAddr,
        unit: u8,
        timeout: Duration,
    },
    #[error("PLC {plc} (unit {unit}): cannot connect: {source}")]
    Connect {
        plc: SocketAddr,
        unit: u8,
        source: std::io::Error,
    },
    #[error("PLC {plc} (unit {unit}): not connected; the next attempt in {retry_in:?}")]
    Reconnecting {
        plc: SocketAddr,
        unit: u8,
        retry_in: Duration,
    },
    #[error("PLC {plc} (unit {unit}): {what} at register {address}: no reply within {timeout:?}")]
    Timeout {
        plc: SocketAddr,
        unit: u8,
        what: &'static str,
        address: u16,
        timeout: Duration,
    },
    #[error("PLC {plc} (unit {unit}): {what} at register {address}: link error: {source}")]
    Link {
        plc: SocketAddr,
        unit: u8,
        what: &'static str,
        address: u16,
        source: tokio_modbus::Error,
    },
    #[error(
        "PLC {plc} (unit {unit}): {what} at register {address}: PLC answered exception {code:?}"
    )]
    Exception {
        plc: SocketAddr,
        unit: u8,
        what: &'static str,
        address: u16,
        code: ExceptionCode,
    },
    #[error("PLC {plc} (unit {unit}): {what} at register {address}: unexpected reply {reply:?}")]
    UnexpectedReply {
        plc: SocketAddr,
        unit: u8,
        what: &'static str,
        address: u16,
        reply: Response,
    },
}

impl GateError {
    /// Whether the link was dropped (and will be rebuilt) because of this error.
    pub fn is_link_error(&self) -> bool {
        !matches!(
            self,
            GateError::Exception { .. } | GateError::UnexpectedReply { .. }
        )
    }
}

/// The station's Modbus TCP connection to the line PLC.
pub struct GateLink {
    plc: SocketAddr,
    unit: u8,
    request_timeout: Duration,
    map: RegisterMap,
    context: Option<Context>,
    /// After a failed connect, no new attempt before this; doubled (with jitter) by each
    /// failure in a row, so a PLC that reboots is not hammered by every request.
    reconnect: Backoff,
    gate_sequence: u16,
    heartbeat: u16,
}

/// Jittered exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    /// The next attempt's base delay.
    base: Duration,
    /// No attempt before this.
    not_before: Option<tokio::time::Instant>,
    /// The longest base delay.
    max: Duration,
}

/// The first and the longest wait between connection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            base: BACKOFF_MIN,
            not_before: None,
            max: BACKOFF_MAX,
        }
    }

    /// A connection attempt failed: wait the base delay ± 25 % (so the station's links, and
    /// stations that lost the same PLC, do not retry in step), then double it.
    fn failed(&mut self) {
        use rand::Rng;
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        self.not_before = Some(tokio::time::Instant::now() + self.base.mul_f64(jitter));
        self.base = (self.base * 2).min(self.max);
    }

    fn connected(&mut self) {
        *self = Backoff {
            max: self.max,
            ..Backoff::new()
        };
    }

    /// How long until the next attempt may be made, if it must wait.
    fn wait(&self) -> Option<Duration> {
        let wait = self
            .not_before?
            .checked_duration_since(tokio::time::Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}

impl GateLink {
    /// A link to `plc`; it connects on the first request.
    pub fn new(plc: SocketAddr, unit: u8, request_timeout: Duration, map: RegisterMap) -> GateLink {
        GateLink {
            plc,
            unit,
            request_timeout,
            map,
            context: None,
            reconnect: Backoff::new(),
            gate_sequence: 0,
            heartbeat: 0,
        }
    }

    /// Caps the wait between connection attempts at `max` (at least the first wait, 100 ms):
    /// for the links parts wait on (gate commands, the encoder), where every second spent
    /// waiting after the PLC is back costs the parts that go by meanwhile.
    pub fn cap_reconnect_wait(&mut self, max: Duration) {
        self.reconnect.max = max.max(BACKOFF_MIN);
    }

    /// The PLC this link talks to.
    pub fn plc(&self) -> SocketAddr {
        self.plc
    }

    /// How long until the next connection attempt, while the link waits after failed ones.
    pub fn reconnect_wait(&self) -> Option<Duration> {
        self.reconnect.wait()
    }

    /// How long before a part reaches the diverter the PLC program takes its command (see
    /// [`GateContext::command_window`]).
    pub fn command_window(&self) -> Duration {
        let program = &self.map.plc_program;
        Duration::from_millis(program.match_before_ms + program.eye_to_gate_ms)
    }

    /// Checks the link the way it will be used: reads the heartbeat and the last gate
    /// command, continues both counters from the PLC's values (so the first command after a
    /// restart carries a new sequence number and is taken), then marks the station running.
    pub async fn start(&mut self) -> Result<(), GateError> {
        let address = self.map.heartbeat.address;
        self.heartbeat = self.read_register("read heartbeat", address).await?;
        let address = self.map.gate_command.address + GATE_COMMAND_LEN - 1;
        self.gate_sequence = self.read_register("read gate sequence", address).await?;
        self.set_running(true).await
    }

    /// A second, unconnected link to the same PLC that continues this link's heartbeat count,
    /// so heartbeats never queue behind reject commands.
    pub fn sibling(&self) -> GateLink {
        let mut link = GateLink::new(self.plc, self.unit, self.request_timeout, self.map);
        link.heartbeat = self.heartbeat;
        link
    }

    async fn read_register(&mut self, what: &'static str, address: u16) -> Result<u16, GateError> {
        match self
            .call(
                what,
                address,
                Request::ReadHoldingRegisters(address, 1),
                self.request_timeout,
            )
            .await?
        {
            Response::ReadHoldingRegisters(words) if words.len() == 1 => Ok(words[0]),
            reply => Err(self.unexpected(what, address, reply)),
        }
    }

    /// Writes `station_state`: 1 while running, 0 once stopped.
    pub async fn set_running(&mut self, running: bool) -> Result<(), GateError> {
        let state = if running {
            StationStateWord::Running
        } else {
            StationStateWord::Stopped
        };
        self.set_state(state).await
    }

    /// Writes `station_state`.
    pub async fn set_state(&mut self, state: StationStateWord) -> Result<(), GateError> {
        let address = self.map.station_state.address;
        self.write_register("write station state", address, state as u16)
            .await
    }

    /// Writes the next heartbeat value and, with it, `station_state = 1`: a PLC that restarted
    /// (its registers back to 0) learns again that the station runs, with its next beat. One
    /// FC16 when the two registers are neighbours, as in the shipped map.
    pub async fn beat_running(&mut self) -> Result<(), GateError> {
        self.beat_with(StationStateWord::Running).await
    }

    /// Writes the next heartbeat value and, with it, `state` (see [`GateLink::beat_running`]).
    pub async fn beat_with(&mut self, state: StationStateWord) -> Result<(), GateError> {
        let (heartbeat, address) = (self.map.heartbeat.address, self.map.station_state.address);
        if heartbeat.checked_add(1) != Some(address) {
            self.beat().await?;
            return self.set_state(state).await;
        }
        self.heartbeat = self.heartbeat.wrapping_add(1);
        let what = "write heartbeat and station state";
        let request =
            Request::WriteMultipleRegisters(heartbeat, vec![self.heartbeat, state as u16].into());
        match self
            .call(what, heartbeat, request, self.request_timeout)
            .await?
        {
            Response::WriteMultipleRegisters(a, 2) if a == heartbeat => Ok(()),
            reply => Err(self.unexpected(what, heartbeat, reply)),
        }
    }

    /// Writes the next heartbeat value.
    pub async fn beat(&mut self) -> Result<(), GateError> {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        let address = self.map.heartbeat.address;
        self.write_register("write heartbeat", address, self.heartbeat)
            .await
    }

    /// Sends one gate command for `part_id`. A resend after a failure keeps its sequence
    /// number, so the PLC takes it at most once.
    pub async fn command(
        &mut self,
        part_id: u64,
        verdict: GateVerdict,
        resend: bool,
    ) -> Result<(), GateError> {
        self.command_within(part_id, verdict, resend, self.request_timeout)
            .await
    }

    /// [`GateLink::command`] with the whole exchange (connect included) held to `limit` or the
    /// request timeout, whichever is shorter: a command is worth nothing after its window.
    pub async fn command_within(
        &mut self,
        part_id: u64,
        verdict: GateVerdict,
        resend: bool,
        limit: Duration,
    ) -> Result<(), GateError> {
        if !resend {
            self.gate_sequence = self.gate_sequence.wrapping_add(1);
        }
        let words = self.map.encode_gate_command(GateCommandWords {
            part_id: part_id as u32,
            verdict,
            class: 0,
            sequence: self.gate_sequence,
        });
        let address = self.map.gate_command.address;
        let request = Request::WriteMultipleRegisters(address, words.to_vec().into());
        match self
            .call(
                "write gate command",
                address,
                request,
                limit.min(self.request_timeout),
            )
            .await?
        {
            Response::WriteMultipleRegisters(a, n) if a == address && n == GATE_COMMAND_LEN => {
                Ok(())
            }
            reply => Err(self.unexpected("write gate command", address, reply)),
        }
    }

    /// Reads the belt encoder's count and the PLC's heartbeat (`plc_status + 0`), in one
    /// request when the two are near each other (as in the shipped map), else in two.
    pub async fn read_encoder_and_heartbeat(&mut self) -> Result<(u32, u16), GateError> {
        let status = self.map.plc_status.address;
        let Some(encoder) = self.map.encoder else {
            return self.read_encoder().await.map(|count| (count, 0));
        };
        // One request when the encoder's two words follow the heartbeat within 125 registers
        // (Modbus's most in one read); the span is worked out only then, since an encoder
        // below the heartbeat would take it under zero.
        let span = (encoder.address > status)
            .then(|| u32::from(encoder.address) + 2 - u32::from(status))
            .filter(|&span| span <= 125);
        let Some(span) = span else {
            let count = self.read_encoder().await?;
            let status = self.plc_status().await?;
            return Ok((count, status[0]));
        };
        let words = self
            .read_holding("read encoder and PLC heartbeat", status, span as u16)
            .await?;
        let at = usize::from(encoder.address - status);
        let count = self.map.words.order.join([words[at], words[at + 1]]);
        Ok((count, words[0]))
    }

    /// The PLC program's heartbeat period (`[plc_program] plc_heartbeat_ms`).
    pub fn plc_heartbeat_period(&self) -> Duration {
        Duration::from_millis(self.map.plc_program.plc_heartbeat_ms)
    }

    /// Reads the belt encoder's count (the register map's `[encoder]`).
    pub async fn read_encoder(&mut self) -> Result<u32, GateError> {
        let what = "read encoder";
        let Some(encoder) = self.map.encoder else {
            // The map is checked at load: encoder tracking has the register.
            return Err(self.unexpected(what, 0, Response::ReadHoldingRegisters(Vec::new())));
        };
        let words = self.read_holding(what, encoder.address, 2).await?;
        Ok(self.map.words.order.join([words[0], words[1]]))
    }

    /// Reads `count` holding registers from `address`; a reply of another length is an error.
    async fn read_holding(
        &mut self,
        what: &'static str,
        address: u16,
        count: u16,
    ) -> Result<Vec<u16>, GateError> {
        match self
            .call(
                what,
                address,
                Request::ReadHoldingRegisters(address, count),
                self.request_timeout,
            )
            .await?
        {
            Response::ReadHoldingRegisters(words) if words.len() == usize::from(count) => Ok(words),
            reply => Err(self.unexpected(what, address, reply)),
        }
    }

    /// The PLC program's command window in encoder counts, `match_before_counts +
    /// eye_to_gate_counts` (encoder tracking).
    pub fn command_window_counts(&self) -> i64 {
        let program = &self.map.plc_program;
        i64::try_from(
            program
                .match_before_counts
                .saturating_add(program.eye_to_gate_counts),
        )
        .unwrap_or(i64::MAX)
    }

    /// Reads the PLC's status block (its heartbeat, status bits and counters).
    pub async fn plc_status(&mut self) -> Result<[u16; PLC_STATUS_LEN as usize], GateError> {
        let address = self.map.plc_status.address;
        let words = self
            .read_holding("read PLC status", address, PLC_STATUS_LEN)
            .await?;
        let mut status = [0; PLC_STATUS_LEN as usize];
        status.copy_from_slice(&words);
        Ok(status)
    }

    async fn write_register(
        &mut self,
        what: &'static str,
        address: u16,
        value: u16,
    ) -> Result<(), GateError> {
        match self
            .call(
                what,
                address,
                Request::WriteSingleRegister(address, value),
                self.request_timeout,
            )
            .await?
        {
            Response::WriteSingleRegister(a, v) if a == address && v == value => Ok(()),
            reply => Err(self.unexpected(what, address, reply)),
        }
    }

    fn unexpected(&self, what: &'static str, address: u16, reply: Response) -> GateError {
        GateError::UnexpectedReply {
            plc: self.plc,
            unit: self.unit,
            what,
            address,
            reply,
        }
    }

    /// One request under the deadline; the connection is dropped on any link failure.
    async fn call(
        &mut self,
        what: &'static str,
        address: u16,
        request: Request<'static>,
        limit: Duration,
    ) -> Result<Response, GateError> {
        let (plc, unit) = (self.plc, self.unit);
        let started = tokio::time::Instant::now();
        let context = match &mut self.context {
            Some(context) => context,
            None => {
                if let Some(retry_in) = self.reconnect.wait() {
                    return Err(GateError::Reconnecting {
                        plc,
                        unit,
                        retry_in,
                    });
                }
                let connected = match timeout(limit, tcp::connect_slave(plc, Slave(unit))).await {
                    Err(_) => Err(GateError::ConnectTimeout {
                        plc,
                        unit,
                        timeout: limit,
                    }),
                    Ok(Err(source)) => Err(GateError::Connect { plc, unit, source }),
                    Ok(Ok(context)) => Ok(context),
                };
                match connected {
                    Ok(context) => {
                        self.reconnect.connected();
                        self.context.insert(context)
                    }
                    Err(error) => {
                        // A connect cut short by the caller's own deadline (what is left of a
                        // part's window, a few milliseconds) says nothing of the PLC: backing
                        // off for it would turn the next parts' commands away unsent.
                        let cut_short = matches!(error, GateError::ConnectTimeout { .. })
                            && limit < self.request_timeout;
                        if !cut_short {
                            self.reconnect.failed();
                        }
                        return Err(error);
                    }
                }
            }
        };
        let remaining = limit.saturating_sub(started.elapsed());
        match timeout(remaining, context.call(request)).await {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(GateError::Exception {
                plc,
                unit,
                what,
                address,
                code,
            }),
            Ok(Err(source)) => {
                self.context = None;
                Err(GateError::Link {
                    plc,
                    unit,
                    what,
                    address,
                    source,
                })
            }
            Err(_) => {
                // The reply may still come; only a fresh connection guarantees we never read it.
                self.context = None;
                Err(GateError::Timeout {
                    plc,
                    unit,
                    what,
                    address,
                    timeout: limit,
                })
            }
        }
    }
}

/// A part that has reached its fire time; `outcome.actuation` is filled in by the gate.
#[derive(Debug)]
pub struct GateCommand {
    pub outcome: PartOutcome,
    /// Encoder tracking: where the part reaches the diverter.
    pub place: Option<GatePlace>,
}

/// Encoder tracking's last check before a command leaves: the belt must have the part inside
/// the PLC's window in counts, which a time prediction alone cannot promise when the belt
/// changes speed or a reading comes late.
#[derive(Debug, Clone)]
pub struct EncoderGate {
    pub track: SharedEncoder,
    /// The PLC program's window before the diverter, `match_before_counts +
    /// eye_to_gate_counts`: a command must arrive with its part at most this many counts, and
    /// at least none, from the diverter.
    pub window_counts: i64,
    /// How long a command may wait for its window (a belt that stands) before it is given up.
    pub wait_at_most: Duration,
}

/// Where a part stands against its window, by the newest fresh reading.
enum WindowCheck {
    Inside,
    /// Not yet (or the encoder cannot be read now): look again.
    NotYet,
    Missed(String),
}

impl EncoderGate {
    /// Counts from the belt's place now to `place`, by a fresh reading of the same epoch.
    fn remaining(&self, place: GatePlace, now: crate::part::StationTime) -> Option<i64> {
        let track = crate::track::belt::lock(&self.track);
        let view = track.view(now)?;
        (track.epoch() == place.epoch).then(|| place.position - view.position_at(now))
    }

    /// Counts from the belt's place at `at` to `place`: by the reading fresh at `at`, or
    /// else interpolated between the readings either side of it, waiting for the one after
    /// until `give_up`. `None` if none came by then, if the two around `at` are too far apart
    /// to place it ([`crate::track::belt::PLACE_ACROSS`]), or if the count started again.
    async fn remaining_at(
        &self,
        place: GatePlace,
        at: crate::part::StationTime,
        clock: &StationClock,
        give_up: crate::part::StationTime,
    ) -> Option<i64> {
        loop {
            let now = clock.now();
            {
                let track = crate::track::belt::lock(&self.track);
                if track.epoch() != place.epoch {
                    return None;
                }
                if let Some(position) = track.position_at(at) {
                    return Some(place.position - position);
                }
                // A reading after `at` that still cannot place it: the gap is too wide.
                if track.newest_at().is_some_and(|newest| newest > at) {
                    return None;
                }
            }
            if now >= give_up {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn check(&self, place: GatePlace, now: crate::part::StationTime) -> WindowCheck {
        let track = crate::track::belt::lock(&self.track);
        let Some(view) = track.view(now) else {
            return WindowCheck::NotYet;
        };
        if track.epoch() != place.epoch {
            return WindowCheck::Missed(
                "the PLC's encoder count started again: the part's place on the belt is lost"
                    .into(),
            );
        }
        let remaining = place.position - view.position_at(now);
        // A millisecond of belt travel each side, for the request's way to the PLC.
        let margin = view.counts_per_ms().ceil() as i64 + 1;
        // The window's near end is judged by the newest reading itself, not by a prediction
        // from it: the PLC takes the command at a count no lower than one it has already
        // reported, so a command sent when that reading is inside arrives inside, however the
        // belt slowed since (a prediction at the last speed runs ahead of a belt that slows,
        // and its command would arrive before the window and be dropped as stale).
        let remaining_at_most = place.position - view.measured_position();
        if remaining < margin {
            WindowCheck::Missed(format!(
                "the part was {remaining} counts from the diverter: too late for the PLC's window"
            ))
        } else if remaining_at_most > self.window_counts - margin {
            WindowCheck::NotYet
        } else {
            WindowCheck::Inside
        }
    }

    /// Waits until the part is inside its window; why not, when it never will be.
    async fn wait_for_window(&self, place: GatePlace, clock: &StationClock) -> Result<(), String> {
        let give_up = tokio::time::Instant::now() + self.wait_at_most;
        loop {
            match self.check(place, clock.now()) {
                WindowCheck::Inside => return Ok(()),
                WindowCheck::Missed(why) => return Err(why),
                WindowCheck::NotYet if tokio::time::Instant::now() >= give_up => {
                    return Err(format!(
                        "no window for the part within {:?} (the belt stood, or the encoder \
                         could not be read)",
                        self.wait_at_most
                    ));
                }
                WindowCheck::NotYet => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }

    /// Waits until the belt has carried `place` past the diverter, at most `wait_at_most`.
    async fn wait_past(&self, place: GatePlace, clock: &StationClock) {
        let give_up = tokio::time::Instant::now() + self.wait_at_most;
        while tokio::time::Instant::now() < give_up {
            let past = {
                let track = crate::track::belt::lock(&self.track);
                track.epoch() != place.epoch
                    || track
                        .view(clock.now())
                        .is_some_and(|view| view.position_at(clock.now()) > place.position)
            };
            if past {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Everything [`run_gate`] needs.
pub struct GateContext {
    pub link: GateLink,
    pub commands: mpsc::Receiver<GateCommand>,
    /// Outcomes go on to the recorder; a full channel makes the gate wait.
    pub outcomes: mpsc::Sender<PartOutcome>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
    /// Set while the PLC's heartbeat is lost ([`PlcWatch`]): no PASS is sent then, and a part
    /// whose PASS is held back is recorded as rejected by policy.
    pub plc_lost: Arc<AtomicBool>,
    /// Each command leaves this long before its part reaches the diverter
    /// (`line.actuation_lead_ms`), timed here to well under a millisecond: the tracker hands
    /// parts over [`DISPATCH_AHEAD`] earlier, since the runtime's timers only keep
    /// milliseconds.
    /// How long before a part reaches the diverter the PLC program takes its command (its
    /// `match_before_ms + eye_to_gate_ms`): a command must land in `[gate − this, gate]`.
    /// Earlier it is stale; later its part is already diverted.
    pub command_window: Duration,
    pub lead: Duration,
    /// Encoder tracking: each command's last check against the belt (its window in counts).
    pub encoder: Option<EncoderGate>,
}

/// How much earlier than its fire time the tracker hands a part to the gate task, which then
/// waits out the rest precisely.
pub const DISPATCH_AHEAD: Duration = Duration::from_millis(3);

/// Waits until `deadline` to well under a millisecond: a timer for all but the last
/// 1.5 ms (tokio's timers round to milliseconds), then yielding until it has passed.
async fn wait_precisely(deadline: std::time::Instant) {
    let coarse = deadline.checked_sub(Duration::from_micros(1500));
    if let Some(coarse) = coarse
        && coarse > std::time::Instant::now()
    {
        tokio::time::sleep_until(coarse.into()).await;
    }
    while std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

/// The verdict a part's disposition puts on the wire.
pub fn gate_verdict(disposition: Disposition) -> GateVerdict {
    match disposition {
        Disposition::Pass => GateVerdict::Pass,
        Disposition::RejectFailed => GateVerdict::RejectDefect,
        Disposition::RejectError => GateVerdict::RejectError,
        Disposition::RejectNoVerdict => GateVerdict::RejectByPolicy,
    }
}

/// The gate task: sends each part's command and hands the outcome to the recorder. Runs
/// until the command channel closes, then until the last part has reached the diverter: the
/// station must not say it stopped (which diverts everything) while a passed part is still
/// on its way.
pub async fn run_gate(mut ctx: GateContext) {
    let mut last_gate = None;
    let mut last_place = None;
    while let Some(GateCommand { mut outcome, place }) = ctx.commands.recv().await {
        outcome.actuation = actuate(&mut ctx, &outcome, place).await;
        // A PASS held back or not delivered leaves the part diverted: recorded as such.
        outcome.settle_undelivered_pass();
        last_gate = Some(outcome.gate_at);
        last_place = place.or(last_place);
        if ctx.outcomes.send(outcome).await.is_err() {
            tracing::error!("recorder stopped; gate outcomes can no longer be recorded");
            break;
        }
    }
    if let (Some(encoder), Some(place)) = (&ctx.encoder, last_place) {
        // Encoder tracking: the last part is at the diverter when the belt says so, and
        // decided a scan or two later.
        encoder.wait_past(place, &ctx.clock).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    } else if let Some(gate_at) = last_gate {
        // The PLC decides at the diverter, a scan or two after the part's time there.
        let decided = ctx.clock.instant(gate_at) + Duration::from_millis(50);
        tokio::time::sleep_until(decided.into()).await;
    }
}

/// The actuation error of a part whose PASS was held back while the PLC was lost: what its
/// record says of why a part the model passed was rejected.
const PASS_HELD: &str =
    "PASS held back: the PLC's heartbeat is lost, so the part went as reject by policy";

/// Sends a part's command inside its window, resending once over a fresh link while the
/// window is open. A command that cannot be acknowledged inside the window is recorded as
/// failed: the PLC diverts a part without a command, so a failed PASS costs a good part, never
/// ships a bad one. A delivered PASS fires nothing ([`Actuation::NotRequired`]). A PASS held
/// back while the PLC is lost is recorded as failed, with the reason (the caller settles the
/// part as rejected, [`PartOutcome::settle_undelivered_pass`]).
async fn actuate(
    ctx: &mut GateContext,
    outcome: &PartOutcome,
    place: Option<GatePlace>,
) -> Actuation {
    let mut verdict = gate_verdict(outcome.disposition);
    let mut held_by_policy = false;
    let opens = outcome.gate_at.before(ctx.command_window);
    // Under encoder tracking the window is in counts (checked before each send); the
    // predicted time only bounds how long a command is tried.
    let encoder = ctx.encoder.clone().zip(place);
    let closes = match encoder {
        Some((ref gate, _)) => outcome.gate_at.after(gate.wait_at_most),
        None => outcome.gate_at,
    };
    // The early edge: a command before the window would be stale at the PLC; and it leaves at
    // its fire time, not when the tracker handed it over.
    let fire_at = outcome.gate_at.before(ctx.lead).max(opens);
    if ctx.clock.now() < fire_at {
        wait_precisely(ctx.clock.instant(fire_at)).await;
    }
    let mut resend = false;
    let failed = |ctx: &mut GateContext, verdict: GateVerdict, error: String| {
        ctx.metrics.gate_commands_failed.inc();
        if verdict == GateVerdict::Pass {
            tracing::warn!(part_id = %outcome.part_id, %error, "PASS not delivered; the PLC diverts the part");
        } else {
            tracing::error!(part_id = %outcome.part_id, %error, "reject command not delivered; the PLC diverts a part without one");
        }
        Actuation::Failed {
            at: ctx.clock.now(),
            error,
        }
    };
    // Every way out of the loop is a `break` with the actuation, so that whether the PASS was
    // held goes with it whichever way the command ended (a held PASS whose reject by policy
    // then failed to send is still a part without a PASS).
    let actuation = loop {
        let now = ctx.clock.now();
        if now >= closes {
            break failed(
                ctx,
                verdict,
                format!(
                    "gate window closed {:?} before the command could be sent",
                    now.0 - closes.0
                ),
            );
        }
        if let Some((gate, place)) = &encoder
            && let Err(why) = gate.wait_for_window(*place, &ctx.clock).await
        {
            break failed(ctx, verdict, why);
        }
        // A PLC that lost its heartbeat may be running anything but its program; when it comes
        // back it must not find a PASS for a part that went by meanwhile. Looked at just before
        // the send: the command may have waited for its window while the heartbeat was lost.
        // A resend carries the first send's words under its sequence number (the PLC takes a
        // sequence once), so a PASS whose first send may have landed is not resent once the
        // PLC is lost, nor turned into a reject the PLC would ignore.
        if verdict == GateVerdict::Pass && ctx.plc_lost.load(Ordering::Relaxed) {
            if resend {
                break failed(
                    ctx,
                    verdict,
                    "the PLC's heartbeat was lost before the PASS could be resent; the first \
                     send may have landed"
                        .into(),
                );
            }
            verdict = GateVerdict::RejectByPolicy;
            held_by_policy = true;
        }
        match ctx
            .link
            .command_within(outcome.part_id.0, verdict, resend, closes.0 - now.0)
            .await
        {
            Ok(()) => {
                let at = ctx.clock.now();
                // Under encoder tracking, where the part was when a PASS was acknowledged: the
                // stall that slowed the answer often stopped the encoder's reads too, so a
                // stale reading then is placed by the next one. Still before the diverter, the
                // command (which landed before it was acknowledged) was in time. No place by
                // the window's end and the command may have landed after the part's diverter
                // count: it counts as late, as an undelivered PASS does, so the part is
                // recorded as diverted, never as shipped. (A late reject changes nothing at
                // the diverter: judged on the reading at hand, without waiting.)
                let counts_left = match &encoder {
                    Some((gate, place)) if verdict == GateVerdict::Pass => {
                        Some(gate.remaining_at(*place, at, &ctx.clock, closes).await)
                    }
                    Some((gate, place)) => gate.remaining(*place, at).map(Some),
                    None => None,
                };
                let late = match counts_left {
                    _ if at > closes => Some("PLC acknowledged after the gate window"),
                    Some(Some(remaining)) if remaining < 0 => {
                        Some("PLC acknowledged after the part passed the diverter")
                    }
                    Some(None) => Some(
                        "PLC acknowledged when the encoder could not tell where the part was (no \
                         fresh reading before the window closed, too long a gap between \
                         readings, or a count that started again): it may have passed the \
                         diverter",
                    ),
                    _ => None,
                };
                if let Some(why) = late {
                    break failed(ctx, verdict, why.into());
                }
                ctx.metrics.gate_commands_ok.inc();
                if held_by_policy {
                    break Actuation::Failed {
                        at,
                        error: PASS_HELD.into(),
                    };
                }
                break if verdict == GateVerdict::Pass {
                    Actuation::NotRequired
                } else {
                    Actuation::Done { at }
                };
            }
            Err(error) => {
                if error.is_link_error() {
                    ctx.metrics.plc_link_errors.inc();
                }
                if resend {
                    break failed(ctx, verdict, error.to_string());
                }
                tracing::warn!(part_id = %outcome.part_id, %error, "gate command failed; resending on a fresh link");
                resend = true;
            }
        }
    };
    // A held PASS whose reject by policy then could not be delivered either keeps both
    // reasons: why no PASS went out, and why the reject did not.
    match actuation {
        Actuation::Failed { at, error } if held_by_policy && error != PASS_HELD => {
            Actuation::Failed {
                at,
                error: format!("{PASS_HELD}; the reject was not delivered either: {error}"),
            }
        }
        actuation => actuation,
    }
}

/// The station's watch on the PLC's own heartbeat (the register map's `plc_status`).
pub struct PlcWatch {
    /// The PLC is lost when its heartbeat has not moved for this long.
    pub timeout: Duration,
    /// What to do while it is lost.
    pub policy: PlcLostPolicy,
    /// Set while it is lost; the gate task reads it.
    pub lost: Arc<AtomicBool>,
    /// Told `(lost, why)` at every change, to raise or clear [`PLC_LOST_ALARM`].
    pub report: Box<dyn Fn(bool, String) + Send + Sync>,
    /// Whether something else holds the halt coil ON right now (the halt-line action's
    /// latch): the coil the stop-line policy wrote is then left ON when the PLC is back.
    pub halt_held_elsewhere: HaltHeldProbe,
}

/// Asked whether another owner of the halt coil holds it ON.
pub type HaltHeldProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Heartbeats both ways: what the station last saw of the PLC's.
struct PlcHeartbeat {
    value: Option<u16>,
    moved_at: tokio::time::Instant,
    lost: bool,
    /// Whether the heartbeat has been seen to move (two readings that differ).
    seen_moving: bool,
}

impl PlcHeartbeat {
    fn new() -> PlcHeartbeat {
        PlcHeartbeat {
            value: None,
            moved_at: tokio::time::Instant::now(),
            lost: false,
            seen_moving: false,
        }
    }

    /// Takes one reading (`None`: the status could not be read); whether the PLC is lost now
    /// and whether that changed.
    fn observe(&mut self, reading: Option<u16>, timeout: Duration) -> (bool, bool) {
        let now = tokio::time::Instant::now();
        if let Some(value) = reading
            && self.value != Some(value)
        {
            self.seen_moving |= self.value.is_some();
            self.value = Some(value);
            self.moved_at = now;
        }
        let lost = now.duration_since(self.moved_at) >= timeout;
        let changed = lost != self.lost;
        self.lost = lost;
        (lost, changed)
    }
}

impl PlcWatch {
    /// The PLC was just lost (`lost`) or is back: the flag the gate reads, the metric, the log
    /// and the alarm. What the policy does at the PLC is the caller's (client and server mode
    /// signal it differently).
    fn changed(&self, lost: bool, metrics: &Metrics, plc: &str) {
        self.lost.store(lost, Ordering::Relaxed);
        metrics.plc_heartbeat_lost.set(i64::from(lost));
        let why = if lost {
            format!(
                "the PLC's heartbeat has not moved for {:?}: every part is sent as reject by \
                 policy{}",
                self.timeout,
                if self.policy == PlcLostPolicy::StopLine {
                    "; the line is halted"
                } else {
                    ""
                }
            )
        } else {
            "the PLC's heartbeat moves again".to_owned()
        };
        if lost {
            tracing::error!(%plc, "{why}");
        } else {
            tracing::info!(%plc, "{why}");
        }
        (self.report)(lost, why);
    }
}

/// What the station tells the PLC in `station_state` (the register map's `[station_state]`).
/// The PLC program runs its gate on the station's commands only while it reads `Running`;
/// anything else diverts every part and forgets the part ids it expected (rules R2, R3, R11
/// of `firmware-io/plc-program.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum StationStateWord {
    /// Written at a clean stop.
    Stopped = 0,
    Running = 1,
    /// The station's camera is lost: parts pass it unseen, so its part ids no longer follow
    /// the parts the PLC's eye counts. Back to `Running` once frames come again.
    CameraLost = 2,
}

/// Whether the station's camera is lost right now (asked at every beat).
pub type CameraLostProbe = Arc<dyn Fn() -> bool + Send + Sync>;

/// The heartbeat task, on its own connection: writes the heartbeat every `period` and reads
/// the PLC's, until `stop` fires, then writes the stopped state. Any stop ends the heartbeat,
/// which the PLC's watchdog treats as a dead station. A PLC whose heartbeat stands still for
/// `watch.timeout` is lost: the station raises the alarm, holds every PASS back and, by
/// policy, halts the line, until the PLC's heartbeat moves again. While `camera_lost` says
/// so, each beat carries [`StationStateWord::CameraLost`] instead of `Running`.
pub async fn run_heartbeat(
    mut link: GateLink,
    period: Duration,
    metrics: Metrics,
    watch: PlcWatch,
    camera_lost: CameraLostProbe,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beating = true;
    // Whether the PLC is lost under `StopLine` and the halt coil has not yet been written.
    let mut halt_owed = false;
    // Whether this task wrote the coil ON and has not written it OFF since: while the PLC is
    // not lost, the coil is owed an OFF. A station stopped while its halt was on left the
    // coil ON, so under `StopLine` one is owed at start too (as the halt-line action writes
    // its state at its start).
    let mut halt_written = watch.policy == PlcLostPolicy::StopLine;
    let mut halt_failures = 0u64;
    let mut plc = PlcHeartbeat::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let state = if camera_lost() {
            StationStateWord::CameraLost
        } else {
            StationStateWord::Running
        };
        match link.beat_with(state).await {
            Ok(()) if !beating => {
                tracing::info!(plc = %link.plc(), "heartbeat restored");
                beating = true;
            }
            Ok(()) => {}
            Err(error) => {
                metrics.heartbeat_failures.inc();
                if error.is_link_error() {
                    metrics.plc_link_errors.inc();
                }
                if beating {
                    tracing::error!(%error, "heartbeat failed; the PLC watchdog will divert parts to reject");
                    beating = false;
                }
            }
        }
        let reading = if beating {
            link.plc_status().await.ok().map(|status| status[0])
        } else {
            None
        };
        let (lost, changed) = plc.observe(reading, watch.timeout);
        if changed {
            watch.changed(lost, &metrics, &link.plc().to_string());
            halt_owed = lost && watch.policy == PlcLostPolicy::StopLine;
            halt_failures = 0;
        }
        // The PLC program latches the halt on the coil's rising edge (rule R8), so it holds
        // until an operator resets it at the line, whatever the coil does next, but releases it
        // only while the coil is OFF: once the PLC is back the coil is written OFF again, or
        // nothing would ever let the line restart. The halt-line action, when latched, holds
        // the coil for its own reason and writes it OFF after its own reset; should it latch
        // between the look and the write, a second look after the write puts the coil back
        // ON (below; its own reassertion every `reassert_ms` backs that up). The PLC is mostly
        // lost with its link, so a write often fails: it is tried again every beat until one
        // lands or the state owed changes.
        if !lost && halt_written && (watch.halt_held_elsewhere)() {
            halt_written = false;
        }
        // Never OFF before the PLC's heartbeat was seen to move: a station that starts while
        // the PLC is lost must not let the line's reset release the halt meanwhile.
        let owed = if halt_owed {
            Some(true)
        } else if !lost && halt_written && plc.seen_moving {
            Some(false)
        } else {
            None
        };
        if let (Some(on), Some(halt)) = (owed, link.map.halt_line) {
            // A write that times out may still land: an ON attempted is owed an OFF later.
            halt_written |= on;
            match link.write_coil(halt.coil, on).await {
                Ok(()) => {
                    if on {
                        halt_owed = false;
                    } else {
                        tracing::info!(
                            coil = halt.coil,
                            "PLC back: halt-line coil OFF, the operator's reset releases the line"
                        );
                    }
                    halt_written = on;
                    halt_failures = 0;
                }
                Err(error) => {
                    halt_failures += 1;
                    if halt_failures == 1 {
                        tracing::error!(%error, on, "could not write the halt-line coil; trying again every beat");
                    } else {
                        tracing::debug!(%error, on, halt_failures, "could not write the halt-line coil");
                    }
                }
            }
            // The halt-line action may have latched between the look above and this OFF
            // landing (or failing, which may land too), its ON written before ours: our OFF
            // would then stand until its next reassertion (`reassert_ms`), and an operator's
            // reset at the line meanwhile would release a halt the station still holds. It
            // sets its latch before it writes, so a second look now sees it, and the coil is
            // written back ON at once. That ON is this task's own, owed an OFF like any other:
            // the next beat's look hands the coil to the action if it still holds the latch,
            // or writes it OFF if the action was reset while the ON was on its way. Such an ON,
            // landing after the action's own OFF, is a rising edge the PLC latches again until
            // that OFF and a reset at the line: safe, for one write's round trip.
            if !on && (watch.halt_held_elsewhere)() {
                halt_written = true;
                restore_held_halt(&mut link, halt.coil).await;
            }
        }
    }
    if let Err(error) = link.set_running(false).await {
        tracing::warn!(%error, "could not write the stopped state; the PLC watchdog will trip instead");
    }
}

/// Writes the halt coil back ON after the heartbeat's OFF crossed a latch of the halt-line
/// action. A write that fails is left to the halt-line action's own reassertion.
async fn restore_held_halt(link: &mut GateLink, coil: u16) {
    match link.write_coil(coil, true).await {
        Ok(()) => tracing::warn!(
            coil,
            "the halt-line action latched while the coil was being released: ON again"
        ),
        Err(error) => tracing::error!(
            %error, coil,
            "the halt-line action latched while the coil was being released, and it could not be \
             written ON again; the action rewrites it within its reassert_ms"
        ),
    }
}

/// Encoder tracking: reads the PLC's encoder count (with its heartbeat, which tells a cable
/// pulled from a PLC that restarted) every `period` on its own connection, so the readings
/// are neither delayed by gate commands nor delay them, and records each with the middle of
/// its request's round trip as its time. A failed read records nothing: the
/// readings go stale, and the tracker fires no command on a stale one. Runs until `stop`.
pub async fn run_encoder(
    mut link: GateLink,
    period: Duration,
    track: crate::track::SharedEncoder,
    clock: Arc<StationClock>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut reading = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let sent = clock.now();
        match link.read_encoder_and_heartbeat().await {
            Ok((count, heartbeat)) => {
                let received = clock.now();
                let at = sent.after((received.0 - sent.0) / 2);
                let period = link.plc_heartbeat_period();
                if crate::track::belt::lock(&track).record_with_plc(at, count, heartbeat, period) {
                    metrics.encoder_resets.inc();
                    tracing::warn!(
                        count,
                        "the PLC's encoder count went back: it started again (a PLC restart?); the parts in flight lose their places and are rejected by policy"
                    );
                }
                if !reading {
                    tracing::info!(plc = %link.plc(), "encoder readings restored");
                    reading = true;
                }
            }
            Err(error) => {
                metrics.encoder_read_failures.inc();
                if error.is_link_error() {
                    metrics.plc_link_errors.inc();
                }
                if reading {
                    tracing::error!(%error, "cannot read the encoder; no gate command leaves until it is read again");
                    reading = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::part::StationTime;
    use crate::track::EncoderTrack;

    fn ms(n: u64) -> StationTime {
        StationTime(Duration::from_millis(n))
    }

    /// The last check before a command leaves under encoder tracking: inside the window in
    /// counts, whatever the time prediction said.
    #[test]
    fn an_encoder_command_leaves_only_with_its_part_inside_the_window_in_counts() {
        let track = EncoderTrack::shared(Duration::from_millis(10));
        let gate = EncoderGate {
            track: track.clone(),
            window_counts: 450,
            wait_at_most: Duration::from_secs(1),
        };
        let place = GatePlace {
            position: 10_000,
            epoch: 0,
        };
        // 10 counts per ms: a margin of 11 counts each side.
        let at = |t: u64, count: u32| crate::track::belt::lock(&track).record(ms(t), count);
        for t in 0..=20 {
            at(t * 2, 9_000 + t as u32 * 20);
        }
        // At 9,400 the part is 600 counts out: too early (stale at the PLC).
        assert!(matches!(gate.check(place, ms(40)), WindowCheck::NotYet));
        // 9,540 read at 54 ms: 460 counts out. Predicted at 10 counts per ms, the belt would
        // be inside by 57 ms, but it may have slowed since: the command waits for a reading
        // that puts the part inside.
        for t in 21..=27 {
            at(t * 2, 9_000 + t as u32 * 20);
        }
        assert!(matches!(gate.check(place, ms(57)), WindowCheck::NotYet));
        for t in 28..=30 {
            at(t * 2, 9_000 + t as u32 * 20);
        }
        // 9,600: 400 counts out, inside.
        assert!(matches!(gate.check(place, ms(60)), WindowCheck::Inside));
        // No fresh reading: not now.
        assert!(matches!(gate.check(place, ms(71)), WindowCheck::NotYet));
        for t in 31..=49 {
            at(t * 2, 9_000 + t as u32 * 20);
        }
        // 9,980: 20 counts out, still in; 9,995 predicted half a ms on is inside the margin.
        assert!(matches!(gate.check(place, ms(98)), WindowCheck::Inside));
        assert!(matches!(gate.check(place, ms(99)), WindowCheck::Missed(_)));
        // A counter that started again loses the place.
        at(100, 3);
        assert!(matches!(gate.check(place, ms(100)), WindowCheck::Missed(_)));
        assert_eq!(gate.remaining(place, ms(100)), None);
    }

    /// Where a part was when its PASS was acknowledged, by the encoder: the reading fresh then,
    /// else placed between the readings either side of that moment; no place when they are
    /// too far apart, when no reading comes after it in time, or when the count started again.
    #[tokio::test]
    async fn an_acknowledgement_on_a_stale_reading_is_placed_by_the_readings_around_it() {
        let clock = StationClock::start();
        let t0 = clock.now();
        let after = |ms: u64| t0.after(Duration::from_millis(ms));
        let gate = |readings: &[(u64, u32)]| {
            let track = EncoderTrack::shared(Duration::from_millis(20));
            for &(at, count) in readings {
                crate::track::belt::lock(&track).record(after(at), count);
            }
            EncoderGate {
                track,
                window_counts: 450,
                wait_at_most: Duration::from_secs(1),
            }
        };
        let place = GatePlace {
            position: 10_000,
            epoch: 0,
        };
        let give_up = after(50);
        // Acknowledged at 50 ms on a reading 50 ms old (stale, past 20 ms): placed between it
        // and the one 30 ms later, at 9,750 counts, 250 before the diverter.
        let around = gate(&[(0, 9_700), (80, 9_780)]);
        let placed = around.remaining_at(place, after(50), &clock, give_up).await;
        assert_eq!(placed, Some(250));
        // Fresh when acknowledged (the belt standing): the reading at hand.
        let fresh = gate(&[(0, 9_740), (40, 9_740)]);
        assert_eq!(
            fresh.remaining_at(place, after(50), &clock, give_up).await,
            Some(260)
        );
        // Readings 150 ms apart (past PLACE_ACROSS): no place, at once.
        let gap = gate(&[(0, 9_700), (150, 9_850)]);
        assert_eq!(
            gap.remaining_at(place, after(50), &clock, give_up).await,
            None
        );
        // No reading after a stale one until giving up: no place.
        let silent = gate(&[(0, 9_700)]);
        assert_eq!(
            silent.remaining_at(place, after(30), &clock, give_up).await,
            None
        );
        assert!(clock.now() >= give_up, "it waited for a reading until then");
        // The count started again: the part's place is lost.
        let restarted = gate(&[(0, 9_700), (10, 3), (80, 83)]);
        assert_eq!(
            restarted
                .remaining_at(place, after(50), &clock, give_up)
                .await,
            None
        );
    }

    /// Under encoder tracking, a PASS acknowledged when the encoder's reading has gone stale
    /// (the PLC slow to answer, no reading meanwhile) and with no reading after it before the
    /// window closes may have reached the PLC after the part passed the diverter, which then
    /// diverted it: it is recorded as not delivered and the part as rejected, never as
    /// shipped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_acknowledged_when_the_encoder_cannot_tell_is_recorded_as_rejected() {
        use crate::part::PartId;

        // Margins wide enough for a busy machine: the window is checked on a reading under
        // 400 ms old; the answer comes 1.2 s after it.
        let track = EncoderTrack::shared(Duration::from_millis(400));
        let SimulatedGate {
            plc,
            clock,
            commands: commands_tx,
            mut outcomes,
            task: gate,
        } = SimulatedGate::start(
            Duration::from_secs(3),
            Arc::new(AtomicBool::new(false)),
            Some(EncoderGate {
                track: track.clone(),
                window_counts: 450,
                wait_at_most: Duration::from_secs(3),
            }),
        )
        .await;
        // The PLC takes 1.2 s to answer, and the encoder is not read meanwhile.
        plc.set_response_delay(Duration::from_millis(1200));
        // A part 300 counts before the diverter by a fresh reading: inside its window.
        let now = clock.now();
        crate::track::belt::lock(&track).record(now, 9_700);
        let outcome = PartOutcome {
            part_id: PartId(1),
            captured_at: now,
            gate_at: now,
            decided_at: now,
            disposition: Disposition::Pass,
            inspection: Some(passed(1, now)),
            inspection_late: false,
            actuation: Actuation::NotRequired,
        };
        let place = GatePlace {
            position: 10_000,
            epoch: 0,
        };
        (commands_tx.send(GateCommand {
            outcome,
            place: Some(place),
        }))
        .await
        .expect("the gate runs");
        let settled = tokio::time::timeout(Duration::from_secs(30), outcomes.recv())
            .await
            .expect("the gate answers within 30 s")
            .expect("an outcome");
        match &settled.actuation {
            Actuation::Failed { error, .. } => {
                assert!(error.contains("could not tell"), "{error}")
            }
            other => panic!("a PASS acknowledged blind counts as delivered: {other:?}"),
        }
        assert_eq!(
            settled.disposition,
            Disposition::RejectNoVerdict,
            "{settled:?}"
        );
        // It was sent and taken: the failure is when it was acknowledged, not a lost send.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while plc.commands().is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the PLC took none");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The gate would wait for the part to pass a belt no one reads.
        gate.abort();
    }

    /// A gate task on a simulated PLC, as a station runs it: the PLC (serving until the test
    /// ends), the station clock, the gate's command sender and outcome receiver, and the task.
    struct SimulatedGate {
        plc: crate::simulate::PlcSimulator,
        clock: Arc<StationClock>,
        commands: mpsc::Sender<GateCommand>,
        outcomes: mpsc::Receiver<PartOutcome>,
        task: tokio::task::JoinHandle<()>,
    }

    impl SimulatedGate {
        /// Starts the PLC and the gate: requests under `request_timeout`, the heartbeat's
        /// verdict in `plc_lost`, encoder tracking by `encoder` (time tracking without).
        async fn start(
            request_timeout: Duration,
            plc_lost: Arc<AtomicBool>,
            encoder: Option<EncoderGate>,
        ) -> SimulatedGate {
            let map = RegisterMap::load(
                &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("firmware-io/register-map.toml"),
            )
            .expect("register map");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let (plc, _server) =
                crate::simulate::PlcSimulator::serve(listener, map).expect("PLC simulator");
            let mut link = GateLink::new(plc.address(), 1, request_timeout, map);
            link.start().await.expect("link check");
            let clock = StationClock::start();
            let (commands, commands_rx) = mpsc::channel(4);
            let (outcomes_tx, outcomes) = mpsc::channel(4);
            let command_window = link.command_window();
            let task = tokio::spawn(run_gate(GateContext {
                link,
                commands: commands_rx,
                outcomes: outcomes_tx,
                clock: clock.clone(),
                metrics: Metrics::new(),
                plc_lost,
                command_window,
                lead: Duration::from_millis(20),
                encoder,
            }));
            SimulatedGate {
                plc,
                clock,
                commands,
                outcomes,
                task,
            }
        }
    }

    /// What the model said of a part: PASS.
    fn passed(part_id: u64, at: StationTime) -> crate::part::Inspection {
        crate::part::Inspection::judged(part_id, at, crate::part::Verdict::Pass, 0.1)
    }

    /// A PASS held back while the PLC is lost goes out as a reject by policy, and the part is
    /// recorded as what became of it: rejected by policy, with the model's PASS kept as its
    /// verdict and the reason in its actuation error. The record, the `parts` metric and the
    /// production counts all read the disposition, so a held part must not say `pass` there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_held_while_the_plc_is_lost_is_recorded_as_rejected_by_policy() {
        use crate::part::{PartId, Verdict};
        use crate::record::{ActuationStatus, SavedImages, build_record};

        let plc_lost = Arc::new(AtomicBool::new(false));
        let SimulatedGate {
            plc,
            clock,
            commands: commands_tx,
            outcomes: mut outcomes_rx,
            task: gate,
        } = SimulatedGate::start(Duration::from_millis(500), plc_lost.clone(), None).await;
        // A part the model passed, at the diverter 200 ms from now.
        let part = |id: u64| {
            let now = clock.now();
            GateCommand {
                outcome: PartOutcome {
                    part_id: PartId(id),
                    captured_at: now,
                    gate_at: now.after(Duration::from_millis(200)),
                    decided_at: now,
                    disposition: Disposition::Pass,
                    inspection: Some(passed(id, now)),
                    inspection_late: false,
                    actuation: Actuation::NotRequired,
                },
                place: None,
            }
        };
        let mut send = async |id| {
            commands_tx.send(part(id)).await.expect("the gate runs");
            tokio::time::timeout(Duration::from_secs(10), outcomes_rx.recv())
                .await
                .expect("the gate answers within 10 s")
                .expect("an outcome")
        };

        // While the PLC beats, a PASS is a pass.
        let shipped = send(1).await;
        assert_eq!(shipped.disposition, Disposition::Pass, "{shipped:?}");
        assert!(
            matches!(shipped.actuation, Actuation::NotRequired),
            "{shipped:?}"
        );

        // Lost: the PASS is held back, and the part is recorded as rejected by policy.
        plc_lost.store(true, Ordering::Relaxed);
        let held = send(2).await;
        assert_eq!(held.disposition, Disposition::RejectNoVerdict, "{held:?}");
        match &held.actuation {
            Actuation::Failed { error, .. } => assert!(
                error.contains("heartbeat is lost") && error.contains("reject by policy"),
                "{error}"
            ),
            other => panic!("a held PASS is not actuated as one: {other:?}"),
        }
        let record = build_record(&clock, &held, SavedImages::default());
        assert_eq!(
            record.verdict,
            Some(Verdict::Pass),
            "the model's verdict is kept"
        );
        assert_eq!(record.disposition, Disposition::RejectNoVerdict);
        assert!(record.rejected_by_policy, "{record:?}");
        assert_eq!(record.actuation, ActuationStatus::Failed);
        assert!(
            record
                .actuation_error
                .as_deref()
                .is_some_and(|e| e.contains("heartbeat is lost")),
            "{record:?}"
        );
        // The production counts (first-pass yield, OEE quality) do not count it as good.
        assert!(!crate::analyse::production::judge(&record, None).first_pass_good);

        drop(commands_tx);
        tokio::time::timeout(Duration::from_secs(10), gate)
            .await
            .expect("the gate stops within 10 s")
            .expect("gate task");
        // What the PLC was told: PASS (1) for the first part, reject by policy (4) for the
        // second. The program logs a command at its next scan, a millisecond or so on.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while plc.commands().len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the PLC took {:?}",
                plc.commands()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let verdicts: Vec<(u32, u16)> = plc
            .commands()
            .iter()
            .map(|c| (c.part_id, c.verdict))
            .collect();
        assert_eq!(verdicts, [(1, 1), (2, 4)]);
    }
}
