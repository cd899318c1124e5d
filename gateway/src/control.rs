//! The gateway's implementation of the API's [`Control`] trait.
//!
//! Thin: every method turns a [`Gateway`] call into the API's views and errors. The
//! gateway metrics for `/metrics` are rendered here from the lock-free counters at
//! scrape time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use api::control::{
    CallCounters, CallInfo, CallState, Control, ControlError, Event, Level, NodeConfig, NodeInfo,
    PatchInfo,
};
use api::model::{NodeKind, NodeRef, PortRef, Route};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::engine::stats::LevelMeter;
use crate::jam::JamService;
use crate::patchbay::PatchbayError;
use crate::service::{CallHandle, Gateway};
use crate::switchboard::patch_info;

/// [`Control`] over a running [`Gateway`].
pub struct GatewayControl {
    gateway: Arc<Gateway>,
    /// The registry `/metrics` renders the gateway's counters through.
    metrics: Arc<crate::scrape::GatewayMetrics>,
}

impl GatewayControl {
    /// The service of jam node `node`.
    fn jam_service(&self, node: &NodeRef) -> Result<Arc<JamService>, ControlError> {
        let not_found = || ControlError::NotFound {
            message: format!("no jam node {node}"),
        };
        if node.kind() != NodeKind::Jam {
            return Err(not_found());
        }
        self.gateway
            .node_service(node)
            .and_then(|s| s.into_any())
            .and_then(|any| any.downcast::<JamService>().ok())
            .ok_or_else(not_found)
    }

    /// Sets one jammer's mix, live and in the node's configuration.
    fn set_jam_mix_setting(
        &self,
        node: &NodeRef,
        setting: api::jam::JamMixSetting,
    ) -> Result<(), ControlError> {
        let service = self.jam_service(node)?;
        let unprocessable = |e: api::jam::MixError| ControlError::Unprocessable {
            message: e.to_string(),
            field: Some("client_id".into()),
        };
        let (mut config, persistent) =
            self.gateway
                .node_config(node)
                .ok_or_else(|| ControlError::NotFound {
                    message: format!("no jam node {node}"),
                })?;
        config.set_jam_mix(setting).map_err(unprocessable)?;
        service.set_mix(setting).map_err(unprocessable)?;
        self.gateway.set_node_config(node, config, persistent);
        Ok(())
    }

    /// Returns one jammer to the default mix, live and in the node's configuration.
    fn reset_jam_mix_setting(&self, node: &NodeRef, client_id: u32) -> Result<(), ControlError> {
        let service = self.jam_service(node)?;
        if let Some((mut config, persistent)) = self.gateway.node_config(node) {
            config.remove_jam_mix(client_id);
            self.gateway.set_node_config(node, config, persistent);
        }
        service.reset_mix(client_id);
        Ok(())
    }

    /// Wraps `gateway`.
    pub fn new(
        gateway: Arc<Gateway>,
        metrics: Arc<crate::scrape::GatewayMetrics>,
    ) -> GatewayControl {
        GatewayControl { gateway, metrics }
    }
}

/// Reads a level meter as the API's view.
pub fn level(meter: &LevelMeter) -> Level {
    let reading = meter.read();
    Level {
        peak_dbfs: reading.peak_dbfs,
        rms_dbfs: reading.rms_dbfs,
    }
}

fn call_info<'a>(
    handle: &CallHandle,
    patches: impl IntoIterator<Item = &'a PatchInfo>,
) -> CallInfo {
    let s = &handle.stats;
    CallInfo {
        uuid: handle.id,
        node: handle.node.clone(),
        peer: handle.peer.to_string(),
        caller_rate_hz: handle.caller_rate(),
        kind: handle.kind(),
        state: handle.state(),
        started_at: chrono::DateTime::<chrono::Utc>::from(handle.started_at),
        duration_ms: u64::try_from(handle.duration().as_millis()).unwrap_or(u64::MAX),
        route: handle.route.clone(),
        talking: handle.talking(),
        voice_level: level(&s.voice_level),
        ear_level: level(&s.ear_level),
        patches: patches
            .into_iter()
            .filter(|p| p.source.node() == &handle.node || p.sink.node() == &handle.node)
            .cloned()
            .collect(),
        counters: CallCounters {
            frames_in: s.frames_in.load(Ordering::Relaxed),
            frames_out: s.frames_out.load(Ordering::Relaxed),
            uplink_gaps: s.uplink_gaps.load(Ordering::Relaxed),
            downlink_underruns: s.downlink_underruns.load(Ordering::Relaxed),
            max_jitter_ms: s.max_jitter_us.load(Ordering::Relaxed) as f64 / 1000.0,
            dtmf_digits: s.dtmf_digits.load(Ordering::Relaxed),
            skipped_messages: s.skipped_messages.load(Ordering::Relaxed),
            uplink_correction_ppm: s.uplink_correction_ppm.load(Ordering::Relaxed) as i64,
        },
    }
}

