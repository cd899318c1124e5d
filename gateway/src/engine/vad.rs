//! Voice activity detection: talk start/stop per caller, off the media path.
//!
//! Each call's uplink taps the 48 kHz bus samples it produces into 10 ms frames
//! ([`VadTap`]) and hands them, without blocking, to one detector thread ([`VadHub`])
//! that runs webrtc-vad on every call. `webrtc_vad::Vad` wraps a C object that may not
//! move between threads, so one thread owns them all; frames travel by value through a
//! bounded channel whose slots are allocated once (no allocation per frame), and a full
//! channel drops the frame and counts it rather than delaying the caller's audio.
//!
//! A caller is "talking" after `start_frames` voiced frames in a row and stops after
//! `stop_frames` unvoiced ones (hysteresis, so a pause between words is not a stop).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

/// Samples in one VAD frame: 10 ms at 48 kHz.
pub const VAD_FRAME: usize = 480;
/// Frames the hub may have queued before taps start dropping (about 4 MiB, allocated
/// once by the bounded channel).
const QUEUE_FRAMES: usize = 4_096;

/// Settings of the detector.
#[derive(Debug, Clone, Copy)]
pub struct VadSettings {
    /// webrtc-vad mode 0 (quality) .. 3 (very aggressive).
    pub mode: u8,
    /// Voiced frames in a row before talk start.
    pub start_frames: u32,
    /// Unvoiced frames in a row before talk stop.
    pub stop_frames: u32,
}

/// Who to tell when a call starts or stops talking: `(call key, talking)`.
pub type TalkCallback = Arc<dyn Fn(u64, bool) + Send + Sync>;

// Frames travel by value into the channel's preallocated slots; boxing the large
// variant would allocate once per 10 ms frame.
#[allow(clippy::large_enum_variant)]
enum VadMessage {
    Open(u64),
    Frame(u64, [i16; VAD_FRAME]),
    Close(u64),
}

/// The detector thread.
pub struct VadHub {
    sender: SyncSender<VadMessage>,
    dropped: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
    next_key: AtomicU64,
}

impl VadHub {
    /// Starts the thread; `on_change` is called from it on every talk start/stop.
    pub fn start(settings: VadSettings, on_change: TalkCallback) -> std::io::Result<VadHub> {
        let (sender, receiver) = sync_channel(QUEUE_FRAMES);
        let thread = std::thread::Builder::new()
            .name("telepatch-vad".into())
            .spawn(move || run(receiver, settings, on_change))?;
        Ok(VadHub {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            thread: Some(thread),
            next_key: AtomicU64::new(1),
        })
    }

    /// Registers a call; returns the tap its uplink feeds.
    pub fn open(&self) -> VadTap {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let _ = self.sender.try_send(VadMessage::Open(key));
        VadTap {
            key,
            sender: self.sender.clone(),
            dropped: Arc::clone(&self.dropped),
            frame: [0; VAD_FRAME],
            filled: 0,
        }
    }

    /// Frames dropped because the detector could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for VadHub {
    fn drop(&mut self) {
        // The thread ends when every sender (the hub's and the taps') is gone; it is
        // detached rather than joined so a lingering tap cannot hang shutdown.
        drop(self.thread.take());
    }
}

/// A call's feed into the hub, owned by its uplink.
pub struct VadTap {
    key: u64,
    sender: SyncSender<VadMessage>,
    dropped: Arc<AtomicU64>,
    frame: [i16; VAD_FRAME],
    filled: usize,
}

