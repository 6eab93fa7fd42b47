//! Polling tags from the PLC over Modbus TCP.
//!
//! One task per sample period reads every tag of that period, neighbouring registers in one
//! request, under a deadline. A request that fails or times out drops the connection (a late
//! reply must never be read as the next answer) and stores a `source_lost` placeholder for each
//! of its tags at that poll's time: the outage is on record as a run of bad samples, and no
//! value is ever invented for it. The next poll reconnects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use tokio::time::{MissedTickBehavior, timeout};
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader, tcp};
use tokio_util::sync::CancellationToken;

use super::tags::{ModbusSource, RegisterKind};
use super::{Incoming, Sensors};
use crate::metrics::Metrics;

/// Registers read in one request at most (Modbus allows 125).
const MAX_BLOCK: u16 = 120;
/// Unused registers a block may span to join two tags.
const MAX_HOLE: u16 = 8;

/// Where to poll and how patiently.
#[derive(Debug, Clone, Copy)]
pub struct PollTarget {
    pub address: SocketAddr,
    pub unit: u8,
    /// Each request (connect included) is abandoned after this long.
    pub request_timeout: Duration,
}

/// Registers read in one request, and the tags inside them.
#[derive(Debug, Clone, PartialEq)]
struct Block {
    kind: RegisterKind,
    start: u16,
    count: u16,
    tags: Vec<(String, ModbusSource)>,
}

/// Neighbouring tags of one register kind grouped into requests.
fn blocks(mut tags: Vec<(String, ModbusSource)>) -> Vec<Block> {
    tags.sort_by_key(|(_, s)| (s.kind, s.register));
    let mut blocks: Vec<Block> = Vec::new();
    for (name, source) in tags {
        // In u32: a value in the last register ends at 65536, past u16 (the config check lets
        // a value end there, no further).
        let end = u32::from(source.register) + u32::from(source.encoding.registers());
        match blocks.last_mut() {
            Some(block)
                if block.kind == source.kind
                    && u32::from(source.register)
                        <= u32::from(block.start)
                            + u32::from(block.count)
                            + u32::from(MAX_HOLE)
                    && end - u32::from(block.start) <= u32::from(MAX_BLOCK) =>
            {
                // At most MAX_BLOCK: fits.
                let count = (end - u32::from(block.start)) as u16;
                block.count = block.count.max(count);
                block.tags.push((name, source));
            }
            _ => blocks.push(Block {
                kind: source.kind,
                start: source.register,
                count: source.encoding.registers(),
                tags: vec![(name, source)],
            }),
        }
    }
    blocks
}

