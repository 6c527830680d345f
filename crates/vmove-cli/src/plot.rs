//! `vmove job plot`: a live migration's memory transfer as an SVG picture (plotters, as
//! the benchmark draws). From the job's events: remaining MiB (left axis), transfer and
//! dirty rate in MiB/s (right axis) over seconds since the job started, every escalation
//! of the convergence ladder (its `Escalation` events) and the switchover (the end of
//! MIGRATE_GUEST) as vertical lines. Pure: a record in, the SVG text out.
use anyhow::{anyhow, bail, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use vmove_api::{EventKind, JobRecord};
use vmove_plan::Step;

const REMAINING: RGBColor = RGBColor(31, 119, 180);
const RATE: RGBColor = RGBColor(44, 160, 44);
const DIRTY: RGBColor = RGBColor(214, 39, 40);
const ESCALATION: RGBColor = RGBColor(255, 127, 14);

/// A vertical mark: seconds since the job started and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    /// Seconds since the job started.
    pub t: f64,
    /// What happened.
    pub label: String,
}

/// What the picture shows, taken from a job's events.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlotData {
    /// The picture's title.
    pub title: String,
    /// (seconds, MiB still to send).
    pub remaining: Vec<(f64, f64)>,
    /// (seconds, MiB/s sent).
    pub rate: Vec<(f64, f64)>,
    /// (seconds, MiB/s the guest dirties).
    pub dirty: Vec<(f64, f64)>,
    /// Escalations of the convergence ladder.
    pub escalations: Vec<Mark>,
    /// The switchover, once MIGRATE_GUEST completed.
    pub switchover: Option<Mark>,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl PlotData {
    /// The series and marks of a job; refuses a job without memory-transfer progress.
    pub fn from_job(rec: &JobRecord) -> Result<PlotData> {
        let t0 = rec.events.first().map_or(rec.created_ms, |e| e.at_ms.min(rec.created_ms));
        let secs = |at: u64| at.saturating_sub(t0) as f64 / 1000.0;
        let mut d = PlotData {
            title: format!(
                "job {}: {} migration of {}, {} -> {}",
                rec.id,
                rec.spec.mode.wire_name(),
                rec.spec.guest.name,
                rec.spec.source.name,
                rec.spec.target
            ),
            ..PlotData::default()
        };
        let mut downtime = None;
        for e in &rec.events {
            let t = secs(e.at_ms);
            match &e.kind {
                // QEMU's first answers, before it has sized the guest's memory.
                EventKind::Progress(p) if p.total_bytes == 0 => {}
                EventKind::Progress(p) => {
                    d.remaining.push((t, mib(p.remaining_bytes)));
                    d.rate.push((t, mib(p.rate_bytes_per_s)));
                    d.dirty.push((t, mib(p.dirty_rate_bytes_per_s)));
                }
                EventKind::StepDone { step: Step::MigrateGuest, .. } => {
                    d.switchover = Some(Mark { t, label: "switchover".into() });
                }
                EventKind::JobEnded { summary, .. } => downtime = summary.downtime_ms,
                k => {
                    if let Some(m) = k.escalation() {
                        // The head of the line (what was done); the reason stays in `job show`.
                        d.escalations.push(Mark { t, label: m.split(": ").next().unwrap_or(m).to_string() });
                    }
                }
            }
        }
        if d.remaining.is_empty() {
            bail!(
                "job {} has no memory-transfer progress to plot (mode {}{}): live migrations have one once MIGRATE_GUEST runs",
                rec.id,
                rec.spec.mode.wire_name(),
                if rec.status.is_final() { "" } else { ", running" }
            );
        }
        if let (Some(s), Some(ms)) = (&mut d.switchover, downtime) {
            s.label = format!("switchover (downtime {ms} ms)");
        }
        Ok(d)
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plot: {e:?}")
}

/// The SVG picture of `d`.
pub fn svg(d: &PlotData) -> Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 560)).into_drawing_area();
        draw(&root, d)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// A mark's label beside its line: on the right of it in the left part of the picture, on
