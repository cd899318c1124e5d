//! A client that behaves like Asterisk on an AudioSocket connection (audiosocket.md,
//! sections cited as §n), for end-to-end tests, the `fake_asterisk` example and the
//! load generator.
//!
//! One [`FakeCall`] is one AudioSocket session as Asterisk runs it: connect with
//! TCP_NODELAY (§1), send the ID first (§4), then stream audio frames paced in real
//! time from the monotonic clock with absolute deadlines (§5), DTMF digits at given
//! offsets (§6), and end with a bare TCP close (§8). Like Asterisk it **always keeps
//! reading** (§7): it records every audio frame the gateway sends with its arrival
//! time, notes a `00 00 00` hangup, and treats anything Asterisk would reject (kinds
//! `0x01`/`0x02`/`0x03`/`0xFF`/unknown, empty audio, a payload more than ~5 ms behind
//! its header) as a protocol violation, after which it closes, as Asterisk does.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), sip_glue::fake_asterisk::FakeCallError> {
//! use sip_glue::audiosocket::AudioKind;
//! use sip_glue::fake_asterisk::{FakeCall, Source};
//! use std::time::Duration;
//!
//! let report = FakeCall::new(addr, uuid::Uuid::new_v4())
//!     .source(Source::tone(1000.0, -6.0))
//!     .kind(AudioKind::Slin8)
//!     .duration(Duration::from_secs(3))
//!     .run()
//!     .await?;
//! assert!(report.violations.is_empty());
//! # Ok(()) }
//! ```
//!
//! Not emulated: the application mode's 2 s inactivity timeout (§7) and the release
//! differences of §12 (this behaves like 20.20 / 22.10 / 23.4).

use crate::audiosocket::{
    AudioKind, ClientCodec, CodecError, DtmfDigit, FrameError, HEADER_LEN, KIND_DTMF, Limits,
    Message, check, frame_len,
};
use bytes::BytesMut;
use codecs::pcm;
use codecs::rate::SampleRate;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use uuid::Uuid;

/// How long Asterisk waits for a TCP connect to one address (§1).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long Asterisk waits for the rest of a payload after its header (§7).
pub const PAYLOAD_WAIT: Duration = Duration::from_millis(5);
/// Reads per readiness wake-up before yielding back to the pacing timer.
const READS_PER_WAKE: usize = 16;

/// What the fake caller says.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Source {
    /// A sine tone.
    Tone {
        /// Frequency in hertz.
        hz: f64,
        /// Peak level in dBFS (0 dBFS = full-scale sine).
        dbfs: f64,
    },
    /// Digital silence: zero samples, every frame (like a softmix bridge, §5).
    Silence,
    /// No audio at all: only the ID and DTMF (an idle two-party bridge, §5).
    Nothing,
    /// A mono WAV file whose rate must equal the kind's rate (8 kHz for μ-law/A-law);
    /// played once, then nothing.
    Wav(PathBuf),
    /// Given samples (full scale 1.0) at the kind's rate; played once, then nothing.
    Samples(std::sync::Arc<[f32]>),
}

impl Source {
    /// A sine tone of `hz` hertz at `dbfs` dBFS peak.
    pub fn tone(hz: f64, dbfs: f64) -> Source {
        Source::Tone { hz, dbfs }
    }

    /// Digital silence.
    pub fn silence() -> Source {
        Source::Silence
    }

    /// No audio at all.
    pub fn nothing() -> Source {
        Source::Nothing
    }

    /// A WAV file.
    pub fn wav(path: impl Into<PathBuf>) -> Source {
        Source::Wav(path.into())
    }

    /// Samples at the kind's rate.
    pub fn samples(samples: impl Into<std::sync::Arc<[f32]>>) -> Source {
        Source::Samples(samples.into())
    }
}

/// How the caller's audio is put on the wire. Asterisk sends μ-law/A-law bytes under
/// kind `0x10` on a `c(ulaw)`/`c(alaw)` channel (§9.2); what it receives is always slin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireCodec {
    /// s16le at the kind's rate.
    #[default]
    Slin,
    /// 8-bit G.711 μ-law under kind 0x10 (8 kHz only).
    Ulaw,
    /// 8-bit G.711 A-law under kind 0x10 (8 kHz only).
    Alaw,
}

/// Why a call could not be run (failures during the call end up in [`CallReport`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FakeCallError {
    /// TCP connect failed.
    #[error("connect to {addr} failed: {source}")]
    Connect {
        /// The target.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// TCP connect took longer than [`CONNECT_TIMEOUT`] (Asterisk's limit, §1).
    #[error("connect to {addr} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout {
        /// The target.
        addr: SocketAddr,
    },
    /// Setting up or writing the ID on the fresh connection failed.
    #[error("i/o error at call start: {0}")]
    Io(#[from] io::Error),
    /// The WAV source could not be read.
    #[error("cannot read WAV {path}: {source}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: hound::Error,
    },
    /// The WAV source is not mono at the kind's rate (no resampling here).
    #[error("WAV {path} is {channels} ch at {hz} Hz; need mono at {expected_hz} Hz")]
    WavFormat {
        /// The file.
        path: PathBuf,
        /// Its channel count.
        channels: u16,
        /// Its rate.
        hz: u32,
        /// The rate the kind needs.
        expected_hz: u32,
    },
    /// μ-law/A-law exist only at 8 kHz, under kind 0x10 (§9.2).
    #[error("{codec:?} needs kind 0x10 (8 kHz), not {kind}")]
    CodecNeedsSlin8 {
        /// The codec.
        codec: WireCodec,
        /// The kind asked for.
        kind: AudioKind,
    },
    /// The frame duration gives less than one sample or more than one message holds.
    #[error("frame duration {frame:?} at {kind} is not 1..=32767 samples per message")]
    BadFrame {
        /// The frame duration.
        frame: Duration,
        /// The kind.
        kind: AudioKind,
    },
    /// Writing the received audio to a WAV file failed.
    #[error("cannot write WAV {path}: {source}")]
    WavWrite {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: hound::Error,
    },
    /// There is no received audio to write.
    #[error("no audio was received")]
    NothingReceived,
}

