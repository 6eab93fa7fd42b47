//! `linesight whatif`: run a twin scenario as it is and with changes, and print what moves.

use std::path::PathBuf;

use anyhow::Context;

use linesight::twin::{self, Change, Scenario};

#[derive(clap::Args)]
pub struct WhatIf {
    /// A scenario's name in `--scenarios`, or the path of a scenario file.
    scenario: String,
    /// A change to try, `SETTING=AMOUNT`: `belt_speed=+20%`, `verdict_margin=-50`,
    /// `press_temp.base=175`. Repeat for several; none runs the scenario as it is.
    #[arg(long = "change", value_name = "SETTING=AMOUNT")]
    changes: Vec<String>,
    /// The folder of scenarios.
    #[arg(long, default_value = "scenarios")]
    scenarios: PathBuf,
    /// Simulated hours, instead of the scenario's.
    #[arg(long)]
    hours: Option<f64>,
    /// Also run the station's root cause and maintenance watches on the changed run.
    #[arg(long)]
    analyse: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

impl WhatIf {
    pub fn run(self) -> anyhow::Result<()> {
        let mut scenario = Scenario::find(&self.scenarios, &self.scenario)?;
        let changes = self
            .changes
            .iter()
            .map(|text| text.parse::<Change>())
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(hours) = self.hours {
            scenario.hours = hours;
            scenario.check()?;
        }
        let scratch = if self.analyse {
            Some(tempfile::tempdir().context("a scratch folder for the analyses")?)
        } else {
            None
        };
        let report = twin::whatif(&scenario, &changes, scratch.as_ref().map(|d| d.path()))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{}", twin::render(&report));
        }
        Ok(())
    }
}
