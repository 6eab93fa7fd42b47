//! A line PLC simulator: a real Modbus TCP server that keeps holding registers (FC3, FC6, FC16)
//! and input registers (FC4), logs every write with its time, fires a simulated reject gate the
//! way the register map prescribes, and serves the simulated line's sensors.
//!
//! Coils (FC1, FC5, FC15) are kept too: the register map's halt-line coil going ON counts as
//! one halt of the line ([`PlcSimulator::halts`]), and [`PlcSimulator::halted`] says whether the
//! line is held now, as a plant PLC would stop the conveyor.
//!
//! The station's `make run` starts one on loopback; tests read its log to check that every
//! reject pulse landed on the right part inside its gate window. A response delay can be set to
//! play a PLC that stops answering.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::server::tcp::{Server, accept_tcp_connection};
use tokio_modbus::{ExceptionCode, Request, Response};

use crate::actuate::{REJECT_BLOCK_LEN, REJECT_COMMAND_FIRE, RegisterMap};
use crate::simulate::process::{RegisterKind, RegisterWrite};

/// One write request as the PLC received it.
#[derive(Debug, Clone, Serialize)]
pub struct PlcWrite {
    pub at: DateTime<Utc>,
    pub address: u16,
    pub values: Vec<u16>,
}

/// One firing of the simulated reject gate.
#[derive(Debug, Clone, Serialize)]
pub struct RejectPulse {
    pub at: DateTime<Utc>,
    pub part_id: u64,
    pub sequence: u16,
}

#[derive(Debug)]
struct PlcState {
    map: RegisterMap,
    registers: Mutex<Vec<u16>>,
    /// Read-only to clients: only the line's own values land here.
    inputs: Mutex<Vec<u16>>,
    writes: Mutex<Vec<PlcWrite>>,
    pulses: Mutex<Vec<RejectPulse>>,
    coils: Mutex<Vec<bool>>,
    /// When the halt-line coil went ON, in order.
    halts: Mutex<Vec<DateTime<Utc>>>,
    response_delay_us: AtomicU64,
}

/// Handle to a running PLC simulator.
#[derive(Debug, Clone)]
pub struct PlcSimulator {
    state: Arc<PlcState>,
    address: SocketAddr,
}

impl PlcSimulator {
    /// Starts serving on `listener` until the returned handle's task is dropped or aborted.
    pub fn serve(
        listener: TcpListener,
        map: RegisterMap,
    ) -> std::io::Result<(PlcSimulator, tokio::task::JoinHandle<()>)> {
        let address = listener.local_addr()?;
        let state = Arc::new(PlcState {
            map,
            registers: Mutex::new(vec![0; 0x1_0000]),
            inputs: Mutex::new(vec![0; 0x1_0000]),
            writes: Mutex::new(Vec::new()),
            pulses: Mutex::new(Vec::new()),
            coils: Mutex::new(vec![false; 0x1_0000]),
            halts: Mutex::new(Vec::new()),
            response_delay_us: AtomicU64::new(0),
        });
        let server = Server::new(listener);
        let service_state = state.clone();
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
            if let Err(error) = server.serve(&on_connected, on_process_error).await {
                tracing::error!(%error, "PLC simulator stopped");
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

    /// Every write received so far, in order.
    pub fn writes(&self) -> Vec<PlcWrite> {
        lock(&self.state.writes).clone()
    }

    /// Every reject gate firing so far, in order.
    pub fn pulses(&self) -> Vec<RejectPulse> {
        lock(&self.state.pulses).clone()
    }

    /// The current value of a holding register.
    pub fn register(&self, address: u16) -> u16 {
        lock(&self.state.registers)[usize::from(address)]
    }

    /// The current value of a coil.
    pub fn coil(&self, address: u16) -> bool {
        lock(&self.state.coils)[usize::from(address)]
    }

    /// Whether the line is held by the halt-line coil now (false without one in the map).
    pub fn halted(&self) -> bool {
        self.state
            .map
            .halt_line
            .is_some_and(|halt| self.coil(halt.coil))
    }

    /// When the halt-line coil went ON, in order: each is one halt of the line.
    pub fn halts(&self) -> Vec<DateTime<Utc>> {
        lock(&self.state.halts).clone()
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
        let at = Utc::now();
        let halt_coil = self.map.halt_line.map(|halt| usize::from(halt.coil));
        let halted_now = {
            let mut coils = lock(&self.coils);
            let was_halted = halt_coil.is_some_and(|c| coils[c]);
            coils[range].copy_from_slice(values);
            !was_halted && halt_coil.is_some_and(|c| coils[c])
        };
        // Coil writes stay out of `writes`, the holding-register log: the two spaces share
        // addresses.
        if halted_now {
            tracing::info!("PLC simulator: halt-line coil ON, line halted");
            lock(&self.halts).push(at);
        }
        Ok(())
    }

    fn write(&self, address: u16, values: &[u16]) -> Result<(), ExceptionCode> {
        let range = span(address, values.len() as u16)?;
        let at = Utc::now();
        let previous_sequence = {
            let mut registers = lock(&self.registers);
            let previous = registers[usize::from(self.map.reject.address + 3)];
            registers[range].copy_from_slice(values);
            previous
        };
        lock(&self.writes).push(PlcWrite {
            at,
            address,
            values: values.to_vec(),
        });
        if address == self.map.reject.address
            && values.len() == usize::from(REJECT_BLOCK_LEN)
            && let Some((part_id, command, sequence)) = RegisterMap::decode_reject(values)
            && command == REJECT_COMMAND_FIRE
            && sequence != previous_sequence
        {
            tracing::debug!(part_id, sequence, "PLC simulator: reject gate fired");
            lock(&self.pulses).push(RejectPulse {
                at,
                part_id,
                sequence,
            });
        }
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
