//! Telling linear PCM from G.711 μ-law under kind 0x10 (fact sheet §9.2, §10.9).
//!
//! The channel driver (`Dial(AudioSocket/...)`, ARI `externalMedia`) sends the raw bytes
//! of whatever codec the channel uses under kind 0x10, so a `c(ulaw)` channel's frames
//! look exactly like slin frames of half the duration. Nothing in the header tells them
//! apart; the audio does. Real audio is mostly low-pass: the energy of its first
//! difference is small next to its own energy (a 1 kHz tone at 8 kHz has a ratio of
//! 0.59, white noise 2). Bytes decoded under the wrong hypothesis are close to noise:
//! μ-law codes paired into 16-bit words jump at every zero crossing, and the low bytes of
//! 16-bit samples decoded as μ-law are random. [`CodingDetector`] looks at each frame both
//! ways and decides once several loud frames clearly agree. Until then each frame is
//! decoded the way it looks on its own, and a loud frame that looks like neither is
//! muted rather than let through as noise, for a few frames at most: loud audio that
//! keeps looking like neither (tones above about 1.3 kHz look alike both ways) settles
//! the call on slin, which is what the dialplan app and every `c(slin*)` channel send.
//! Silence decides nothing and decodes as slin. So a μ-law call whose first loud audio
//! is a lone high tone is taken for slin; its route can fix the coding.
//!
//! A-law cannot be told from μ-law this way with confidence; it is chosen by
//! configuration only.

/// What a 0x10 payload carries, as far as the detector can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedCoding {
    /// Signed 16-bit little-endian linear PCM.
    Slin,
    /// G.711 μ-law bytes.
    Ulaw,
}

/// How to decode one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameCoding {
    /// As slin.
    Slin,
    /// As μ-law.
    Ulaw,
    /// Not at all: before the decision, a loud frame that looks like neither is
    /// replaced by silence rather than risk a burst of noise.
    Mute,
}

impl From<DetectedCoding> for FrameCoding {
    fn from(coding: DetectedCoding) -> FrameCoding {
        match coding {
            DetectedCoding::Slin => FrameCoding::Slin,
            DetectedCoding::Ulaw => FrameCoding::Ulaw,
        }
    }
}

/// Frames in a row that must point the same way before the detector decides.
const FRAMES_TO_DECIDE: u8 = 3;
/// A frame only votes when it is at least this loud decoded both ways (RMS, full scale
/// 1.0: -34 dBFS). Silence and idle noise decide nothing, and neither do the quiet
/// frames on which the wrong decoding can pass for audio: quiet slin read as μ-law is a
/// slow square wave between two codes, and quiet μ-law read as slin likewise.
const MIN_RMS: f64 = 0.02;
/// The winning hypothesis must look like audio: difference energy below this share of
/// the signal energy (audio below about 1.3 kHz at 8 kHz; white noise is 2).
const MAX_AUDIO_ROUGHNESS: f64 = 1.0;
/// ...and be at least this many times smoother than the other one.
const MIN_MARGIN: f64 = 2.0;
/// Loud frames that vote neither way (tones above about 1.3 kHz, such as the high DTMF
/// group, look alike both ways) that are muted before the detector gives up and settles
/// on slin: muting is for the first instants of a call, never for its life.
const MAX_MUTED_FRAMES: u8 = 3;

/// Decides, from the first loud frames of a call, whether its 0x10 payloads are slin or
/// μ-law, and says meanwhile how to decode each one. Sans-IO and allocation-free; once
/// decided it costs nothing per frame.
#[derive(Debug, Default, Clone)]
pub struct CodingDetector {
    decided: Option<DetectedCoding>,
    leaning: Option<DetectedCoding>,
    agreeing: u8,
    muted: u8,
    frames_seen: u64,
}

impl CodingDetector {
    /// A detector that has seen nothing yet.
    pub fn new() -> CodingDetector {
        CodingDetector::default()
    }

    /// The decision, once made (it never changes afterwards).
    pub fn decided(&self) -> Option<DetectedCoding> {
        self.decided
    }

    /// Payloads looked at before the decision.
    pub fn frames_seen(&self) -> u64 {
        self.frames_seen
    }

