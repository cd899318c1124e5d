//! Nodes whose work reaches beyond the engine: AES67 flows, jam rooms and DNS
//! broadcasts run network I/O (sockets, timers, servers) beside their engine node.
//!
//! Such a kind registers a [`NodeService`] next to its engine [`Node`](crate::engine::Node)
//! through [`Gateway::add_service_node`](crate::Gateway::add_service_node). The gateway
//! keeps the service for as long as the node lives, shows its [`status`](NodeService::status)
//! in `GET /v1/nodes/{id}`, appends its [`metrics`](NodeService::render_metrics) to
//! `/metrics`, and calls [`stop`](NodeService::stop) when the node is removed or the
//! gateway shuts down, so sockets close and goodbyes (SAP deletions, say) are sent.

use std::fmt::Write as _;
use std::sync::Arc;

use api::model::NodeRef;

/// The I/O side of a node. See the module documentation.
pub trait NodeService: Send + Sync {
    /// Kind-specific state and statistics for the API.
    fn status(&self) -> serde_json::Value;

    /// Appends this node's Prometheus samples (no `# HELP`/`# TYPE` lines; those are
    /// written once per metric family by [`MetricFamily`]).
    fn render_metrics(&self, _node: &NodeRef, _families: &mut MetricFamilies) {}

    /// Stops the node's I/O. Called once, from a blocking context; may wait briefly
    /// (for example to send goodbye packets).
    fn stop(&self);

    /// Which of the node's ports are patched now (after every patch change). A jam room
    /// seats a jammer only while its ports are in use.
    fn ports_patched(&self, _ports: &[String]) {}

    /// The service as `Any`, for kind-specific control (a jam room's mix).
    fn into_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }
}

/// One Prometheus metric family collected across nodes.
#[derive(Debug)]
pub struct MetricFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: String,
}

/// Metric families gathered from every node service, rendered once at the end so each
/// family's header appears exactly once.
#[derive(Debug, Default)]
pub struct MetricFamilies {
    families: Vec<MetricFamily>,
}

impl MetricFamilies {
    /// Adds a sample `name{node="kind:name"[,extra]} value` to the family `name`.
    pub fn sample(
        &mut self,
        name: &'static str,
        kind: &'static str,
        help: &'static str,
        node: &NodeRef,
        extra_labels: &[(&str, &str)],
        value: f64,
    ) {
        let family = match self.families.iter_mut().position(|f| f.name == name) {
            Some(index) => &mut self.families[index],
            None => {
                self.families.push(MetricFamily {
                    name,
                    kind,
                    help,
                    samples: String::new(),
                });
                let last = self.families.len() - 1;
                &mut self.families[last]
            }
        };
        let _ = write!(
            family.samples,
            "{name}{{node=\"{}\"",
            escape(&node.to_string())
        );
        for (label, text) in extra_labels {
            let _ = write!(family.samples, ",{label}=\"{}\"", escape(text));
        }
        let _ = writeln!(family.samples, "}} {value}");
    }

    /// Writes every family in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        for family in &self.families {
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}",
                family.name, family.help, family.name, family.kind
            );
            out.push_str(&family.samples);
        }
    }
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_one_header_and_every_sample() {
        let mut families = MetricFamilies::default();
        let a: NodeRef = "conference:a".parse().unwrap();
        let b: NodeRef = "conference:b".parse().unwrap();
        families.sample("x_total", "counter", "X.", &a, &[], 1.0);
        families.sample("x_total", "counter", "X.", &b, &[("ch", "2\"")], 2.5);
        let mut out = String::new();
        families.render(&mut out);
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\n\
             x_total{node=\"conference:a\"} 1\n\
             x_total{node=\"conference:b\",ch=\"2\\\"\"} 2.5\n"
        );
    }
}
