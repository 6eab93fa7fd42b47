//! The PLC link: deadlines, reconnects, and what the PLC sees.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use linesight::actuate::{
    GateCommand, GateContext, GateError, GateLink, GateVerdict, PlcWatch, Register, RegisterMap,
    run_gate, run_heartbeat,
};
use linesight::config::PlcLostPolicy;
use linesight::metrics::Metrics;
use linesight::part::{Actuation, Disposition, PartId, PartOutcome, StationClock};
use linesight::simulate::{DecisionReason, PlcSimulator};
use tokio_util::sync::CancellationToken;

use crate::{eventually, repo};

fn register_map() -> RegisterMap {
    RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("register map")
}

/// The new commands the PLC saw, as (part id, sequence), once there are `count` of them.
async fn commands_seen(plc: &PlcSimulator, count: usize) -> Vec<(u32, u16)> {
    eventually("the PLC program's scan", || async {
        plc.commands().len() >= count
    })
    .await;
    plc.commands()
        .iter()
        .map(|c| (c.part_id, c.sequence))
        .collect()
}

async fn simulator() -> PlcSimulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    PlcSimulator::serve(listener, register_map())
        .expect("serve")
        .0
}

/// A map may put the encoder anywhere free, below the PLC's heartbeat too: it is then read
/// on its own, beside the heartbeat, and counts on like the shipped map's.
#[tokio::test]
async fn an_encoder_below_the_heartbeat_is_read_beside_it() {
    let mut map = register_map();
    let shipped = map.encoder.expect("the shipped map has an encoder");
    assert!(shipped.address > map.plc_status.address, "{map:?}");
    // Between the station's state and the gate command, more than two below the heartbeat.
    map.encoder = Some(Register { address: 50 });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let plc = PlcSimulator::serve(listener, map).expect("serve").0;
    plc.set_encoder_rate(1000);
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    let (first, _) = link.read_encoder_and_heartbeat().await.expect("read");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (count, _) = link.read_encoder_and_heartbeat().await.expect("read");
        if count > first {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the encoder never counted on from {first}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn start_marks_running_and_heartbeat_counts_on() {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    assert_eq!(plc.register(map.station_state.address), 1);
    link.beat().await.expect("beat");
    link.beat().await.expect("beat");
    assert_eq!(plc.register(map.heartbeat.address), 2);
    link.set_running(false).await.expect("stop");
    assert_eq!(plc.register(map.station_state.address), 0);
}

#[tokio::test]
async fn sequence_continues_from_the_plc_after_a_restart() {
    let plc = simulator().await;
    let map = register_map();
    let mut first = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    first.start().await.expect("link check");
    first
        .command(1, GateVerdict::RejectDefect, false)
        .await
        .expect("command");
    commands_seen(&plc, 1).await;
    // A restarted station must not reuse the sequence number the PLC saw last.
    let mut second = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    second.start().await.expect("link check");
    second
        .command(2, GateVerdict::Pass, false)
        .await
        .expect("command");
    assert_eq!(commands_seen(&plc, 2).await, [(1, 1), (2, 2)]);
}

#[tokio::test]
async fn a_resent_command_is_taken_once() {
    let plc = simulator().await;
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), register_map());
    link.start().await.expect("link check");
    link.command(70_000, GateVerdict::RejectDefect, false)
        .await
        .expect("command");
    // A resend (same sequence) after a lost reply must not count as a second command.
    link.command(70_000, GateVerdict::RejectDefect, true)
        .await
        .expect("resend");
    link.command(70_001, GateVerdict::Pass, false)
        .await
        .expect("command");
    assert_eq!(commands_seen(&plc, 2).await, [(70_000, 1), (70_001, 2)]);
    assert_eq!(
        plc.writes().len(),
        1 + 3,
        "station state, then three command writes"
    );
}

