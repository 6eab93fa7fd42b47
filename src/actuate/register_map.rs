//! The Modbus register map shared with the PLC program (`firmware-io/register-map.toml`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Number of registers in one gate command.
pub const GATE_COMMAND_LEN: u16 = 5;

/// Number of registers in the PLC's status block.
pub const PLC_STATUS_LEN: u16 = 8;

/// Number of registers in server mode's control block (the PLC writes them).
pub const SERVER_CONTROL_LEN: u16 = 5;

/// Number of registers in server mode's status block before its results buffer.
pub const SERVER_STATUS_HEADER_LEN: u16 = 20;

/// Number of registers in one entry of server mode's results buffer.
pub const SERVER_RESULT_LEN: u16 = 7;

/// The verdict a gate command carries. Only [`GateVerdict::Pass`] lets a part pass: zero, the
/// value of a register nobody wrote, is "no decision" and diverts, like every other value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum GateVerdict {
    /// No decision: diverted.
    NoDecision = 0,
    /// The part may pass.
    Pass = 1,
    /// The model failed the part.
    RejectDefect = 2,
    /// The part could not be inspected.
    RejectError = 3,
    /// The verdict came too late: rejected by policy.
    RejectByPolicy = 4,
}

impl GateVerdict {
    /// The verdict for a register value; unknown values are [`GateVerdict::NoDecision`].
    pub fn from_word(word: u16) -> GateVerdict {
        match word {
            1 => GateVerdict::Pass,
            2 => GateVerdict::RejectDefect,
            3 => GateVerdict::RejectError,
            4 => GateVerdict::RejectByPolicy,
            _ => GateVerdict::NoDecision,
        }
    }
}

/// How a 32-bit value spans two registers (Modbus leaves it to each device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordOrder {
    /// The high word in the first register (big-endian word order).
    #[default]
    HighFirst,
    /// The low word in the first register.
    LowFirst,
}

impl WordOrder {
    /// `value` as two registers in this order.
    pub fn split(self, value: u32) -> [u16; 2] {
        let (high, low) = ((value >> 16) as u16, value as u16);
        match self {
            WordOrder::HighFirst => [high, low],
            WordOrder::LowFirst => [low, high],
        }
    }

    /// Two registers in this order as one value.
    pub fn join(self, words: [u16; 2]) -> u32 {
        let (high, low) = match self {
            WordOrder::HighFirst => (words[0], words[1]),
            WordOrder::LowFirst => (words[1], words[0]),
        };
        (u32::from(high) << 16) | u32::from(low)
    }
}

/// The `[words]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Words {
    pub order: WordOrder,
}

/// One gate command as it travels in [`GATE_COMMAND_LEN`] registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCommandWords {
    /// The part id; ids wrap at 2^32 on the wire (the PLC only tells commands apart and logs).
    pub part_id: u32,
    pub verdict: GateVerdict,
    /// Defect class code, 0 for none.
    pub class: u16,
    pub sequence: u16,
}

/// The PLC program's settings (`[plc_program]`): the PLC's, not the station's, kept in the
/// map so the program, its simulator and its documentation cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlcProgramSettings {
    pub watchdog_ms: u64,
    pub pulse_ms: u64,
    pub match_before_ms: u64,
    pub eye_to_gate_ms: u64,
    /// How the program follows a part from its gate eye to the diverter.
    #[serde(default)]
    pub tracking: PlcTracking,
    /// `match_before_ms` in encoder counts (encoder tracking).
    #[serde(default)]
    pub match_before_counts: u64,
    /// `eye_to_gate_ms` in encoder counts (encoder tracking).
    #[serde(default)]
    pub eye_to_gate_counts: u64,
    pub fifo_depth: usize,
    pub plc_heartbeat_ms: u64,
}

/// How the PLC program (and the station with it) follows a part along the belt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlcTracking {
    /// By time at the belt's nominal speed.
    #[default]
    Time,
    /// By the counts of the belt's encoder: stops and speed changes move the windows with
    /// the parts.
    Encoder,
}

/// Where the station's registers sit in the PLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    #[serde(default)]
    pub words: Words,
    pub heartbeat: Register,
    pub station_state: Register,
    /// First of [`GATE_COMMAND_LEN`] registers.
    pub gate_command: Register,
    /// First of [`PLC_STATUS_LEN`] registers the PLC writes.
    pub plc_status: Register,
    /// The belt encoder's count (a u32 the PLC writes); absent in maps of PLC programs that
    /// have no encoder.
    #[serde(default)]
    pub encoder: Option<Register>,
    /// The latched halt-line coil; absent in maps of PLC programs that have none.
    #[serde(default)]
    pub halt_line: Option<HaltLineCoil>,
    pub plc_program: PlcProgramSettings,
    /// Server mode's blocks; absent in maps of PLC programs that only use client mode.
    #[serde(default)]
    pub server: Option<ServerBlocks>,
}

