//! Voice activity detection: talk start/stop per caller, off the media path.
//!
//! Each call's uplink taps its audio into 10 ms frames ([`VadTap`]): the caller's own
//! samples when webrtc-vad takes that rate (8, 16, 32 or 48 kHz; it decimates everything
//! to 8 kHz inside, so 8 kHz callers cost a sixth of what their 48 kHz bus copy would),
//! the 48 kHz bus samples otherwise. It hands them, without blocking, to one detector
//! thread ([`VadHub`]) that runs webrtc-vad on every call. `webrtc_vad::Vad` wraps a C object that may not
//! move between threads, so one thread owns them all; frames travel by value through a
//! bounded channel whose slots are allocated once (no allocation per frame), and a full
//! channel drops the frame and counts it rather than delaying the caller's audio. Calls
//! opening and closing go through a separate unbounded channel, so neither is lost nor
//! waits when the frame queue is full (a session ending must never block its runtime).
//!
//! A caller is "talking" after `start_frames` voiced frames in a row and stops after
//! `stop_frames` unvoiced ones (hysteresis, so a pause between words is not a stop).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{
    Receiver, Sender, SyncSender, TryRecvError, TrySendError, channel, sync_channel,
};
use std::time::Duration;

use crate::threads::{OwnedThread, Priority, StopSignal};

/// Largest VAD frame: 10 ms at 48 kHz.
pub const VAD_FRAME: usize = 480;
/// Frames the hub may have queued before taps start dropping (about 4 MiB, allocated
/// once by the bounded channel).
const QUEUE_FRAMES: usize = 4_096;
/// How long the detector sleeps when its queue is empty.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

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
    /// Call key, sample rate, and 10 ms of samples at that rate (`rate / 100` used).
    Frame(u64, u32, [i16; VAD_FRAME]),
}

/// Whether webrtc-vad takes audio at `hz` directly.
pub fn detects_at(hz: u32) -> bool {
    matches!(hz, 8_000 | 16_000 | 32_000 | 48_000)
}

fn vad_rate(hz: u32) -> webrtc_vad::SampleRate {
    match hz {
        8_000 => webrtc_vad::SampleRate::Rate8kHz,
        16_000 => webrtc_vad::SampleRate::Rate16kHz,
        32_000 => webrtc_vad::SampleRate::Rate32kHz,
        _ => webrtc_vad::SampleRate::Rate48kHz,
    }
}

/// A call starting or ending (sent once per call, never dropped).
enum Lifecycle {
    Open(u64),
    /// The call's key and how many frames it queued: the detector goes once it has
    /// heard them all, so frames still queued when a call ends are not lost.
    Close(u64, u64),
}

/// The detector thread.
pub struct VadHub {
    sender: SyncSender<VadMessage>,
    lifecycle: Sender<Lifecycle>,
    dropped: Arc<AtomicU64>,
    thread: OwnedThread,
    next_key: AtomicU64,
}

impl VadHub {
    /// Starts the thread; `on_change` is called from it on every talk start/stop.
    pub fn start(settings: VadSettings, on_change: TalkCallback) -> std::io::Result<VadHub> {
        let (sender, receiver) = sync_channel(QUEUE_FRAMES);
        let (lifecycle, lifecycle_receiver) = channel();
        let thread = OwnedThread::spawn("telepatch-vad", Priority::Normal, move |stop| {
            run(receiver, lifecycle_receiver, settings, on_change, stop)
        })?;
        Ok(VadHub {
            sender,
            lifecycle,
            dropped: Arc::new(AtomicU64::new(0)),
            thread,
            next_key: AtomicU64::new(1),
        })
    }

    /// Registers a call; returns the tap its uplink feeds.
    pub fn open(&self) -> VadTap {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let _ = self.lifecycle.send(Lifecycle::Open(key));
        VadTap {
            key,
            sender: self.sender.clone(),
            lifecycle: self.lifecycle.clone(),
            dropped: Arc::clone(&self.dropped),
            frame: [0; VAD_FRAME],
            filled: 0,
            rate: 48_000,
            frames_queued: 0,
        }
    }

    /// Frames dropped because the detector could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops the detector thread and waits for it. It polls, so a tap still alive
    /// cannot hold it up; talk changes after this are not reported. Dropping the hub
    /// does the same.
    pub fn stop(&self) {
        let _ = self.thread.stop();
    }
}

/// A call's feed into the hub, owned by its uplink.
pub struct VadTap {
    key: u64,
    sender: SyncSender<VadMessage>,
    lifecycle: Sender<Lifecycle>,
    dropped: Arc<AtomicU64>,
    frame: [i16; VAD_FRAME],
    filled: usize,
    /// Rate of the samples in `frame`.
    rate: u32,
    frames_queued: u64,
}

