//! `linesight records`: look after a stopped station's record store.

use anyhow::Context;

use linesight::record::Store;

use super::token::DataPlace;

#[derive(clap::Subcommand)]
pub enum Records {
    /// Check every record: checksum, JSON, no gap in the sequence, indexes. Exits 1 on a
    /// problem. The station must be stopped (the store is opened exclusively).
    Verify {
        #[command(flatten)]
        place: DataPlace,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

impl Records {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Records::Verify { place, json } => {
                let dir = place.resolve()?;
                let store = Store::open(&dir, "")
                    .with_context(|| format!("opening the record store in {}", dir.display()))?;
                let report = store.verify()?;
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "instance {}: {} records, sequence {}..={}",
                        report.instance_id, report.records, report.first_seq, report.last_seq
                    );
                    for problem in &report.problems {
                        println!("problem: {problem}");
                    }
                }
                if !report.problems.is_empty() {
                    anyhow::bail!("{} problems in the record store", report.problems.len());
                }
                Ok(())
            }
        }
    }
}
