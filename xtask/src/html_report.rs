//! The report `validate` and `compare` write beside their table: one self-contained HTML file
//! (inline SVG plots drawn with plotters, no scripts, no external files).
//!
//! - A banner: every check passed, or the first divergence of the chain with its error.
//! - Per mode, a plot of every compared tensor in the judge's order (chained: forward order, the
//!   embeddings, then each layer's ln_1, q/k/v, scores, attention output, ln_2, FFN and block, then
//!   the head; isolated: by checkpoint, then layer): the candidate's
//!   worst error against the float64 truth, HF float32's own error there and the limit, on a log
//!   scale. Error growth through the layers and the point where the candidate leaves its limit
//!   are seen at a glance.
//! - The checkpoint table, and the worst elements of the failing tensors (or, when all pass, of
//!   the tensors with the least headroom).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use gpt2_checkpoints::judge::{Status, Verdict};
use gpt2_checkpoints::report::{first_divergence, headroom, mode_name, summarize};
use gpt2_checkpoints::tolerances::Mode;
use plotters::prelude::*;

/// One candidate's verdicts, with the facts shown above them.
pub struct Section<'a> {
    pub title: String,
    pub facts: Vec<(String, String)>,
    pub verdicts: &'a [Verdict],
}

/// Writes the report for `sections` to `path`.
pub fn write(path: &Path, title: &str, sections: &[Section<'_>]) -> Result<()> {
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(title),
        escape(title)
    );
    for section in sections {
        html.push_str(&render_section(section)?);
    }
    html.push_str("</body></html>\n");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, html).with_context(|| format!("cannot write the report {}", path.display()))
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;font-size:90%}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.pass{background:#dfd;padding:8px}.fail{background:#fdd;padding:8px}\
.FAIL{color:#b00;font-weight:bold}pre{background:#f6f6f6;padding:6px;overflow-x:auto}";

fn render_section(section: &Section<'_>) -> Result<String> {
    let mut out = format!("<h2>{}</h2>\n<table>", escape(&section.title));
    for (name, value) in &section.facts {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(name), escape(value));
    }
    out.push_str("</table>\n");
    let verdicts = section.verdicts;
    let failed = verdicts.iter().filter(|v| v.status == Status::Fail).count();
    match first_divergence(verdicts) {
        Some(first) => {
            let _ = writeln!(
                out,
                "<p class=\"fail\"><b>First divergence: {} in {}</b> (chained): {}<br>{failed} of {} checks failed.</p>",
                escape(&first.key.stem()),
                escape(&first.set),
                escape(first.detail.lines().next().unwrap_or_default()),
                verdicts.len()
            );
        }
        None if failed > 0 => {
            let _ = writeln!(out, "<p class=\"fail\"><b>{failed} of {} checks failed</b> (none in the chain).</p>", verdicts.len());
        }
        None => {
            let pending = verdicts.iter().filter(|v| v.status == Status::Pending).count();
            let _ = writeln!(out, "<p class=\"pass\"><b>Every check passed</b> ({} checks, {pending} pending).</p>", verdicts.len());
        }
    }
    for mode in [Mode::Chained, Mode::Isolated] {
        let points = points(verdicts, mode);
        if !points.is_empty() {
            let order = if mode == Mode::Chained { "in forward order" } else { "by checkpoint, then layer" };
            let _ = writeln!(out, "<h3>{}: error against the float64 truth, {order}</h3>", mode_name(mode));
            out.push_str(&plot(&points, first_divergence(verdicts).filter(|_| mode == Mode::Chained))?);
        }
    }
    out.push_str(&table(verdicts));
    out.push_str(&worst_elements(verdicts));
    Ok(out)
}

/// One compared tensor (worst over golden sets): its name and errors on the comparison's scale.
struct Point {
    stem: String,
    ours: f64,
    hf: f64,
    allowed: f64,
    failed: bool,
}

/// The float comparisons of `mode`, in the order the judge made them (forward order), each
/// tensor once with its worst error over the golden sets.
fn points(verdicts: &[Verdict], mode: Mode) -> Vec<Point> {
    let mut points: Vec<Point> = Vec::new();
    for v in verdicts.iter().filter(|v| v.mode == mode) {
        let Some(c) = &v.comparison else { continue };
        let stem = v.key.stem();
        let failed = v.status == Status::Fail;
        match points.iter_mut().find(|p| p.stem == stem) {
            Some(p) => {
                p.ours = p.ours.max(c.error);
                p.hf = p.hf.max(c.hf_error);
                p.allowed = p.allowed.max(c.allowed);
                p.failed |= failed;
            }
            None => points.push(Point { stem, ours: c.error, hf: c.hf_error, allowed: c.allowed, failed }),
        }
    }
    points
}

/// The inline SVG of one mode's points.
fn plot(points: &[Point], first: Option<&Verdict>) -> Result<String> {
    // zeros (exact matches) sit at the bottom of the plot, a third of the smallest error shown
    let positive = points.iter().flat_map(|p| [p.ours, p.hf, p.allowed]).filter(|e| *e > 0.0 && e.is_finite());
    let floor = positive.fold(f64::MAX, f64::min).min(1.0) / 3.0;
    let clamp = |e: f64| if e.is_finite() { e.max(floor) } else { 1e6 };
    let all = points.iter().flat_map(|p| [p.ours, p.hf, p.allowed]).map(clamp);
    let (low, high) = all.fold((f64::MAX, f64::MIN), |(lo, hi), e| (lo.min(e), hi.max(e)));
    let n = points.len();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1050, 380)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| anyhow!("cannot draw the plot: {e}");
        root.fill(&WHITE).map_err(draw)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(60)
            .y_label_area_size(70)
            .build_cartesian_2d(0..n, (low / 2.0..high * 2.0).log_scale())
            .map_err(draw)?;
        chart
            .configure_mesh()
            .x_labels(n.min(24))
            .x_label_formatter(&|i| points.get(*i).map(|p| short(&p.stem)).unwrap_or_default())
            .y_desc("worst error (scale of CHECKPOINTS.md)")
            .y_label_formatter(&|y| format!("{y:.0e}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(draw)?;
        let series = |f: fn(&Point) -> f64| points.iter().enumerate().map(move |(i, p)| (i, clamp(f(p)))).collect::<Vec<_>>();
        chart
            .draw_series(LineSeries::new(series(|p| p.allowed), ShapeStyle::from(&RGBColor(230, 140, 0)).stroke_width(2)))
            .map_err(draw)?
            .label("limit")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(230, 140, 0)));
        chart
            .draw_series(LineSeries::new(series(|p| p.hf), &RGBColor(120, 120, 120)))
            .map_err(draw)?
            .label("HF float32's own error")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RGBColor(120, 120, 120)));
        chart
            .draw_series(LineSeries::new(series(|p| p.ours), &BLUE))
            .map_err(draw)?
            .label("candidate")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(points.iter().enumerate().map(|(i, p)| {
                let color = if p.failed { RED } else { BLUE };
                Circle::new((i, clamp(p.ours)), if p.failed { 4 } else { 2 }, color.filled())
            }))
            .map_err(draw)?;
        if let Some(i) = first.and_then(|f| points.iter().position(|p| p.stem == f.key.stem())) {
            chart
                .draw_series(LineSeries::new([(i, low / 2.0), (i, high * 2.0)], ShapeStyle::from(&RED).stroke_width(1)))
                .map_err(draw)?
                .label("first divergence")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    Ok(svg + "\n")
}

