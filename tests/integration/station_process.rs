//! The station binary as a child process, the way an operator runs it: started with a config
//! file, stopped with Ctrl-C (SIGINT) or killed with SIGKILL. Shared by the crash and
//! fail-safe tests.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::repo;

/// A station process on the simulated line, its data in `data_dir`.
pub struct StationProcess {
    pub child: Child,
    /// The API's base URL, `http://host:port`.
    pub base: String,
    /// Its log: what it writes to stdout and stderr.
    pub log: PathBuf,
}

impl StationProcess {
    /// Starts the binary with `config` and waits until its API answers.
    pub async fn start(config: &Path, data_dir: &Path) -> StationProcess {
        let log = data_dir.with_extension("log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_linesight"))
            .args(["run", "--bind", "127.0.0.1:0", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            // A log file, not a terminal: no colour codes.
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            )
            .spawn()
            .expect("the station binary starts");
        // The station prints its address once it listens, and logs to stdout (tracing's
        // default) from then on: the pipe is read to its end into the log, as a pipe nobody
        // reads would lose every later line to EPIPE.
        let stdout = child.stdout.take().expect("stdout");
        let mut log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .ok();
        let (address_tx, address_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("http://").nth(1)
                    && let Some(address) = rest.split('/').next()
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(format!("http://{address}"));
                }
                if let Some(file) = &mut log_file {
                    let _ = writeln!(file, "{line}");
                }
            }
        });
        let base = tokio::time::timeout(Duration::from_secs(60), address_rx)
            .await
            .expect("the station starts within 60 s")
            .unwrap_or_else(|_| {
                panic!(
                    "the station ended before printing its address; its log:\n{}",
                    log_tail(&log, 30)
                )
            });
        StationProcess { child, base, log }
    }

    pub fn kill_9(&mut self) {
        // std's kill is SIGKILL on Unix.
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Ctrl-C, and waits (blocking) until the process has exited.
    pub fn interrupt(&mut self) {
        self.send_interrupt();
        self.child.wait().expect("reaped");
    }

    /// Ctrl-C, without waiting: a clean stop takes a while (parts in flight reach the gate
    /// first), and a test may watch the line meanwhile; see [`StationProcess::exited`].
    pub fn send_interrupt(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }
}

/// The last `lines` lines of a station's log (see [`StationProcess::log`]), for failure
/// messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for StationProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped simulated-line config, faster belt, with absolute paths, written into `dir`.
pub fn config_file(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let faster_belt = [("parts_per_min = 120", "parts_per_min = 600")];
    config_file_as_shipped(dir, &[&faster_belt[..], edits].concat())
}

/// The shipped simulated-line config with absolute paths and `edits` applied (`(old, new)`
/// text replacements, each of which must occur), written into `dir`.
pub fn config_file_as_shipped(dir: &Path, edits: &[(&str, &str)]) -> PathBuf {
    let mut text =
        std::fs::read_to_string(repo().join("config/simulated-line.toml")).expect("config");
    text = text.replace("\"../", &format!("\"{}/", repo().display()));
    for (old, new) in edits {
        assert!(text.contains(old), "config has no {old:?}");
        text = text.replace(old, new);
    }
    let path = dir.join("station.toml");
    std::fs::write(&path, text).expect("write config");
    path
}
