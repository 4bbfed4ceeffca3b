//! Pictures as SVG text: panels of lines and dots (plotters' SVG backend; text is sized by
//! plotters' own estimate, so no font is needed to draw and any viewer renders it). What to
//! draw is the callers' (`training_svg` for a model's epochs; `tune` for its trials); this
//! module only lays panels out. Pure: data in, text out.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::error::{Error, Result};
use crate::mf::EpochStats;

/// How a line or dot stands out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emphasis {
    /// One of a few named lines (its own colour, in the legend).
    Named(usize),
    /// One of many (thin, grey).
    Faint,
    /// The one to look at (thick, red).
    Strong,
}

pub struct Line {
    pub label: String,
    pub points: Vec<(f64, f64)>,
    pub emphasis: Emphasis,
}

pub struct Dot {
    pub x: f64,
    pub y: f64,
    pub emphasis: Emphasis,
}

/// One chart.
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Draw x on a log scale (values must be positive).
    pub x_log: bool,
    /// Names of x = 0, 1, 2... when x is a choice, not a number.
    pub x_names: Option<Vec<String>>,
    pub lines: Vec<Line>,
    pub dots: Vec<Dot>,
}

impl Panel {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Panel {
        Panel {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_log: false,
            x_names: None,
            lines: Vec::new(),
            dots: Vec::new(),
        }
    }

    /// Every point that can be drawn (x positive on a log axis).
    fn points(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let lines = self.lines.iter().flat_map(|l| l.points.iter().copied());
        let dots = self.dots.iter().map(|d| (d.x, d.y));
        lines
            .chain(dots)
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.x_log || *x > 0.0))
    }
}

const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn style(emphasis: Emphasis) -> ShapeStyle {
    match emphasis {
        Emphasis::Named(n) => COLOURS[n % COLOURS.len()].stroke_width(2),
        Emphasis::Faint => RGBColor(160, 160, 160).stroke_width(1),
        Emphasis::Strong => RGBColor(214, 39, 40).stroke_width(3),
    }
}

/// `panels` in a grid of `columns`, each `size` pixels, as an SVG document.
pub fn svg(panels: &[Panel], columns: usize, size: (u32, u32)) -> Result<String> {
    let columns = columns.clamp(1, panels.len().max(1));
    let rows = panels.len().div_ceil(columns).max(1);
    let mut text = String::new();
    {
        let whole = (size.0 * columns as u32, size.1 * rows as u32);
        let root = SVGBackend::with_string(&mut text, whole).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        for (panel, area) in panels.iter().zip(root.split_evenly((rows, columns))) {
            draw(panel, &area)?;
        }
        root.present().map_err(drawing)?;
    }
    Ok(text)
}

fn drawing<E: std::fmt::Debug>(e: E) -> Error {
    Error::runtime(format!("drawing a chart: {e:?}"))
}

/// The range of `values` with a margin (a single value gets some room around it); on a log
/// axis the margin is a share of the range's log.
fn span(values: impl Iterator<Item = f64>, log: bool) -> (f64, f64) {
    let values = values.map(|v| if log { v.log10() } else { v });
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = match lo.is_finite() {
        true => (lo, hi),
        false => (0.0, 1.0),
    };
    let pad = match hi - lo {
        d if d > 0.0 => d * 0.05,
        _ => lo.abs().max(1.0) * 0.05,
    };
    match log {
        true => (10f64.powf(lo - pad), 10f64.powf(hi + pad)),
        false => (lo - pad, hi + pad),
    }
}

fn draw<DB: DrawingBackend>(panel: &Panel, area: &DrawingArea<DB, Shift>) -> Result<()> {
    let (x0, x1) = span(panel.points().map(|p| p.0), panel.x_log);
    match panel.x_log {
        true => draw_on(panel, area, (x0..x1).log_scale()),
        false => draw_on(panel, area, x0..x1),
    }
}

fn draw_on<DB, X>(panel: &Panel, area: &DrawingArea<DB, Shift>, x_range: X) -> Result<()>
where
    DB: DrawingBackend,
    X: AsRangedCoord<Value = f64>,
    X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let (y0, y1) = span(panel.points().map(|p| p.1), false);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x_range, y0..y1)
        .map_err(drawing)?;
    let x_label = |x: &f64| x_text(panel, *x);
    let y_label = |y: &f64| short(*y);
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(drawing)?;
    // Faint lines first, so the others are drawn over them.
    let mut lines: Vec<&Line> = panel.lines.iter().collect();
    lines.sort_by_key(|l| !matches!(l.emphasis, Emphasis::Faint));
    for line in lines {
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .copied()
            .filter(|p| p.1.is_finite())
            .collect();
        let style = style(line.emphasis);
        let series = chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(drawing)?;
        if let Emphasis::Named(_) = line.emphasis {
            series
                .label(line.label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
        }
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 2, style.filled())))
            .map_err(drawing)?;
    }
    let mut dots: Vec<&Dot> = panel.dots.iter().collect();
    dots.sort_by_key(|d| !matches!(d.emphasis, Emphasis::Faint));
    chart
        .draw_series(dots.iter().filter(|d| d.y.is_finite()).map(|d| {
            let radius = if d.emphasis == Emphasis::Strong { 6 } else { 3 };
            Circle::new((d.x, d.y), radius, style(d.emphasis).filled())
        }))
        .map_err(drawing)?;
    if panel
        .lines
        .iter()
        .any(|l| matches!(l.emphasis, Emphasis::Named(_)))
    {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(drawing)?;
    }
    Ok(())
}

