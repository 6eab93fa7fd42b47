//! A line PLC simulator: a real Modbus TCP server that keeps holding registers (FC3, FC6, FC16),
//! input registers (FC4) and coils (FC1, FC5, FC15), and runs the PLC program of
//! `firmware-io/plc/linesight_gate.st` on them ([`PlcProgram`], a rule-by-rule port) every
//! millisecond, as a plant PLC scans its program.
//!
//! The simulator plays the line around the program too: a conveyor whose parts reach the gate
//! photo-eye ([`PlcSimulator::part_reaches_eye_in`], or [`PlcSimulator::run_conveyor`] for a
//! belt of its own), and the operator's reset button ([`PlcSimulator::press_operator_reset`]).
//! It logs every write, every command the program took, every part it decided at the gate
//! and every watchdog trip, with their times; tests read these logs to check the rules. A
//! response delay can be set to play a PLC that stops answering.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::actuate::{GATE_COMMAND_LEN, RegisterMap};
use crate::simulate::plc_program::{DecisionReason, InputImage, PlcProgram, ScanOutcome};
use crate::simulate::process::{RegisterKind, RegisterWrite};

/// How often the program is scanned.
const SCAN_PERIOD: Duration = Duration::from_millis(1);

/// One write request as the PLC received it.
#[derive(Debug, Clone, Serialize)]
pub struct PlcWrite {
    pub at: DateTime<Utc>,
    pub address: u16,
    pub values: Vec<u16>,
}

/// One gate command the program took (rule R4).
#[derive(Debug, Clone, Serialize)]
pub struct TakenCommand {
    pub at: DateTime<Utc>,
    pub part_id: u32,
    pub verdict: u16,
    pub sequence: u16,
    /// Whether it went into the tracking FIFO: a command received while the program
    /// diverts everything (station lost or stopped) is not trusted and is dropped.
    pub queued: bool,
}

/// One part at the gate, as the program decided it (rules R5–R7).
#[derive(Debug, Clone, Serialize)]
pub struct GateEvent {
    /// When the part reached the diverter and was decided.
    pub at: DateTime<Utc>,
    /// When the gate eye saw it.
    pub eye_at: DateTime<Utc>,
    /// The part id of the command that matched it, if one did.
    pub part_id: Option<u64>,
    pub verdict: Option<u16>,
    /// Whether it went to the reject lane.
    pub diverted: bool,
    pub reason: DecisionReason,
}

/// One firing of the simulated reject gate: a diverted [`GateEvent`].
pub type RejectPulse = GateEvent;

/// Each log keeps at most this many entries, the oldest dropped first: tests read a few
/// hundred, and a simulated line left running for days (`make run`) must not grow with them.
const LOG_LIMIT: usize = 100_000;

/// Appends `entry`, dropping the oldest half of a log that reached twice [`LOG_LIMIT`] (one
/// move per `LOG_LIMIT` entries rather than one per entry).
fn log<T>(entries: &mut Vec<T>, entry: T) {
    if entries.len() >= 2 * LOG_LIMIT {
        entries.drain(..LOG_LIMIT);
    }
    entries.push(entry);
}

#[derive(Debug, Default)]
struct Logs {
    writes: Vec<PlcWrite>,
    taken: Vec<TakenCommand>,
    gate: Vec<GateEvent>,
    watchdog_trips: Vec<DateTime<Utc>>,
    /// When the program latched a halt, in order.
    halts: Vec<DateTime<Utc>>,
}

