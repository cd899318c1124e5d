//! The `recorder` kind: a WAV file fed by the inputs `in` (mono) or `in1..inN`. Made
//! through the API, or by a route's `record` action for one call (owned by the call).
//!
//! Also [`Recordings`], the recordings directory and the disk thread that writes every
//! file: a file is never created through a symbolic link, a taken name gets a numbered
//! variant, and a failing disk is reported on `/v1/events` and counted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use api::control::{Event, NodeConfig};
use api::model::{NodeKind, NodeRef};
use tokio::sync::broadcast;

use super::{BuiltNode, NodeKindBuilder, NodeResources, lock, wrong_kind};
use crate::engine::recorder::{
    DiskWriter, OpenedRecording, RecorderError, RecorderStats, RecordingFormat, RecordingSummary,
};
use crate::node_service::{NodeError, NodeService};
use crate::patchbay::NodeSpec;

/// The recordings directory and its disk writer. See the module documentation.
pub struct Recordings {
    dir: PathBuf,
    format: RecordingFormat,
    block: usize,
    /// Taken at shutdown.
    disk: Mutex<Option<DiskWriter>>,
    /// Recordings refused or stopped by a failing disk, since start.
    failures: Arc<AtomicU64>,
}

impl Recordings {
    /// Starts the disk thread for recordings under `dir`, in `format`, fed in
    /// `block`-sample blocks.
    pub fn start(dir: &Path, format: RecordingFormat, block: usize) -> std::io::Result<Self> {
        let disk = DiskWriter::start(dir)?;
        Ok(Recordings {
            dir: dir.to_path_buf(),
            format,
            block,
            failures: disk.failures(),
            disk: Mutex::new(Some(disk)),
        })
    }

    /// Recordings refused or stopped by a failing disk since start.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Finalizes every open recording and stops the disk thread (at shutdown).
    pub fn shutdown(&self) {
        if let Some(disk) = lock(&self.disk).take() {
            disk.shutdown();
        }
    }

    /// Creates a recording at `relative` inside the recordings directory and builds its
    /// node `node` (removed with `owner`, if any). Returns the node and the path the file
    /// was created at. A disk failure is announced on `events` as well as returned.
    pub fn open(
        &self,
        node: &NodeRef,
        relative: &Path,
        channels: u16,
        owner: Option<NodeRef>,
        events: &broadcast::Sender<Event>,
    ) -> Result<(BuiltNode, PathBuf), RecorderError> {
        let opened = {
            let disk = lock(&self.disk);
            let disk = disk.as_ref().ok_or(RecorderError::WriterStopped)?;
            disk.open(relative, channels, self.format, self.block)
        };
        let OpenedRecording {
            node: recorder,
            stats,
            path,
            failed,
            done,
        } = match opened {
            Ok(opened) => opened,
            Err(e) => {
                if e.is_disk_failure() {
                    tracing::error!(%node, path = %relative.display(), error = %e, "recording refused: the disk failed");
                    let _ = events.send(Event::RecordingFailed {
                        node: node.clone(),
                        path: self.dir.join(relative).display().to_string(),
                        error: e.to_string(),
                    });
                }
                return Err(e);
            }
        };
        if path.strip_prefix(&self.dir).ok() != Some(relative) {
            tracing::info!(asked = %relative.display(), path = %path.display(), "recording name was taken; using a numbered variant");
        }
        watch_recording(node, &path, failed, done, events.clone());
        let inputs = if channels == 1 {
            vec!["in".to_owned()]
        } else {
            (1..=channels).map(|k| format!("in{k}")).collect()
        };
        let built = BuiltNode {
            spec: NodeSpec {
                node: node.clone(),
                outputs: vec![],
                inputs,
                owner,
            },
            engine: Box::new(recorder),
            service: Arc::new(RecorderService {
                path: path.clone(),
                stats,
            }),
        };
        Ok((built, path))
    }
}

/// Tells `/v1/events` when the recording of `node` fails (once) and when it ends.
fn watch_recording(
    node: &NodeRef,
    path: &Path,
    failed: tokio::sync::oneshot::Receiver<String>,
    done: tokio::sync::oneshot::Receiver<RecordingSummary>,
    events: broadcast::Sender<Event>,
) {
    let node = node.clone();
    let path = path.display().to_string();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            // Closed without a value when the recording ends well.
            if let Ok(error) = failed.await {
                let _ = events.send(Event::RecordingFailed { node, path, error });
            }
            if let Ok(summary) = done.await {
                let _ = events.send(Event::RecordingFinished {
                    path: summary.path.display().to_string(),
                    frames: summary.frames,
                    error: summary.error,
                });
            }
        });
    }
}

/// The control half of a recorder: its file and counters.
struct RecorderService {
    path: PathBuf,
    stats: Arc<RecorderStats>,
}

impl NodeService for RecorderService {
    fn status(&self) -> serde_json::Value {
        let error = self.stats.error.get();
        serde_json::json!({
            "path": self.path.display().to_string(),
            "state": if error.is_some() { "failed" } else { "recording" },
            "error": error,
            "frames_written": self.stats.frames_written.load(Ordering::Relaxed),
            "frames_dropped": self.stats.frames_dropped.load(Ordering::Relaxed),
        })
    }

    fn stop(&self) {}
}

/// Builds recorders from `{"kind": "recorder", "path": ..., "channels": ...}`.
pub struct RecorderKind;

impl NodeKindBuilder for RecorderKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Recorder
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        let NodeConfig::Recorder { path, channels } = config else {
            return Err(wrong_kind(NodeKind::Recorder, config));
        };
        let (built, _) = resources
            .recordings
            .open(node, Path::new(path), *channels, None, &resources.events)
            .map_err(|e| NodeError::invalid("path", e))?;
        Ok(built)
    }
}
