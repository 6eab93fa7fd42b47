//! Fail-safe, proven by tests: whatever happens to the station (SIGKILL, a clean stop, a cut
//! network cable), the PLC diverts every part to the reject lane; and a link that comes back
//! is rebuilt by the station by itself.
//!
//! The PLC runs in this test process ([`PlcSimulator`], scanning the PLC program of
//! `firmware-io/plc-program.md` every millisecond) with a belt of its own, so it outlives the
//! station; the station is the real binary, a child process that is a Modbus TCP client of
//! it (`[plc] type = "tcp"`). The station's simulated camera does not line up with the PLC's
//! belt, so before a fault most parts are decided `NoCommand`: only what happens after the
//! fault is asserted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use linesight::actuate::RegisterMap;
use linesight::simulate::{DecisionReason, GateEvent, PlcSimulator, PlcWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::station_process::{StationProcess, config_file_as_shipped, log_tail};
use crate::{CPU_HEAVY, poll, repo};

/// The PLC's own belt: a part at the gate eye this often.
const PART_PITCH: Duration = Duration::from_millis(100);

/// A PLC in this process with its belt running; both stop when it is dropped.
struct Plc {
    sim: PlcSimulator,
    map: RegisterMap,
    tasks: Vec<JoinHandle<()>>,
}

impl Plc {
    async fn start() -> Plc {
        let map =
            RegisterMap::load(&repo().join("firmware-io/register-map.toml")).expect("register map");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (sim, server) = PlcSimulator::serve(listener, map).expect("serve");
        let conveyor = sim.run_conveyor(PART_PITCH);
        Plc {
            sim,
            map,
            tasks: vec![server, conveyor],
        }
    }

    fn watchdog(&self) -> Duration {
        Duration::from_millis(self.map.plc_program.watchdog_ms)
    }

    /// The value `write` put into holding register `address`, if it covered it.
    fn wrote(write: &PlcWrite, address: u16) -> Option<u16> {
        let offset = address.checked_sub(write.address)?;
        write.values.get(usize::from(offset)).copied()
    }

    /// When the station's heartbeat was written, in order.
    fn heartbeat_writes(&self) -> Vec<DateTime<Utc>> {
        let address = self.map.heartbeat.address;
        let writes = self.sim.writes();
        writes
            .iter()
            .filter(|w| Plc::wrote(w, address).is_some())
            .map(|w| w.at)
            .collect()
    }

    /// When the station wrote `station_state = 0` (stopped), in order.
    fn stopped_writes(&self) -> Vec<DateTime<Utc>> {
        let address = self.map.station_state.address;
        let writes = self.sim.writes();
        writes
            .iter()
            .filter(|w| Plc::wrote(w, address) == Some(0))
            .map(|w| w.at)
            .collect()
    }

    /// The parts the gate eye saw at or after `from`, as they were decided.
    fn parts_seen(&self, from: DateTime<Utc>) -> Vec<GateEvent> {
        let events = self.sim.gate_events();
        events.into_iter().filter(|e| e.eye_at >= from).collect()
    }

    /// The watchdog trips at or after `from`.
    fn trips_since(&self, from: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let trips = self.sim.watchdog_trips();
        trips.into_iter().filter(|t| *t >= from).collect()
    }

    /// Whether the PLC trusts the station now and has taken one of its commands into the
    /// tracking FIFO since `since`.
    fn trusts_and_takes_commands_since(&self, since: DateTime<Utc>) -> bool {
        !self.sim.diverting_all()
            && self
                .sim
                .commands()
                .iter()
                .any(|c| c.queued && c.at >= since)
    }

    /// Everything the PLC saw from 3 s before `fault` on, times relative to it: station
    /// writes, commands, watchdog trips and parts at the gate. For failure messages.
    fn saw(&self, fault: DateTime<Utc>) -> String {
        let from = fault - TimeDelta::seconds(3);
        let ms = |at: DateTime<Utc>| (at - fault).num_milliseconds();
        let mut lines: Vec<(DateTime<Utc>, String)> = Vec::new();
        for write in self.sim.writes().iter().filter(|w| w.at >= from) {
            let what = if let Some(beat) = Plc::wrote(write, self.map.heartbeat.address) {
                format!("heartbeat {beat}")
            } else if let Some(state) = Plc::wrote(write, self.map.station_state.address) {
                format!("station_state {state}")
            } else {
                format!("write @{} {:?}", write.address, write.values)
            };
            lines.push((write.at, what));
        }
        for command in self.sim.commands().iter().filter(|c| c.at >= from) {
            lines.push((
                command.at,
                format!(
                    "command part {} verdict {} seq {} queued {}",
                    command.part_id, command.verdict, command.sequence, command.queued
                ),
            ));
        }
        for trip in self.trips_since(from) {
            lines.push((trip, "WATCHDOG TRIP".to_owned()));
        }
        for event in self.parts_seen(from) {
            lines.push((
                event.eye_at,
                format!(
                    "part at eye: decided {:+} ms, {:?}, diverted {}, part {:?}",
                    ms(event.at),
                    event.reason,
                    event.diverted,
                    event.part_id
                ),
            ));
        }
        lines.sort_by_key(|(at, _)| *at);
        let mut text = format!(
            "what the PLC saw (ms from the fault at {fault}; all trips: {:?}; diverting all now: {}):\n",
            self.sim.watchdog_trips(),
            self.sim.diverting_all()
        );
        for (at, what) in lines {
            text.push_str(&format!("{:+7} {what}\n", ms(at)));
        }
        text
    }
}

impl Drop for Plc {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A station config whose PLC is `plc_address` over Modbus TCP, its simulated camera as
/// shipped, written into a new temporary folder; its data goes to `data` in there.
fn tcp_station_config(plc_address: SocketAddr) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The [plc] section's own lines, exactly: other sections have `type` keys too.
    let simulated = "[plc]\n# \"simulated\": the built-in PLC simulator on loopback; \"tcp\": a real PLC at `address`.\ntype = \"simulated\"\n";
    let tcp = format!("[plc]\ntype = \"tcp\"\naddress = \"{plc_address}\"\n");
    let config = config_file_as_shipped(dir.path(), &[(simulated, &tcp)]);
    (dir, config)
}

/// Starts the station on `plc_address` and waits until `plc` trusts it and has taken its
/// commands. The temporary folder (its config and data) must outlive the station.
async fn start_trusted_station(
    plc: &Plc,
    plc_address: SocketAddr,
) -> (tempfile::TempDir, StationProcess) {
    let (dir, config) = tcp_station_config(plc_address);
    let started = Utc::now();
    let station = StationProcess::start(&config, &dir.path().join("data")).await;
    wait_for(
        "the PLC to trust the station and take its commands",
        || {
            format!(
                "{}\nstation log:\n{}",
                plc.saw(started),
                log_tail(&station.log, 30)
            )
        },
        || async { plc.trusts_and_takes_commands_since(started) },
    )
    .await;
    (dir, station)
}

/// Waits for `condition` (see [`poll`]); on a timeout the test fails with `evidence()`.
async fn wait_for<F, Fut>(what: &str, evidence: impl Fn() -> String, condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    assert!(
        poll(condition).await,
        "timed out waiting for {what}\n{}",
        evidence()
    );
}

/// A station killed with SIGKILL cannot say goodbye: its heartbeat just stops. The PLC's
/// watchdog (R1) trips once, a watchdog time after the last beat it got (not earlier, and
/// not much later: the program scans every millisecond), and from then on every part is
/// diverted (R3) as WatchdogExpired; the status block says unhealthy, watchdog expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_trips_the_plc_watchdog_and_every_later_part_is_diverted() {
    let _one = CPU_HEAVY.lock().await;
    let plc = Plc::start().await;
    let (_dir, mut station) = start_trusted_station(&plc, plc.sim.address()).await;

    let killed_at = Utc::now();
    station.kill_9();
    let saw = || plc.saw(killed_at);
    wait_for("the watchdog to trip", saw, || async {
        !plc.trips_since(killed_at).is_empty()
    })
    .await;
    let trip = plc.trips_since(killed_at)[0];
    wait_for("5 parts at the eye after the trip", saw, || async {
        plc.parts_seen(trip).len() >= 5
    })
    .await;

    assert_eq!(plc.trips_since(killed_at).len(), 1, "one trip\n{}", saw());
    let last_beat = *plc.heartbeat_writes().last().expect("the station beat");
    let silent = (trip - last_beat)
        .to_std()
        .expect("the trip after the last beat");
    let watchdog = plc.watchdog();
    assert!(
        silent >= watchdog && silent <= watchdog + Duration::from_millis(250),
        "tripped {silent:?} after the last beat, watchdog {watchdog:?}\n{}",
        saw()
    );
    let after_trip = plc.parts_seen(trip);
    assert!(
        after_trip
            .iter()
            .all(|e| e.diverted && e.reason == DecisionReason::WatchdogExpired),
        "a part after the trip was not diverted as WatchdogExpired\n{}",
        saw()
    );
    assert!(
        plc.stopped_writes().is_empty(),
        "a killed station wrote station_state 0\n{}",
        saw()
    );
    let status = plc.sim.register(plc.map.plc_status.address + 1);
    assert_eq!(
        status & 0b11,
        0b10,
        "status bits {status:#07b}: b0 healthy clear, b1 watchdog set\n{}",
        saw()
    );
    println!(
        "watchdog tripped {silent:?} after the last beat; {} parts diverted since",
        after_trip.len()
    );
}