impl From<crate::node_service::NodeError> for ControlError {
    fn from(e: crate::node_service::NodeError) -> ControlError {
        use crate::node_service::NodeError;
        match e {
            NodeError::Invalid { field, message } => ControlError::Unprocessable { message, field },
            NodeError::Exists(message) => ControlError::Conflict { message },
            NodeError::NotFound(message) => ControlError::NotFound { message },
            NodeError::EngineBusy { .. } | NodeError::Unavailable(_) => ControlError::Unavailable {
                message: e.to_string(),
            },
        }
    }
}

impl From<crate::node_service::BuildError> for ControlError {
    fn from(e: crate::node_service::BuildError) -> ControlError {
        use crate::node_service::BuildError;
        match e {
            BuildError::Invalid { field, message } => ControlError::Unprocessable {
                message,
                field: Some(field),
            },
            BuildError::Unavailable { message } => ControlError::Unavailable { message },
        }
    }
}

fn patchbay_error(e: PatchbayError) -> ControlError {
    match e {
        PatchbayError::UnknownPatch { .. } => ControlError::NotFound {
            message: e.to_string(),
        },
        PatchbayError::DuplicatePatch { .. } | PatchbayError::NodeExists { .. } => {
            ControlError::Conflict {
                message: e.to_string(),
            }
        }
        PatchbayError::EngineStopped
        | PatchbayError::TooManyNodes { .. }
        | PatchbayError::TooManyPatches { .. } => ControlError::Unavailable {
            message: e.to_string(),
        },
        PatchbayError::InvalidGain { .. } => ControlError::Unprocessable {
            message: e.to_string(),
            field: Some("gain_db".into()),
        },
        PatchbayError::WrongDirection { .. }
        | PatchbayError::UnknownNode { .. }
        | PatchbayError::UnknownPort { .. } => ControlError::Unprocessable {
            message: e.to_string(),
            field: None,
        },
    }
}

impl GatewayControl {
    fn node_info(&self, entry: &crate::patchbay::NodeEntry) -> NodeInfo {
        let configured = self.gateway.node_config(&entry.node);
        NodeInfo {
            node: entry.node.clone(),
            kind: entry.node.kind(),
            outputs: entry.outputs.clone(),
            inputs: entry.inputs.clone(),
            owner: entry.owner.clone(),
            persistent: configured
                .as_ref()
                .is_some_and(|(_, persistent)| *persistent),
            config: configured.and_then(|(config, _)| serde_json::to_value(config).ok()),
            status: self.status(&entry.node),
        }
    }

    fn status(&self, node: &NodeRef) -> Option<serde_json::Value> {
        if node.kind() == NodeKind::Call {
            let id = Uuid::parse_str(node.name()).ok()?;
            let handle = self.gateway.calls().into_iter().find(|c| c.id == id)?;
            return serde_json::to_value(call_info(&handle, &[])).ok();
        }
        self.gateway.node_status(node)
    }
}

impl Control for GatewayControl {
    fn calls(&self) -> Vec<CallInfo> {
        self.calls_page(None, 0, usize::MAX).1
    }

    fn calls_page(
        &self,
        state: Option<CallState>,
        offset: usize,
        limit: usize,
    ) -> (usize, Vec<CallInfo>) {
        let mut handles = self.gateway.calls();
        if let Some(wanted) = state {
            handles.retain(|c| c.state() == wanted);
        }
        let total = handles.len();
        let page: Vec<_> = handles.into_iter().skip(offset).take(limit).collect();
        if page.is_empty() {
            return (total, Vec::new());
        }
        // Index the patches by the calls on the page once, so a page of N calls with P
        // patches costs N + P rather than N x P.
        let on_page: std::collections::HashSet<&NodeRef> = page.iter().map(|c| &c.node).collect();
        let mut by_call: HashMap<NodeRef, Vec<PatchInfo>> = HashMap::new();
        for patch in self.patches() {
            let (source, sink) = (patch.source.node(), patch.sink.node());
            let touched = if source == sink {
                &[source][..]
            } else {
                &[source, sink][..]
            };
            for &node in touched {
                if on_page.contains(node) {
                    by_call.entry(node.clone()).or_default().push(patch.clone());
                }
            }
        }
        let items = page
            .iter()
            .map(|c| call_info(c, by_call.get(&c.node).into_iter().flatten()))
            .collect();
        (total, items)
    }