/// One fake Asterisk call, configured with builder methods and started by
/// [`run`](FakeCall::run).
#[derive(Debug, Clone)]
pub struct FakeCall {
    addr: SocketAddr,
    uuid: Uuid,
    source: Source,
    kind: AudioKind,
    codec: WireCodec,
    frame: Duration,
    duration: Option<Duration>,
    dtmf: Vec<(Duration, DtmfDigit)>,
    drift_ppm: f64,
    record_audio: bool,
    answered: bool,
    quiet_for: Duration,
    reset_on_hangup: bool,
}

impl FakeCall {
    /// A call to `addr` carrying `uuid`, with the defaults: silence, kind 0x10 slin,
    /// 20 ms frames, 5 s, no DTMF, a perfect clock, received audio recorded.
    pub fn new(addr: SocketAddr, uuid: Uuid) -> FakeCall {
        FakeCall {
            addr,
            uuid,
            source: Source::Silence,
            kind: AudioKind::Slin8,
            codec: WireCodec::Slin,
            frame: Duration::from_millis(20),
            duration: Some(Duration::from_secs(5)),
            dtmf: Vec::new(),
            drift_ppm: 0.0,
            record_audio: true,
            answered: true,
            quiet_for: Duration::ZERO,
            reset_on_hangup: false,
        }
    }

    /// What the caller says.
    pub fn source(mut self, source: Source) -> FakeCall {
        self.source = source;
        self
    }

    /// The audio kind sent (and so the rate of the source).
    pub fn kind(mut self, kind: AudioKind) -> FakeCall {
        self.kind = kind;
        self
    }

    /// Sends μ-law or A-law bytes under 0x10 instead of slin (§9.2).
    pub fn codec(mut self, codec: WireCodec) -> FakeCall {
        self.codec = codec;
        self
    }

    /// Frame duration (default 20 ms; Asterisk may use 10/30/40 ms, §5).
    pub fn frame(mut self, frame: Duration) -> FakeCall {
        self.frame = frame;
        self
    }

    /// Hang up (close TCP, §8) after this much audio time on the caller's clock.
    /// The call ends earlier if the gateway sends `00 00 00` or closes.
    pub fn duration(mut self, duration: Duration) -> FakeCall {
        self.duration = Some(duration);
        self
    }

    /// Never hang up: keep streaming until the gateway sends `00 00 00` or closes.
    pub fn until_hangup(mut self) -> FakeCall {
        self.duration = None;
        self
    }

    /// Sends DTMF `digit` (`03 00 01 xx`, §6) with the first frame at or after `at`.
    pub fn dtmf(mut self, at: Duration, digit: DtmfDigit) -> FakeCall {
        let pos = self.dtmf.partition_point(|(t, _)| *t <= at);
        self.dtmf.insert(pos, (at, digit));
        self
    }

    /// Clock error of the caller in parts per million: `+1000.0` makes it send 1000 ppm
    /// faster than the local monotonic clock (frames every 19.98 ms).
    pub fn drift_ppm(mut self, ppm: f64) -> FakeCall {
        self.drift_ppm = ppm;
        self
    }

    /// Whether to keep received samples (default yes). Arrival times are always kept;
    /// a load generator turns sample recording off.
    pub fn record_audio(mut self, record: bool) -> FakeCall {
        self.record_audio = record;
        self
    }

    /// Send no audio at all for the first `quiet` of the call (on the caller's clock),
    /// then the source: an ARI channel before it is bridged, or a channel whose far end
    /// says nothing yet (§5, §9.3). DTMF is still sent.
    pub fn quiet_for(mut self, quiet: Duration) -> FakeCall {
        self.quiet_for = quiet;
        self
    }

    /// Hang up with a TCP reset (`SO_LINGER` 0) instead of a FIN, as Asterisk sometimes
    /// closes a hung-up channel's socket.
    pub fn reset_on_hangup(mut self) -> FakeCall {
        self.reset_on_hangup = true;
        self
    }

    /// Behave like the dialplan app on an unanswered channel: connect, then close
    /// without sending a single byte (§4).
    pub fn unanswered(mut self) -> FakeCall {
        self.answered = false;
        self
    }

    /// Runs the call to its end and reports what happened.
    pub async fn run(self) -> Result<CallReport, FakeCallError> {
        let mut audio = AudioSource::new(&self)?;
        let frame_ns = duration_ns(self.frame);
        let hz = u128::from(self.kind.hz());
        let max_samples = (frame_ns * hz).div_ceil(1_000_000_000);
        let min_samples = frame_ns * hz / 1_000_000_000;
        let max_per_message: u128 = match self.codec {
            WireCodec::Slin => 32_767,
            WireCodec::Ulaw | WireCodec::Alaw => 65_535,
        };
        if min_samples == 0 || max_samples > max_per_message {
            return Err(FakeCallError::BadFrame {
                frame: self.frame,
                kind: self.kind,
            });
        }
        let total_frames = self.duration.map(|d| duration_ns(d).div_ceil(frame_ns));
        // Positive ppm = a fast caller clock = a shorter wall-clock period.
        let period_ns = frame_ns as f64 / (1.0 + self.drift_ppm * 1e-6);

        let addr = self.addr;
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(FakeCallError::Connect { addr, source }),
            Err(_) => return Err(FakeCallError::ConnectTimeout { addr }),
        };
        stream.set_nodelay(true)?;
        let mut call = Session {
            stream,
            report: CallReport::new(self.uuid),
            rx: BytesMut::with_capacity(8 * 1024),
            codec: ClientCodec::new(Limits::unlimited()),
            partial_since: None,
            record_audio: self.record_audio,
        };
        if !self.answered {
            call.report.end = CallEnd::Completed;
            return Ok(call.finish().await);
        }
        let mut id = [0u8; crate::audiosocket::ID_MESSAGE_LEN];
        Message::Id(self.uuid)
            .write_to(&mut id)
            .map_err(|e| io::Error::other(e.to_string()))?;
        call.stream.write_all(&id).await?;

