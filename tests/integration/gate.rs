//! The PLC link: deadlines, reconnects, and what the PLC sees.

use std::time::Duration;

use linesight::actuate::{GateError, GateLink, GateVerdict, RegisterMap};
use linesight::simulate::{DecisionReason, PlcSimulator};

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
