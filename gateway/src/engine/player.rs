//! Players: WAV clips (prompts, hold music) played onto the bus, once or looped.
//!
//! A clip is decoded, mixed down to mono and resampled to 48 kHz once, when it is
//! loaded, then shared (`Arc<[f32]>`) by every player that plays it: a hundred callers on
//! hold cost one copy of the hold music. The node itself only copies samples per block.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use codecs::rate::SampleRate;
use codecs::resample::resample_offline;

use super::{BUS_RATE, Node};

/// Why a clip could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClipError {
    /// The file could not be opened or is not a WAV file hound can read.
    #[error("cannot read WAV file {path}: {source}")]
    Wav {
        /// The file.
        path: String,
        /// What hound said.
        #[source]
        source: hound::Error,
    },
    /// The WAV's sample rate is outside 8-192 kHz.
    #[error("WAV file {path} has an unsupported sample rate of {hz} Hz")]
    Rate {
        /// The file.
        path: String,
        /// Its rate.
        hz: u32,
    },
    /// The file holds no audio.
    #[error("WAV file {path} holds no samples")]
    Empty {
        /// The file.
        path: String,
    },
    /// The clip would not fit in the clip cache.
    #[error(
        "WAV file {path} decodes to {needed_mb} MiB at 48 kHz, more than the {free_mb} MiB left of the clip cache (engine.clip_cache_mb)"
    )]
    TooLarge {
        /// The file.
        path: String,
        /// What it needs, in MiB.
        needed_mb: usize,
        /// What is left, in MiB.
        free_mb: usize,
    },
    /// The path is not a plain relative path inside the media directory.
    #[error("{path} must be a relative path inside the media directory (media.dir)")]
    OutsideMedia {
        /// The path asked for.
        path: String,
    },
    /// The file could not be opened inside the media directory.
    #[error("cannot open {path} inside the media directory: {source}")]
    Open {
        /// The path asked for.
        path: String,
        /// What failed (`ELOOP` for a symbolic link on the way).
        #[source]
        source: std::io::Error,
    },
    /// The path names something other than a regular file (a FIFO, a device, a
    /// directory), which could block or never end.
    #[error("{path} inside the media directory is not a regular file")]
    NotRegular {
        /// The path asked for.
        path: String,
    },
    /// Resampling failed.
    #[error("cannot resample {path}: {message}")]
    Resample {
        /// The file.
        path: String,
        /// The resampler's message.
        message: String,
    },
}

/// A decoded clip at the bus rate.
pub type Clip = Arc<[f32]>;

/// Bytes of one decoded bus sample.
const SAMPLE_BYTES: usize = std::mem::size_of::<f32>();
const MIB: usize = 1024 * 1024;

/// Opens `relative` inside `dir` for reading, the way every file named by a route or
/// through the API is opened: nothing outside `dir`, no symbolic link anywhere on the
/// way, and only a regular file (a FIFO or a device could block the caller or never
/// end). The file type is checked on a handle that reads nothing, so nothing blocks
/// before the check; reading the file afterwards may wait like any read of the disk.
pub fn open_beneath(dir: &Path, relative: &Path) -> Result<File, ClipError> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    use std::os::fd::AsRawFd;

    let display = relative.display().to_string();
    let contained = !relative.as_os_str().is_empty()
        && relative.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
    if !contained {
        return Err(ClipError::OutsideMedia { path: display });
    }
    let open_err = |source: rustix::io::Errno| ClipError::Open {
        path: display.clone(),
        source: source.into(),
    };
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_err)?;
    let located = rustix::fs::openat2(
        &dir_fd,
        relative,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(open_err)?;
    let stat = rustix::fs::fstat(&located).map_err(open_err)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(ClipError::NotRegular { path: display });
    }
    // Reopening the located inode through /proc reads exactly the file checked above.
    let reopened = rustix::fs::open(
        PathBuf::from(format!("/proc/self/fd/{}", located.as_raw_fd())),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_err)?;
    Ok(File::from(reopened))
}

/// Loads a WAV file (any channel count, 8-32 bit integer or float) as a mono bus clip,
/// refusing (from its header, before decoding) one that would take more than
/// `max_bytes` decoded. Blocking file I/O: call it off the media path.
pub fn load_clip(path: &Path, max_bytes: usize) -> Result<Clip, ClipError> {
    let display = path.display().to_string();
    let file = File::open(path).map_err(|source| ClipError::Wav {
        path: display.clone(),
        source: hound::Error::IoError(source),
    })?;
    load_clip_from(file, &display, max_bytes)
}

