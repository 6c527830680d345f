//! SVG plots of remaining bytes over time (plotters, SVG backend; pure: returns the text).
use anyhow::{anyhow, Result};
use plotters::prelude::*;

use crate::model::{Contender, Sample};

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn color(c: Contender) -> RGBColor {
    COLORS[Contender::ALL.iter().position(|x| *x == c).unwrap_or(0) % COLORS.len()]
}

/// One run per contender: remaining MiB over seconds since the contender's command started.
pub fn remaining_svg(title: &str, series: &[(Contender, String, Vec<Sample>)]) -> Result<String> {
    let mib = |b: u64| b as f64 / 1048576.0;
    let xmax = series.iter().flat_map(|(_, _, s)| s.iter().map(|p| p.t_ms as f64 / 1000.0)).fold(1.0, f64::max) * 1.05;
    let ymax = series.iter().flat_map(|(_, _, s)| s.iter().map(|p| mib(p.remaining_bytes))).fold(1.0, f64::max) * 1.1;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("plot: {e:?}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
            .map_err(|e| anyhow!("plot: {e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds since the command started")
            .y_desc("remaining MiB")
            .draw()
            .map_err(|e| anyhow!("plot: {e:?}"))?;
        for (c, label, pts) in series {
            let col = color(*c);
            let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.t_ms as f64 / 1000.0, mib(p.remaining_bytes))).collect();
            chart
                .draw_series(LineSeries::new(xy.clone(), col.stroke_width(2)))
                .map_err(|e| anyhow!("plot: {e:?}"))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], col.stroke_width(2)));
            chart
                .draw_series(xy.into_iter().map(|p| Circle::new(p, 2, col.filled())))
                .map_err(|e| anyhow!("plot: {e:?}"))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("plot: {e:?}"))?;
        root.present().map_err(|e| anyhow!("plot: {e:?}"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_and_a_legend_per_contender() {
        let s = |t, r| Sample { t_ms: t, remaining_bytes: r, transferred_bytes: 0 };
        let svg = remaining_svg(
            "512M-idle",
            &[
                (Contender::Vmove, "vmove run 1".into(), vec![s(0, 512 << 20), s(500, 100 << 20), s(1000, 0)]),
                (Contender::Qemu, "qemu run 1".into(), vec![s(0, 512 << 20), s(3000, 0)]),
            ],
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60.min(svg.len())]);
        assert!(svg.contains("vmove run 1") && svg.contains("qemu run 1"));
        assert!(svg.contains("remaining MiB"));
        assert!(svg.matches("<polyline").count() >= 2, "one line per contender");
    }

    #[test]
    fn empty_series_still_render() {
        let svg = remaining_svg("nothing", &[(Contender::Virsh, "virsh".into(), vec![])]).unwrap();
        assert!(svg.contains("nothing"));
    }
}
