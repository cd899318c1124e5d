//! The control half of a node: what every node kind (see [`crate::kinds`]) gives the
//! gateway beside its engine [`Node`](crate::engine::Node).
//!
//! The gateway keeps the service for as long as the node lives, shows its
//! [`status`](NodeService::status) in `GET /v1/nodes/{id}`, publishes its
//! [`metrics`](NodeService::publish_metrics) on `/metrics`, tells it which of its ports
//! are patched, seats callers by its [`seating`](NodeService::seating), and calls
//! [`stop`](NodeService::stop) when the node is removed or the gateway shuts down, so
//! sockets close and goodbyes (SAP deletions, say) are sent. A kind that cannot build a
//! node says why with a [`BuildError`], the gateway with a [`NodeError`]; the API turns
//! them into its own error at the boundary.

use std::sync::Arc;

use api::model::NodeRef;

pub use crate::metric_families::{MetricFamilies, MetricKind};

/// The I/O side of a node. See the module documentation.
pub trait NodeService: Send + Sync {
    /// Kind-specific state and statistics for the API.
    fn status(&self) -> serde_json::Value;

    /// Publishes this node's metrics, labelled with `node`, at scrape time.
    fn publish_metrics(&self, _node: &NodeRef, _families: &mut MetricFamilies) {}

    /// Stops the node's I/O. Called once, from a blocking context; may wait briefly
    /// (for example to send goodbye packets).
    fn stop(&self);

    /// Which of the node's ports are patched now (after every patch change). A jam room
    /// seats a jammer only while its ports are in use.
    fn ports_patched(&self, _ports: &[String]) {}

    /// Applies a new configuration of this node's kind live, if only settings that can
    /// change while running changed; false if the node must be rebuilt (the default).
    fn reconfigure(&self, _node: &NodeRef, _config: &api::control::NodeConfig) -> bool {
        false
    }

    /// How callers take seats in this node, if they do (conferences, jam rooms).
    fn seating(&self) -> Option<Seating> {
        None
    }

    /// The service as `Any`, for kind-specific control (a jam room's mix).
    fn into_any(self: Arc<Self>) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        None
    }
}

/// How callers take seats in a node (a conference, a jam room): seat *k* is the ports
/// `<prefix><k>` for each of `prefixes`, one seat for each input `in<k>`; a caller's
/// voice goes to `in<k>` and `out<k>` comes back to its ear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seating {
    /// The port prefixes that make up a seat; a seat is free only when nothing is patched
    /// to any of them (a jingle or an AES67 return patched there is a member too).
    pub prefixes: &'static [&'static str],
    /// A seated call keeps its seat until it hangs up, even if its seat's patches are
    /// removed meanwhile (a conference's membership); otherwise the seat is free as soon
    /// as nothing is patched to it (a jam room).
    pub held_until_hangup: bool,
    /// The node was made for the callers who joined it and goes when the last leaves.
    pub removed_when_empty: bool,
}

/// Why a node kind could not build a node from its configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is wrong.
    #[error("{message}")]
    Invalid {
        /// The configuration field at fault.
        field: String,
        /// Why.
        message: String,
    },
    /// The node cannot be built right now (a thread or socket it needs is not there).
    #[error("{message}")]
    Unavailable {
        /// Why.
        message: String,
    },
}

/// Why a node could not be created or removed: what the gateway says, in its own terms;
/// the API maps each case to its status at the boundary.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    /// A setting (or the name) is wrong.
    #[error("{message}")]
    Invalid {
        /// The configuration field at fault, if one is.
        field: Option<String>,
        /// Why.
        message: String,
    },
    /// A node of that name exists (or what it would serve is served already).
    #[error("{0}")]
    Exists(String),
    /// There is no such node.
    #[error("{0}")]
    NotFound(String),
    /// The media engine is busier than `engine.max_load_percent` allows.
    #[error(
        "the media engine is busy ({load_percent:.0} % of real time, more than \
         engine.max_load_percent = {limit_percent} %); try again later"
    )]
    EngineBusy {
        /// Its recent load, in percent of real time.
        load_percent: f64,
        /// The configured limit.
        limit_percent: u32,
    },
    /// The node cannot be made (or removed) right now: the engine is full, or a thread,
    /// socket or the database it needs is not there.
    #[error("{0}")]
    Unavailable(String),
}

impl NodeError {
    /// A wrong setting in `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> NodeError {
        NodeError::Invalid {
            field: Some(field.to_owned()),
            message: message.to_string(),
        }
    }
}

impl From<BuildError> for NodeError {
    fn from(e: BuildError) -> NodeError {
        match e {
            BuildError::Invalid { field, message } => NodeError::Invalid {
                field: Some(field),
                message,
            },
            BuildError::Unavailable { message } => NodeError::Unavailable(message),
        }
    }
}

impl BuildError {
    /// A wrong setting in `field`.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> BuildError {
        BuildError::Invalid {
            field: field.to_owned(),
            message: message.to_string(),
        }
    }
}