/// [`load_clip`] of an open file, named `display` in errors.
pub fn load_clip_from(file: File, display: &str, max_bytes: usize) -> Result<Clip, ClipError> {
    let display = display.to_owned();
    let reader =
        hound::WavReader::new(std::io::BufReader::new(file)).map_err(|source| ClipError::Wav {
            path: display.clone(),
            source,
        })?;
    let spec = reader.spec();
    let rate = SampleRate::new(spec.sample_rate).map_err(|_| ClipError::Rate {
        path: display.clone(),
        hz: spec.sample_rate,
    })?;
    let bus_bytes = (u64::from(reader.duration()) * u64::from(BUS_RATE.hz())
        / u64::from(rate.hz()))
    .saturating_mul(SAMPLE_BYTES as u64);
    if bus_bytes > max_bytes as u64 {
        return Err(ClipError::TooLarge {
            path: display,
            needed_mb: usize::try_from(bus_bytes)
                .unwrap_or(usize::MAX)
                .div_ceil(MIB),
            free_mb: max_bytes / MIB,
        });
    }
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(|source| ClipError::Wav {
                path: display.clone(),
                source,
            })?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(|source| ClipError::Wav {
                    path: display.clone(),
                    source,
                })?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    if mono.is_empty() {
        return Err(ClipError::Empty { path: display });
    }
    let bus = if rate == BUS_RATE {
        mono
    } else {
        resample_offline(&mono, rate, BUS_RATE).map_err(|e| ClipError::Resample {
            path: display,
            message: e.to_string(),
        })?
    };
    Ok(Arc::from(bus))
}

/// Decoded clips shared by players, bounded in memory. A clip is kept while a player
/// holds it; clips nobody holds any more are dropped whenever the cache is used.
#[derive(Debug)]
pub struct ClipCache {
    clips: std::collections::HashMap<std::path::PathBuf, Clip>,
    limit_bytes: usize,
}

impl ClipCache {
    /// An empty cache holding at most `limit_bytes` of decoded audio.
    pub fn new(limit_bytes: usize) -> ClipCache {
        ClipCache {
            clips: std::collections::HashMap::new(),
            limit_bytes,
        }
    }

    /// The cached clip of `path`, if any (after dropping clips nobody plays).
    pub fn get(&mut self, path: &Path) -> Option<Clip> {
        self.evict_unused();
        self.clips.get(path).cloned()
    }

    /// Bytes still free for a new clip.
    pub fn free_bytes(&mut self) -> usize {
        self.evict_unused();
        self.limit_bytes.saturating_sub(self.used_bytes())
    }

    /// Keeps `clip` for `path`, unless it no longer fits (another clip was cached
    /// meanwhile): then it is refused.
    pub fn insert(&mut self, path: &Path, clip: Clip) -> Result<Clip, ClipError> {
        self.evict_unused();
        if let Some(cached) = self.clips.get(path) {
            return Ok(Arc::clone(cached));
        }
        let needed = clip.len() * SAMPLE_BYTES;
        let free = self.limit_bytes.saturating_sub(self.used_bytes());
        if needed > free {
            return Err(ClipError::TooLarge {
                path: path.display().to_string(),
                needed_mb: needed.div_ceil(MIB),
                free_mb: free / MIB,
            });
        }
        self.clips.insert(path.to_path_buf(), Arc::clone(&clip));
        Ok(clip)
    }

    /// Bytes of decoded audio held now.
    pub fn used_bytes(&self) -> usize {
        self.clips.values().map(|c| c.len() * SAMPLE_BYTES).sum()
    }

    /// Clips held now.
    pub fn len(&self) -> usize {
        self.clips.len()
    }

    /// Whether no clip is held.
    pub fn is_empty(&self) -> bool {
        self.clips.is_empty()
    }

    fn evict_unused(&mut self) {
        // The cache's own reference is the only one left: no player plays it.
        self.clips.retain(|_, clip| Arc::strong_count(clip) > 1);
    }
}

/// Progress of a player, readable by the control plane.
#[derive(Debug, Default)]
pub struct PlayerState {
    /// Set when a non-looping player reached the end of its clip.
    pub finished: AtomicBool,
    /// Times a looping player wrapped around.
    pub loops: AtomicU64,
}

/// A node with one output, `out`, playing a clip.
pub struct PlayerNode {
    clip: Clip,
    position: usize,
    looped: bool,
    gain: f32,
    state: Arc<PlayerState>,
}