/// A clean stop (Ctrl-C) tells the PLC: the station writes `station_state = 0` once its last
/// part has reached the gate, and from the next scan on the PLC diverts every part (R2, R3):
/// as StationStopped until the watchdog expires a watchdog time after the last beat, then as
/// WatchdogExpired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_says_stopped_and_the_plc_diverts() {
    let _one = CPU_HEAVY.lock().await;
    let plc = Plc::start().await;
    let (_dir, mut station) = start_trusted_station(&plc, plc.sim.address()).await;

    let interrupted_at = Utc::now();
    station.send_interrupt();
    let saw = || plc.saw(interrupted_at);
    wait_for("the station to stop", saw, || {
        let exited = station.exited().is_some();
        async move { exited }
    })
    .await;
    let exit = station.exited().expect("exited");
    assert!(
        exit.success(),
        "a clean stop exited with {exit}\n{}\nstation log:\n{}",
        saw(),
        log_tail(&station.log, 30)
    );
    let stopped_at = *plc.stopped_writes().last().unwrap_or_else(|| {
        panic!(
            "the station never wrote station_state 0\n{}\nstation log:\n{}",
            saw(),
            log_tail(&station.log, 30)
        )
    });
    let saw = || plc.saw(stopped_at);
    // The PLC reads the register at its next scan.
    let effective = stopped_at + TimeDelta::milliseconds(2);
    let stopped_parts = || {
        plc.parts_seen(effective)
            .into_iter()
            .filter(|e| e.reason == DecisionReason::StationStopped)
            .count()
    };
    wait_for("3 parts diverted as StationStopped", saw, || async {
        stopped_parts() >= 3
    })
    .await;
    let after_stop = plc.parts_seen(effective);
    assert!(
        after_stop.iter().all(|e| e.diverted
            && matches!(
                e.reason,
                DecisionReason::StationStopped | DecisionReason::WatchdogExpired
            )),
        "a part after the stop was not diverted as StationStopped or WatchdogExpired\n{}",
        saw()
    );
    println!(
        "station_state 0 written {} ms after Ctrl-C; {} parts diverted as StationStopped",
        (stopped_at - interrupted_at).num_milliseconds(),
        stopped_parts()
    );
}