/// The PLC program over Modbus, with its own conveyor: a beating station's PASS lets parts
/// by, and once the heartbeat stops the watchdog trips and every part is diverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plc_program_trusts_only_a_beating_station() {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    let mut beats = link.sibling();
    beats.beat().await.expect("beat");
    eventually("the station trusted", || async { !plc.diverting_all() }).await;
    // A part at the eye and its PASS inside the window.
    plc.part_reaches_eye_in(Duration::ZERO);
    link.command(1, GateVerdict::Pass, false)
        .await
        .expect("command");
    eventually("the part decided", || async {
        !plc.gate_events().is_empty()
    })
    .await;
    let event = plc.gate_events()[0].clone();
    assert_eq!(
        (event.reason, event.part_id),
        (DecisionReason::Pass, Some(1)),
        "{event:?}"
    );
    // Silence: the watchdog trips, and a PASS now is not trusted.
    eventually("the watchdog trip", || async {
        !plc.watchdog_trips().is_empty()
    })
    .await;
    let trip = plc.watchdog_trips()[0];
    let last_beat = plc
        .writes()
        .iter()
        .rev()
        .find(|w| w.address == map.heartbeat.address)
        .map(|w| w.at)
        .expect("a beat");
    let waited = (trip - last_beat).to_std().expect("trip after the beat");
    let watchdog = Duration::from_millis(map.plc_program.watchdog_ms);
    assert!(waited >= watchdog, "tripped after {waited:?}");
    plc.part_reaches_eye_in(Duration::ZERO);
    link.command(2, GateVerdict::Pass, false)
        .await
        .expect("command");
    eventually("the second part decided", || async {
        plc.gate_events().len() == 2
    })
    .await;
    let event = plc.gate_events()[1].clone();
    assert!(event.diverted, "{event:?}");
    assert_eq!(event.reason, DecisionReason::WatchdogExpired);
    // The status block says so, to the station and to anyone reading it.
    let status = link.plc_status().await.expect("status");
    assert_eq!(
        status[1] & 0b11,
        0b10,
        "not healthy, watchdog expired: {status:?}"
    );
}

/// A PLC that stops answering: the request times out, the link is rebuilt, and the late reply
/// is never taken for the answer to the next request.
#[tokio::test]
async fn silent_plc_times_out_and_the_link_is_rebuilt() {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");

    plc.set_response_delay(Duration::from_millis(1500));
    let error = link.beat().await.expect_err("no reply in time");
    assert!(
        matches!(error, GateError::Timeout { address: 0, .. }),
        "{error}"
    );
    assert!(error.is_link_error());
    let message = error.to_string();
    assert!(
        message.contains(&plc.address().to_string()) && message.contains("heartbeat"),
        "{message}"
    );

    plc.set_response_delay(Duration::ZERO);
    // The next answers must be the right ones even though a late reply is still on its way.
    link.command(42, GateVerdict::RejectDefect, false)
        .await
        .expect("command over a fresh link");
    link.start()
        .await
        .expect("heartbeat read over a fresh link");
    // Past the late reply of the silent request: it must not be read as the next answer.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    link.command(43, GateVerdict::RejectDefect, false)
        .await
        .expect("command");
    let seen: Vec<u32> = commands_seen(&plc, 2).await.iter().map(|c| c.0).collect();
    assert_eq!(seen, [42, 43]);
}

#[tokio::test]
async fn unreachable_plc_is_a_clear_error() {
    // Bind then drop: nothing listens on this port any more.
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut link = GateLink::new(address, 1, Duration::from_millis(200), register_map());
    let error = link.start().await.expect_err("nothing listens");
    assert!(
        matches!(
            error,
            GateError::Connect { .. } | GateError::ConnectTimeout { .. }
        ),
        "{error}"
    );
    assert!(error.to_string().contains(&address.to_string()));
}