#[derive(Debug)]
struct PlcState {
    map: RegisterMap,
    registers: Mutex<Vec<u16>>,
    /// Read-only to clients: only the line's own values land here.
    inputs: Mutex<Vec<u16>>,
    coils: Mutex<Vec<bool>>,
    /// Gate-command writes in arrival order, handed to the program one per scan, as a PLC
    /// serves its Modbus requests between scans.
    gate_writes: Mutex<VecDeque<[u16; GATE_COMMAND_LEN as usize]>>,
    /// When parts reach the gate eye, in order.
    eye: Mutex<VecDeque<Instant>>,
    operator_reset: AtomicBool,
    /// The belt's encoder: counts per second of a belt that runs from the PLC's start.
    encoder_rate: AtomicU64,
    /// Cleared to play a PLC switched to STOP: Modbus still answers, the program does not
    /// scan, its heartbeat stands still and its outputs hold.
    program_running: AtomicBool,
    program: Mutex<PlcProgram>,
    /// The last scan's time and input image: a part's eye edge is scanned with them (see
    /// `scan`).
    last_scan: Mutex<Option<(Duration, InputImage)>>,
    logs: Mutex<Logs>,
    response_delay_us: AtomicU64,
    started: Instant,
}

/// Handle to a running PLC simulator.
#[derive(Debug, Clone)]
pub struct PlcSimulator {
    state: Arc<PlcState>,
    address: SocketAddr,
}

impl PlcSimulator {
    /// Starts serving on `listener` and scanning the program, until the returned handle's task
    /// is dropped or aborted.
    pub fn serve(
        listener: TcpListener,
        map: RegisterMap,
    ) -> std::io::Result<(PlcSimulator, tokio::task::JoinHandle<()>)> {
        let address = listener.local_addr()?;
        let state = Arc::new(PlcState {
            map,
            registers: Mutex::new(vec![0; 0x1_0000]),
            inputs: Mutex::new(vec![0; 0x1_0000]),
            coils: Mutex::new(vec![false; 0x1_0000]),
            gate_writes: Mutex::new(VecDeque::new()),
            eye: Mutex::new(VecDeque::new()),
            operator_reset: AtomicBool::new(false),
            encoder_rate: AtomicU64::new(0),
            program_running: AtomicBool::new(true),
            program: Mutex::new(PlcProgram::new(map)),
            last_scan: Mutex::new(None),
            logs: Mutex::new(Logs::default()),
            response_delay_us: AtomicU64::new(0),
            started: Instant::now(),
        });
        // The status block is there before anyone can read it.
        state.scan();
        let server = Server::new(listener);
        let service_state = state.clone();
        let scan_state = state.clone();
        let task = tokio::spawn(async move {
            let on_connected = |stream, socket_addr| {
                let state = service_state.clone();
                async move {
                    accept_tcp_connection(stream, socket_addr, move |_| {
                        Ok(Some(PlcService {
                            state: state.clone(),
                        }))
                    })
                }
            };
            let on_process_error =
                |error| tracing::debug!(%error, "PLC simulator: connection ended");
            tokio::select! {
                result = server.serve(&on_connected, on_process_error) => {
                    if let Err(error) = result {
                        tracing::error!(%error, "PLC simulator stopped");
                    }
                }
                () = scan_forever(scan_state) => {}
            }
        });
        Ok((PlcSimulator { state, address }, task))
    }