/// Server mode's two blocks (`[server]`): the station serves them, the PLC is the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBlocks {
    /// First of [`SERVER_CONTROL_LEN`] registers the PLC writes.
    pub control: u16,
    /// First register of the status block the PLC reads: [`SERVER_STATUS_HEADER_LEN`]
    /// registers, then `results_depth` entries of [`SERVER_RESULT_LEN`].
    pub status: u16,
    /// Results the buffer holds before a new one is refused (an overrun).
    pub results_depth: u16,
}

impl ServerBlocks {
    /// Registers in the status block, results buffer included.
    pub fn status_len(&self) -> u32 {
        u32::from(SERVER_STATUS_HEADER_LEN)
            + u32::from(self.results_depth) * u32::from(SERVER_RESULT_LEN)
    }

    fn check(&self) -> Result<(), String> {
        if self.results_depth == 0 {
            return Err("server: results_depth must be positive".into());
        }
        let control =
            u32::from(self.control)..u32::from(self.control) + u32::from(SERVER_CONTROL_LEN);
        let status = u32::from(self.status)..u32::from(self.status) + self.status_len();
        if control.end > 0x1_0000 || status.end > 0x1_0000 {
            return Err("server: a block runs past 65535".into());
        }
        if control.start < status.end && status.start < control.end {
            return Err(format!(
                "server: control ({}, {} registers) and status ({}, {} registers) share registers",
                self.control,
                SERVER_CONTROL_LEN,
                self.status,
                self.status_len()
            ));
        }
        Ok(())
    }
}

/// The halt-line output: one coil (FC5 write, FC1 read), in the PLC's coil space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaltLineCoil {
    /// 0-based coil address.
    pub coil: u16,
}

/// One holding register address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub address: u16,
}

/// Why a register map was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterMapError {
    #[error("cannot read register map {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("register map {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("register map {path}: registers overlap: {message}")]
    Overlap { path: PathBuf, message: String },
}