/// the left of it further right (so that it stays inside).
fn beside(m: &Mark, xmax: f64, y: f64, size: u32, color: &RGBColor) -> Text<'static, (f64, f64), String> {
    let right = m.t > xmax * 0.6;
    let (x, h) = if right { (m.t - xmax * 0.006, HPos::Right) } else { (m.t + xmax * 0.006, HPos::Left) };
    let style = ("sans-serif", size).into_font().color(color).pos(Pos::new(h, VPos::Top));
    Text::new(m.label.clone(), (x, y), style)
}

fn draw(root: &DrawingArea<SVGBackend<'_>, Shift>, d: &PlotData) -> Result<()> {
    let max = |v: &[(f64, f64)]| v.iter().map(|p| p.1).fold(0.0, f64::max);
    let marks_t = d.escalations.iter().chain(&d.switchover).map(|m| m.t);
    let xmax = d.remaining.iter().map(|p| p.0).chain(marks_t).fold(1.0, f64::max) * 1.05;
    // Headroom above the data for the legend and the marks' labels.
    let ymax = max(&d.remaining).max(1.0) * 1.4;
    let y2max = max(&d.rate).max(max(&d.dirty)).max(1.0) * 1.4;
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(root)
        .caption(&d.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(err)?
        .set_secondary_coord(0f64..xmax, 0f64..y2max);
    chart.configure_mesh().x_desc("seconds since the job started").y_desc("remaining MiB").draw().map_err(err)?;
    chart.configure_secondary_axes().y_desc("MiB/s").draw().map_err(err)?;

    chart
        .draw_series(LineSeries::new(d.remaining.clone(), REMAINING.stroke_width(2)))
        .map_err(err)?
        .label("remaining (MiB)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], REMAINING.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(d.rate.clone(), RATE.stroke_width(2)))
        .map_err(err)?
        .label("transfer rate (MiB/s)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RATE.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(d.dirty.clone(), DIRTY.stroke_width(2)))
        .map_err(err)?
        .label("dirty rate (MiB/s)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], DIRTY.stroke_width(2)));

    for (i, m) in d.escalations.iter().enumerate() {
        let s = chart
            .draw_series(LineSeries::new(vec![(m.t, 0.0), (m.t, ymax)], ESCALATION.stroke_width(1)))
            .map_err(err)?;
        if i == 0 {
            s.label("escalation").legend(|(x, y)| PathElement::new(vec![(x, y - 6), (x, y + 6)], ESCALATION.stroke_width(2)));
        }
        // Staggered so that close escalations stay readable.
        let y = ymax * (0.78 - 0.05 * (i % 5) as f64);
        chart.draw_series(std::iter::once(beside(m, xmax, y, 12, &ESCALATION))).map_err(err)?;
    }
    if let Some(m) = &d.switchover {
        chart
            .draw_series(LineSeries::new(vec![(m.t, 0.0), (m.t, ymax)], BLACK.stroke_width(2)))
            .map_err(err)?
            .label(m.label.clone())
            .legend(|(x, y)| PathElement::new(vec![(x, y - 6), (x, y + 6)], BLACK.stroke_width(2)));
        chart.draw_series(std::iter::once(beside(m, xmax, ymax * 0.84, 13, &BLACK))).map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmove_api::{JobEvent, JobKind, JobSpec, JobStatus, PeerHost, Progress, Summary};
    use vmove_plan::{MigrationParams, Mode};

    fn job(mode: Mode, events: Vec<EventKind>) -> JobRecord {
        let guest = crate::testutil::cluster().guests[0].clone();
        JobRecord {
            version: 2,
            id: "host2-7".into(),
            kind: JobKind::Migrate,
            spec: JobSpec {
                guest,
                mode,
                source: PeerHost { name: "host1".into(), address: "198.51.100.2:7450".into() },
                target: "host2".into(),
                step: None,
                params: MigrationParams::default(),
                inject_fault: None,
                pause_before: None,
                pause_at_switchover: false,
                dirty_rate_bytes_per_s: None,
                link_bytes_per_s: None,
                convergence_check: Default::default(),
                max_incoming: None,
            },
            status: JobStatus::Succeeded,
            steps: vec![],
            created_ms: 1_000_000,
            ended_ms: None,
            error: None,
            events: events.into_iter().enumerate().map(|(i, kind)| JobEvent { seq: i as u64, at_ms: 1_000_000 + 500 * i as u64, kind }).collect(),
            guest_host: None,
            outage: None,
        }
    }

    fn esc(action: &str) -> EventKind {
        EventKind::Escalation { action: action.into(), rung: "rung 5/8".into(), figures: Default::default() }
    }

    fn progress(remaining_mib: u64, rate_mib: u64, dirty_mib: u64) -> EventKind {
        EventKind::Progress(Progress {
            status: "active".into(),
            remaining_bytes: remaining_mib << 20,
            rate_bytes_per_s: rate_mib << 20,
            dirty_rate_bytes_per_s: dirty_mib << 20,
            total_bytes: 512 << 20,
            ..Progress::default()
        })
    }

    #[test]
    fn a_live_job_draws_three_series_its_escalations_and_the_switchover() {
        let rec = job(
            Mode::Live,
            vec![
                EventKind::JobStarted { action: "MIGRATE GUEST".into() },
                EventKind::StepStarted { step: Step::MigrateGuest },
                progress(400, 100, 20),
                progress(200, 110, 30),
                esc("throttling the guest (auto-converge up to 50 %): stuck"),
                progress(120, 90, 15),
                esc("switching to post-copy: stuck"),
                progress(10, 95, 10),
                EventKind::StepDone { step: Step::MigrateGuest, elapsed_ms: 4000, note: "switched over".into() },
                EventKind::JobEnded { status: JobStatus::Succeeded, error: None, summary: Summary { downtime_ms: Some(42), ..Summary::default() } },
            ],
        );
        let d = PlotData::from_job(&rec).unwrap();
        assert_eq!(d.remaining.len(), 4);
        assert_eq!(d.remaining[0], (1.0, 400.0));
        assert_eq!(d.rate[1], (1.5, 110.0));
        assert_eq!(d.dirty[3], (3.5, 10.0));
        assert_eq!(d.escalations.iter().map(|m| m.t).collect::<Vec<_>>(), vec![2.0, 3.0]);
        assert_eq!(d.switchover, Some(Mark { t: 4.0, label: "switchover (downtime 42 ms)".into() }));
        let s = svg(&d).unwrap();
        assert!(s.starts_with("<svg"), "{}", &s[..60.min(s.len())]);
        for text in [
            "job host2-7: live migration of vm1, host1 -&gt; host2",
            "remaining (MiB)",
            "transfer rate (MiB/s)",
            "dirty rate (MiB/s)",
            "throttling the guest (auto-converge up to 50 %)",
            "switching to post-copy",
            "switchover (downtime 42 ms)",
            "seconds since the job started",
        ] {
            assert!(s.contains(text), "{text:?} missing from the SVG");
        }
        // Three series and three vertical marks (two escalations, the switchover).
        assert!(s.matches("<polyline").count() >= 6, "{}", s.matches("<polyline").count());
    }

    #[test]
    fn a_job_without_progress_is_refused_with_a_reason() {
        let rec = job(Mode::Offline, vec![EventKind::JobStarted { action: "x".into() }]);
        let e = PlotData::from_job(&rec).unwrap_err().to_string();
        assert_eq!(
            e,
            "job host2-7 has no memory-transfer progress to plot (mode offline): live migrations have one once MIGRATE_GUEST runs"
        );
    }
}