impl PlayerNode {
    /// A player of `clip` at linear `gain`, from the start.
    pub fn new(clip: Clip, looped: bool, gain: f32, state: Arc<PlayerState>) -> PlayerNode {
        PlayerNode {
            clip,
            position: 0,
            looped,
            gain,
            state,
        }
    }
}

impl Node for PlayerNode {
    fn produce(&mut self, outputs: &mut [f32], block: usize) {
        let len = block.min(outputs.len());
        let out = &mut outputs[..len];
        let mut written = 0;
        while written < out.len() {
            if self.position >= self.clip.len() {
                if self.looped && !self.clip.is_empty() {
                    self.position = 0;
                    self.state.loops.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.state.finished.store(true, Ordering::Relaxed);
                    out[written..].fill(0.0);
                    return;
                }
            }
            let n = (out.len() - written).min(self.clip.len() - self.position);
            for (dst, src) in out[written..written + n]
                .iter_mut()
                .zip(&self.clip[self.position..self.position + n])
            {
                *dst = src * self.gain;
            }
            written += n;
            self.position += n;
        }
    }

    fn consume(&mut self, _inputs: &[f32], _block: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(n: usize) -> Clip {
        (0..n).map(|i| i as f32).collect::<Vec<_>>().into()
    }

    #[test]
    fn plays_once_then_silence_and_reports_finished() {
        let state = Arc::new(PlayerState::default());
        let mut player = PlayerNode::new(clip(6), false, 1.0, Arc::clone(&state));
        let mut out = [9.0f32; 4];
        player.produce(&mut out, 4);
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0]);
        assert!(!state.finished.load(Ordering::Relaxed));
        player.produce(&mut out, 4);
        assert_eq!(out, [4.0, 5.0, 0.0, 0.0]);
        assert!(state.finished.load(Ordering::Relaxed));
    }

    #[test]
    fn loops_seamlessly_with_gain() {
        let state = Arc::new(PlayerState::default());
        let mut player = PlayerNode::new(clip(3), true, 0.5, Arc::clone(&state));
        let mut out = [0.0f32; 8];
        player.produce(&mut out, 8);
        assert_eq!(out, [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 0.0, 0.5]);
        assert_eq!(state.loops.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn loads_and_resamples_the_8k_prompt_to_the_bus() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/prompt-8k.wav");
        let reader = hound::WavReader::open(&path).unwrap();
        let source_len = reader.len() as usize;
        let clip = load_clip(&path, usize::MAX).unwrap();
        let expected = source_len * 6;
        assert!(
            clip.len().abs_diff(expected) <= 12,
            "{} vs {expected}",
            clip.len()
        );
        assert!(
            clip.iter().any(|s| s.abs() > 0.05),
            "prompt should not be silent"
        );
    }

    #[test]
    fn a_clip_too_large_for_the_cache_is_refused_from_its_header() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/prompt-8k.wav");
        let frames = hound::WavReader::open(&path).unwrap().duration() as usize;
        let needed = frames * 6 * SAMPLE_BYTES;
        assert!(matches!(
            load_clip(&path, needed - 1024),
            Err(ClipError::TooLarge { .. })
        ));
        assert!(load_clip(&path, needed + 1024).is_ok());
    }

    #[test]
    fn the_cache_keeps_clips_while_players_hold_them_and_never_exceeds_its_limit() {
        let a = Path::new("/media/a.wav");
        let b = Path::new("/media/b.wav");
        let mut cache = ClipCache::new(1_000 * SAMPLE_BYTES);
        let clip_a = cache.insert(a, clip(600)).unwrap();
        assert_eq!(cache.used_bytes(), 600 * SAMPLE_BYTES);
        // A player holds clip A: B does not fit beside it.
        assert!(matches!(
            cache.insert(b, clip(600)),
            Err(ClipError::TooLarge { .. })
        ));
        assert!(Arc::ptr_eq(&cache.get(a).unwrap(), &clip_a));
        // The player is gone: A is dropped, and B fits.
        drop(clip_a);
        assert_eq!(cache.free_bytes(), 1_000 * SAMPLE_BYTES);
        assert!(cache.is_empty());
        let clip_b = cache.insert(b, clip(600)).unwrap();
        assert_eq!((cache.len(), cache.used_bytes()), (1, 600 * SAMPLE_BYTES));
        drop(clip_b);
        assert!(cache.get(b).is_none());
    }

    #[test]
    fn rejects_a_file_that_is_not_wav() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(matches!(
            load_clip(&path, usize::MAX),
            Err(ClipError::Wav { .. })
        ));
    }
}