/// `07_block.l03.output` -> `07 l03`: the tick label.
fn short(stem: &str) -> String {
    let mut parts = stem.split('.');
    let checkpoint = parts.next().unwrap_or_default().get(..2).unwrap_or_default().to_string();
    match parts.next().filter(|p| p.starts_with('l') && p[1..].chars().all(|c| c.is_ascii_digit())) {
        Some(layer) => format!("{checkpoint} {layer}"),
        None => checkpoint,
    }
}

fn table(verdicts: &[Verdict]) -> String {
    let mut out = String::from(
        "<h3>Checkpoints</h3>\n<table><tr><th>checkpoint</th><th>mode</th><th>status</th><th>worst error (×HF's)</th><th>limit</th><th>headroom</th><th>max abs</th></tr>\n",
    );
    for row in summarize(verdicts) {
        let status = format!("{:?}", row.status).to_lowercase();
        let status =
            if row.status == Status::Fail { format!("<span class=\"FAIL\">FAIL ({}/{})</span>", row.failed, row.checks) } else { status };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{status}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&row.checkpoint),
            row.mode,
            row.max_ratio.map_or("-".into(), |r| format!("{r:.2}")),
            escape(row.limit.as_deref().unwrap_or(if row.ids_compared { "exact" } else { "-" })),
            row.headroom.map_or("-".into(), headroom),
            row.max_abs.map_or("-".into(), |m| format!("{m:.1e}")),
        );
    }
    out + "</table>\n"
}