/// A cut network cable (every connection dropped, new ones refused) silences the heartbeat:
/// the PLC's watchdog trips and every part is diverted as WatchdogExpired. When the cable is
/// back on the same address the station rebuilds its links by itself, without a restart:
/// its heartbeat reaches the PLC again, the PLC trusts it and takes its commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_network_trips_the_watchdog_and_the_link_is_rebuilt() {
    let _one = CPU_HEAVY.lock().await;
    let plc = Plc::start().await;
    let mut cable = Cable::connect(plc.sim.address()).await;
    let (_dir, mut station) = start_trusted_station(&plc, cable.address).await;

    let log = station.log.clone();
    let cut_at = Utc::now();
    cable.cut().await;
    let saw = || format!("{}\nstation log:\n{}", plc.saw(cut_at), log_tail(&log, 30));
    wait_for("the watchdog to trip", saw, || async {
        !plc.trips_since(cut_at).is_empty()
    })
    .await;
    let trip = plc.trips_since(cut_at)[0];
    wait_for("3 parts at the eye after the trip", saw, || async {
        plc.parts_seen(trip).len() >= 3
    })
    .await;
    assert_eq!(
        plc.heartbeat_writes()
            .last()
            .filter(|at| **at > cut_at + TimeDelta::milliseconds(50)),
        None,
        "a heartbeat got through the cut cable\n{}",
        saw()
    );

    cable.restore().await;
    let restored_at = Utc::now();
    let saw = || {
        format!(
            "{}\nstation log:\n{}",
            plc.saw(restored_at),
            log_tail(&log, 30)
        )
    };
    wait_for("a heartbeat over the restored cable", saw, || async {
        plc.heartbeat_writes().last() > Some(&restored_at)
    })
    .await;
    wait_for(
        "the PLC to trust the station and take its commands again",
        saw,
        || async { plc.trusts_and_takes_commands_since(restored_at) },
    )
    .await;
    let back_at = *plc
        .heartbeat_writes()
        .iter()
        .find(|at| **at > restored_at)
        .expect("a beat after the restore");
    // Every part decided from the trip until the heartbeat moved again was the cut's.
    let cut_parts: Vec<GateEvent> = plc
        .parts_seen(trip)
        .into_iter()
        .filter(|e| e.at < back_at)
        .collect();
    assert!(
        cut_parts
            .iter()
            .all(|e| e.diverted && e.reason == DecisionReason::WatchdogExpired),
        "a part while the cable was cut was not diverted as WatchdogExpired\n{}",
        saw()
    );
    // The PLC reads the moved heartbeat at its next scan.
    let trusted_again = back_at + TimeDelta::milliseconds(2);
    wait_for("a part decided with no fault again", saw, || async {
        plc.parts_seen(trusted_again).iter().any(|e| {
            !matches!(
                e.reason,
                DecisionReason::WatchdogExpired | DecisionReason::StationStopped
            )
        })
    })
    .await;
    assert_eq!(
        station.exited(),
        None,
        "the station exited instead of rebuilding its link\n{}",
        saw()
    );
    println!(
        "watchdog tripped {} ms after the cut; {} parts diverted while cut; heartbeat back {} ms \
         after the restore; {} connections proxied",
        (trip - cut_at).num_milliseconds(),
        cut_parts.len(),
        (back_at - restored_at).num_milliseconds(),
        cable.connections()
    );
}