impl RegisterMap {
    /// Reads and checks a register map file.
    pub fn load(path: &Path) -> Result<RegisterMap, RegisterMapError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegisterMapError::Read {
            path: path.to_owned(),
            source,
        })?;
        let map: RegisterMap = toml::from_str(&text).map_err(|err| RegisterMapError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        map.check().map_err(|message| RegisterMapError::Overlap {
            path: path.to_owned(),
            message,
        })?;
        Ok(map)
    }

    /// The holding registers the station writes or the PLC program owns, as (name, first,
    /// count): nothing else may use them.
    pub fn station_registers(&self) -> Vec<(&'static str, u16, u16)> {
        let mut registers = vec![
            ("heartbeat", self.heartbeat.address, 1),
            ("station_state", self.station_state.address, 1),
            ("gate_command", self.gate_command.address, GATE_COMMAND_LEN),
            ("plc_status", self.plc_status.address, PLC_STATUS_LEN),
        ];
        if let Some(encoder) = self.encoder {
            registers.push(("encoder", encoder.address, 2));
        }
        registers
    }

    /// Decodes a gate command's words.
    pub fn decode_gate_command(&self, words: &[u16]) -> Option<GateCommandWords> {
        match words {
            [a, b, verdict, class, sequence] => Some(GateCommandWords {
                part_id: self.words.order.join([*a, *b]),
                verdict: GateVerdict::from_word(*verdict),
                class: *class,
                sequence: *sequence,
            }),
            _ => None,
        }
    }

    /// Encodes a gate command.
    pub fn encode_gate_command(
        &self,
        command: GateCommandWords,
    ) -> [u16; GATE_COMMAND_LEN as usize] {
        let [a, b] = self.words.order.split(command.part_id);
        [
            a,
            b,
            command.verdict as u16,
            command.class,
            command.sequence,
        ]
    }

    fn check(&self) -> Result<(), String> {
        let blocks = self.station_registers();
        for &(name, first, count) in &blocks {
            if u32::from(first) + u32::from(count) > 0x1_0000 {
                return Err(format!("{name} at {first} runs past 65535"));
            }
        }
        for (i, (name, first, count)) in blocks.iter().enumerate() {
            let range = u32::from(*first)..u32::from(*first) + u32::from(*count);
            for (other, other_first, other_count) in &blocks[i + 1..] {
                let other_range =
                    u32::from(*other_first)..u32::from(*other_first) + u32::from(*other_count);
                if range.start < other_range.end && other_range.start < range.end {
                    return Err(format!(
                        "{name} ({first}, {count} registers) and {other} ({other_first}, \
                         {other_count} registers) share registers"
                    ));
                }
            }
        }
        let program = &self.plc_program;
        if program.watchdog_ms == 0 || program.pulse_ms == 0 || program.plc_heartbeat_ms == 0 {
            return Err(
                "plc_program: watchdog_ms, pulse_ms and plc_heartbeat_ms must be positive".into(),
            );
        }
        if program.fifo_depth == 0 {
            return Err("plc_program: fifo_depth must be positive".into());
        }
        if program.tracking == PlcTracking::Encoder {
            if self.encoder.is_none() {
                return Err(
                    "plc_program: tracking = \"encoder\" needs the [encoder] register".into(),
                );
            }
            if program.eye_to_gate_counts.max(program.match_before_counts) > i32::MAX as u64 {
                return Err(format!(
                    "plc_program: match_before_counts and eye_to_gate_counts must be at most {} \
                     (half the encoder counter's range)",
                    i32::MAX
                ));
            }
            if program.eye_to_gate_counts == 0 {
                return Err("plc_program: tracking = \"encoder\" needs a positive \
                     eye_to_gate_counts"
                    .into());
            }
        }
        // Server mode has an address space of its own (the station's), so its blocks are
        // checked against each other only.
        self.server.as_ref().map_or(Ok(()), ServerBlocks::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> RegisterMap {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-io/register-map.toml");
        RegisterMap::load(&path).expect("shipped register map is valid")
    }

    #[test]
    fn shipped_map_loads() {
        let map = shipped();
        assert_eq!(map.gate_command.address, 100);
        assert_eq!(map.words.order, WordOrder::HighFirst);
        assert_eq!(map.halt_line, Some(HaltLineCoil { coil: 0 }));
        assert_eq!(map.plc_program.watchdog_ms, 1500);
        assert_eq!(
            map.server,
            Some(ServerBlocks {
                control: 200,
                status: 300,
                results_depth: 32
            })
        );
    }

    #[test]
    fn server_blocks_that_overlap_or_run_past_the_end_are_refused() {
        let mut map = shipped();
        map.server = Some(ServerBlocks {
            control: 300 + 20 + 7,
            status: 300,
            results_depth: 32,
        });
        let message = map.check().unwrap_err();
        assert!(message.contains("share registers"), "{message}");
        map.server = Some(ServerBlocks {
            control: 0,
            status: 65_500,
            results_depth: 32,
        });
        assert!(map.check().unwrap_err().contains("past 65535"));
        map.server = Some(ServerBlocks {
            control: 0,
            status: 100,
            results_depth: 0,
        });
        assert!(map.check().unwrap_err().contains("results_depth"));
    }

    #[test]
    fn gate_command_words_round_trip_in_both_word_orders() {
        let mut map = shipped();
        let command = GateCommandWords {
            part_id: 0x0001_2345,
            verdict: GateVerdict::Pass,
            class: 3,
            sequence: 7,
        };
        assert_eq!(map.encode_gate_command(command), [0x0001, 0x2345, 1, 3, 7]);
        assert_eq!(
            map.decode_gate_command(&map.encode_gate_command(command)),
            Some(command)
        );
        map.words.order = WordOrder::LowFirst;
        assert_eq!(map.encode_gate_command(command), [0x2345, 0x0001, 1, 3, 7]);
        assert_eq!(
            map.decode_gate_command(&map.encode_gate_command(command)),
            Some(command)
        );
        assert_eq!(map.decode_gate_command(&[1, 2, 1, 0]), None);
    }

    #[test]
    fn zero_and_unknown_verdicts_never_pass() {
        assert_eq!(GateVerdict::from_word(0), GateVerdict::NoDecision);
        assert_eq!(GateVerdict::from_word(1), GateVerdict::Pass);
        for word in [0, 2, 3, 4, 5, 0xFFFF] {
            assert_ne!(GateVerdict::from_word(word), GateVerdict::Pass, "{word}");
        }
    }

    #[test]
    fn overlapping_registers_are_refused() {
        let mut map = shipped();
        map.heartbeat = Register { address: 102 };
        let error = map.check().unwrap_err();
        assert!(
            error.contains("heartbeat (102") && error.contains("gate_command"),
            "{error}"
        );
        let mut map = shipped();
        map.plc_status = Register { address: 104 };
        assert!(map.check().unwrap_err().contains("plc_status"));
    }
}
