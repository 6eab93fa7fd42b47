//! The PLC link: deadlines, reconnects, and what the PLC sees.

use std::time::Duration;

use linesight::actuate::{GateError, GateLink, RegisterMap};
use linesight::simulate::PlcSimulator;

use crate::repo;

fn register_map() -> RegisterMap {
    RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("register map")
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
    first.reject(1, false).await.expect("reject");
    // A restarted station must not reuse the sequence number the PLC saw last.
    let mut second = GateLink::new(plc.address(), 1, Duration::from_millis(500), map);
    second.start().await.expect("link check");
    second.reject(2, false).await.expect("reject");
    let fired: Vec<(u64, u16)> = plc
        .pulses()
        .iter()
        .map(|p| (p.part_id, p.sequence))
        .collect();
    assert_eq!(fired, [(1, 1), (2, 2)]);
}

#[tokio::test]
async fn reject_fires_the_gate_once_per_command() {
    let plc = simulator().await;
    let mut link = GateLink::new(plc.address(), 1, Duration::from_millis(500), register_map());
    link.start().await.expect("link check");
    link.reject(70_000, false).await.expect("reject");
    // A resend (same sequence) after a lost reply must not fire the gate again.
    link.reject(70_000, true).await.expect("resend");
    link.reject(70_001, false).await.expect("reject");
    let pulses: Vec<(u64, u16)> = plc
        .pulses()
        .iter()
        .map(|p| (p.part_id, p.sequence))
        .collect();
    assert_eq!(pulses, [(70_000, 1), (70_001, 2)]);
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
    link.reject(42, false)
        .await
        .expect("reject over a fresh link");
    link.start()
        .await
        .expect("heartbeat read over a fresh link");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    link.reject(43, false).await.expect("reject");
    let fired: Vec<u64> = plc.pulses().iter().map(|p| p.part_id).collect();
    assert_eq!(fired, [42, 43]);
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