        let start = tokio::time::Instant::now();
        let mut tx = vec![0u8; HEADER_LEN + max_samples as usize * 2];
        let mut scratch = vec![0f32; max_samples as usize];
        let mut dtmf = self.dtmf.iter().peekable();
        let mut tick: u64 = 0;
        let end = loop {
            let due = start + Duration::from_nanos((tick as f64 * period_ns) as u64);
            tokio::select! {
                ready = call.stream.readable() => {
                    if let Err(e) = ready {
                        break CallEnd::ReadFailed { kind: e.kind() };
                    }
                    if let Some(end) = call.read_available() {
                        break end;
                    }
                }
                () = tokio::time::sleep_until(due) => {
                    if total_frames.is_some_and(|n| u128::from(tick) >= n) {
                        break CallEnd::Completed;
                    }
                    // Caller-clock time of this tick, in ns.
                    let now_ns = u128::from(tick) * frame_ns;
                    while let Some((_, digit)) = dtmf.next_if(|(at, _)| duration_ns(*at) <= now_ns) {
                        let msg = [KIND_DTMF, 0, 1, digit.byte()];
                        if call.send(&msg).is_err() {
                            break;
                        }
                        call.report.dtmf_sent += 1;
                    }
                    if call.report.end != CallEnd::Running {
                        break call.report.end;
                    }
                    let from = u128::from(tick) * frame_ns * hz / 1_000_000_000;
                    let to = u128::from(tick + 1) * frame_ns * hz / 1_000_000_000;
                    let n = (to - from) as usize;
                    let quiet = now_ns < duration_ns(self.quiet_for);
                    if quiet {
                        tick += 1;
                        continue;
                    }
                    if let Some(len) = audio.frame(self.kind, self.codec, n, &mut scratch, &mut tx) {
                        if let Err(end) = call.send(&tx[..len]) {
                            break end;
                        }
                        call.report.frames_sent += 1;
                    }
                    tick += 1;
                }
            }
        };
        call.report.end = end;
        if self.reset_on_hangup && end == CallEnd::Completed {
            return Ok(call.reset());
        }
        Ok(call.finish().await)
    }
}

fn duration_ns(d: Duration) -> u128 {
    d.as_nanos()
}

/// The caller's audio, converted frame by frame into the transmit buffer.
enum AudioSource {
    Tone {
        phase: f64,
        step: f64,
        amp: f32,
    },
    Silence,
    Nothing,
    Clip {
        samples: std::sync::Arc<[f32]>,
        pos: usize,
    },
}

impl AudioSource {
    fn new(call: &FakeCall) -> Result<AudioSource, FakeCallError> {
        if call.codec != WireCodec::Slin && call.kind != AudioKind::Slin8 {
            return Err(FakeCallError::CodecNeedsSlin8 {
                codec: call.codec,
                kind: call.kind,
            });
        }
        Ok(match &call.source {
            Source::Tone { hz, dbfs } => AudioSource::Tone {
                phase: 0.0,
                step: std::f64::consts::TAU * hz / f64::from(call.kind.hz()),
                amp: 10f64.powf(dbfs / 20.0) as f32,
            },
            Source::Silence => AudioSource::Silence,
            Source::Nothing => AudioSource::Nothing,
            Source::Samples(s) => AudioSource::Clip {
                samples: s.clone(),
                pos: 0,
            },
            Source::Wav(path) => AudioSource::Clip {
                samples: read_wav(path, call.kind.hz())?.into(),
                pos: 0,
            },
        })
    }

    /// Writes one frame of `n` samples into `tx` (header + payload); `None` when there
    /// is nothing to send.
    fn frame(
        &mut self,
        kind: AudioKind,
        codec: WireCodec,
        n: usize,
        scratch: &mut [f32],
        tx: &mut [u8],
    ) -> Option<usize> {
        let samples = scratch.get_mut(..n)?;
        let n = match self {
            AudioSource::Nothing => return None,
            AudioSource::Silence => {
                samples.fill(0.0);
                n
            }
            AudioSource::Tone { phase, step, amp } => {
                for s in samples.iter_mut() {
                    *s = *amp * phase.sin() as f32;
                    *phase = (*phase + *step) % std::f64::consts::TAU;
                }
                n
            }
            AudioSource::Clip { samples: clip, pos } => {
                let rest = clip.get(*pos..).unwrap_or_default();
                let n = n.min(rest.len());
                if n == 0 {
                    return None;
                }
                samples[..n].copy_from_slice(&rest[..n]);
                *pos += n;
                n
            }
        };
        let payload = tx.get_mut(HEADER_LEN..)?;
        let len = match codec {
            WireCodec::Slin => pcm::f32_to_s16le(&samples[..n], payload),
            WireCodec::Ulaw => pcm::f32_to_ulaw(&samples[..n], payload),
            WireCodec::Alaw => pcm::f32_to_alaw(&samples[..n], payload),
        };
        let [hi, lo] = u16::try_from(len).ok()?.to_be_bytes();
        tx.get_mut(..HEADER_LEN)?
            .copy_from_slice(&[kind.byte(), hi, lo]);
        Some(HEADER_LEN + len)
    }
}