/// A network cable between the station and the PLC: a TCP proxy on a fixed loopback port that
/// the test can cut (every connection dropped, new ones refused, as a pulled cable or a
/// switch rebooting does to a client) and restore on the same port.
struct Cable {
    address: SocketAddr,
    plc: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
    /// One task per proxied connection; aborting it drops (closes) both of its sockets.
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Connections carried so far.
    carried: Arc<AtomicUsize>,
}

impl Cable {
    async fn connect(plc: SocketAddr) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut cable = Cable {
            address: listener.local_addr().expect("address"),
            plc,
            acceptor: None,
            links: Arc::default(),
            carried: Arc::default(),
        };
        cable.accept(listener);
        cable
    }

    fn accept(&mut self, listener: TcpListener) {
        let (plc, links, carried) = (self.plc, self.links.clone(), self.carried.clone());
        self.acceptor = Some(tokio::spawn(async move {
            loop {
                let Ok((mut station_side, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let link = tokio::spawn(async move {
                    let Ok(mut plc_side) = TcpStream::connect(plc).await else {
                        return;
                    };
                    // Modbus is small requests and replies: no Nagle delay on either leg.
                    let _ = station_side.set_nodelay(true);
                    let _ = plc_side.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut station_side, &mut plc_side).await;
                });
                // No await between the spawn and the push, so a cut (which aborts this task
                // at an await) never misses a link.
                links.lock().expect("links").push(link);
                carried.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    /// How many connections it has carried.
    fn connections(&self) -> usize {
        self.carried.load(Ordering::Relaxed)
    }

    /// Stops accepting (the listener is dropped: new connections are refused) and drops
    /// every connection it carries.
    async fn cut(&mut self) {
        if let Some(acceptor) = self.acceptor.take() {
            acceptor.abort();
            let _ = acceptor.await;
        }
        let links: Vec<_> = self.links.lock().expect("links").drain(..).collect();
        for link in &links {
            link.abort();
        }
        for link in links {
            let _ = link.await;
        }
    }

    /// Listens on the same port again. The dropped connections may hold the port for a
    /// moment, so the bind is retried for a few seconds.
    async fn restore(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%error, "rebinding the cable's port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("cannot listen on {} again: {error}", self.address),
            }
        };
        self.accept(listener);
    }
}
