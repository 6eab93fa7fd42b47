//! The reject gate over loopback Modbus TCP, against the simulated PLC running the PLC program:
//!
//! - `gate/command_round_trip`: one gate command (FC16, 5 registers) written and acknowledged,
//!   the verdict-to-write latency; p50 and p99 are printed beside criterion's figures.
//! - `gate/line_600_ppm`, `gate/line_1200_ppm`: parts on a belt at 600 and 1,200 parts/min;
//!   the gate task sends each verdict at its fire time and the PLC program decides each part at
//!   the diverter. Printed: when each reject command was acknowledged against its fire time
//!   (the station's timing, which it owns in client mode), when each reject pulse came at the
//!   PLC against the part's arrival (the simulated PLC scans every millisecond, so this adds
//!   its scan), p50, p99 and max, and how many parts the PLC matched to their own command.
//!
//! The targets: p99 write latency ≤ 2 ms, pulse timing error p99 ≤ 2 ms.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use linesight::actuate::{
    DISPATCH_AHEAD, GateCommand, GateContext, GateLink, GateVerdict, RegisterMap, run_gate,
};
use linesight::metrics::Metrics;
use linesight::part::{Actuation, Disposition, PartId, PartOutcome, StationClock};
use linesight::simulate::PlcSimulator;
use tokio::runtime::Runtime;

fn register_map() -> RegisterMap {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-io/register-map.toml");
    RegisterMap::load(&path).expect("register map")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A simulated PLC and a checked link to it, the station beating every 100 ms; the tasks to
/// abort when done.
async fn plc_and_link() -> (PlcSimulator, GateLink, [tokio::task::JoinHandle<()>; 2]) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (plc, server) = PlcSimulator::serve(listener, register_map()).expect("serve");
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(250), register_map());
    link.start().await.expect("link check");
    let mut beats = link.sibling();
    let beating = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            let _ = beats.beat().await;
        }
    });
    (plc, link, [server, beating])
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    if samples.is_empty() {
        return;
    }
    samples.sort();
    eprintln!(
        "{what}: n {}, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

fn command_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let (_plc, mut link, _tasks) = rt.block_on(plc_and_link());
    let mut samples = Vec::new();
    let mut part = 0u64;
    c.bench_function("gate/command_round_trip", |b| {
        b.iter_custom(|iterations| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    part += 1;
                    let verdict = if part.is_multiple_of(3) {
                        GateVerdict::RejectDefect
                    } else {
                        GateVerdict::Pass
                    };
                    let started = Instant::now();
                    link.command(part, verdict, false).await.expect("command");
                    let took = started.elapsed();
                    samples.push(took);
                    total += took;
                }
                total
            })
        })
    });
    report(
        "gate/command_round_trip (verdict-to-write latency)",
        samples,
    );
}

/// Parts at `ppm` for `parts`; the pulse timing errors and how many parts matched their own
/// command.
async fn run_line(
    ppm: u32,
    parts: u64,
    errors: &mut Vec<Duration>,
    station_errors: &mut Vec<Duration>,
) -> (usize, usize) {
    let (plc, link, tasks) = plc_and_link().await;
    let map = register_map();
    let pitch = Duration::from_secs(60) / ppm;
    let travel = Duration::from_millis(200);
    let lead = Duration::from_millis(20);
    let to_eye = travel - Duration::from_millis(map.plc_program.eye_to_gate_ms);
    let clock = StationClock::start();
    let (commands_tx, commands) = tokio::sync::mpsc::channel(64);
    let (outcomes, mut outcomes_rx) = tokio::sync::mpsc::channel(64);
    let command_window = link.command_window();
    let gate = tokio::spawn(run_gate(GateContext {
        link,
        commands,
        outcomes,
        clock: clock.clone(),
        metrics: Metrics::new(),
        plc_lost: Arc::new(AtomicBool::new(false)),
        command_window,
        lead,
        encoder: None,
    }));
    // The station's side of the timing: when each reject was acknowledged against its fire
    // time (gate − lead).
    let drain = tokio::spawn(async move {
        let mut late = Vec::new();
        while let Some(outcome) = outcomes_rx.recv().await {
            if let Actuation::Done { at } = outcome.actuation {
                let fire_at = outcome.gate_at.0.saturating_sub(lead);
                late.push(at.0.abs_diff(fire_at));
            }
        }
        late
    });
    // Wait until the PLC program trusts the station.
    while plc.diverting_all() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let start = clock.now().after(Duration::from_millis(20));
    let mut arrivals = Vec::new();
    for i in 0..parts {
        let captured_at = start.after(pitch * i as u32);
        tokio::time::sleep_until(clock.instant(captured_at).into()).await;
        // The camera saw the part: it reaches the eye, then the diverter, whatever happens.
        plc.part_reaches_eye_at(clock.instant(captured_at) + to_eye);
        let gate_at = captured_at.after(travel);
        arrivals.push((i, clock.utc(gate_at)));
        // The tracker hands it over a little before its fire time, as in the station.
        let fire_at = gate_at.before(lead + DISPATCH_AHEAD);
        let disposition = if i.is_multiple_of(3) {
            Disposition::RejectFailed
        } else {
            Disposition::Pass
        };
        let sender = commands_tx.clone();
        let clock = clock.clone();
        // The tracker hands the part to the gate task at its fire time.
        tokio::spawn(async move {
            tokio::time::sleep_until(clock.instant(fire_at).into()).await;
            let now = clock.now();
            let _ = sender
                .send(GateCommand {
                    outcome: PartOutcome {
                        part_id: PartId(i),
                        captured_at,
                        gate_at,
                        decided_at: now,
                        disposition,
                        inspection: None,
                        inspection_late: false,
                        actuation: Actuation::NotRequired,
                    },
                    place: None,
                })
                .await;
        });
    }
    tokio::time::sleep(travel + Duration::from_millis(200)).await;
    drop(commands_tx);
    gate.await.expect("gate");
    station_errors.extend(drain.await.expect("drain"));
    tasks.iter().for_each(tokio::task::JoinHandle::abort);
    let events = plc.gate_events();
    let mut matched = 0;
    for event in &events {
        let Some(id) = event.part_id else { continue };
        if event.diverted != id.is_multiple_of(3) {
            continue;
        }
        matched += 1;
        if event.diverted {
            let arrival = arrivals[id as usize].1;
            let error = (event.at - arrival).abs().to_std().unwrap_or_default();
            errors.push(error);
        }
    }
    (matched, events.len())
}

fn line(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("gate");
    group.sample_size(10);
    for (ppm, parts) in [(600u32, 20u64), (1200, 40)] {
        let (mut errors, mut station_errors) = (Vec::new(), Vec::new());
        let (mut matched, mut seen) = (0, 0);
        group.bench_function(format!("line_{ppm}_ppm"), |b| {
            b.iter_custom(|iterations| {
                let started = Instant::now();
                for _ in 0..iterations {
                    let (m, s) =
                        rt.block_on(run_line(ppm, parts, &mut errors, &mut station_errors));
                    matched += m;
                    seen += s;
                }
                started.elapsed()
            })
        });
        eprintln!(
            "gate/line_{ppm}_ppm: {matched} of {seen} parts decided as their own command said"
        );
        report(
            &format!("gate/line_{ppm}_ppm reject command acknowledged vs its fire time"),
            station_errors,
        );
        report(
            &format!("gate/line_{ppm}_ppm reject pulse at the PLC vs the part's arrival"),
            errors,
        );
    }
    group.finish();
}

criterion_group!(benches, command_round_trip, line);
criterion_main!(benches);