fn read_wav(path: &Path, expected_hz: u32) -> Result<Vec<f32>, FakeCallError> {
    let wav_err = |source| FakeCallError::Wav {
        path: path.to_owned(),
        source,
    };
    let reader = hound::WavReader::open(path).map_err(wav_err)?;
    let spec = reader.spec();
    if spec.channels != 1 || spec.sample_rate != expected_hz {
        return Err(FakeCallError::WavFormat {
            path: path.to_owned(),
            channels: spec.channels,
            hz: spec.sample_rate,
            expected_hz,
        });
    }
    match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_err),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << spec.bits_per_sample.saturating_sub(1).min(31)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_err)
        }
    }
}

/// The running connection.
struct Session {
    stream: TcpStream,
    report: CallReport,
    rx: BytesMut,
    codec: ClientCodec,
    /// When the header of the message now at the front of `rx` arrived, if its payload
    /// is still incomplete (§7's 5 ms rule).
    partial_since: Option<Instant>,
    record_audio: bool,
}

impl Session {
    /// One message, one non-blocking write: like Asterisk, a write that would block or
    /// is short is fatal (§7 back-pressure).
    fn send(&mut self, msg: &[u8]) -> Result<(), CallEnd> {
        let end = match self.stream.try_write(msg) {
            Ok(n) if n == msg.len() => return Ok(()),
            Ok(_) => CallEnd::SendFailed {
                kind: io::ErrorKind::WriteZero,
            },
            Err(e) => CallEnd::SendFailed { kind: e.kind() },
        };
        self.report.end = end;
        Err(end)
    }

