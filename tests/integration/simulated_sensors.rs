//! The simulated line's sensors over real Modbus TCP: what a station polling the PLC reads is
//! what the line's config put in, in every register format.

use std::time::Duration;

use linesight::simulate::SimulatedLine;
use linesight::simulate::process::{Encoding, RegisterFormat, WordOrder};
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader, tcp};

use crate::station_config;

/// Sensors with neither noise nor cycle, so each register holds one known value; every encoding
/// and word order, in both register kinds.
const STEADY_SENSORS: &str = r#"[camera.simulator]
parts_per_min = 120
seed = 3

[[camera.simulator.sensors]]
name = "press_temp"
register = "holding"
address = 1000
encoding = "f32"
word_order = "high_first"
base = 183.25

[[camera.simulator.sensors]]
name = "belt_speed"
register = "holding"
address = 1002
encoding = "u16"
scale = 0.1
base = 12.3

[[camera.simulator.sensors]]
name = "counter"
register = "holding"
address = 1003
encoding = "u32"
word_order = "low_first"
base = 70000.0

[[camera.simulator.sensors]]
name = "vibration"
register = "input"
address = 2000
encoding = "f32"
word_order = "low_first"
base = 4.75

[[camera.simulator.sensors]]
name = "freezer_temp"
register = "input"
address = 2002
encoding = "i16"
scale = 0.1
base = -12.5

[camera.simulator.running_flag]
register = "holding"
address = 1010

"#;

/// The station config's `[camera.simulator]` block replaced by `block`.
fn with_simulator(dir: &std::path::Path, block: &str) -> linesight::config::StationConfig {
    let text = std::fs::read_to_string(crate::repo().join("config/simulated-line.toml"))
        .expect("shipped config");
    let start = text.find("[camera.simulator]").expect("simulator section");
    let end = text.find("[calibration]").expect("calibration section");
    station_config(dir, &[(&text[start..end], block)])
}

async fn read(context: &mut Context, input: bool, address: u16, count: u16) -> Vec<u16> {
    let reply = if input {
        context.read_input_registers(address, count).await
    } else {
        context.read_holding_registers(address, count).await
    };
    reply.expect("transport").expect("no Modbus exception")
}

fn decode(encoding: Encoding, word_order: WordOrder, scale: f64, words: &[u16]) -> f64 {
    let format = RegisterFormat {
        encoding,
        word_order,
        scale,
        offset: 0.0,
    };
    format.decode(words).expect("the right number of words")
}

/// Issue 15: every sensor format reads back over FC3 and FC4 as configured.
#[tokio::test]
async fn sensor_registers_read_back_over_modbus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = SimulatedLine::start(&with_simulator(dir.path(), STEADY_SENSORS))
        .await
        .expect("the simulated line starts");
    let plc = line.plc().expect("simulated PLC").address();
    let mut context = tcp::connect_slave(plc, Slave(1)).await.expect("connect");

    let holding = read(&mut context, false, 1000, 11).await;
    let input = read(&mut context, true, 2000, 3).await;
    use Encoding::*;
    use WordOrder::*;
    assert_eq!(decode(F32, HighFirst, 1.0, &holding[0..2]), 183.25);
    let belt = decode(U16, HighFirst, 0.1, &holding[2..3]);
    assert!((belt - 12.3).abs() < 1e-9, "{belt}");
    assert_eq!(holding[3..5], [4464, 1], "u32 70000, low word first");
    assert_eq!(decode(U32, LowFirst, 1.0, &holding[3..5]), 70000.0);
    assert_eq!(holding[10], 1, "the line runs");
    assert_eq!(decode(F32, LowFirst, 1.0, &input[0..2]), 4.75);
    assert_eq!(input[2], (-125i16) as u16, "negative i16");
    let freezer = decode(I16, HighFirst, 0.1, &input[2..3]);
    assert!((freezer + 12.5).abs() < 1e-9, "{freezer}");
    // The holding registers the station writes are untouched.
    assert_eq!(read(&mut context, false, 0, 2).await, [0, 0]);
}

/// The shipped line's noisy sensors move while it runs, and what the PLC serves is what the
/// line's physics reports for some moment of the read.
#[tokio::test]
async fn shipped_sensors_follow_the_line_clock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = SimulatedLine::start(&station_config(dir.path(), &[]))
        .await
        .expect("the simulated line starts");
    let process = line.process().expect("a simulated camera");
    let plc = line.plc().expect("simulated PLC").address();
    let mut context = tcp::connect_slave(plc, Slave(1)).await.expect("connect");
    let press = process.sensor_index("press_temp").expect("press_temp");
    let format = process.sensors()[press].format();

    let before = line.started().elapsed();
    let first = read(&mut context, false, 1000, 2).await;
    let after = line.started().elapsed();
    // One of the ticks before the read served these words (the register task may lag behind
    // on a busy machine, hence the margin; the noise makes a wrong match unlikely).
    let tick = Duration::from_millis(100);
    let ticks = (before.saturating_sub(Duration::from_secs(5)).as_millis() / 100)
        ..=(after.as_millis() / 100);
    assert!(
        ticks
            .map(|n| tick * n as u32)
            .any(|t| format.encode(process.reported_value(press, t)) == first),
        "{first:?} is no reported value between {before:?} and {after:?}"
    );
    let value = format.decode(&first).expect("two words");
    assert!((170.0..200.0).contains(&value), "press at {value} °C");

    // The noise moves the value from tick to tick; wait for the register task's next one.
    let changed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if read(&mut context, false, 1000, 2).await != first {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        changed.is_ok(),
        "the press temperature register never changed"
    );
}