    /// Where the simulator listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Delays every reply by `delay`, to play a slow or silent PLC.
    pub fn set_response_delay(&self, delay: Duration) {
        self.state
            .response_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// A part seen by the camera reaches the gate eye `delay` from now.
    pub fn part_reaches_eye_in(&self, delay: Duration) {
        self.part_reaches_eye_at(Instant::now() + delay);
    }

    /// A part reaches the gate eye at `at`.
    pub fn part_reaches_eye_at(&self, at: Instant) {
        let mut eye = lock(&self.state.eye);
        // Kept in order, so the scan only ever looks at the front.
        let index = eye.partition_point(|&queued| queued <= at);
        eye.insert(index, at);
    }

    /// A belt of the PLC's own: a part reaches the gate eye every `pitch` while the
    /// program lets the conveyor run, until the returned task is aborted. For a PLC tested
    /// apart from the station's simulated camera.
    pub fn run_conveyor(&self, pitch: Duration) -> tokio::task::JoinHandle<()> {
        let plc = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(pitch);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticks.tick().await;
                if !plc.halted() {
                    plc.part_reaches_eye_in(Duration::ZERO);
                }
            }
        })
    }

    /// Gives the belt an encoder of `counts_per_s` (0: none), counting from the PLC's start;
    /// the program reads it every scan and shows it in `HR[encoder]`. The simulated belt runs
    /// at one speed: encoder tracking over stops and speed changes is tested against the
    /// pymodbus PLC (`tests/interop/client_mode_plc.py`).
    pub fn set_encoder_rate(&self, counts_per_s: u64) {
        self.state
            .encoder_rate
            .store(counts_per_s, Ordering::Relaxed);
    }

    /// Switches the PLC to STOP (`false`) or back to RUN: while stopped, Modbus still answers
    /// but the program does not scan, so its heartbeat stands still.
    pub fn set_program_running(&self, running: bool) {
        self.state.program_running.store(running, Ordering::Relaxed);
    }

    /// The operator presses the reset button at the line (rule R8).
    pub fn press_operator_reset(&self) {
        self.state.operator_reset.store(true, Ordering::Relaxed);
    }

    /// Whether a press of the reset button waits for the program's next scan to take it.
    pub fn operator_reset_pending(&self) -> bool {
        self.state.operator_reset.load(Ordering::Relaxed)
    }

    /// Every write received so far, in order.
    pub fn writes(&self) -> Vec<PlcWrite> {
        lock(&self.state.logs).writes.clone()
    }

    /// Every new gate command the program saw (a resend is not new), in order.
    pub fn commands(&self) -> Vec<TakenCommand> {
        lock(&self.state.logs).taken.clone()
    }

    /// Every part decided at the gate, in order.
    pub fn gate_events(&self) -> Vec<GateEvent> {
        lock(&self.state.logs).gate.clone()
    }

    /// Every firing of the reject gate (the diverted parts), in order.
    pub fn pulses(&self) -> Vec<RejectPulse> {
        let logs = lock(&self.state.logs);
        logs.gate.iter().filter(|e| e.diverted).cloned().collect()
    }

    /// When the station watchdog expired, in order.
    pub fn watchdog_trips(&self) -> Vec<DateTime<Utc>> {
        lock(&self.state.logs).watchdog_trips.clone()
    }

    /// Whether the program diverts every part now (the station is lost or stopped).
    pub fn diverting_all(&self) -> bool {
        lock(&self.state.program).faulted()
    }

    /// The current value of a holding register.
    pub fn register(&self, address: u16) -> u16 {
        lock(&self.state.registers)[usize::from(address)]
    }

    /// The current value of a coil.
    pub fn coil(&self, address: u16) -> bool {
        lock(&self.state.coils)[usize::from(address)]
    }

    /// Whether the program holds the line now (its halt latch, rule R8).
    pub fn halted(&self) -> bool {
        !lock(&self.state.program).conveyor_run()
    }

    /// When the program latched a halt, in order: each is one halt of the line.
    pub fn halts(&self) -> Vec<DateTime<Utc>> {
        lock(&self.state.logs).halts.clone()
    }

    /// The current value of an input register.
    pub fn input_register(&self, address: u16) -> u16 {
        lock(&self.state.inputs)[usize::from(address)]
    }

    /// Sets registers from the PLC's side, as its program would (sensor values, flags); not
    /// logged as writes. Words that would run past register 65535 are cut off.
    pub fn publish(&self, writes: &[RegisterWrite]) {
        let (mut holding, mut inputs) = (lock(&self.state.registers), lock(&self.state.inputs));
        for write in writes {
            let registers = match write.kind {
                RegisterKind::Holding => &mut holding,
                RegisterKind::Input => &mut inputs,
            };
            let start = usize::from(write.address);
            let end = (start + write.words.len()).min(registers.len());
            registers[start..end].copy_from_slice(&write.words[..end - start]);
        }
    }
}

/// Scans the program every [`SCAN_PERIOD`].
async fn scan_forever(state: Arc<PlcState>) {
    let mut ticks = tokio::time::interval(SCAN_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        if state.program_running.load(Ordering::Relaxed) {
            state.scan();
        }
    }
}