impl VadTap {
    /// The call's key (what [`TalkCallback`] receives).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Adds bus samples; sends every complete 10 ms frame.
    pub fn feed(&mut self, samples: &[f32]) {
        for &sample in samples {
            self.frame[self.filled] = (sample.clamp(-1.0, 1.0) * 32767.0) as i16;
            self.filled += 1;
            if self.filled == VAD_FRAME {
                self.filled = 0;
                // The frame is copied into the channel's preallocated slot.
                if let Err(TrySendError::Full(_)) = self
                    .sender
                    .try_send(VadMessage::Frame(self.key, self.frame))
                {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

impl Drop for VadTap {
    fn drop(&mut self) {
        // Blocking send is fine here: it runs when the call ends, not per frame.
        let _ = self.sender.send(VadMessage::Close(self.key));
    }
}

struct Detector {
    vad: webrtc_vad::Vad,
    voiced_run: u32,
    unvoiced_run: u32,
    talking: bool,
}

fn mode(value: u8) -> webrtc_vad::VadMode {
    match value {
        0 => webrtc_vad::VadMode::Quality,
        1 => webrtc_vad::VadMode::LowBitrate,
        2 => webrtc_vad::VadMode::Aggressive,
        _ => webrtc_vad::VadMode::VeryAggressive,
    }
}

fn run(receiver: Receiver<VadMessage>, settings: VadSettings, on_change: TalkCallback) {
    let mut detectors: HashMap<u64, Detector> = HashMap::new();
    for message in receiver {
        match message {
            VadMessage::Open(key) => {
                detectors.insert(
                    key,
                    Detector {
                        vad: webrtc_vad::Vad::new_with_rate_and_mode(
                            webrtc_vad::SampleRate::Rate48kHz,
                            mode(settings.mode),
                        ),
                        voiced_run: 0,
                        unvoiced_run: 0,
                        talking: false,
                    },
                );
            }
            VadMessage::Frame(key, frame) => {
                let Some(detector) = detectors.get_mut(&key) else {
                    continue;
                };
                let voiced = detector.vad.is_voice_segment(&frame[..]).unwrap_or(false);
                if voiced {
                    detector.voiced_run += 1;
                    detector.unvoiced_run = 0;
                    if !detector.talking && detector.voiced_run >= settings.start_frames {
                        detector.talking = true;
                        on_change(key, true);
                    }
                } else {
                    detector.unvoiced_run += 1;
                    detector.voiced_run = 0;
                    if detector.talking && detector.unvoiced_run >= settings.stop_frames {
                        detector.talking = false;
                        on_change(key, false);
                    }
                }
            }
            VadMessage::Close(key) => {
                if detectors.remove(&key).is_some_and(|d| d.talking) {
                    on_change(key, false);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn speech_48k() -> Vec<f32> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/speech-16k.wav");
        let clip = crate::engine::player::load_clip(&path).unwrap();
        clip.to_vec()
    }

    #[test]
    fn speech_and_silence_give_talk_start_then_stop() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&changes);
        let hub = VadHub::start(
            VadSettings {
                mode: 2,
                start_frames: 3,
                stop_frames: 30,
            },
            Arc::new(move |key, talking| sink.lock().unwrap().push((key, talking))),
        )
        .unwrap();
        let mut tap = hub.open();
        let key = tap.key();
        // One second of silence, two of speech, one of silence.
        tap.feed(&vec![0.0; 48_000]);
        let speech = speech_48k();
        tap.feed(&speech[..96_000.min(speech.len())]);
        tap.feed(&vec![0.0; 48_000]);
        drop(tap);
        drop(hub);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let changes = changes.lock().unwrap().clone();
        assert!(changes.len() >= 2, "{changes:?}");
        assert_eq!(changes.first(), Some(&(key, true)));
        assert_eq!(changes.last(), Some(&(key, false)));
    }

    #[test]
    fn silence_alone_never_talks() {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&changes);
        let hub = VadHub::start(
            VadSettings {
                mode: 2,
                start_frames: 3,
                stop_frames: 30,
            },
            Arc::new(move |key, talking| sink.lock().unwrap().push((key, talking))),
        )
        .unwrap();
        let mut tap = hub.open();
        tap.feed(&vec![0.0; 96_000]);
        drop(tap);
        drop(hub);
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(changes.lock().unwrap().is_empty());
    }
}
