//! The `player` kind: a WAV clip played on the output `out`, once or looped. Standing
//! players come from the configuration (hold music) or the API; a route's `play` action
//! makes one owned by the call.
//!
//! Also the clip library every player draws from: decoded clips cached up to
//! `engine.clip_cache_mb`, opened either as the operator gave them or beneath
//! `media.dir` without following links.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use api::control::NodeConfig;
use api::model::{NodeKind, NodeRef};

use super::{BuiltNode, NodeKindBuilder, NodeResources, lock, wrong_kind};
use crate::engine::db_to_gain;
use crate::engine::player::{
    Clip, ClipCache, ClipError, PlayerNode, PlayerState, load_clip, load_clip_from, open_beneath,
};
use crate::node_service::{NodeError, NodeService};
use crate::patchbay::NodeSpec;

/// Where a player's file comes from, which decides how it is opened.
#[derive(Debug, Clone, Copy)]
pub enum ClipSource<'a> {
    /// A file of the operator's configuration (hold music, start-up players), opened as
    /// given.
    Operator(&'a Path),
    /// A file named by a route or an API client: a relative path inside `media.dir`,
    /// opened without following links (see [`open_beneath`]).
    Media(&'a Path),
}

impl ClipSource<'_> {
    /// The path as given.
    pub fn path(&self) -> &Path {
        match self {
            ClipSource::Operator(path) | ClipSource::Media(path) => path,
        }
    }
}

/// Decoded clips, shared by every player. See the module documentation.
pub struct ClipLibrary {
    media_dir: PathBuf,
    cache: Mutex<ClipCache>,
}

impl ClipLibrary {
    /// A library of clips under `media_dir`, caching at most `limit_bytes` of audio.
    pub fn new(media_dir: PathBuf, limit_bytes: usize) -> ClipLibrary {
        ClipLibrary {
            media_dir,
            cache: Mutex::new(ClipCache::new(limit_bytes)),
        }
    }

    /// A decoded clip, from the cache or the file (blocking I/O on first use, outside
    /// the cache's lock). Refused when it would not fit in the cache.
    pub fn clip(&self, source: ClipSource<'_>) -> Result<Clip, ClipError> {
        let key = match source {
            ClipSource::Operator(path) => path.to_path_buf(),
            ClipSource::Media(relative) => self.media_dir.join(relative),
        };
        let free = {
            let mut cache = lock(&self.cache);
            if let Some(clip) = cache.get(&key) {
                return Ok(clip);
            }
            cache.free_bytes()
        };
        let clip = match source {
            ClipSource::Operator(path) => load_clip(path, free)?,
            ClipSource::Media(relative) => {
                let file = open_beneath(&self.media_dir, relative)?;
                load_clip_from(file, &relative.display().to_string(), free)?
            }
        };
        lock(&self.cache).insert(&key, clip)
    }
}

/// What a player is asked to play.
pub struct PlayerSettings {
    /// The clip, decoded.
    pub clip: Clip,
    /// The file it came from (for the status).
    pub file: PathBuf,
    /// Play it forever.
    pub looped: bool,
    /// Gain in dB.
    pub gain_db: f32,
}

/// Builds a player node `node` (output `out`), removed with `owner` when it has one.
pub fn player_node(node: NodeRef, settings: PlayerSettings, owner: Option<NodeRef>) -> BuiltNode {
    let state = Arc::new(PlayerState::default());
    let engine = PlayerNode::new(
        settings.clip,
        settings.looped,
        db_to_gain(settings.gain_db),
        Arc::clone(&state),
    );
    BuiltNode {
        spec: NodeSpec {
            node,
            outputs: vec!["out".into()],
            inputs: vec![],
            owner,
        },
        engine: Box::new(engine),
        service: Arc::new(PlayerService {
            file: settings.file,
            state,
        }),
    }
}

/// The control half of a player: where it is in its clip.
struct PlayerService {
    file: PathBuf,
    state: Arc<PlayerState>,
}

impl NodeService for PlayerService {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "file": self.file.display().to_string(),
            "finished": self.state.finished.load(Ordering::Relaxed),
            "loops": self.state.loops.load(Ordering::Relaxed),
        })
    }

    fn stop(&self) {}
}

/// Builds players from `{"kind": "player", "file": ..., "loop": ..., "gain_db": ...}`.
pub struct PlayerKind;

impl NodeKindBuilder for PlayerKind {
    fn kind(&self) -> NodeKind {
        NodeKind::Player
    }

    fn build(
        &self,
        node: &NodeRef,
        config: &NodeConfig,
        resources: &NodeResources,
    ) -> Result<BuiltNode, NodeError> {
        let NodeConfig::Player {
            file,
            looped,
            gain_db,
        } = config
        else {
            return Err(wrong_kind(NodeKind::Player, config));
        };
        let clip = resources
            .clips
            .clip(ClipSource::Media(Path::new(file)))
            .map_err(|e| NodeError::invalid("file", e))?;
        Ok(player_node(
            node.clone(),
            PlayerSettings {
                clip,
                file: PathBuf::from(file),
                looped: *looped,
                gain_db: *gain_db,
            },
            None,
        ))
    }
}
