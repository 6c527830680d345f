//! The report's files: `report.json` (after every run), `report.md`, `section.md` (the dated
//! section for docs/benchmarks.md) and the SVG plots; with `--docs`, the section put into that file.
use std::path::Path;

use anyhow::{Context, Result};

use crate::model::{Report, RunResult};
use crate::{plot, report, section};

/// Re-renders `report.md` and the plots of a report directory from its `report.json`.
pub(crate) fn render(dir: &Path, docs: Option<&Path>) -> Result<()> {
    let p = dir.join("report.json");
    let r: Report = serde_json::from_str(&std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?)
        .with_context(|| format!("parse {}", p.display()))?;
    write_outputs(dir, &r)?;
    eprintln!("bench: rendered {}", dir.join("report.md").display());
    if let Some(d) = docs {
        write_docs(d, &r)?;
    }
    Ok(())
}

/// Writes `report.json`.
pub(crate) fn write_json(out: &Path, r: &Report) -> Result<()> {
    vmove_model::write_atomic(&out.join("report.json"), serde_json::to_string_pretty(r)?.as_bytes())?;
    Ok(())
}

/// Writes `report.json`, the plots and `report.md`.
pub(crate) fn write_outputs(out: &Path, r: &Report) -> Result<()> {
    write_json(out, r)?;
    for cell in &r.cells {
        let id = cell.id();
        let mut series = Vec::new();
        for &c in &r.contenders {
            if !c.migrates() {
                continue;
            }
            let mine: Vec<&RunResult> = r.runs.iter().filter(|x| x.cell == id && x.contender == c).collect();
            if let Some(run) = mine.iter().find(|x| x.converged).or(mine.first()) {
                let label = format!("{} (run {}{})", c.id(), run.run, if run.converged { "" } else { ", not converged" });
                series.push((c, label, run.samples.clone()));
            }
        }
        let svg = plot::remaining_svg(&format!("Remaining bytes: {}", cell.describe()), &series)?;
        std::fs::write(out.join(report::plot_file(cell)), svg)?;
    }
    std::fs::write(out.join("report.md"), report::markdown(r))?;
    std::fs::write(out.join("section.md"), section::markdown(r))?;
    Ok(())
}

/// Puts the dated section into `docs` (docs/benchmarks.md): before the older reports, or
/// in place of a section with the same heading.
pub(crate) fn write_docs(docs: &Path, r: &Report) -> Result<()> {
    let doc = std::fs::read_to_string(docs).with_context(|| format!("read {}", docs.display()))?;
    std::fs::write(docs, section::insert(&doc, &section::markdown(r))).with_context(|| format!("write {}", docs.display()))?;
    eprintln!("bench: section \"{}\" written into {}", section::heading(r).trim_start_matches("## "), docs.display());
    Ok(())
}