/// Adds one program scan's outcome to the simulator scan's.
fn merge(into: &mut ScanOutcome, scan: ScanOutcome) {
    into.taken.extend(scan.taken);
    into.decided.extend(scan.decided);
    into.watchdog_tripped |= scan.watchdog_tripped;
    into.halt_latched |= scan.halt_latched;
}

/// The simulator's state stays consistent under every lock holder (plain stores), so a panic
/// elsewhere must not take the PLC down with it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

struct PlcService {
    state: Arc<PlcState>,
}

impl Service for PlcService {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, request: Self::Request) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            let delay = Duration::from_micros(state.response_delay_us.load(Ordering::Relaxed));
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            state.handle(request)
        })
    }
}

impl PlcState {
    /// One scan: the input image from the registers, coils, eye and button; the program; the
    /// status block back into the registers; the logs.
    fn scan(&self) {
        let instant = Instant::now();
        let now = instant.duration_since(self.started);
        let map = &self.map;
        let mut image = {
            let registers = lock(&self.registers);
            let mut gate_command = [0; GATE_COMMAND_LEN as usize];
            let first = usize::from(map.gate_command.address);
            let len = gate_command.len();
            gate_command.copy_from_slice(&registers[first..first + len]);
            InputImage {
                heartbeat: registers[usize::from(map.heartbeat.address)],
                station_state: registers[usize::from(map.station_state.address)],
                gate_command,
                halt_coil: map
                    .halt_line
                    .is_some_and(|halt| lock(&self.coils)[usize::from(halt.coil)]),
                gate_eye: false,
                operator_reset: self.operator_reset.swap(false, Ordering::Relaxed),
                encoder: self.encoder_at(now),
            }
        };
        if let Some(words) = lock(&self.gate_writes).pop_front() {
            image.gate_command = words;
        }
        let edges: Vec<Instant> = {
            let mut eye = lock(&self.eye);
            let due = eye.iter().take_while(|&&at| at <= instant).count();
            eye.drain(..due).collect()
        };
        let (outcome, status) = {
            let mut program = lock(&self.program);
            let mut last_scan = lock(&self.last_scan);
            let mut outcome = ScanOutcome::default();
            // A PLC latches the encoder count at the eye's edge (a touch probe), and its scan
            // is a millisecond or two on any load. This scan may come tens of ms late on a busy
            // machine, so each edge since the last is scanned at its own time and count, with
            // the inputs of the scan before: the part keeps its place on the belt, and nothing
            // that arrived since is taken early. The eye falls again in the next scan: one
            // rising edge per part.
            let (mut before, image_before) = last_scan.unwrap_or((now, image));
            for at in edges {
                let t = at.duration_since(self.started).clamp(before, now);
                before = t;
                let edge_image = InputImage {
                    gate_eye: true,
                    operator_reset: false,
                    encoder: self.encoder_at(t),
                    ..image_before
                };
                merge(&mut outcome, program.scan(t, &edge_image));
                let falling = InputImage {
                    gate_eye: false,
                    ..edge_image
                };
                merge(&mut outcome, program.scan(t, &falling));
            }
            merge(&mut outcome, program.scan(now, &image));
            *last_scan = Some((now, image));
            (outcome, (program.status_words(), program.encoder_words()))
        };
        {
            let (status, encoder) = status;
            let mut registers = lock(&self.registers);
            let first = usize::from(map.plc_status.address);
            registers[first..first + status.len()].copy_from_slice(&status);
            if let Some(register) = map.encoder {
                let first = usize::from(register.address);
                registers[first..first + 2].copy_from_slice(&encoder);
            }
        }
        let wall = Utc::now();
        let at = |t: Duration| {
            wall - TimeDelta::from_std(now.saturating_sub(t)).unwrap_or(TimeDelta::zero())
        };
        let mut logs = lock(&self.logs);
        for (command, arrived, queued) in outcome.taken {
            log(
                &mut logs.taken,
                TakenCommand {
                    at: at(arrived),
                    part_id: command.part_id,
                    verdict: command.verdict as u16,
                    sequence: command.sequence,
                    queued,
                },
            );
        }
        for decision in outcome.decided {
            if decision.diverted {
                tracing::debug!(part_id = ?decision.part_id, reason = ?decision.reason, "PLC simulator: part diverted");
            }
            log(
                &mut logs.gate,
                GateEvent {
                    at: at(decision.decided_at),
                    eye_at: at(decision.eye_at),
                    part_id: decision.part_id.map(u64::from),
                    verdict: decision.verdict,
                    diverted: decision.diverted,
                    reason: decision.reason,
                },
            );
        }
        if outcome.watchdog_tripped {
            tracing::warn!("PLC simulator: station watchdog expired; diverting every part");
            log(&mut logs.watchdog_trips, wall);
        }
        if outcome.halt_latched {
            tracing::info!("PLC simulator: halt-line coil ON, line halted until an operator reset");
            log(&mut logs.halts, wall);
        }
    }