/// Heartbeats both ways: a PLC switched to STOP still answers Modbus, but its heartbeat stands
/// still; the station notices within its timeout, reports it, holds every PASS back and, with
/// the stop-line policy, writes the halt coil, which the PLC latches once it runs again. Once
/// the PLC is back the station writes the coil OFF, so the operator's reset at the line
/// releases the halt, unless the halt-line action holds the coil for its own reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plc_whose_heartbeat_stops_is_lost_until_it_beats_again() {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    let lost = Arc::new(AtomicBool::new(false));
    let reports: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
    let metrics = Metrics::new();
    let stop = CancellationToken::new();
    let held_elsewhere = Arc::new(AtomicBool::new(false));
    let watch = PlcWatch {
        timeout: Duration::from_millis(600),
        policy: PlcLostPolicy::StopLine,
        lost: lost.clone(),
        halt_held_elsewhere: {
            let held = held_elsewhere.clone();
            Arc::new(move || held.load(Ordering::Relaxed))
        },
        report: {
            let reports = reports.clone();
            Box::new(move |lost, why| reports.lock().expect("reports").push((lost, why)))
        },
    };
    // A station stopped while its halt was on left the coil ON: at start it writes it OFF.
    let coil = map.halt_line.expect("halt coil").coil;
    link.write_coil(coil, true).await.expect("coil ON");
    let camera_lost = Arc::new(AtomicBool::new(false));
    let beating = tokio::spawn(run_heartbeat(
        link.sibling(),
        Duration::from_millis(100),
        metrics.clone(),
        watch,
        {
            let camera_lost = camera_lost.clone();
            Arc::new(move || camera_lost.load(Ordering::Relaxed))
        },
        stop.clone(),
    ));
    eventually("the station trusted", || async { !plc.diverting_all() }).await;
    eventually("the coil left ON released", || async { !plc.coil(coil) }).await;
    plc.press_operator_reset();
    eventually("the line released by the operator", || async {
        !plc.halted()
    })
    .await;
    assert!(!lost.load(Ordering::Relaxed));
    // A station whose camera is lost says so in station_state (2): the PLC diverts every
    // part until the camera is back and the beats say running (1) again.
    camera_lost.store(true, Ordering::Relaxed);
    eventually("the PLC faulted by a lost camera", || async {
        plc.diverting_all() && plc.register(1) == 2
    })
    .await;
    camera_lost.store(false, Ordering::Relaxed);
    eventually("the station trusted again", || async {
        !plc.diverting_all() && plc.register(1) == 1
    })
    .await;
    plc.set_program_running(false);
    eventually("the PLC lost", || async { lost.load(Ordering::Relaxed) }).await;
    assert_eq!(metrics.plc_heartbeat_lost.get(), 1);
    {
        let reports = reports.lock().expect("reports");
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            reports[0].0 && reports[0].1.contains("line is halted"),
            "{reports:?}"
        );
    }
    // Stop-line: the coil is ON; the PLC latches the halt as soon as its program runs.
    assert!(plc.coil(coil));
    plc.set_program_running(true);
    eventually("the PLC found again", || async {
        !lost.load(Ordering::Relaxed)
    })
    .await;
    eventually("the halt latched", || async { plc.halted() }).await;
    assert_eq!(metrics.plc_heartbeat_lost.get(), 0);
    assert_eq!(
        reports
            .lock()
            .expect("reports")
            .iter()
            .map(|r| r.0)
            .collect::<Vec<_>>(),
        [true, false]
    );
    // The PLC back, the coil goes OFF; the halt holds until the operator resets it at the line.
    eventually("the coil released", || async { !plc.coil(coil) }).await;
    assert!(plc.halted(), "the latch outlives the coil");
    plc.press_operator_reset();
    eventually("the line released by the operator", || async {
        !plc.halted()
    })
    .await;
    // Lost again while the halt-line action holds the coil: back, the coil stays ON (three
    // beats after the PLC is found, it still is), and the operator's reset does nothing.
    held_elsewhere.store(true, Ordering::Relaxed);
    plc.set_program_running(false);
    eventually("the PLC lost again", || async {
        lost.load(Ordering::Relaxed)
    })
    .await;
    eventually("the coil ON again", || async { plc.coil(coil) }).await;
    plc.set_program_running(true);
    eventually("the PLC found again", || async {
        !lost.load(Ordering::Relaxed)
    })
    .await;
    eventually("the halt latched again", || async { plc.halted() }).await;
    held_through_a_reset(&plc, &map, coil).await;
    stop.cancel();
    beating.await.expect("heartbeat task");
    assert_eq!(
        plc.register(map.station_state.address),
        0,
        "stopped state written"
    );
}