/// Polls every `modbus` tag until `cancel`. Returns at once when there is none.
pub async fn run_poller(
    sensors: Sensors,
    target: PollTarget,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut by_period: BTreeMap<u64, Vec<(String, ModbusSource)>> = BTreeMap::new();
    for tag in sensors.tags.iter() {
        if let Some(source) = &tag.modbus {
            by_period
                .entry(tag.period_ms)
                .or_default()
                .push((tag.name.clone(), source.clone()));
        }
    }
    let tasks: Vec<_> = by_period
        .into_iter()
        .map(|(period_ms, tags)| {
            tokio::spawn(poll_group(
                sensors.clone(),
                target,
                Duration::from_millis(period_ms),
                blocks(tags),
                metrics.clone(),
                cancel.clone(),
            ))
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

async fn poll_group(
    sensors: Sensors,
    target: PollTarget,
    period: Duration,
    blocks: Vec<Block>,
    metrics: Metrics,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    // A slow poll does not cause a burst of catch-up polls.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut context: Option<Context> = None;
    let mut was_lost = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let mut batch = Vec::new();
        let mut lost = false;
        for block in &blocks {
            let at = Utc::now();
            let words = read_block(&mut context, target, block).await;
            if let Err(error) = &words {
                lost = true;
                if !was_lost {
                    tracing::warn!(plc = %target.address, %error, "sensor poll failed; samples are marked source_lost until it answers");
                }
                metrics.sensor_source_errors.inc();
            }
            for (name, source) in &block.tags {
                let value = words.as_ref().ok().and_then(|words| {
                    let offset = usize::from(source.register - block.start);
                    source.decode(words.get(offset..)?)
                });
                batch.push(Incoming {
                    tag: name.clone(),
                    at,
                    value,
                });
            }
        }
        if was_lost && !lost {
            tracing::info!(plc = %target.address, "sensor poll answers again");
        }
        was_lost = lost;
        match sensors.ingest(batch).await {
            Ok(report) => metrics.count_sensor_report(&report),
            Err(error) => {
                metrics.sensor_store_errors.inc();
                tracing::error!(%error, "cannot store polled sensor samples");
            }
        }
    }
}

/// One block's registers; the connection is dropped after any failure.
async fn read_block(
    context: &mut Option<Context>,
    target: PollTarget,
    block: &Block,
) -> Result<Vec<u16>, String> {
    let started = tokio::time::Instant::now();
    let limit = target.request_timeout;
    let ctx = match context {
        Some(ctx) => ctx,
        None => {
            let ctx = timeout(
                limit,
                tcp::connect_slave(target.address, Slave(target.unit)),
            )
            .await
            .map_err(|_| format!("connect timed out after {limit:?}"))?
            .map_err(|e| format!("cannot connect: {e}"))?;
            context.insert(ctx)
        }
    };
    let remaining = limit.saturating_sub(started.elapsed());
    let request = async {
        match block.kind {
            RegisterKind::Holding => ctx.read_holding_registers(block.start, block.count).await,
            RegisterKind::Input => ctx.read_input_registers(block.start, block.count).await,
        }
    };
    let result = match timeout(remaining, request).await {
        Ok(Ok(Ok(words))) if words.len() == usize::from(block.count) => return Ok(words),
        Ok(Ok(Ok(words))) => Err(format!(
            "asked for {} registers at {}, got {}",
            block.count,
            block.start,
            words.len()
        )),
        Ok(Ok(Err(code))) => Err(format!(
            "exception {code:?} reading {} registers at {}",
            block.count, block.start
        )),
        Ok(Err(e)) => Err(format!("link error: {e}")),
        Err(_) => Err(format!("no reply within {limit:?}")),
    };
    *context = None;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::tags::{Encoding, WordOrder};

    fn source(kind: RegisterKind, register: u16, encoding: Encoding) -> ModbusSource {
        ModbusSource {
            register,
            kind,
            encoding,
            word_order: WordOrder::HighFirst,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn neighbouring_tags_share_a_request() {
        let tags = vec![
            (
                "a".into(),
                source(RegisterKind::Holding, 1000, Encoding::F32),
            ),
            (
                "b".into(),
                source(RegisterKind::Holding, 1004, Encoding::U16),
            ),
            ("c".into(), source(RegisterKind::Input, 1002, Encoding::I16)),
            (
                "d".into(),
                source(RegisterKind::Holding, 1100, Encoding::F32),
            ),
        ];
        let blocks = blocks(tags);
        let shape: Vec<_> = blocks
            .iter()
            .map(|b| (b.kind, b.start, b.count, b.tags.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (RegisterKind::Holding, 1000, 5, 2),
                (RegisterKind::Holding, 1100, 2, 1),
                (RegisterKind::Input, 1002, 1, 1),
            ]
        );
    }

    /// A value in the very last register (the config check allows it) is read, not an
    /// overflow of the register arithmetic.
    #[test]
    fn the_last_registers_make_blocks() {
        let tags = vec![
            (
                "a".into(),
                source(RegisterKind::Holding, 65_530, Encoding::F32),
            ),
            (
                "b".into(),
                source(RegisterKind::Holding, 65_535, Encoding::U16),
            ),
            (
                "c".into(),
                source(RegisterKind::Input, 65_534, Encoding::U32),
            ),
        ];
        let shape: Vec<_> = blocks(tags)
            .iter()
            .map(|b| (b.kind, b.start, b.count, b.tags.len()))
            .collect();
        assert_eq!(
            shape,
            [
                (RegisterKind::Holding, 65_530, 6, 2),
                (RegisterKind::Input, 65_534, 2, 1),
            ]
        );
    }
}
