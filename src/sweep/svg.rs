//! The learning-curve chart of a campaign report, written by hand as SVG (a few dozen elements;
//! no plotting dependency): test accuracy per epoch of the last stage, one line per base and grid
//! point (the mean over its seeds), the seeds' min–max shaded behind it.

use super::report::CampaignReport;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 420.0;
/// Plot area margins: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (56.0, 200.0, 30.0, 44.0);
/// Line colours, reused in turn (Tableau 10).
const COLOURS: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac",
];

/// One epoch of a group: (min, mean, max) over its seeds.
type BandPoint = (f64, f64, f64);

/// Per epoch (index), the (min, mean, max) over the curves that reach it.
fn band(curves: &[&[f64]]) -> Vec<BandPoint> {
    let len = curves.iter().map(|c| c.len()).max().unwrap_or(0);
    (0..len)
        .map(|e| {
            let v: Vec<f64> = curves.iter().filter_map(|c| c.get(e).copied()).collect();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, v.iter().sum::<f64>() / v.len() as f64, max)
        })
        .collect()
}

/// Text safe inside SVG.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart of `report`.
pub fn learning_curves(report: &CampaignReport) -> String {
    let groups: Vec<(String, Vec<BandPoint>)> = report
        .groups
        .iter()
        .map(|g| {
            let curves: Vec<&[f64]> = g.seeds.iter().map(|s| s.curve.as_slice()).collect();
            (g.label.clone(), band(&curves))
        })
        .filter(|(_, b)| !b.is_empty())
        .collect();
    let epochs = groups
        .iter()
        .map(|(_, b)| b.len())
        .max()
        .unwrap_or(1)
        .max(2);
    let values = groups
        .iter()
        .flat_map(|(_, b)| b.iter().flat_map(|p| [p.0, p.2]));
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (
            (lo / 5.0).floor() * 5.0,
            ((hi / 5.0).ceil() * 5.0).max(lo + 5.0),
        )
    } else {
        (0.0, 100.0)
    };
    let (ml, mr, mt, mb) = MARGIN;
    let (pw, ph) = (WIDTH - ml - mr, HEIGHT - mt - mb);
    let x = |e: usize| ml + pw * e as f64 / (epochs - 1) as f64;
    let y = |v: f64| mt + ph * (1.0 - (v - lo) / (hi - lo));
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{ml}\" y=\"18\" font-size=\"14\">{}: test accuracy (%) per epoch</text>\n",
        escape(&report.name)
    );
    // Axes, grid lines and ticks.
    let steps = 5;
    for i in 0..=steps {
        let v = lo + (hi - lo) * i as f64 / steps as f64;
        s += &format!(
            "<line x1=\"{ml}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>\n",
            ml + pw,
            ml - 6.0,
            y(v) + 4.0,
            y = y(v)
        );
    }
    let tick_every = epochs.div_ceil(10).max(1);
    for e in (0..epochs).step_by(tick_every) {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            x(e),
            mt + ph + 16.0,
            e + 1
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">epoch</text>\n\
         <rect x=\"{ml}\" y=\"{mt}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#444\"/>\n",
        ml + pw / 2.0,
        HEIGHT - 8.0
    );
    for (i, (label, b)) in groups.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let upper = b
            .iter()
            .enumerate()
            .map(|(e, p)| format!("{:.1},{:.1}", x(e), y(p.2)));
        let lower = b
            .iter()
            .enumerate()
            .rev()
            .map(|(e, p)| format!("{:.1},{:.1}", x(e), y(p.0)));
        let ring: Vec<String> = upper.chain(lower).collect();
        s += &format!(
            "<polygon points=\"{}\" fill=\"{colour}\" fill-opacity=\"0.18\" stroke=\"none\"/>\n",
            ring.join(" ")
        );
        let line: Vec<String> = b
            .iter()
            .enumerate()
            .map(|(e, p)| format!("{:.1},{:.1}", x(e), y(p.1)))
            .collect();
        s += &format!(
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>\n",
            line.join(" ")
        );
        let ly = mt + 14.0 + 18.0 * i as f64;
        s += &format!(
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" \
             stroke-width=\"3\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            WIDTH - mr + 12.0,
            WIDTH - mr + 32.0,
            WIDTH - mr + 38.0,
            ly + 4.0,
            escape(label)
        );
    }
    s += "</svg>\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_band_spans_the_seeds_and_the_line_is_their_mean() {
        let a = [50.0, 60.0, 70.0];
        let b = [54.0, 58.0];
        let got = band(&[&a, &b]);
        assert_eq!(
            got,
            vec![(50.0, 52.0, 54.0), (58.0, 59.0, 60.0), (70.0, 70.0, 70.0)]
        );
    }
}