/// How the halt-line action's latch looks to the heartbeat in the two tests below: not
/// latched while the coil the heartbeat is about to release is still ON; latched from the
/// moment the coil is found OFF, i.e. exactly between the heartbeat's look and its OFF
/// landing; and, when `reset_at_once`, reset again right after that second look.
struct LatchInTheGap {
    latched: AtomicBool,
    reset: AtomicBool,
    reset_at_once: bool,
    /// Whether a look found the coil ON again after the latch (the heartbeat's restore).
    restored: AtomicBool,
}

impl LatchInTheGap {
    fn look(&self, coil_on: bool) -> bool {
        if self.latched.load(Ordering::Relaxed) && coil_on {
            self.restored.store(true, Ordering::Relaxed);
        }
        if self.reset.load(Ordering::Relaxed) {
            return false;
        }
        if !coil_on && !self.latched.swap(true, Ordering::Relaxed) {
            self.reset.store(self.reset_at_once, Ordering::Relaxed);
            return true;
        }
        self.latched.load(Ordering::Relaxed)
    }
}

/// A heartbeat under the stop-line policy owing an OFF to a coil a stopped station left ON
/// (latched by the PLC), its halt-line action latching as [`LatchInTheGap`] says (reset at
/// once after when `reset_at_once`), and no halt-line task
/// to reassert the coil: only the heartbeat can put it back.
async fn release_with_a_latch_in_the_gap(
    reset_at_once: bool,
) -> (
    PlcSimulator,
    u16,
    Arc<LatchInTheGap>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    let coil = map.halt_line.expect("halt coil").coil;
    let gap = Arc::new(LatchInTheGap {
        latched: AtomicBool::new(false),
        reset: AtomicBool::new(false),
        reset_at_once,
        restored: AtomicBool::new(false),
    });
    let watch = PlcWatch {
        timeout: Duration::from_millis(600),
        policy: PlcLostPolicy::StopLine,
        lost: Arc::new(AtomicBool::new(false)),
        halt_held_elsewhere: {
            let (plc, gap) = (plc.clone(), gap.clone());
            Arc::new(move || gap.look(plc.coil(coil)))
        },
        report: Box::new(|_, _| {}),
    };
    link.write_coil(coil, true).await.expect("coil ON");
    eventually("the halt latched", || async { plc.halted() }).await;
    let stop = CancellationToken::new();
    let beating = tokio::spawn(run_heartbeat(
        link.sibling(),
        Duration::from_millis(100),
        Metrics::new(),
        watch,
        Arc::new(|| false),
        stop.clone(),
    ));
    eventually("the action latched as the coil went OFF", || async {
        gap.latched.load(Ordering::Relaxed)
    })
    .await;
    (plc, coil, gap, stop, beating)
}

/// The heartbeat writes the stop-line policy's coil OFF once the PLC is back; should the
/// halt-line action latch between the heartbeat's look at it and that OFF landing, the OFF
/// would undo the action's ON until the action reasserts it, and an operator's reset at the
/// line meanwhile would release a halt the station holds. The heartbeat looks again once its
/// OFF has landed and writes the coil back ON at once, then leaves it to the action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_halt_latched_while_the_coil_is_released_puts_it_back_on() {
    let (plc, coil, _gap, stop, beating) = release_with_a_latch_in_the_gap(false).await;
    eventually("the coil back ON", || async { plc.coil(coil) }).await;
    // It stays ON beat after beat (the next look hands it to the action), and the operator's
    // reset does not release the line while it is.
    held_through_a_reset(&plc, &register_map(), coil).await;
    stop.cancel();
    beating.await.expect("heartbeat task");
}

