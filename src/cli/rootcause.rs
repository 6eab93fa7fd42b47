//! `linesight rootcause`: which columns of a labelled CSV table (one row per part) move with
//! a defect class, as findings an engineer can act on.

use std::path::PathBuf;

use anyhow::Context;

use linesight::analyse::rootcause::{self, Settings};

#[derive(clap::Args)]
pub struct RootCause {
    /// The table: comma, semicolon or tab separated, with a header row.
    #[arg(long)]
    csv: PathBuf,
    /// The defect column: 0/1, true/false or any two-valued column.
    #[arg(long)]
    target: String,
    /// A column to leave out (identifiers, other label columns); repeatable.
    #[arg(long, value_name = "COLUMN")]
    exclude: Vec<String>,
    /// A derived quantity to test, `NAME=EXPR`: numbers, `+ - * /`, parentheses and column
    /// names in double quotes (or bare when a plain word), e.g.
    /// `power="Torque [Nm]"*"Rotational speed [rpm]"*0.10472`; repeatable.
    #[arg(long, value_name = "NAME=EXPR")]
    derive: Vec<String>,
    /// Benjamini–Hochberg false discovery rate a feature must pass.
    #[arg(long, default_value_t = 0.01)]
    fdr: f64,
    /// Write the whole analysis (findings, bin tables, model) as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl RootCause {
    pub fn run(self) -> anyhow::Result<()> {
        let input = rootcause::read_csv(&self.csv, &self.target, &self.exclude)
            .with_context(|| format!("reading {}", self.csv.display()))?;
        for (column, reason) in &input.skipped {
            eprintln!("note: column {column:?} skipped: {reason}");
        }
        let derived = self
            .derive
            .iter()
            .map(|definition| rootcause::parse_definition(definition, &input.table))
            .collect::<Result<Vec<_>, _>>()?;
        let settings = Settings {
            fdr: self.fdr,
            derived,
            ..Settings::default()
        };
        let analysis = rootcause::analyse(&input.table, &input.target, &settings)?;
        for skipped in &analysis.skipped {
            eprintln!(
                "note: column {:?} skipped: {}",
                skipped.column, skipped.reason
            );
        }
        println!(
            "{}: {} of {} parts ({:.2} %); {} columns and {} derived features tested; {} finding{}",
            analysis.target,
            analysis.positives,
            analysis.parts,
            analysis.base_rate * 100.0,
            input.table.columns.len(),
            analysis.derived_tried.len(),
            analysis.findings.len(),
            if analysis.findings.len() == 1 {
                ""
            } else {
                "s"
            },
        );
        for (rank, finding) in analysis.findings.iter().enumerate() {
            println!("{:>3}. {}", rank + 1, finding.sentence);
        }
        if let Some(model) = &analysis.model {
            let importance = model
                .importance
                .iter()
                .take(5)
                .map(|i| format!("{} {:.3}", i.feature, i.auc_drop))
                .collect::<Vec<_>>()
                .join("; ");
            println!(
                "model: {} ({} trees, {} rows), held-out AUC {:.3} on {} rows; importance (AUC drop): {importance}",
                model.kind, model.trees, model.fit_rows, model.held_out_auc, model.held_out_rows
            );
        }
        super::write_json(self.json.as_deref(), &analysis)
    }
}