    /// Reads what the socket has and handles every complete message; `Some` ends the
    /// call.
    fn read_available(&mut self) -> Option<CallEnd> {
        // Bounded so that a flooding peer cannot starve the pacing timer; readiness
        // stays set, so the select loop comes straight back here.
        for _ in 0..READS_PER_WAKE {
            match self.stream.try_read_buf(&mut self.rx) {
                Ok(0) => return Some(self.at_eof()),
                Ok(_) => {
                    if let Some(end) = self.drain(Instant::now()) {
                        return Some(end);
                    }
                    if self.rx.capacity() - self.rx.len() < 1024 {
                        self.rx.reserve(8 * 1024);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(CallEnd::ReadFailed { kind: e.kind() }),
            }
        }
        None
    }

    fn at_eof(&mut self) -> CallEnd {
        match self.codec.decode_eof(&mut self.rx) {
            Ok(_) | Err(CodecError::Io(_)) => {}
            Err(CodecError::TruncatedAtEof { buffered, needed }) => {
                self.report
                    .violations
                    .push(Violation::Truncated { buffered, needed });
            }
            Err(CodecError::Frame(e)) => self.report.violations.push(Violation::Undecodable(e)),
            Err(_) => {}
        }
        CallEnd::ServerClosed
    }

    fn drain(&mut self, now: Instant) -> Option<CallEnd> {
        // §7: a message whose header was waiting must now be complete within 5 ms.
        let completed = matches!(check(&self.rx, &Limits::unlimited()), Ok(Some(_)));
        if let Some(since) = self.partial_since.filter(|_| completed) {
            self.partial_since = None;
            let waited = now.saturating_duration_since(since);
            if waited > PAYLOAD_WAIT {
                self.report
                    .violations
                    .push(Violation::LatePayload { waited });
                return Some(CallEnd::Violation);
            }
        }
        loop {
            match self.codec.decode(&mut self.rx) {
                Ok(Some(msg)) => {
                    if let Some(end) = self.on_message(msg, now) {
                        return Some(end);
                    }
                }
                Ok(None) => break,
                Err(CodecError::Frame(e)) => {
                    self.report.violations.push(Violation::Undecodable(e));
                    return Some(CallEnd::Violation);
                }
                Err(_) => {
                    return Some(CallEnd::ReadFailed {
                        kind: io::ErrorKind::InvalidData,
                    });
                }
            }
        }
        // A header without its payload starts the clock (only the first buffered
        // message can be incomplete, so a completed one has reset it above).
        if frame_len(&self.rx).is_some() && self.partial_since.is_none() {
            self.partial_since = Some(now);
        }
        None
    }

    fn on_message(&mut self, msg: Message, now: Instant) -> Option<CallEnd> {
        let report = &mut self.report;
        match msg {
            Message::Audio {
                kind,
                payload,
                odd_byte_dropped,
            } => {
                if odd_byte_dropped {
                    report.violations.push(Violation::OddLength { kind });
                }
                match report.frames.last() {
                    Some(prev) if prev.kind != kind => report.rate_changes += 1,
                    None => report.received_rate = Some(kind.rate()),
                    _ => {}
                }
                let samples = payload.len() / 2;
                report.frames.push(ReceivedFrame {
                    at: now,
                    kind,
                    samples,
                });
                if self.record_audio {
                    let start = report.received.len();
                    report.received.resize(start + samples, 0.0);
                    pcm::s16le_to_f32(&payload, &mut report.received[start..]);
                }
                None
            }
            Message::Hangup => {
                report.hangup_received = true;
                Some(CallEnd::ServerHangup)
            }
            Message::EmptyAudio { kind } => {
                report.violations.push(Violation::EmptyAudio { kind });
                Some(CallEnd::Violation)
            }
            other => {
                report.violations.push(Violation::RejectedKind {
                    kind: other.kind_byte(),
                });
                Some(CallEnd::Violation)
            }
        }
    }

    /// Closes the connection (a bare FIN: Asterisk's hangup, §8) and returns the report.
    /// Closes with a reset: the kernel sends RST instead of FIN.
    fn reset(mut self) -> CallReport {
        // Best effort, like any close: the peer may already be gone.
        let _ = self.stream.set_zero_linger();
        drop(self.stream);
        self.report.ended_at = Instant::now();
        self.report
    }

    async fn finish(mut self) -> CallReport {
        // The peer may already be gone; closing is best effort.
        let _ = self.stream.shutdown().await;
        self.report.ended_at = Instant::now();
        self.report
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEnd {
    /// Still running (never in a returned report).
    Running,
    /// The configured duration elapsed and the caller hung up (closed TCP).
    Completed,
    /// The gateway sent `00 00 00`.
    ServerHangup,
    /// The gateway closed the connection.
    ServerClosed,
    /// The gateway sent something Asterisk rejects; see
    /// [`CallReport::violations`]. The caller closed, as Asterisk does (§7).
    Violation,
    /// A write would have blocked or failed: Asterisk treats that as fatal (§7).
    SendFailed {
        /// The I/O error kind.
        kind: io::ErrorKind,
    },
    /// Reading failed.
    ReadFailed {
        /// The I/O error kind.
        kind: io::ErrorKind,
    },
}

/// Something the gateway did that Asterisk would reject or that the fact sheet says
/// never to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A kind other than 0x00 and 0x10..=0x18 (0x01, 0x02, 0x03, 0xFF, unknown):
    /// fatal in Asterisk (§7).
    RejectedKind {
        /// The kind byte.
        kind: u8,
    },
    /// Zero-length audio: fatal in Asterisk (§7).
    EmptyAudio {
        /// The kind.
        kind: AudioKind,
    },
    /// Audio with an odd trailing byte (§3: never send one). Not fatal.
    OddLength {
        /// The kind.
        kind: AudioKind,
    },
    /// The payload arrived more than [`PAYLOAD_WAIT`] after its header: Asterisk
    /// drops the call (§7: write each message in one piece).
    LatePayload {
        /// How long the payload took.
        waited: Duration,
    },
    /// The gateway closed in the middle of a message.
    Truncated {
        /// Bytes of the partial message.
        buffered: usize,
        /// Its announced size, if the header was in.
        needed: Option<usize>,
    },
    /// The stream could not be framed (an ID of the wrong length).
    Undecodable(FrameError),
}

impl Violation {
    /// Whether real Asterisk would end the call on it.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Violation::OddLength { .. })
    }
}

/// One audio message received from the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// When it was decoded (monotonic clock).
    pub at: Instant,
    /// Its kind.
    pub kind: AudioKind,
    /// Its sample count.
    pub samples: usize,
}

/// What happened during a call.
#[derive(Debug, Clone)]
pub struct CallReport {
    /// The UUID sent in the ID message.
    pub uuid: Uuid,
    /// When the TCP connection was established.
    pub connected_at: Instant,
    /// When the caller closed the connection.
    pub ended_at: Instant,
    /// How the call ended.
    pub end: CallEnd,
    /// Audio messages sent.
    pub frames_sent: u64,
    /// DTMF messages sent.
    pub dtmf_sent: usize,
    /// Every received audio frame, in order.
    pub frames: Vec<ReceivedFrame>,
    /// Received samples, full scale 1.0, concatenated (empty if recording was off).
    pub received: Vec<f32>,
    /// Rate of the first received frame (the gateway should keep one rate, §7).
    pub received_rate: Option<SampleRate>,
    /// How many times the received kind changed.
    pub rate_changes: u32,
    /// Whether the gateway sent `00 00 00`.
    pub hangup_received: bool,
    /// Protocol violations by the gateway, in order.
    pub violations: Vec<Violation>,
}

impl CallReport {
    fn new(uuid: Uuid) -> CallReport {
        let now = Instant::now();
        CallReport {
            uuid,
            connected_at: now,
            ended_at: now,
            end: CallEnd::Running,
            frames_sent: 0,
            dtmf_sent: 0,
            frames: Vec::new(),
            received: Vec::new(),
            received_rate: None,
            rate_changes: 0,
            hangup_received: false,
            violations: Vec::new(),
        }
    }

    /// Gaps between consecutive received frames.
    pub fn inter_arrival(&self) -> impl Iterator<Item = Duration> + '_ {
        self.frames
            .windows(2)
            .map(|w| w[1].at.saturating_duration_since(w[0].at))
    }

    /// Seconds of audio received, summed over frames at their own rates.
    pub fn received_seconds(&self) -> f64 {
        self.frames
            .iter()
            .map(|f| f.samples as f64 / f64::from(f.kind.hz()))
            .sum()
    }

