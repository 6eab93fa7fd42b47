//! The Modbus register map shared with the PLC program (`firmware-io/register-map.toml`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Number of registers in one reject command.
pub const REJECT_BLOCK_LEN: u16 = 4;

/// The reject command's value in the command register.
pub const REJECT_COMMAND_FIRE: u16 = 1;

/// Where the station's registers sit in the PLC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    pub heartbeat: Register,
    pub station_state: Register,
    /// First of [`REJECT_BLOCK_LEN`] registers.
    pub reject: Register,
    /// The latched halt-line coil; absent in maps of PLC programs that have none.
    #[serde(default)]
    pub halt_line: Option<HaltLineCoil>,
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

    /// Decodes a reject block's words into (part id, command, sequence).
    pub fn decode_reject(words: &[u16]) -> Option<(u64, u16, u16)> {
        match words {
            [high, low, command, sequence] => Some((
                (u64::from(*high) << 16) | u64::from(*low),
                *command,
                *sequence,
            )),
            _ => None,
        }
    }

    /// Encodes a reject command. Part ids wrap at 2^32 on the wire; the PLC only needs them to
    /// tell commands apart and to log.
    pub fn encode_reject(part_id: u64, sequence: u16) -> [u16; REJECT_BLOCK_LEN as usize] {
        let wire_id = part_id as u32;
        [
            (wire_id >> 16) as u16,
            wire_id as u16,
            REJECT_COMMAND_FIRE,
            sequence,
        ]
    }

    fn check(&self) -> Result<(), String> {
        let reject = u32::from(self.reject.address)
            ..u32::from(self.reject.address) + u32::from(REJECT_BLOCK_LEN);
        if reject.end > 0x1_0000 {
            return Err(format!(
                "reject block at {} runs past 65535",
                self.reject.address
            ));
        }
        for (name, reg) in [
            ("heartbeat", self.heartbeat),
            ("station_state", self.station_state),
        ] {
            if reject.contains(&u32::from(reg.address)) {
                return Err(format!(
                    "{name} ({}) lies inside the reject block",
                    reg.address
                ));
            }
        }
        if self.heartbeat == self.station_state {
            return Err("heartbeat and station_state share an address".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_map_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("firmware-io/register-map.toml");
        let map = RegisterMap::load(&path).expect("shipped register map is valid");
        assert_eq!(map.reject.address, 100);
        assert_eq!(map.halt_line, Some(HaltLineCoil { coil: 0 }));
    }

    #[test]
    fn reject_words_round_trip() {
        let words = RegisterMap::encode_reject(0x0001_0002, 7);
        assert_eq!(words, [1, 2, REJECT_COMMAND_FIRE, 7]);
        assert_eq!(
            RegisterMap::decode_reject(&words),
            Some((0x0001_0002, 1, 7))
        );
        assert_eq!(RegisterMap::decode_reject(&words[..3]), None);
    }

    #[test]
    fn overlapping_registers_are_refused() {
        let map = RegisterMap {
            heartbeat: Register { address: 102 },
            station_state: Register { address: 1 },
            reject: Register { address: 100 },
            halt_line: None,
        };
        assert!(map.check().unwrap_err().contains("heartbeat (102)"));
    }
}