    /// The encoder's count `now` after the PLC started (wrapping, as a hardware counter does).
    fn encoder_at(&self, now: Duration) -> u32 {
        let rate = u128::from(self.encoder_rate.load(Ordering::Relaxed));
        (now.as_micros() * rate / 1_000_000) as u32
    }

    fn handle(&self, request: Request<'static>) -> Result<Response, ExceptionCode> {
        match request {
            Request::ReadHoldingRegisters(address, count) => {
                let range = span(address, count)?;
                Ok(Response::ReadHoldingRegisters(
                    lock(&self.registers)[range].to_vec(),
                ))
            }
            Request::ReadInputRegisters(address, count) => {
                let range = span(address, count)?;
                Ok(Response::ReadInputRegisters(
                    lock(&self.inputs)[range].to_vec(),
                ))
            }
            Request::WriteSingleRegister(address, value) => {
                self.write(address, &[value])?;
                Ok(Response::WriteSingleRegister(address, value))
            }
            Request::WriteMultipleRegisters(address, values) => {
                self.write(address, &values)?;
                Ok(Response::WriteMultipleRegisters(
                    address,
                    values.len() as u16,
                ))
            }
            Request::ReadCoils(address, count) => {
                let range = span(address, count)?;
                Ok(Response::ReadCoils(lock(&self.coils)[range].to_vec()))
            }
            Request::WriteSingleCoil(address, value) => {
                self.write_coils(address, &[value])?;
                Ok(Response::WriteSingleCoil(address, value))
            }
            Request::WriteMultipleCoils(address, values) => {
                self.write_coils(address, &values)?;
                Ok(Response::WriteMultipleCoils(address, values.len() as u16))
            }
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn write_coils(&self, address: u16, values: &[bool]) -> Result<(), ExceptionCode> {
        let range = span(address, values.len() as u16)?;
        // Coil writes stay out of `writes`, the holding-register log: the two spaces share
        // addresses. The program sees the coil at its next scan.
        lock(&self.coils)[range].copy_from_slice(values);
        Ok(())
    }

    fn write(&self, address: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let range = span(address, values.len() as u16)?;
        // The status block is the program's: a client may not write it.
        let status = usize::from(self.map.plc_status.address)
            ..usize::from(self.map.plc_status.address)
                + usize::from(crate::actuate::PLC_STATUS_LEN);
        if range.start < status.end && status.start < range.end {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        let at = Utc::now();
        lock(&self.registers)[range].copy_from_slice(values);
        if address == self.map.gate_command.address && values.len() == usize::from(GATE_COMMAND_LEN)
        {
            let mut words = [0; GATE_COMMAND_LEN as usize];
            words.copy_from_slice(values);
            lock(&self.gate_writes).push_back(words);
        }
        log(
            &mut lock(&self.logs).writes,
            PlcWrite {
                at,
                address,
                values: values.to_vec(),
            },
        );
        Ok(())
    }
}

fn span(address: u16, count: u16) -> Result<std::ops::Range<usize>, ExceptionCode> {
    let start = usize::from(address);
    let end = start + usize::from(count);
    if count == 0 || end > 0x1_0000 {
        return Err(ExceptionCode::IllegalDataAddress);
    }
    Ok(start..end)
}