/// The label of an x tick: a choice's name, a number.
fn x_text(panel: &Panel, x: f64) -> String {
    match &panel.x_names {
        Some(names) => {
            let at = x.round();
            match (at - x).abs() < 1e-6 && at >= 0.0 {
                true => names.get(at as usize).cloned().unwrap_or_default(),
                false => String::new(),
            }
        }
        // A log axis has a tick at every 1..9 x 10^k: name 1, 2 and 5 only, or they overlap.
        None if panel.x_log => {
            let mantissa = x / 10f64.powf(x.log10().floor());
            match [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6) {
                true => short(x),
                false => String::new(),
            }
        }
        None => short(x),
    }
}

/// A number for an axis: 4 significant digits, no trailing zeros.
fn short(x: f64) -> String {
    if x != 0.0 && (x.abs() < 1e-3 || x.abs() >= 1e5) {
        return format!("{x:.1e}");
    }
    let digits = (3 - x.abs().log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{x:.digits$}");
    match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s,
    }
}

/// A model's `training.svg`: per epoch, the training and hold-out RMSE (explicit), or the loss
/// and the preference RMSE on the training pairs (implicit: its hold-out figures are rankings,
/// measured once at the end).
pub fn training_svg(history: &[EpochStats]) -> Result<String> {
    let line = |label: &str, n: usize, value: &dyn Fn(&EpochStats) -> Option<f64>| Line {
        label: label.into(),
        points: history
            .iter()
            .filter_map(|h| Some((h.epoch as f64, value(h)?)))
            .collect(),
        emphasis: Emphasis::Named(n),
    };
    let implicit = history.iter().any(|h| h.loss.is_some());
    let panels = match implicit {
        false => {
            let mut p = Panel::new("RMSE by epoch", "epoch", "RMSE");
            p.lines.push(line("training (during the epoch)", 0, &|h| {
                Some(h.train_rmse)
            }));
            if history.iter().any(|h| h.holdout_rmse.is_some()) {
                p.lines.push(line("hold-out", 1, &|h| h.holdout_rmse));
            }
            vec![p]
        }
        true => {
            let mut loss = Panel::new("loss per training pair by epoch", "epoch", "loss");
            loss.lines.push(line("loss", 0, &|h| h.loss));
            let mut rmse = Panel::new("preference RMSE on the training pairs", "epoch", "RMSE");
            rmse.lines
                .push(line("training pairs", 1, &|h| Some(h.train_rmse)));
            vec![loss, rmse]
        }
    };
    let columns = panels.len();
    svg(&panels, columns, (560, 360))
}

/// The texts of an SVG document (its labels), for tests.
#[cfg(test)]
pub(crate) fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            Some(
                t.split_once('>')?
                    .1
                    .split_once("</text>")?
                    .0
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(epoch: usize, train: f64, holdout: Option<f64>, loss: Option<f64>) -> EpochStats {
        EpochStats {
            epoch,
            train_rmse: train,
            holdout_rmse: holdout,
            loss,
            seconds: 0.1,
            sync_seconds: 0.0,
            ratings_per_second: 1.0,
        }
    }

    #[test]
    fn a_training_chart_draws_both_curves_with_a_legend_and_axis_names() {
        let history: Vec<EpochStats> = (1..=10)
            .map(|e| stats(e, 1.0 / e as f64, Some(0.9 + 0.01 * e as f64), None))
            .collect();
        let svg = training_svg(&history).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for text in [
            "RMSE by epoch",
            "hold-out",
            "training (during the epoch)",
            "epoch",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        // Two lines of 10 points, each point a circle.
        assert_eq!(svg.matches("<circle").count(), 20);
        let implicit: Vec<EpochStats> = (1..=3).map(|e| stats(e, 0.6, None, Some(12.0))).collect();
        let svg = training_svg(&implicit).unwrap();
        assert!(svg.contains("loss per training pair") && svg.contains("preference RMSE"));
    }

    #[test]
    fn numbers_on_axes_are_short() {
        assert_eq!(short(0.8724), "0.8724");
        assert_eq!(short(12.5), "12.5");
        assert_eq!(short(100.0), "100");
        assert_eq!(short(0.0001234), "1.2e-4");
        assert_eq!(short(0.0), "0");
    }

    #[test]
    fn a_log_axis_is_labelled_in_its_own_units_and_choices_by_name() {
        let mut p = Panel::new("t", "lr", "rmse");
        p.x_log = true;
        p.dots = [0.001, 0.01, 0.1]
            .iter()
            .map(|&x| Dot {
                x,
                y: 1.0,
                emphasis: Emphasis::Faint,
            })
            .collect();
        let svg = svg(&[p], 1, (400, 300)).unwrap();
        let labels = texts(&svg);
        assert!(
            labels.contains(&"0.01".to_string()) && !labels.contains(&"0.03".to_string()),
            "{labels:?}"
        );
        let mut c = Panel::new("t", "objective", "ndcg");
        c.x_names = Some(vec!["explicit".into(), "implicit".into()]);
        c.dots = vec![
            Dot {
                x: 0.0,
                y: 0.1,
                emphasis: Emphasis::Faint,
            },
            Dot {
                x: 1.0,
                y: 0.3,
                emphasis: Emphasis::Strong,
            },
        ];
        let svg = super::svg(&[c], 1, (400, 300)).unwrap();
        let labels = texts(&svg);
        assert!(
            labels.contains(&"explicit".to_string()) && labels.contains(&"implicit".to_string()),
            "{labels:?}"
        );
    }
}
