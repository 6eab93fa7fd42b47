//! Reject gate actuation over Modbus TCP.
//!
//! [`GateLink`] owns the connection to the PLC. Every request has a deadline
//! (`plc.request_timeout_ms`; tokio-modbus sets none); after a timeout or a transport error the
//! connection is dropped and rebuilt on the next request, so a late reply is never read as the
//! answer to the next question. PLC exception replies are kept apart from link errors.
//!
//! [`run_gate`] is the stage task: it sends each due reject command, held to the part's gate
//! window, and hands every outcome on to the recorder with its actuation time.
//! [`run_heartbeat`] keeps the heartbeat going on a second connection, so a slow heartbeat
//! never delays a reject.
//!
//! Safe state: on a clean stop the heartbeat task writes `station_state = 0`; on any stop the
//! heartbeat ends. The PLC program diverts every part to the reject lane in either case (see
//! `firmware-io/register-map.toml`), so a dead station rejects rather than passes.

pub mod halt_line;
mod register_map;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_modbus::client::{Client, Context, tcp};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};
use tokio_util::sync::CancellationToken;

pub use self::halt_line::{Burst, BurstDetector, BurstRule, HaltLineSection};
pub use self::register_map::{
    HaltLineCoil, REJECT_BLOCK_LEN, REJECT_COMMAND_FIRE, RegisterMap, RegisterMapError,
};
use crate::metrics::Metrics;
use crate::part::{Actuation, PartOutcome, StationClock};

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
    reject_sequence: u16,
    heartbeat: u16,
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
            reject_sequence: 0,
            heartbeat: 0,
        }
    }

    /// The PLC this link talks to.
    pub fn plc(&self) -> SocketAddr {
        self.plc
    }

    /// Checks the link the way it will be used: reads the heartbeat and the last reject
    /// command, continues both counters from the PLC's values (so the first reject after a
    /// restart carries a new sequence number and fires), then marks the station running.
    pub async fn start(&mut self) -> Result<(), GateError> {
        let address = self.map.heartbeat.address;
        self.heartbeat = self.read_register("read heartbeat", address).await?;
        let address = self.map.reject.address + REJECT_BLOCK_LEN - 1;
        self.reject_sequence = self.read_register("read reject sequence", address).await?;
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
        let address = self.map.station_state.address;
        self.write_register("write station state", address, u16::from(running))
            .await
    }

    /// Writes the next heartbeat value.
    pub async fn beat(&mut self) -> Result<(), GateError> {
        self.heartbeat = self.heartbeat.wrapping_add(1);
        let address = self.map.heartbeat.address;
        self.write_register("write heartbeat", address, self.heartbeat)
            .await
    }

    /// Sends one reject command for `part_id`. A resend after a failure keeps its sequence
    /// number, so the PLC fires at most once for it.
    pub async fn reject(&mut self, part_id: u64, resend: bool) -> Result<(), GateError> {
        self.reject_within(part_id, resend, self.request_timeout)
            .await
    }

    /// [`GateLink::reject`] with the whole exchange (connect included) held to `limit` or the
    /// request timeout, whichever is shorter: a reject is worth nothing after its window.
    pub async fn reject_within(
        &mut self,
        part_id: u64,
        resend: bool,
        limit: Duration,
    ) -> Result<(), GateError> {
        if !resend {
            self.reject_sequence = self.reject_sequence.wrapping_add(1);
        }
        let words = RegisterMap::encode_reject(part_id, self.reject_sequence);
        let address = self.map.reject.address;
        let request = Request::WriteMultipleRegisters(address, words.to_vec().into());
        match self
            .call(
                "write reject",
                address,
                request,
                limit.min(self.request_timeout),
            )
            .await?
        {
            Response::WriteMultipleRegisters(a, n) if a == address && n == REJECT_BLOCK_LEN => {
                Ok(())
            }
            reply => Err(self.unexpected("write reject", address, reply)),
        }
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
                let context = timeout(limit, tcp::connect_slave(plc, Slave(unit)))
                    .await
                    .map_err(|_| GateError::ConnectTimeout {
                        plc,
                        unit,
                        timeout: limit,
                    })?
                    .map_err(|source| GateError::Connect { plc, unit, source })?;
                self.context.insert(context)
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
}

/// Everything [`run_gate`] needs.
pub struct GateContext {
    pub link: GateLink,
    pub commands: mpsc::Receiver<GateCommand>,
    /// Outcomes go on to the recorder; a full channel makes the gate wait.
    pub outcomes: mpsc::Sender<PartOutcome>,
    pub clock: Arc<StationClock>,
    pub metrics: Metrics,
    /// A reject command counts only when the PLC acknowledges it within ± this of arrival.
    pub gate_window: Duration,
}

/// The gate task: sends each due reject command and hands the outcome to the recorder. Runs
/// until the command channel closes.
pub async fn run_gate(mut ctx: GateContext) {
    while let Some(GateCommand { mut outcome }) = ctx.commands.recv().await {
        outcome.actuation = actuate(&mut ctx, &outcome).await;
        if ctx.outcomes.send(outcome).await.is_err() {
            tracing::error!("recorder stopped; gate outcomes can no longer be recorded");
            break;
        }
    }
}

/// Fires the gate for a reject, resending once over a fresh link while the part is in reach.
/// A command that cannot be acknowledged inside the part's window is not sent at all, or is
/// recorded as failed: a late pulse would hit the wrong part.
async fn actuate(ctx: &mut GateContext, outcome: &PartOutcome) -> Actuation {
    if !outcome.disposition.is_reject() {
        return Actuation::NotRequired;
    }
    let window_end = outcome.gate_at.after(ctx.gate_window);
    let mut resend = false;
    let failed = |ctx: &mut GateContext, error: String| {
        ctx.metrics.gate_commands_failed.inc();
        tracing::error!(part_id = %outcome.part_id, %error, "reject command not delivered");
        Actuation::Failed {
            at: ctx.clock.now(),
            error,
        }
    };
    loop {
        let now = ctx.clock.now();
        if now >= window_end {
            return failed(
                ctx,
                format!(
                    "gate window closed {:?} before the command could be sent",
                    now.0 - window_end.0
                ),
            );
        }
        match ctx
            .link
            .reject_within(outcome.part_id.0, resend, window_end.0 - now.0)
            .await
        {
            Ok(()) => {
                let at = ctx.clock.now();
                if at > window_end {
                    return failed(ctx, "PLC acknowledged after the gate window".into());
                }
                ctx.metrics.gate_commands_ok.inc();
                return Actuation::Done { at };
            }
            Err(error) => {
                if error.is_link_error() {
                    ctx.metrics.plc_link_errors.inc();
                }
                if resend {
                    return failed(ctx, error.to_string());
                }
                tracing::warn!(part_id = %outcome.part_id, %error, "reject command failed; resending on a fresh link");
                resend = true;
            }
        }
    }
}

/// The heartbeat task, on its own connection: writes the heartbeat every `period` until `stop`
/// fires, then writes the stopped state. Any stop ends the heartbeat, which the PLC's watchdog
/// treats as a dead station.
pub async fn run_heartbeat(
    mut link: GateLink,
    period: Duration,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut beating = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        match link.beat().await {
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
    }
    if let Err(error) = link.set_running(false).await {
        tracing::warn!(%error, "could not write the stopped state; the PLC watchdog will trip instead");
    }
}
