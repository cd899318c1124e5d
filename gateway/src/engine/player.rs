//! Players: WAV clips (prompts, hold music) played onto the bus, once or looped.
//!
//! A clip is decoded, mixed down to mono and resampled to 48 kHz once, when it is
//! loaded, then shared (`Arc<[f32]>`) by every player that plays it: a hundred callers on
//! hold cost one copy of the hold music. The node itself only copies samples per block.

use std::path::Path;
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

/// Loads a WAV file (any channel count, 8-32 bit integer or float) as a mono bus clip.
/// Blocking file I/O: call it off the media path (`spawn_blocking` in async code).
pub fn load_clip(path: &Path) -> Result<Clip, ClipError> {
    let display = path.display().to_string();
    let reader = hound::WavReader::open(path).map_err(|source| ClipError::Wav {
        path: display.clone(),
        source,
    })?;
    let spec = reader.spec();
    let rate = SampleRate::new(spec.sample_rate).map_err(|_| ClipError::Rate {
        path: display.clone(),
        hz: spec.sample_rate,
    })?;
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
        let clip = load_clip(&path).unwrap();
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
    fn rejects_a_file_that_is_not_wav() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert!(matches!(load_clip(&path), Err(ClipError::Wav { .. })));
    }
}
