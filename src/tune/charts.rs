//! A search's pictures: `trials.svg` (every trial's metric at each measured epoch, the best
//! trial in red) and `params.svg` (each trial's last metric against each dimension of the
//! space; completed trials blue, stopped or failed grey, the best red).

use super::search::{Row, Status};
use super::space::{Config, Domain, Space};
use crate::error::Result;
use crate::plot::{svg, Dot, Emphasis, Line, Panel};

/// The trials' measurements, grouped: (trial, its rows with a metric), by trial.
fn by_trial(rows: &[Row]) -> Vec<(usize, Vec<&Row>)> {
    let mut trials: Vec<(usize, Vec<&Row>)> = Vec::new();
    for row in rows.iter().filter(|r| r.metric.is_some()) {
        match trials.iter_mut().find(|(t, _)| *t == row.trial) {
            Some((_, list)) => list.push(row),
            None => trials.push((row.trial, vec![row])),
        }
    }
    trials.sort_by_key(|(t, _)| *t);
    trials
}

pub fn trials_svg(metric: &str, rows: &[Row], best: Option<usize>) -> Result<String> {
    let trials = by_trial(rows);
    let title = match best {
        Some(b) => format!(
            "{metric} of {} trials by epoch (trial {b}, the best, in red)",
            trials.len()
        ),
        None => format!("{metric} of {} trials by epoch", trials.len()),
    };
    let mut panel = Panel::new(&title, "epoch (log scale)", metric);
    panel.x_log = true;
    for (trial, list) in trials {
        let mut points: Vec<(f64, f64)> = list
            .iter()
            .map(|r| (r.epoch as f64, r.metric.unwrap_or(f64::NAN)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        panel.lines.push(Line {
            label: format!("trial {trial}"),
            points,
            emphasis: if Some(trial) == best {
                Emphasis::Strong
            } else {
                Emphasis::Faint
            },
        });
    }
    svg(&[panel], 1, (900, 520))
}

pub fn params_svg(
    metric: &str,
    space: &Space,
    configs: &[Config],
    rows: &[Row],
    best: Option<usize>,
) -> Result<String> {
    let trials = by_trial(rows);
    let mut panels = Vec::new();
    for (d, dim) in space.dimensions.iter().enumerate() {
        let names: Option<Vec<String>> = match (&dim.domain, dim.is_numeric()) {
            (Domain::List(values), false) => Some(values.iter().map(|v| v.to_string()).collect()),
            _ => None,
        };
        let title = format!(
            "{metric} by {} (red: best; blue: completed; grey: stopped)",
            dim.name
        );
        let mut panel = Panel::new(&title, &dim.name, metric);
        panel.x_log = dim.is_log();
        for (trial, list) in &trials {
            let Some(value) = &configs[*trial][d] else {
                continue;
            };
            let x = match (&names, value) {
                (Some(names), v) => {
                    names.iter().position(|n| *n == v.to_string()).unwrap_or(0) as f64
                }
                (None, v) => v.as_f64().unwrap_or(f64::NAN),
            };
            let last = list.last().expect("grouped rows are not empty");
            let emphasis = match (Some(*trial) == best, last.status) {
                (true, _) => Emphasis::Strong,
                (false, Status::Completed) => Emphasis::Named(0),
                _ => Emphasis::Faint,
            };
            panel.dots.push(Dot {
                x,
                y: last.metric.unwrap_or(f64::NAN),
                emphasis,
            });
        }
        panel.x_names = names;
        panels.push(panel);
    }
    let columns = panels.len().min(3);
    svg(&panels, columns, (420, 320))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tune::space::Value;

    fn row(trial: usize, epoch: usize, metric: f64, status: Status) -> Row {
        Row {
            trial,
            epoch,
            metric: Some(metric),
            seconds: 1.0,
            status,
            reason: None,
        }
    }

    #[test]
    fn the_pictures_draw_every_trial_and_every_dimension() {
        let space = Space::parse("lr=log:0.001..0.1 objective=explicit,implicit").unwrap();
        let configs = vec![
            vec![
                Some(Value::Float(0.002)),
                Some(Value::Text("explicit".into())),
            ],
            vec![
                Some(Value::Float(0.05)),
                Some(Value::Text("implicit".into())),
            ],
        ];
        let rows = vec![
            row(0, 1, 0.95, Status::Continued),
            row(0, 3, 0.91, Status::Completed),
            row(1, 1, 0.99, Status::Stopped),
        ];
        let trials = trials_svg("holdout_rmse", &rows, Some(0)).unwrap();
        assert!(trials.contains("holdout_rmse of 2 trials by epoch (trial 0, the best, in red)"));
        let params = params_svg("holdout_rmse", &space, &configs, &rows, Some(0)).unwrap();
        let labels = crate::plot::texts(&params);
        for text in ["explicit", "implicit", "lr", "objective"] {
            assert!(labels.contains(&text.to_string()), "{text}: {labels:?}");
        }
        assert!(
            params.contains("holdout_rmse by lr") && params.contains("holdout_rmse by objective")
        );
        // Two dots per panel, the best one larger.
        assert_eq!(params.matches("<circle").count(), 4);
        assert_eq!(params.matches("r=\"6\"").count(), 2);
    }
}