    /// Looks at one 0x10 payload and says how to decode it. Before the decision each
    /// frame is decoded the way it looks on its own: a frame that is quiet as slin
    /// stays slin (harmless either way), one that is loud as slin but quiet as μ-law is
    /// quiet μ-law (loud slin is never quiet read as μ-law), and a loud frame that does
    /// not clearly vote is muted, a few times at most: then the detector settles on
    /// slin.
    pub fn observe(&mut self, payload: &[u8]) -> FrameCoding {
        if let Some(decided) = self.decided {
            return decided.into();
        }
        self.frames_seen += 1;
        let look = look(payload);
        match look.vote {
            Some(v) if Some(v) == self.leaning => self.agreeing += 1,
            Some(v) => {
                self.leaning = Some(v);
                self.agreeing = 1;
            }
            // A quiet or ambiguous frame neither adds nor breaks a streak.
            None => {}
        }
        if self.agreeing >= FRAMES_TO_DECIDE {
            self.decided = self.leaning;
        }
        match look.vote {
            Some(v) => v.into(),
            None if !look.slin_loud => FrameCoding::Slin,
            None if !look.ulaw_loud => FrameCoding::Ulaw,
            None if self.muted < MAX_MUTED_FRAMES => {
                self.muted += 1;
                FrameCoding::Mute
            }
            None => {
                // Loud audio that keeps looking like neither: what the dialplan app and
                // every c(slin*) channel send.
                self.decided = Some(DetectedCoding::Slin);
                FrameCoding::Slin
            }
        }
    }
}

/// What one payload looks like under both hypotheses.
struct Look {
    vote: Option<DetectedCoding>,
    slin_loud: bool,
    ulaw_loud: bool,
}

/// Loudness, AC energy and first-difference energy of a sequence of samples (full
/// scale 1.0). Roughness leaves the mean out, so a constant (slin zeros decode as a
/// constant μ-law -32124) is no "smooth audio".
#[derive(Default)]
struct Roughness {
    sum: f64,
    squares: f64,
    difference: f64,
    previous: Option<f64>,
    count: usize,
}

impl Roughness {
    fn add(&mut self, x: f64) {
        self.sum += x;
        self.squares += x * x;
        if let Some(p) = self.previous {
            let d = x - p;
            self.difference += d * d;
        }
        self.previous = Some(x);
        self.count += 1;
    }

    /// Energy around the mean.
    fn energy(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.squares - self.sum * self.sum / self.count as f64).max(0.0)
        }
    }

    /// Loudness, DC included: a frame that reads as a large constant is no quiet frame.
    fn rms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            (self.squares / self.count as f64).sqrt()
        }
    }

    /// Difference energy over signal energy (about 0 for a slow wave, 2 for white
    /// noise, infinite for a constant).
    fn ratio(&self) -> f64 {
        let energy = self.energy();
        if energy <= f64::EPSILON {
            f64::INFINITY
        } else {
            self.difference / energy
        }
    }

    fn looks_like_audio_against(&self, other: &Roughness) -> bool {
        self.rms() >= MIN_RMS
            && other.rms() >= MIN_RMS
            && self.ratio() < MAX_AUDIO_ROUGHNESS
            && self.ratio() * MIN_MARGIN < other.ratio()
    }
}

