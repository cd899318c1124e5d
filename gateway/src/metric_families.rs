//! Per-node metric families: what a node service publishes at scrape time, labelled
//! with its node, through the `metrics` crate; and the one family the crate cannot carry
//! (a counter with fractional values), kept as Prometheus text.
//!
//! A leaf module: the clock, the node kinds and the scrape all use it, and it uses none
//! of them.

use metrics::{Label, describe_counter, describe_gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

/// Renders what `publish` records, through a registry of its own (for the series of a
/// subsystem, and for tests).
pub fn render_published(publish: impl FnOnce()) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, publish);
    recorder.handle().render()
}

/// Whether a per-node metric is a counter or a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up (published with `absolute`, in whole units).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// Publishes node services' samples, labelled `node="kind:name"` first, into the current
/// recorder; keeps the fractional counters (which the `metrics` crate cannot carry) as
/// text.
#[derive(Debug, Default)]
pub struct MetricFamilies {
    fractional: Vec<FractionalFamily>,
}

/// A counter family with fractional values, rendered by hand.
#[derive(Debug)]
struct FractionalFamily {
    name: &'static str,
    help: &'static str,
    samples: String,
}

impl MetricFamilies {
    /// Publishes a sample `name{node="kind:name"[,extra]} value` of family `name`.
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: MetricKind,
        help: &'static str,
        node: &api::model::NodeRef,
        extra_labels: &[(&'static str, &str)],
        value: f64,
    ) {
        let mut labels = Vec::with_capacity(1 + extra_labels.len());
        labels.push(Label::new("node", node.to_string()));
        labels.extend(
            extra_labels
                .iter()
                .map(|(key, text)| Label::new(*key, (*text).to_owned())),
        );
        match kind {
            MetricKind::Counter => {
                describe_counter!(name, help);
                // Whole units: `as` saturates and these counters count things.
                metrics::counter!(name, labels).absolute(value as u64);
            }
            MetricKind::Gauge => {
                describe_gauge!(name, help);
                metrics::gauge!(name, labels).set(value);
            }
        }
    }

    /// Adds a sample `name{node="kind:name"} value` of a counter family whose values are
    /// fractional (seconds).
    pub fn fractional_counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        node: &api::model::NodeRef,
        value: f64,
    ) {
        use std::fmt::Write as _;
        let family = match self.fractional.iter().position(|f| f.name == name) {
            Some(index) => &mut self.fractional[index],
            None => {
                self.fractional.push(FractionalFamily {
                    name,
                    help,
                    samples: String::new(),
                });
                let last = self.fractional.len() - 1;
                &mut self.fractional[last]
            }
        };
        let _ = writeln!(
            family.samples,
            "{name}{{node=\"{}\"}} {value}",
            escape_label(&node.to_string())
        );
    }

    /// Writes the fractional counter families in Prometheus text format.
    pub fn render_fractional(&self, out: &mut String) {
        use std::fmt::Write as _;
        for family in &self.fractional {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} counter",
                family.name, family.help, family.name
            );
            out.push_str(&family.samples);
        }
    }
}

fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_samples_carry_the_node_label_first_and_fractional_counters_stay_text() {
        let a: api::model::NodeRef = "conference:a".parse().unwrap();
        let b: api::model::NodeRef = "conference:b".parse().unwrap();
        let mut families = MetricFamilies::default();
        let text = render_published(|| {
            families.sample("x_total", MetricKind::Counter, "X.", &a, &[], 1.0);
            families.sample(
                "x_total",
                MetricKind::Counter,
                "X.",
                &b,
                &[("ch", "2\"")],
                7.0,
            );
            families.sample("y", MetricKind::Gauge, "Y.", &a, &[], 2.5);
        });
        for line in [
            "# HELP x_total X.",
            "# TYPE x_total counter",
            "x_total{node=\"conference:a\"} 1",
            "x_total{node=\"conference:b\",ch=\"2\\\"\"} 7",
            "# TYPE y gauge",
            "y{node=\"conference:a\"} 2.5",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        families.fractional_counter("z_seconds_total", "Z.", &a, 0.25);
        families.fractional_counter("z_seconds_total", "Z.", &b, 1.5);
        let mut out = String::new();
        families.render_fractional(&mut out);
        assert_eq!(
            out,
            "# HELP z_seconds_total Z.\n# TYPE z_seconds_total counter\n\
             z_seconds_total{node=\"conference:a\"} 0.25\n\
             z_seconds_total{node=\"conference:b\"} 1.5\n"
        );
    }
}
