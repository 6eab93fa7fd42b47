//! Modbus interop with peers we did not write: pymodbus (server and client) and mbpoll.
//!
//! These need the tools `make test` installs (`scripts/setup.sh`); without them each test
//! fails with a message saying what to install, never passes silently.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use linesight::actuate::{GATE_COMMAND_LEN, GateCommandWords, GateLink, GateVerdict, RegisterMap};
use linesight::simulate::PlcSimulator;

use crate::{KillOnDrop, free_port, python, repo};

fn register_map() -> RegisterMap {
    RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("register map")
}

/// Starts the pymodbus server and waits until it accepts connections.
async fn pymodbus_server() -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let child = Command::new(python())
        .arg(repo().join("tests/interop/pymodbus_server.py"))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("start pymodbus server");
    let guard = KillOnDrop(child);
    let address: SocketAddr = ([127, 0, 0, 1], port).into();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return (guard, address);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pymodbus server did not start on {address}");
}

fn pymodbus_read(address: SocketAddr, register: u16, count: u16) -> Vec<u16> {
    let output = Command::new(python())
        .arg(repo().join("tests/interop/pymodbus_read.py"))
        .args([
            address.port().to_string(),
            register.to_string(),
            count.to_string(),
        ])
        .output()
        .expect("run pymodbus client");
    assert!(
        output.status.success(),
        "pymodbus client: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON list of registers")
}

/// Reads holding registers with mbpoll (0-based addresses, one poll).
fn mbpoll_read(address: SocketAddr, register: u16, count: u16) -> Vec<u16> {
    let output = Command::new("mbpoll")
        .args(["-m", "tcp", "-a", "1", "-t", "4", "-0", "-1", "-q"])
        .args(["-r", &register.to_string(), "-c", &count.to_string()])
        .args(["-p", &address.port().to_string(), "127.0.0.1"])
        .output()
        .expect("mbpoll is installed (apt-get install mbpoll; make test does)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "mbpoll: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Lines look like "[100]: 	1".
    stdout
        .lines()
        .filter_map(|line| line.split_once("]:"))
        .map(|(_, value)| value.trim().parse::<u16>().expect("register value"))
        .collect()
}

/// Writes one holding register with mbpoll.
fn mbpoll_write(address: SocketAddr, register: u16, value: u16) {
    let output = Command::new("mbpoll")
        .args(["-m", "tcp", "-a", "1", "-t", "4", "-0", "-1", "-q"])
        .args([
            "-r",
            &register.to_string(),
            "-p",
            &address.port().to_string(),
            "127.0.0.1",
        ])
        .arg(value.to_string())
        .output()
        .expect("mbpoll is installed");
    assert!(
        output.status.success(),
        "mbpoll write: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Our gate link drives a pymodbus PLC; pymodbus's own client and mbpoll read back what we wrote.
#[tokio::test]
async fn gate_link_writes_a_pymodbus_plc() {
    let (_server, address) = pymodbus_server().await;
    let map = register_map();
    let mut link = GateLink::new(address, 1, Duration::from_secs(1), map);
    link.start().await.expect("link check against pymodbus");
    link.beat().await.expect("heartbeat");
    link.command(0x0001_2345, GateVerdict::Pass, false)
        .await
        .expect("gate command");

    let expected = map
        .encode_gate_command(GateCommandWords {
            part_id: 0x0001_2345,
            verdict: GateVerdict::Pass,
            class: 0,
            sequence: 1,
        })
        .to_vec();
    assert_eq!(
        expected,
        [0x0001, 0x2345, 1, 0, 1],
        "high word first, verdict 1 = PASS"
    );
    let len = GATE_COMMAND_LEN;
    assert_eq!(
        pymodbus_read(address, map.gate_command.address, len),
        expected
    );
    assert_eq!(
        mbpoll_read(address, map.gate_command.address, len),
        expected
    );
    assert_eq!(
        pymodbus_read(address, map.heartbeat.address, 2),
        [1, 1],
        "heartbeat 1, running"
    );
}

/// Foreign clients read and write our PLC simulator, so tests against it mean something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_clients_talk_to_the_plc_simulator() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (plc, _task) = PlcSimulator::serve(listener, register_map()).expect("serve");
    let address = plc.address();
    let map = register_map();
    let mut link = GateLink::new(address, 1, Duration::from_secs(1), map);
    link.start().await.expect("link check");
    link.command(77, GateVerdict::RejectDefect, false)
        .await
        .expect("gate command");

    let expected = [0, 77, 2, 0, 1];
    let read = tokio::task::spawn_blocking(move || {
        (pymodbus_read(address, 100, 5), mbpoll_read(address, 100, 5))
    });
    let (by_pymodbus, by_mbpoll) = read.await.expect("readers");
    assert_eq!(by_pymodbus, expected);
    assert_eq!(by_mbpoll, expected);

    // The PLC program's status block, as a PLC programmer's tool reads it: the station never
    // beat, so the program does not trust it (b0 healthy clear, b1 watchdog expired set).
    let status = map.plc_status.address;
    let read = tokio::task::spawn_blocking(move || mbpoll_read(address, status, 8));
    let words = read.await.expect("mbpoll");
    assert_eq!(words.len(), 8, "{words:?}");
    assert_eq!(words[1] & 0b111, 0b010, "status bits {words:?}");

    tokio::task::spawn_blocking(move || mbpoll_write(address, map.heartbeat.address, 4242))
        .await
        .expect("writer");
    assert_eq!(plc.register(map.heartbeat.address), 4242);
    assert!(
        plc.writes()
            .iter()
            .any(|w| w.address == map.heartbeat.address && w.values == [4242])
    );
}