/// The ON the heartbeat writes back is its own and owed an OFF: should the action be reset
/// while that ON is on its way (the action then writes OFF, and the late ON lands after it),
/// the next beat finds no latch and writes the coil OFF, so the line can be restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coil_put_back_on_for_a_latch_reset_meanwhile_is_released() {
    let (plc, coil, gap, stop, beating) = release_with_a_latch_in_the_gap(true).await;
    eventually("the coil put back ON, then released", || async {
        gap.restored.load(Ordering::Relaxed) && !plc.coil(coil)
    })
    .await;
    plc.press_operator_reset();
    eventually("the line released by the operator", || async {
        !plc.halted()
    })
    .await;
    stop.cancel();
    beating.await.expect("heartbeat task");
}

/// The halt coil, held ON for the halt-line action, stays ON three beats on, and the operator's
/// reset at the line, once the PLC's scan has taken it, leaves the line halted.
async fn held_through_a_reset(plc: &PlcSimulator, map: &RegisterMap, coil: u16) {
    let beat = plc.register(map.heartbeat.address);
    eventually("three more beats", || async {
        plc.register(map.heartbeat.address).wrapping_sub(beat) >= 3
    })
    .await;
    assert!(plc.coil(coil), "held for the halt-line action");
    plc.press_operator_reset();
    eventually("the PLC's scan took the reset", || async {
        !plc.operator_reset_pending()
    })
    .await;
    // The scan that took the press may still be applying it; two beats on (at least one
    // whole beat period, 100 ms, against a 1 ms scan) it has long been applied.
    let beat = plc.register(map.heartbeat.address);
    eventually("two beats later", || async {
        plc.register(map.heartbeat.address).wrapping_sub(beat) >= 2
    })
    .await;
    assert!(plc.halted(), "no reset while the coil is ON");
}