/// The failing tensors' worst elements, or else those of the five with the least headroom.
fn worst_elements(verdicts: &[Verdict]) -> String {
    let failing: Vec<&Verdict> = verdicts.iter().filter(|v| v.status == Status::Fail).take(20).collect();
    let (heading, shown) = if failing.is_empty() {
        let mut closest: Vec<&Verdict> = verdicts.iter().filter(|v| v.comparison.as_ref().is_some_and(|c| c.error > 0.0)).collect();
        closest.sort_by(|a, b| {
            a.comparison
                .as_ref()
                .map(|c| c.headroom)
                .partial_cmp(&b.comparison.as_ref().map(|c| c.headroom))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        ("Closest to their limit", closest.into_iter().take(5).collect::<Vec<_>>())
    } else {
        ("Failing tensors and their worst elements", failing)
    };
    let mut out = format!("<h3>{heading}</h3>\n");
    for v in shown {
        let _ =
            write!(out, "<p><b>{}</b> [{}, {}]</p><pre>{}", escape(&v.key.stem()), mode_name(v.mode), escape(&v.set), escape(&v.detail));
        if let Some(c) = v.comparison.as_ref().filter(|c| c.passed()) {
            for p in &c.worst {
                let _ = write!(out, "\n    at {:?}: ours {:e}, truth {:e}, HF {:e}, error {:.2e}", p.index, p.ours, p.truth, p.hf, p.error);
            }
        }
        out.push_str("</pre>\n");
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use gpt2_checkpoints::goldens::GoldenSet;
    use gpt2_checkpoints::judge::{Claims, judge};
    use gpt2_checkpoints::model::Reference;
    use gpt2_checkpoints::runner;
    use gpt2_checkpoints::testing::{goldens_dir, model_dir, tolerances_path};
    use gpt2_checkpoints::tolerances::Tolerances;

    use super::*;

    /// The reference's verdicts on the tiny fixture's "Hello." (all pass).
    fn verdicts() -> Vec<Verdict> {
        let set = GoldenSet::open(&goldens_dir().join("tiny-gpt2").join("hello")).expect("committed goldens");
        let mut reference = Reference::load(&model_dir(&set)).expect("fixture model");
        let mut observations = runner::port::chained(&mut reference, &set);
        observations.merge(runner::port::isolated(&mut reference, &set));
        judge(&set, &observations, &Tolerances::load(&tolerances_path()).expect("tolerances"), &Claims::all())
    }

    fn rendered(verdicts: &[Verdict]) -> String {
        let dir = tempfile::tempdir().expect("scratch");
        let path = dir.path().join("report.html");
        write(&path, "test", &[Section { title: "reference".into(), facts: vec![("model".into(), "tiny".into())], verdicts }])
            .expect("written");
        std::fs::read_to_string(path).expect("readable")
    }

    #[test]
    fn a_passing_run_has_both_plots_and_says_it_passed() {
        let html = rendered(&verdicts());
        assert!(html.contains("Every check passed") && !html.contains("First divergence"), "{html}");
        assert_eq!(html.matches("<svg").count(), 2, "a plot per mode");
        assert!(html.contains("Closest to their limit"));
    }

    #[test]
    fn a_divergence_is_named_in_the_banner_and_marked_on_the_plot() {
        let mut verdicts = verdicts();
        let gelu = verdicts.iter_mut().find(|v| v.mode == Mode::Chained && v.key.stem() == "06_ffn.l01.gelu").expect("a chained gelu");
        gelu.status = Status::Fail;
        gelu.diverged = true;
        let html = rendered(&verdicts);
        assert!(html.contains("First divergence: 06_ffn.l01.gelu in tiny-gpt2/hello"), "{html}");
        assert!(html.contains("first divergence") && html.contains("Failing tensors and their worst elements"));
    }
}