impl VadTap {
    /// The call's key (what [`TalkCallback`] receives).
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Adds samples at `hz` (one of the rates [`detects_at`] accepts); sends every
    /// complete 10 ms frame. A change of rate starts a new frame.
    pub fn feed(&mut self, samples: &[f32], hz: u32) {
        if !detects_at(hz) {
            return;
        }
        if hz != self.rate {
            self.rate = hz;
            self.filled = 0;
        }
        let frame_len = hz as usize / 100;
        for &sample in samples {
            self.frame[self.filled] = (sample.clamp(-1.0, 1.0) * 32767.0) as i16;
            self.filled += 1;
            if self.filled == frame_len {
                self.filled = 0;
                // The frame is copied into the channel's preallocated slot.
                match self
                    .sender
                    .try_send(VadMessage::Frame(self.key, hz, self.frame))
                {
                    Ok(()) => self.frames_queued += 1,
                    Err(TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(TrySendError::Disconnected(_)) => {}
                }
            }
        }
    }
}

impl Drop for VadTap {
    fn drop(&mut self) {
        // Unbounded, so this never waits for the detector thread (it runs on the call's
        // async runtime when the session ends).
        let _ = self
            .lifecycle
            .send(Lifecycle::Close(self.key, self.frames_queued));
    }
}

struct Detector {
    /// Built at the first frame, rebuilt when the call's rate changes.
    vad: Option<(u32, webrtc_vad::Vad)>,
    voiced_run: u32,
    unvoiced_run: u32,
    talking: bool,
    frames_heard: u64,
    /// Set when the call has ended: the number of frames it queued in all.
    close_after: Option<u64>,
}

fn mode(value: u8) -> webrtc_vad::VadMode {
    match value {
        0 => webrtc_vad::VadMode::Quality,
        1 => webrtc_vad::VadMode::LowBitrate,
        2 => webrtc_vad::VadMode::Aggressive,
        _ => webrtc_vad::VadMode::VeryAggressive,
    }
}

fn run(
    receiver: Receiver<VadMessage>,
    lifecycle: Receiver<Lifecycle>,
    settings: VadSettings,
    on_change: TalkCallback,
    stop: StopSignal,
) {
    let mut detectors: HashMap<u64, Detector> = HashMap::new();
    while !stop.is_stopped() {
        // The thread polls rather than blocks: a receiver parked in `recv` makes every
        // tap's send a futex wake-up (100 per second per call, on the sessions' runtime),
        // while a sleeping poller costs the taps nothing. 10 ms is one frame, far below
        // the talk hysteresis.
        let message = receiver.try_recv();
        if matches!(message, Err(TryRecvError::Empty)) {
            std::thread::sleep(POLL_INTERVAL);
        }
        // Opens and closes are applied before the frames that follow them; a frame of a
        // call not open (yet, or any more) is skipped.
        while let Ok(change) = lifecycle.try_recv() {
            match change {
                Lifecycle::Open(key) => {
                    detectors.insert(
                        key,
                        Detector {
                            vad: None,
                            voiced_run: 0,
                            unvoiced_run: 0,
                            talking: false,
                            frames_heard: 0,
                            close_after: None,
                        },
                    );
                }
                Lifecycle::Close(key, frames_queued) => {
                    if let Some(detector) = detectors.get_mut(&key) {
                        detector.close_after = Some(frames_queued);
                        close_if_done(&mut detectors, key, &on_change);
                    }
                }
            }
        }
        let VadMessage::Frame(key, hz, frame) = match message {
            Ok(message) => message,
            Err(TryRecvError::Empty) => continue,
            Err(TryRecvError::Disconnected) => return,
        };
        let Some(detector) = detectors.get_mut(&key) else {
            continue;
        };
        if detector.vad.as_ref().is_none_or(|(rate, _)| *rate != hz) {
            let vad = webrtc_vad::Vad::new_with_rate_and_mode(vad_rate(hz), mode(settings.mode));
            detector.vad = Some((hz, vad));
        }
        let voiced = detector.vad.as_mut().is_some_and(|(_, vad)| {
            vad.is_voice_segment(&frame[..hz as usize / 100])
                .unwrap_or(false)
        });
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
        detector.frames_heard += 1;
        close_if_done(&mut detectors, key, &on_change);
    }
}

/// Removes an ended call's detector once it has heard every frame the call queued,
/// reporting a talk stop if the call was talking.
fn close_if_done(detectors: &mut HashMap<u64, Detector>, key: u64, on_change: &TalkCallback) {
    let done = detectors
        .get(&key)
        .is_some_and(|d| d.close_after.is_some_and(|n| d.frames_heard >= n));
    if done && detectors.remove(&key).is_some_and(|d| d.talking) {
        on_change(key, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn speech_48k() -> Vec<f32> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/speech-16k.wav");
        let clip = crate::engine::player::load_clip(&path, usize::MAX).unwrap();
        clip.to_vec()
    }

    /// The speech clip at `hz` (resampled offline from the 48 kHz bus copy).
    fn speech_at(hz: u32) -> Vec<f32> {
        let speech = speech_48k();
        if hz == 48_000 {
            return speech;
        }
        let to = codecs::rate::SampleRate::new(hz).unwrap();
        codecs::resample::resample_offline(&speech, codecs::rate::SampleRate::HZ_48000, to).unwrap()
    }

    /// One second of silence, two of speech, one of silence at `hz`: the talk changes.
    fn talk_changes_at(hz: u32) -> (u64, Vec<(u64, bool)>) {
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
        let second = hz as usize;
        tap.feed(&vec![0.0; second], hz);
        let speech = speech_at(hz);
        tap.feed(&speech[..(2 * second).min(speech.len())], hz);
        tap.feed(&vec![0.0; second], hz);
        drop(tap);
        // The detector works through the queue at its own pace; wait for the stop (the
        // hub stays: dropping it stops the detector).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while changes.lock().unwrap().last() != Some(&(key, false))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(hub);
        let changes = changes.lock().unwrap().clone();
        (key, changes)
    }

    #[test]
    fn speech_and_silence_give_talk_start_then_stop() {
        for hz in [8_000, 16_000, 48_000] {
            let (key, changes) = talk_changes_at(hz);
            assert!(changes.len() >= 2, "{hz} Hz: {changes:?}");
            assert_eq!(changes.first(), Some(&(key, true)), "{hz} Hz");
            assert_eq!(changes.last(), Some(&(key, false)), "{hz} Hz");
        }
    }

    #[test]
    fn only_rates_webrtc_vad_takes_are_detected_natively() {
        assert!([8_000, 16_000, 32_000, 48_000].into_iter().all(detects_at));
        assert!(
            ![12_000, 24_000, 44_100, 96_000, 192_000]
                .into_iter()
                .any(detects_at)
        );
        // A tap fed at a rate the detector cannot take sends nothing at all.
        let hub = VadHub::start(
            VadSettings {
                mode: 2,
                start_frames: 3,
                stop_frames: 30,
            },
            Arc::new(|_, _| {}),
        )
        .unwrap();
        let mut tap = hub.open();
        tap.feed(&[0.1; 24_000], 24_000);
        assert_eq!(tap.frames_queued, 0);
        tap.feed(&[0.1; 800], 8_000);
        assert_eq!(tap.frames_queued, 10);
    }

    #[test]
    fn a_full_frame_queue_neither_blocks_a_closing_call_nor_loses_an_opening_one() {
        // The detector thread is held inside the callback of the first talk start, so
        // nothing drains the frame queue while it fills.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<(u64, bool)>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let hub = VadHub::start(
            VadSettings {
                mode: 2,
                start_frames: 3,
                stop_frames: 30,
            },
            Arc::new(move |key, talking| {
                let _ = entered_tx.send((key, talking));
                let _ = release_rx.lock().unwrap().recv();
            }),
        )
        .unwrap();
        let speech = speech_48k();
        let mut first = hub.open();
        first.feed(&speech[..96_000.min(speech.len())], 48_000);
        let (key, talking) = entered_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("talk start of the first call");
        assert_eq!((key, talking), (first.key(), true));
        // Fill the queue well beyond its capacity: the excess is dropped and counted.
        for _ in 0..(QUEUE_FRAMES / 100 + 2) {
            first.feed(&speech[..48_000.min(speech.len())], 48_000);
        }
        assert!(hub.dropped() > 0, "the queue never filled");
        // A call opening now and the first call closing must not wait for the thread.
        let second = hub.open();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(first);
            let _ = done_tx.send(());
        });
        done_rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .expect("closing a call blocked on the full frame queue");
        // Let the thread go; the second call's detector exists and hears its speech.
        let mut second = second;
        let second_key = second.key();
        for _ in 0..1000 {
            let _ = release_tx.send(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
        while entered_rx.try_recv().is_ok() {}
        second.feed(&speech[..96_000.min(speech.len())], 48_000);
        let mut heard = false;
        while let Ok((key, talking)) = entered_rx.recv_timeout(std::time::Duration::from_secs(5)) {
            let _ = release_tx.send(());
            if key == second_key && talking {
                heard = true;
                break;
            }
        }
        assert!(
            heard,
            "the call opened while the queue was full has no detector"
        );
        // Dropping the hub joins its thread: let the callback go first.
        drop(release_tx);
        drop(hub);
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
        tap.feed(&vec![0.0; 96_000], 48_000);
        drop(tap);
        // Time to hear it all before the hub (and with it the detector) stops.
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(hub);
        assert!(changes.lock().unwrap().is_empty());
    }
}