/// Which hypothesis this one payload supports, if it clearly supports one.
fn look(payload: &[u8]) -> Look {
    let mut slin = Roughness::default();
    for pair in payload.chunks_exact(2) {
        slin.add(f64::from(i16::from_le_bytes([pair[0], pair[1]])) / 32768.0);
    }
    let mut ulaw = Roughness::default();
    for &code in payload {
        ulaw.add(f64::from(codecs::pcm::ulaw_decode(code)) / 32768.0);
    }
    let vote = if ulaw.looks_like_audio_against(&slin) {
        Some(DetectedCoding::Ulaw)
    } else if slin.looks_like_audio_against(&ulaw) {
        Some(DetectedCoding::Slin)
    } else {
        None
    };
    Look {
        vote,
        slin_loud: slin.rms() >= MIN_RMS,
        ulaw_loud: ulaw.rms() >= MIN_RMS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use codecs::pcm::ulaw_encode;

    /// `n` samples of a tone at `hz` (8 kHz) and `amplitude` (full scale 1.0), from `phase`.
    fn tone(n: usize, hz: f64, amplitude: f64, start: usize) -> Vec<i16> {
        (start..start + n)
            .map(|i| {
                let x = amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / 8000.0).sin();
                (x * 32767.0).round() as i16
            })
            .collect()
    }

    fn slin_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn ulaw_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().map(|&s| ulaw_encode(s)).collect()
    }

    /// Feeds frames until a decision or `frames` frames; returns the decision and the
    /// number of frames it took.
    fn run(frames: usize, frame: impl Fn(usize) -> Vec<u8>) -> (Option<DetectedCoding>, usize) {
        let mut detector = CodingDetector::new();
        for k in 0..frames {
            detector.observe(&frame(k));
            if let Some(decision) = detector.decided() {
                return (Some(decision), k + 1);
            }
        }
        (detector.decided(), frames)
    }

    #[test]
    fn milliwatt_in_ulaw_is_decoded_right_from_the_first_frame_and_decided_on_the_third() {
        // Asterisk's Milliwatt: 1004 Hz at 0 dBm0 (about -3 dBFS).
        let mut detector = CodingDetector::new();
        for k in 0..3 {
            let frame = ulaw_bytes(&tone(160, 1004.0, 0.7, k * 160));
            assert_eq!(detector.observe(&frame), FrameCoding::Ulaw, "frame {k}");
        }
        assert_eq!(detector.decided(), Some(DetectedCoding::Ulaw));
        assert_eq!(detector.frames_seen(), 3);
    }

    #[test]
    fn milliwatt_in_slin_is_detected_as_slin() {
        let (decision, frames) = run(50, |k| slin_bytes(&tone(320, 1004.0, 0.7, k * 320)));
        assert_eq!(decision, Some(DetectedCoding::Slin));
        assert_eq!(frames, 3);
    }

    #[test]
    fn a_voiced_sound_is_detected_both_ways() {
        // 200 Hz with two harmonics, peaking near -14 dBFS.
        let voice = |n: usize, start: usize| -> Vec<i16> {
            let a = tone(n, 200.0, 0.12, start);
            let b = tone(n, 400.0, 0.06, start);
            let c = tone(n, 800.0, 0.03, start);
            a.iter()
                .zip(&b)
                .zip(&c)
                .map(|((x, y), z)| x + y + z)
                .collect()
        };
        assert_eq!(
            run(50, |k| ulaw_bytes(&voice(160, k * 160))).0,
            Some(DetectedCoding::Ulaw)
        );
        assert_eq!(
            run(50, |k| slin_bytes(&voice(160, k * 160))).0,
            Some(DetectedCoding::Slin)
        );
    }

    #[test]
    fn silence_decides_nothing_and_is_never_muted() {
        let mut detector = CodingDetector::new();
        for _ in 0..100 {
            // μ-law digital silence reads as slin -1: quiet both ways.
            assert_eq!(detector.observe(&[0xFF; 160]), FrameCoding::Slin);
            assert_eq!(detector.observe(&[0x00; 320]), FrameCoding::Slin);
        }
        assert_eq!(detector.decided(), None);
        assert_eq!(detector.frames_seen(), 200);
    }

    #[test]
    fn quiet_ulaw_noise_is_decoded_as_ulaw_before_the_decision() {
        // Idle-line noise around μ-law zero: 0xFF/0x7F/0xFE/0x7E read as slin are
        // full-scale square waves, as μ-law a few LSBs.
        let noise: Vec<u8> = (0..160).map(|i| [0xFF, 0x7F, 0xFE, 0x7E][i % 4]).collect();
        let mut detector = CodingDetector::new();
        assert_eq!(detector.observe(&noise), FrameCoding::Ulaw);
        assert_eq!(detector.decided(), None);
    }

    #[test]
    fn quiet_frames_do_not_break_a_streak_and_a_decision_is_final() {
        let mut detector = CodingDetector::new();
        let loud = ulaw_bytes(&tone(160, 1004.0, 0.7, 0));
        detector.observe(&loud);
        detector.observe(&[0xFF; 160]);
        detector.observe(&loud);
        assert_eq!(detector.decided(), None);
        detector.observe(&loud);
        assert_eq!(detector.decided(), Some(DetectedCoding::Ulaw));
        // Later slin-looking frames change nothing.
        let slin = slin_bytes(&tone(320, 1004.0, 0.7, 0));
        for _ in 0..10 {
            assert_eq!(detector.observe(&slin), FrameCoding::Ulaw);
        }
        assert_eq!(detector.decided(), Some(DetectedCoding::Ulaw));
    }

    /// The project's 8 kHz speech recording, as 16-bit samples.
    fn speech() -> Vec<i16> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/speech-8k.wav");
        let mut reader = hound::WavReader::open(path).expect("tests/data/speech-8k.wav");
        assert_eq!(reader.spec().sample_rate, 8000);
        reader
            .samples::<i16>()
            .map(|s| s.expect("sample"))
            .collect()
    }

    #[test]
    fn real_speech_is_detected_both_ways_within_a_second() {
        let speech = speech();
        let frames: Vec<&[i16]> = speech.chunks_exact(160).collect();
        let (decision, n) = run(frames.len(), |k| ulaw_bytes(frames[k]));
        assert_eq!(decision, Some(DetectedCoding::Ulaw));
        assert!(n <= 50, "decided after {n} frames");
        // As slin, 20 ms is 320 bytes.
        let frames: Vec<&[i16]> = speech.chunks_exact(160).collect();
        let (decision, n) = run(frames.len(), |k| slin_bytes(frames[k]));
        assert_eq!(decision, Some(DetectedCoding::Slin));
        assert!(n <= 50, "decided after {n} frames");
    }

    #[test]
    fn every_speech_frame_votes_for_its_own_coding_or_abstains() {
        // No frame of real speech ever votes for the wrong coding, and none is decoded
        // the wrong way before the decision.
        for frame in speech().chunks_exact(160) {
            assert_ne!(
                CodingDetector::new().observe(&ulaw_bytes(frame)),
                FrameCoding::Slin
            );
            assert_ne!(
                CodingDetector::new().observe(&slin_bytes(frame)),
                FrameCoding::Ulaw
            );
            assert_ne!(look(&ulaw_bytes(frame)).vote, Some(DetectedCoding::Slin));
            assert_ne!(look(&slin_bytes(frame)).vote, Some(DetectedCoding::Ulaw));
        }
    }

    #[test]
    fn loud_audio_that_looks_like_neither_is_muted_briefly_then_taken_as_slin() {
        // A 1.6 kHz tone (the high DTMF group) looks alike both ways.
        let mut detector = CodingDetector::new();
        let mut muted = 0;
        for k in 0..50 {
            match detector.observe(&slin_bytes(&tone(160, 1600.0, 0.5, k * 160))) {
                FrameCoding::Mute => muted += 1,
                FrameCoding::Slin => {}
                FrameCoding::Ulaw => panic!("frame {k} decoded as μ-law"),
            }
        }
        assert!(muted <= 3, "{muted} frames muted");
        assert_eq!(detector.decided(), Some(DetectedCoding::Slin));
    }

    #[test]
    fn slin_tones_callers_use_are_never_muted_for_long() {
        for hz in [
            500.0, 800.0, 1000.0, 1004.0, 1200.0, 1336.0, 1477.0, 1633.0, 2000.0,
        ] {
            let mut detector = CodingDetector::new();
            let muted = (0..50)
                .filter(|&k| {
                    detector.observe(&slin_bytes(&tone(160, hz, 0.5, k * 160))) == FrameCoding::Mute
                })
                .count();
            assert!(muted <= 3, "{hz} Hz: {muted} frames muted");
            assert_eq!(detector.decided(), Some(DetectedCoding::Slin), "{hz} Hz");
        }
    }

    #[test]
    fn a_lone_high_ulaw_tone_is_beyond_detection_and_settles_on_slin() {
        // The known limit: 3.2 kHz at 8 kHz is rougher than audio is assumed to be, so
        // a μ-law call whose first loud audio is such a tone is taken as slin (its route
        // can say `coding = "ulaw"`).
        let (decision, frames) = run(50, |k| ulaw_bytes(&tone(160, 3200.0, 0.5, k * 160)));
        assert_eq!((decision, frames), (Some(DetectedCoding::Slin), 4));
    }
}