    /// Writes the received audio as a mono 16-bit WAV at [`received_rate`](Self::received_rate).
    pub fn write_wav(&self, path: impl AsRef<Path>) -> Result<(), FakeCallError> {
        let path = path.as_ref();
        let rate = self.received_rate.ok_or(FakeCallError::NothingReceived)?;
        let wav_err = |source| FakeCallError::WavWrite {
            path: path.to_owned(),
            source,
        };
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).map_err(wav_err)?;
        let mut bytes = [0u8; 2];
        for s in &self.received {
            pcm::f32_to_s16le(std::slice::from_ref(s), &mut bytes);
            writer
                .write_sample(i16::from_le_bytes(bytes))
                .map_err(wav_err)?;
        }
        writer.finalize().map_err(wav_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audiosocket::{ServerCodec, ServerMessage};
    use std::future::Future;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_util::codec::Encoder;

    const UUID: &str = "40325ec2-5efd-4bd3-805f-53576e581d13";

    fn uuid() -> Uuid {
        Uuid::parse_str(UUID).unwrap()
    }

    /// A one-connection server on 127.0.0.1:0 running `script`.
    async fn serve_once<F, Fut, T>(script: F) -> (SocketAddr, JoinHandle<T>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send,
        T: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            script(stream).await
        });
        (addr, handle)
    }

    /// Everything the server received: raw bytes and messages with arrival times.
    struct Received {
        raw: Vec<u8>,
        messages: Vec<(Instant, Message)>,
    }

    async fn receive_until_eof(mut stream: TcpStream) -> Received {
        let mut raw = Vec::new();
        let mut buf = BytesMut::new();
        let mut codec = ServerCodec::default();
        let mut messages = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            let now = Instant::now();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                messages.push((now, m));
            }
        }
        assert!(buf.is_empty(), "client closed mid-message");
        Received { raw, messages }
    }

    fn audio_of(messages: &[(Instant, Message)]) -> Vec<(Instant, AudioKind, Vec<u8>)> {
        messages
            .iter()
            .filter_map(|(t, m)| match m {
                Message::Audio { kind, payload, .. } => Some((*t, *kind, payload.to_vec())),
                _ => None,
            })
            .collect()
    }

    fn s16(bytes: &[u8]) -> Vec<f32> {
        let mut out = vec![0.0; bytes.len() / 2];
        pcm::s16le_to_f32(bytes, &mut out);
        out
    }

    /// Positive-going zero crossings per second.
    fn zero_crossing_hz(samples: &[f32], rate: u32) -> f64 {
        let crossings = samples
            .windows(2)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        crossings as f64 * f64::from(rate) / samples.len() as f64
    }

    /// Least-squares slope of arrival time against frame index, in ms per frame:
    /// robust to a single late wake-up, unlike first-to-last spans.
    fn ms_per_frame(audio: &[(Instant, AudioKind, Vec<u8>)]) -> f64 {
        let t0 = audio[0].0;
        let pts: Vec<(f64, f64)> = audio
            .iter()
            .enumerate()
            .map(|(i, (t, _, _))| (i as f64, (*t - t0).as_secs_f64() * 1e3))
            .collect();
        let n = pts.len() as f64;
        let (mx, my) = (
            pts.iter().map(|p| p.0).sum::<f64>() / n,
            pts.iter().map(|p| p.1).sum::<f64>() / n,
        );
        let cov: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let var: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        cov / var
    }

    fn id_bytes() -> Vec<u8> {
        let mut v = vec![0x01, 0x00, 0x10];
        v.extend_from_slice(uuid().as_bytes());
        v
    }

    #[tokio::test]
    async fn sends_id_first_then_a_paced_tone_at_50_frames_per_second() {
        let (addr, server) = serve_once(receive_until_eof).await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::tone(1000.0, -6.0))
            .kind(AudioKind::Slin8)
            .duration(Duration::from_secs(1))
            .run()
            .await
            .unwrap();
        let rx = server.await.unwrap();
        // §11 V1: the first 19 bytes are the ID.
        assert_eq!(&rx.raw[..19], &id_bytes()[..]);
        assert!(matches!(rx.messages[0].1, Message::Id(u) if u == uuid()));
        let audio = audio_of(&rx.messages);
        assert_eq!(audio.len(), 50);
        assert_eq!(report.frames_sent, 50);
        assert_eq!(report.end, CallEnd::Completed);
        assert!(
            audio
                .iter()
                .all(|(_, k, p)| *k == AudioKind::Slin8 && p.len() == 320)
        );
        // Every audio frame on the wire starts `10 01 40` (§5).
        assert_eq!(&rx.raw[19..22], &[0x10, 0x01, 0x40]);
        // Pacing: 20 ms per frame, 49 intervals = 980 ms, measured generously.
        let slope = ms_per_frame(&audio);
        assert!((slope - 20.0).abs() < 0.5, "{slope} ms per frame");
        let span = audio[49].0 - audio[0].0;
        assert!(
            span >= Duration::from_millis(900) && span <= Duration::from_millis(1200),
            "span {span:?}"
        );
        // The tone: 1000 Hz at -6 dBFS peak (0.501).
        let samples: Vec<f32> = audio.iter().flat_map(|(_, _, p)| s16(p)).collect();
        let hz = zero_crossing_hz(&samples, 8000);
        assert!((hz - 1000.0).abs() < 2.0, "{hz} Hz");
        let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5012).abs() < 0.002, "peak {peak}");
    }

    #[tokio::test]
    async fn a_fast_clock_sends_frames_more_often() {
        // +200000 ppm (20 % fast) so the effect dwarfs scheduler jitter: 49 periods
        // of 20 ms / 1.2 = 816.7 ms instead of 980 ms.
        let (addr, server) = serve_once(receive_until_eof).await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::silence())
            .duration(Duration::from_secs(1))
            .drift_ppm(200_000.0)
            .run()
            .await
            .unwrap();
        let audio = audio_of(&server.await.unwrap().messages);
        assert_eq!((audio.len(), report.frames_sent), (50, 50));
        let slope = ms_per_frame(&audio);
        assert!((slope - 20.0 / 1.2).abs() < 0.5, "{slope} ms per frame");
        let span = audio[49].0 - audio[0].0;
        assert!(
            span >= Duration::from_millis(760) && span <= Duration::from_millis(920),
            "span {span:?}"
        );
        assert!(audio.iter().all(|(_, _, p)| p.iter().all(|b| *b == 0)));
    }

    #[tokio::test]
    async fn dtmf_digits_are_sent_as_exact_bytes_and_nothing_sends_no_audio() {
        let (addr, server) = serve_once(receive_until_eof).await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::nothing())
            .duration(Duration::from_millis(100))
            .dtmf(Duration::from_millis(40), DtmfDigit::new(b'#').unwrap())
            .dtmf(Duration::ZERO, DtmfDigit::new(b'1').unwrap())
            .dtmf(Duration::from_secs(9), DtmfDigit::new(b'9').unwrap())
            .run()
            .await
            .unwrap();
        let rx = server.await.unwrap();
        let mut expected = id_bytes();
        // §6: "03 00 01 31" ... "03 00 01 23"; the digit after the end is never sent.
        expected.extend_from_slice(&[0x03, 0x00, 0x01, 0x31, 0x03, 0x00, 0x01, 0x23]);
        assert_eq!(rx.raw, expected);
        assert_eq!((report.frames_sent, report.dtmf_sent), (0, 2));
    }

    #[tokio::test]
    async fn records_downlink_frames_and_stops_at_the_servers_hangup() {
        let sent: Vec<i16> = (0..3200)
            .map(|i| ((i * 97) % 20000 - 10000) as i16)
            .collect();
        let to_send = sent.clone();
        let (addr, server) = serve_once(move |mut stream: TcpStream| async move {
            let mut id = [0u8; 19];
            stream.read_exact(&mut id).await.unwrap();
            let mut codec = ServerCodec::default();
            let mut tx = BytesMut::new();
            for chunk in to_send.chunks(320) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
                tx.clear();
                codec
                    .encode(
                        ServerMessage::audio(AudioKind::Slin16, &bytes).unwrap(),
                        &mut tx,
                    )
                    .unwrap();
                stream.write_all(&tx).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tx.clear();
            codec.encode(ServerMessage::Hangup, &mut tx).unwrap();
            stream.write_all(&tx).await.unwrap();
            // Asterisk closes after a hangup: we must see EOF.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.unwrap();
            id
        })
        .await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::silence())
            .until_hangup()
            .run()
            .await
            .unwrap();
        let id = server.await.unwrap();
        assert_eq!(&id[..], &id_bytes()[..]);
        assert_eq!(report.end, CallEnd::ServerHangup);
        assert!(report.hangup_received);
        assert!(report.violations.is_empty());
        assert_eq!(report.frames.len(), 10);
        assert_eq!(report.received_rate, Some(SampleRate::HZ_16000));
        assert_eq!(report.rate_changes, 0);
        assert!((report.received_seconds() - 0.2).abs() < 1e-9);
        let expected: Vec<f32> = sent.iter().map(|s| f32::from(*s) / 32768.0).collect();
        assert_eq!(report.received, expected);
        assert!(
            report
                .inter_arrival()
                .all(|d| d < Duration::from_millis(500))
        );

        // The recording helper writes those samples bit-exactly.
        let path = std::env::temp_dir().join(format!("fake_asterisk_{}.wav", Uuid::new_v4()));
        report.write_wav(&path).unwrap();
        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().sample_rate, 16_000);
        let back: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, sent);
    }

    #[tokio::test]
    async fn kinds_asterisk_rejects_are_violations_and_close_the_call() {
        // §11 V4 plus the ID kind.
        let cases: [(&[u8], Violation); 5] = [
            (
                &[0x10, 0x00, 0x00],
                Violation::EmptyAudio {
                    kind: AudioKind::Slin8,
                },
            ),
            (
                &[0x03, 0x00, 0x01, 0x35],
                Violation::RejectedKind { kind: 0x03 },
            ),
            (
                &[0xff, 0x00, 0x01, 0x01],
                Violation::RejectedKind { kind: 0xff },
            ),
            (
                &[0x02, 0x00, 0x02, 0x00, 0x00],
                Violation::RejectedKind { kind: 0x02 },
            ),
            (&id_bytes_static(), Violation::RejectedKind { kind: 0x01 }),
        ];
        for (bytes, expected) in cases {
            let bytes = bytes.to_vec();
            let (addr, server) = serve_once(move |mut stream: TcpStream| async move {
                let mut id = [0u8; 19];
                stream.read_exact(&mut id).await.unwrap();
                stream.write_all(&bytes).await.unwrap();
                let start = Instant::now();
                let mut rest = Vec::new();
                stream.read_to_end(&mut rest).await.unwrap();
                start.elapsed()
            })
            .await;
            let report = FakeCall::new(addr, uuid())
                .source(Source::nothing())
                .duration(Duration::from_secs(10))
                .run()
                .await
                .unwrap();
            let closed_after = server.await.unwrap();
            assert_eq!(report.end, CallEnd::Violation);
            assert_eq!(report.violations, std::slice::from_ref(&expected));
            assert!(expected.is_fatal());
            assert!(closed_after < Duration::from_secs(2), "{closed_after:?}");
        }
    }

    fn id_bytes_static() -> [u8; 19] {
        let mut a = [0u8; 19];
        a.copy_from_slice(&id_bytes());
        a
    }

    #[tokio::test]
    async fn a_payload_late_after_its_header_is_a_violation() {
        // §7: Asterisk waits ~5 ms for the payload after a header.
        let (addr, server) = serve_once(|mut stream: TcpStream| async move {
            let mut id = [0u8; 19];
            stream.read_exact(&mut id).await.unwrap();
            stream.write_all(&[0x10, 0x01, 0x40]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            stream.write_all(&[0u8; 320]).await.unwrap();
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
        })
        .await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::nothing())
            .duration(Duration::from_secs(5))
            .run()
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(report.end, CallEnd::Violation);
        assert!(matches!(
            report.violations[..],
            [Violation::LatePayload { waited }] if waited >= Duration::from_millis(25)
        ));
        assert!(report.frames.is_empty());
    }

    #[tokio::test]
    async fn odd_length_audio_is_reported_but_not_fatal() {
        let (addr, server) = serve_once(|mut stream: TcpStream| async move {
            let mut id = [0u8; 19];
            stream.read_exact(&mut id).await.unwrap();
            stream
                .write_all(&[0x10, 0x00, 0x03, 0x00, 0x40, 0x99])
                .await
                .unwrap();
            stream.write_all(&[0x00, 0x00, 0x00]).await.unwrap();
        })
        .await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::nothing())
            .until_hangup()
            .run()
            .await
            .unwrap();
        server.await.unwrap();
        assert_eq!(report.end, CallEnd::ServerHangup);
        assert_eq!(
            report.violations,
            [Violation::OddLength {
                kind: AudioKind::Slin8
            }]
        );
        assert!(!report.violations[0].is_fatal());
        assert_eq!(report.received, [0.5]);
    }

    #[tokio::test]
    async fn wav_source_is_sent_verbatim_and_its_rate_must_match_the_kind() {
        let path = std::env::temp_dir().join(format!("fake_asterisk_src_{}.wav", Uuid::new_v4()));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let samples: Vec<i16> = (0..1000).map(|i| (i * 31 - 15000) as i16).collect();
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in &samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();

        let wrong = FakeCall::new("127.0.0.1:9".parse().unwrap(), uuid())
            .source(Source::wav(&path))
            .kind(AudioKind::Slin8)
            .run()
            .await;
        assert!(matches!(
            wrong,
            Err(FakeCallError::WavFormat {
                hz: 16_000,
                expected_hz: 8_000,
                ..
            })
        ));

        let (addr, server) = serve_once(receive_until_eof).await;
        let report = FakeCall::new(addr, uuid())
            .source(Source::wav(&path))
            .kind(AudioKind::Slin16)
            .duration(Duration::from_millis(200))
            .run()
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let audio = audio_of(&server.await.unwrap().messages);
        // 1000 samples = three 320-sample frames and a last one of 40; then nothing.
        let lens: Vec<usize> = audio.iter().map(|(_, _, p)| p.len() / 2).collect();
        assert_eq!(lens, [320, 320, 320, 40]);
        assert_eq!(report.frames_sent, 4);
        let got: Vec<i16> = audio
            .iter()
            .flat_map(|(_, _, p)| p.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])))
            .collect();
        assert_eq!(got, samples);
    }

    #[tokio::test]
    async fn ulaw_is_sent_as_160_byte_payloads_under_0x10() {
        let (addr, server) = serve_once(receive_until_eof).await;
        FakeCall::new(addr, uuid())
            .source(Source::tone(400.0, -3.0))
            .codec(WireCodec::Ulaw)
            .duration(Duration::from_millis(100))
            .run()
            .await
            .unwrap();
        let audio = audio_of(&server.await.unwrap().messages);
        assert_eq!(audio.len(), 5);
        assert!(
            audio
                .iter()
                .all(|(_, k, p)| *k == AudioKind::Slin8 && p.len() == 160)
        );
        let mut decoded = vec![0f32; 800];
        let bytes: Vec<u8> = audio.iter().flat_map(|(_, _, p)| p.clone()).collect();
        pcm::ulaw_to_f32(&bytes, &mut decoded);
        let hz = zero_crossing_hz(&decoded, 8000);
        assert!((hz - 400.0).abs() < 15.0, "{hz} Hz");

        let bad = FakeCall::new(addr, uuid())
            .codec(WireCodec::Alaw)
            .kind(AudioKind::Slin16)
            .run()
            .await;
        assert!(matches!(bad, Err(FakeCallError::CodecNeedsSlin8 { .. })));
    }

    #[tokio::test]
    async fn frame_sizes_follow_the_kind_and_frame_duration() {
        // §5: 44.1 kHz, 20 ms = 882 samples = 1764 bytes (`15 06 E4`); 10 ms = 441.
        for (frame_ms, samples) in [(20u64, 882usize), (10, 441)] {
            let (addr, server) = serve_once(receive_until_eof).await;
            FakeCall::new(addr, uuid())
                .source(Source::silence())
                .kind(AudioKind::Slin44_1)
                .frame(Duration::from_millis(frame_ms))
                .duration(Duration::from_millis(60))
                .run()
                .await
                .unwrap();
            let rx = server.await.unwrap();
            let audio = audio_of(&rx.messages);
            assert_eq!(audio.len() as u64, 60 / frame_ms);
            assert!(
                audio
                    .iter()
                    .all(|(_, k, p)| *k == AudioKind::Slin44_1 && p.len() == samples * 2)
            );
        }
        let bad = FakeCall::new("127.0.0.1:9".parse().unwrap(), uuid())
            .kind(AudioKind::Slin192)
            .frame(Duration::from_millis(200))
            .run()
            .await;
        assert!(matches!(bad, Err(FakeCallError::BadFrame { .. })));
    }

    #[tokio::test]
    async fn unanswered_call_connects_and_closes_without_a_byte() {
        // §4: the app on an unanswered channel.
        let (addr, server) = serve_once(receive_until_eof).await;
        let report = FakeCall::new(addr, uuid())
            .unanswered()
            .run()
            .await
            .unwrap();
        let rx = server.await.unwrap();
        assert!(rx.raw.is_empty());
        assert_eq!(report.end, CallEnd::Completed);
    }

    #[tokio::test]
    async fn connect_failure_is_an_error() {
        // Bind then drop a listener to get a port nobody listens on.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let err = FakeCall::new(addr, uuid()).run().await.unwrap_err();
        assert!(matches!(err, FakeCallError::Connect { .. }), "{err}");
    }
}