    fn call(&self, id: Uuid) -> Option<CallInfo> {
        let handle = self.gateway.calls().into_iter().find(|c| c.id == id)?;
        Some(call_info(&handle, &self.patches()))
    }

    fn hangup(&self, id: Uuid) -> bool {
        self.gateway.hangup(&id, "hung up through the API")
    }

    fn nodes(&self) -> Vec<NodeInfo> {
        let (nodes, _) = self.gateway.topology_snapshot();
        nodes.iter().map(|n| self.node_info(n)).collect()
    }

    fn node(&self, node: &NodeRef) -> Option<NodeInfo> {
        let (nodes, _) = self.gateway.topology_snapshot();
        nodes
            .iter()
            .find(|n| &n.node == node)
            .map(|n| self.node_info(n))
    }

    fn create_node(
        &self,
        name: &str,
        config: &NodeConfig,
        persistent: bool,
    ) -> Result<NodeInfo, ControlError> {
        let node = self
            .gateway
            .create_configured_node(name, config, persistent)?;
        self.node(&node).ok_or(ControlError::NotFound {
            message: format!("{node} vanished"),
        })
    }

    fn delete_node(&self, node: &NodeRef) -> Result<(), ControlError> {
        Ok(self.gateway.delete_node(node)?)
    }

    fn patches(&self) -> Vec<PatchInfo> {
        let (_, patches) = self.gateway.topology_snapshot();
        patches.iter().map(patch_info).collect()
    }

    fn connect(
        &self,
        source: PortRef,
        sink: PortRef,
        gain_db: f32,
        persistent: bool,
    ) -> Result<PatchInfo, ControlError> {
        self.gateway.check_engine_load()?;
        let patch = self
            .gateway
            .connect(source, sink, gain_db)
            .map_err(patchbay_error)?;
        if persistent {
            let marked = self
                .gateway
                .set_patch_persistent(patch.id, true)
                .map_err(patchbay_error)?;
            return Ok(patch_info(&marked));
        }
        Ok(patch_info(&patch))
    }

    fn set_patch_gain(&self, id: u64, gain_db: f32) -> Result<PatchInfo, ControlError> {
        self.gateway
            .set_patch_gain(id, gain_db)
            .map(|p| patch_info(&p))
            .map_err(patchbay_error)
    }

    fn disconnect(&self, id: u64) -> Result<PatchInfo, ControlError> {
        self.gateway
            .disconnect(id)
            .map(|p| patch_info(&p))
            .map_err(patchbay_error)
    }

    fn static_routes(&self) -> Vec<Route> {
        self.gateway.static_routes().to_vec()
    }

    fn set_stored_routes(&self, routes: Vec<Route>) {
        self.gateway.set_stored_routes(routes);
    }

    fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.gateway.subscribe()
    }

    fn render_metrics(&self, out: &mut String) {
        out.push_str(&self.metrics.render(&self.gateway));
    }

    fn ready(&self) -> bool {
        !self.gateway.shutdown_token().is_cancelled()
    }

    fn reconfigure_node(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
    ) -> Option<Result<NodeInfo, ControlError>> {
        // Whatever the kind: its service says whether the change applies live.
        let service = self.gateway.node_service(node)?;
        if !service.reconfigure(node, config) {
            return None;
        }
        let persistent = self.gateway.node_config(node).is_some_and(|(_, p)| p);
        self.gateway
            .set_node_config(node, config.clone(), persistent);
        Some(self.node(node).ok_or(ControlError::NotFound {
            message: format!("{node} vanished"),
        }))
    }

    fn jam_mix(&self, node: &NodeRef) -> Result<Vec<api::jam::JamMixEntry>, ControlError> {
        Ok(self.jam_service(node)?.mix_entries())
    }

    fn set_jam_mix(
        &self,
        node: &NodeRef,
        setting: api::jam::JamMixSetting,
    ) -> Result<(), ControlError> {
        self.set_jam_mix_setting(node, setting)
    }

    fn reset_jam_mix(&self, node: &NodeRef, client_id: u32) -> Result<(), ControlError> {
        self.reset_jam_mix_setting(node, client_id)
    }

    fn flow_sdp(&self, name: &str) -> Option<String> {
        self.gateway.aes67().flow_sdp(name)
    }

    fn sap_sessions(&self) -> Vec<api::control::SapSessionInfo> {
        self.gateway.aes67().sap_sessions()
    }

    fn clock(&self) -> api::control::ClockStatus {
        self.gateway.clock().status()
    }
}