/// The gate task sends each part's verdict inside its window; while the PLC is lost a PASS
/// goes out as a reject by policy and is recorded as not actuated as asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_sends_every_verdict_and_no_pass_while_the_plc_is_lost() {
    let plc = simulator().await;
    let map = register_map();
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    link.start().await.expect("link check");
    let clock = StationClock::start();
    let (commands_tx, commands) = tokio::sync::mpsc::channel(8);
    let (outcomes, mut outcomes_rx) = tokio::sync::mpsc::channel(8);
    let plc_lost = Arc::new(AtomicBool::new(false));
    let command_window = link.command_window();
    let gate = tokio::spawn(run_gate(GateContext {
        link,
        commands,
        outcomes,
        clock: clock.clone(),
        metrics: Metrics::new(),
        plc_lost: plc_lost.clone(),
        command_window,
        lead: Duration::from_millis(20),
        encoder: None,
    }));
    let part = |id: u64, disposition: Disposition| {
        let now = clock.now();
        GateCommand {
            outcome: PartOutcome {
                part_id: PartId(id),
                captured_at: now,
                // The window opens `command_window` before this: the gate waits for it.
                gate_at: now.after(Duration::from_millis(200)),
                decided_at: now,
                disposition,
                inspection: None,
                inspection_late: false,
                actuation: Actuation::NotRequired,
            },
            place: None,
        }
    };
    let mut send = async |id, disposition| {
        let sent_at = clock.now();
        commands_tx
            .send(part(id, disposition))
            .await
            .expect("gate runs");
        let outcome = outcomes_rx.recv().await.expect("an outcome");
        (outcome, sent_at)
    };
    let (passed, sent_at) = send(1, Disposition::Pass).await;
    assert!(
        matches!(passed.actuation, Actuation::NotRequired),
        "{passed:?}"
    );
    // The early edge: nothing leaves before the window opens.
    let first_write = plc.writes().last().expect("a write").at;
    let opened = clock.utc(passed.gate_at.before(command_window));
    assert!(
        first_write >= opened,
        "sent {first_write}, window opened {opened}"
    );
    assert!(clock.now() >= sent_at.after(Duration::from_millis(200) - command_window));
    let (rejected, _) = send(2, Disposition::RejectFailed).await;
    assert!(
        matches!(rejected.actuation, Actuation::Done { .. }),
        "{rejected:?}"
    );
    plc_lost.store(true, Ordering::Relaxed);
    let (held, _) = send(3, Disposition::Pass).await;
    match &held.actuation {
        Actuation::Failed { error, .. } => assert!(error.contains("reject by policy"), "{error}"),
        other => panic!("{other:?}"),
    }
    // So does a PASS handed over while the PLC beat, whose heartbeat is lost while the command
    // waits for its window (three seconds ahead).
    plc_lost.store(false, Ordering::Relaxed);
    let mut waiting = part(4, Disposition::Pass);
    waiting.outcome.gate_at = clock.now().after(Duration::from_secs(3));
    let fires_at = waiting.outcome.gate_at.before(Duration::from_millis(20));
    commands_tx.send(waiting).await.expect("gate runs");
    // Taken by the gate once its place in the channel is free again.
    eventually("the gate to take the command", || async {
        commands_tx.capacity() == commands_tx.max_capacity()
    })
    .await;
    plc_lost.store(true, Ordering::Relaxed);
    assert!(
        clock.now() < fires_at,
        "the test stalled past the command's fire time; nothing was checked"
    );
    let held = outcomes_rx.recv().await.expect("an outcome");
    match &held.actuation {
        Actuation::Failed { error, .. } => assert!(error.contains("reject by policy"), "{error}"),
        other => panic!("{other:?}"),
    }
    drop(commands_tx);
    gate.await.expect("gate task");
    let verdicts: Vec<(u32, u16)> = plc
        .commands()
        .iter()
        .map(|c| (c.part_id, c.verdict))
        .collect();
    assert_eq!(verdicts, [(1, 1), (2, 2), (3, 4), (4, 4)]);
}

/// A PLC that is gone is not hammered: after a failed connect the link waits (jittered,
/// doubling) before the next attempt, and answers at once meanwhile; once the PLC is back the
/// next attempt after the wait connects and the wait starts over.
#[tokio::test]
async fn reconnects_back_off_with_jitter_until_the_plc_is_back() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr");
    drop(listener);
    let mut link = GateLink::new(address, 1, Duration::from_millis(200), register_map());
    let error = link.beat().await.expect_err("nothing listens");
    assert!(matches!(error, GateError::Connect { .. }), "{error}");
    let first = link
        .reconnect_wait()
        .expect("a wait after a failed connect");
    assert!(first <= Duration::from_millis(125), "{first:?}");
    let error = link.beat().await.expect_err("still waiting");
    assert!(matches!(error, GateError::Reconnecting { .. }), "{error}");
    assert!(error.is_link_error());
    // The next failure waits longer (its base doubled; jitter is ± 25 %).
    eventually("the first wait over", || async {
        link.reconnect_wait().is_none()
    })
    .await;
    link.beat().await.expect_err("nothing listens");
    let second = link.reconnect_wait().expect("a wait");
    assert!(second > Duration::from_millis(125), "{second:?}");
    // The PLC comes back on the same address.
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .expect("rebind");
    let (plc, _task) = PlcSimulator::serve(listener, register_map()).expect("serve");
    eventually("the second wait over", || async {
        link.reconnect_wait().is_none()
    })
    .await;
    link.beat().await.expect("connected again");
    let heartbeat = register_map().heartbeat.address;
    assert!(plc.writes().iter().any(|w| w.address == heartbeat));
    assert!(link.reconnect_wait().is_none(), "the wait starts over");
}
