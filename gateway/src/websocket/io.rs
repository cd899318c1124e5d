//! The I/O half of a `websocket` node: one thread, named after the node, running a
//! single-threaded tokio runtime with one task, the WebSocket session.
//!
//! The session connects out (5 s limit), asks for the `audio.jambonz.org` subprotocol,
//! sends the first text frame, and then, in one `select!` loop:
//!
//! * every 20 ms takes whatever the engine wrote into the caller's ring, resamples it
//!   from 48 kHz to the node's rate and queues one binary frame of s16le PCM;
//! * resamples each binary frame from the bot to 48 kHz into the bounded ring the engine
//!   plays from (what does not fit is dropped and counted);
//! * acts on the bot's JSON commands (`killAudio`, `mark`, `clearMarks`, `disconnect`)
//!   and answers marks whose audio the engine has taken;
//! * passes the call's DTMF digits to the bot, when the node belongs to a call.
//!
//! Frames to the bot go through a bounded channel to a writer future with a 5 s limit
//! per write: a bot that stops reading loses frames (counted) and is then disconnected;
//! it never holds up the engine or this loop. Every buffer is allocated when the session
//! starts; wire frames come from one `BytesMut` whose space is reused once the socket
//! has written them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use api::control::Event;
use bytes::BytesMut;
use codecs::resample::{Quality, StreamResampler};
use futures_util::{Sink, SinkExt, StreamExt};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

use super::WebsocketSettings;
use super::node::Shared;
use super::playout::MarkBook;
use super::protocol::{self, BotCommand, MarkOutcome};
use crate::engine::BUS_RATE;

/// How long connecting (TCP, TLS and the HTTP upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one frame may wait for the socket before the bot is taken for gone.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the closing handshake may take when the node is removed.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// The caller's audio goes out in frames of this length.
pub const FRAME: Duration = Duration::from_millis(20);
/// Frames waiting for the socket; beyond, the caller's audio is dropped (1 s).
const OUTGOING_FRAMES: usize = 50;
/// Largest WebSocket message accepted from the bot (2.7 s at 48 kHz, 16 s at 8 kHz).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The bot's PCM is decoded in pieces of this many bytes (scratch stays small).
const DECODE_PIECE_BYTES: usize = 8 * 1024;
/// Marks waiting for their audio, at most.
const MAX_PENDING_MARKS: usize = 1024;

/// Where the connection stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// Connecting to the bot.
    Connecting,
    /// Streaming.
    Connected,
    /// Over, and why.
    Closed {
        /// Why it closed.
        reason: String,
    },
}

/// What the session tells the service.
#[derive(Debug)]
pub struct IoStatus {
    state: Mutex<ConnectionState>,
    /// Binary frames of the caller's audio written to the socket.
    pub frames_sent: AtomicU64,
    /// Binary frames received from the bot.
    pub frames_received: AtomicU64,
    /// Frames of the caller's audio dropped because the bot was not reading.
    pub frames_not_sent: AtomicU64,
    /// Bus samples of the bot's audio dropped because the queue was full.
    pub dropped_samples: AtomicU64,
    /// Marks waiting for their audio.
    pub marks_pending: AtomicU64,
    /// `killAudio` commands obeyed.
    pub kills: AtomicU64,
    /// Text frames that were not a command telepatch acts on.
    pub ignored_messages: AtomicU64,
}

impl IoStatus {
    fn new() -> IoStatus {
        IoStatus {
            state: Mutex::new(ConnectionState::Connecting),
            frames_sent: AtomicU64::new(0),
            frames_received: AtomicU64::new(0),
            frames_not_sent: AtomicU64::new(0),
            dropped_samples: AtomicU64::new(0),
            marks_pending: AtomicU64::new(0),
            kills: AtomicU64::new(0),
            ignored_messages: AtomicU64::new(0),
        }
    }

    /// The connection's state now.
    pub fn state(&self) -> ConnectionState {
        lock(&self.state).clone()
    }

    fn set(&self, state: ConnectionState) {
        *lock(&self.state) = state;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only whole values are stored under this lock: a panic elsewhere leaves it valid.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Everything the session owns, allocated before its thread starts.
pub struct Session {
    settings: WebsocketSettings,
    first_frame: String,
    /// The caller's audio at 48 kHz, written by the engine.
    caller: rtrb::Consumer<f32>,
    /// The bot's audio at 48 kHz, read by the engine; its capacity is the queue bound.
    bot: rtrb::Producer<f32>,
    shared: Arc<Shared>,
    status: Arc<IoStatus>,
    /// 48 kHz -> the node's rate (none at 48 kHz).
    downsampler: Option<StreamResampler>,
    /// The node's rate -> 48 kHz (none at 48 kHz).
    upsampler: Option<StreamResampler>,
    caller_bus: Vec<f32>,
    caller_wire_rate: Vec<f32>,
    wire: BytesMut,
    decoded: Vec<f32>,
    bot_bus: Vec<f32>,
    odd_byte: Option<u8>,
    marks: MarkBook,
    dtmf: Option<DtmfSource>,
}

/// Where a call's DTMF digits come from: the gateway's event stream, filtered by call.
pub struct DtmfSource {
    /// The call whose digits go to the bot.
    pub call: uuid::Uuid,
    /// The gateway's events.
    pub events: broadcast::Receiver<Event>,
}

impl DtmfSource {
    /// The next digit of the call; pends for ever once the event stream is gone.
    async fn next_digit(source: &mut Option<DtmfSource>) -> String {
        loop {
            let Some(feed) = source.as_mut() else {
                return std::future::pending().await;
            };
            match feed.events.recv().await {
                Ok(Event::Dtmf { call, digit }) if call == feed.call => return digit,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => *source = None,
            }
        }
    }
}

/// A prepared session and the status it shares with the service.
pub struct SessionHandle {
    /// The session, to run on its thread.
    pub session: Session,
    /// Its state and counters, for the service.
    pub status: Arc<IoStatus>,
}

impl Session {
    /// Prepares a session streaming `caller` to the bot and the bot into `bot`.
    pub fn prepare(
        settings: WebsocketSettings,
        first_frame: String,
        caller: rtrb::Consumer<f32>,
        bot: rtrb::Producer<f32>,
        shared: Arc<Shared>,
        dtmf: Option<DtmfSource>,
    ) -> Result<SessionHandle, codecs::resample::ResampleError> {
        let rate = settings.sample_rate;
        let (downsampler, upsampler) = if rate == BUS_RATE {
            (None, None)
        } else {
            (
                Some(StreamResampler::new(BUS_RATE, rate, Quality::Voice)?),
                Some(StreamResampler::new(rate, BUS_RATE, Quality::Voice)?),
            )
        };
        let caller_capacity = caller.buffer().capacity();
        let caller_wire_len = downsampler
            .as_ref()
            .map_or(0, |r| r.max_output_len(caller_capacity));
        let decoded_len = DECODE_PIECE_BYTES / 2 + 1;
        let bot_bus_len = upsampler
            .as_ref()
            .map_or(0, |r| r.max_output_len(decoded_len));
        let status = Arc::new(IoStatus::new());
        let session = Session {
            settings,
            first_frame,
            caller,
            bot,
            shared,
            status: Arc::clone(&status),
            downsampler,
            upsampler,
            caller_bus: vec![0.0; caller_capacity],
            caller_wire_rate: vec![0.0; caller_wire_len],
            // Room for every frame that may wait in the channel, so reuse keeps up.
            wire: BytesMut::with_capacity(caller_capacity * 2 * 2),
            decoded: Vec::with_capacity(decoded_len),
            bot_bus: vec![0.0; bot_bus_len],
            odd_byte: None,
            marks: MarkBook::new(MAX_PENDING_MARKS),
            dtmf,
        };
        Ok(SessionHandle { session, status })
    }

    /// Runs the session until the bot goes, the connection fails or `stop` is raised.
    pub async fn run(mut self, stop: CancellationToken) {
        let reason = self.connect_and_stream(&stop).await;
        tracing::info!(url = %self.settings.url, %reason, "websocket stream closed");
        self.status.set(ConnectionState::Closed { reason });
    }

    async fn connect_and_stream(&mut self, stop: &CancellationToken) -> String {
        let mut request = match self.settings.url.as_str().into_client_request() {
            Ok(request) => request,
            Err(e) => return format!("bad url: {e}"),
        };
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(protocol::SUBPROTOCOL),
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let connecting = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(request, Some(config), true),
        );
        let socket = tokio::select! {
            () = stop.cancelled() => return "stopped before connecting".into(),
            connected = connecting => match connected {
                Err(_) => return format!("connecting took longer than {} s", CONNECT_TIMEOUT.as_secs()),
                Ok(Err(e)) => return format!("cannot connect: {e}"),
                Ok(Ok((socket, _response))) => socket,
            },
        };
        self.status.set(ConnectionState::Connected);
        tracing::info!(url = %self.settings.url, "websocket stream connected");
        let (sink, mut stream) = socket.split();
        let (outgoing, queued) = mpsc::channel(OUTGOING_FRAMES);
        // The channel is empty: the first frame always fits.
        let _ = outgoing.try_send(Message::text(self.first_frame.clone()));
        self.shared.streaming.store(true, Ordering::Release);
        let status = Arc::clone(&self.status);
        let mut writer = std::pin::pin!(write_frames(sink, queued, status));
        let mut ticker = tokio::time::interval(FRAME);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut writer_done = false;
        let reason = loop {
            tokio::select! {
                () = stop.cancelled() => break "the node was removed".to_owned(),
                written = &mut writer => {
                    writer_done = true;
                    break written.err().unwrap_or_else(|| "the writer ended".into());
                }
                digit = DtmfSource::next_digit(&mut self.dtmf) => {
                    let _ = outgoing.try_send(Message::text(protocol::dtmf_event(&digit)));
                }
                _ = ticker.tick() => {
                    self.send_caller_audio(&outgoing);
                    self.answer_played_marks(&outgoing);
                }
                message = stream.next() => match message {
                    None => break "the bot closed the connection".into(),
                    Some(Err(e)) => break format!("reading failed: {e}"),
                    Some(Ok(Message::Binary(bytes))) => self.bot_audio(&bytes),
                    Some(Ok(Message::Text(text))) => {
                        if self.bot_command(text.as_str(), &outgoing) {
                            break "the bot asked to disconnect".into();
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(frame) => format!("the bot closed the connection ({} {})", u16::from(frame.code), frame.reason.as_str()),
                            None => "the bot closed the connection".into(),
                        };
                    }
                    // Pings are answered by tungstenite itself.
                    Some(Ok(_)) => {}
                },
            }
        };
        self.shared.streaming.store(false, Ordering::Release);
        // Whatever marks are left will never play.
        for (name, outcome) in self.marks.clear() {
            let _ = outgoing.try_send(Message::text(protocol::mark_event(&name, outcome)));
        }
        drop(outgoing);
        if !writer_done {
            // The writer sends what is queued, then a close frame; bounded.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer).await;
        }
        reason
    }

    /// Sends what the engine wrote since the last frame as one binary frame.
    fn send_caller_audio(&mut self, outgoing: &mpsc::Sender<Message>) {
        let n = self.caller.slots();
        if n == 0 {
            return;
        }
        let Ok(chunk) = self.caller.read_chunk(n) else {
            return;
        };
        let (first, second) = chunk.as_slices();
        self.caller_bus[..first.len()].copy_from_slice(first);
        self.caller_bus[first.len()..n].copy_from_slice(second);
        chunk.commit_all();
        let samples = match &mut self.downsampler {
            Some(resampler) => {
                let written = resampler.process(&self.caller_bus[..n], &mut self.caller_wire_rate);
                &self.caller_wire_rate[..written]
            }
            None => &self.caller_bus[..n],
        };
        if samples.is_empty() {
            return;
        }
        // Reclaims the space of frames the socket has written (no allocation then).
        self.wire.reserve(samples.len() * 2);
        protocol::encode_s16le(samples, &mut self.wire);
        let frame = Message::Binary(self.wire.split().freeze());
        if outgoing.try_send(frame).is_err() {
            self.status.frames_not_sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues the bot's PCM for playing, at 48 kHz; what does not fit is dropped.
    fn bot_audio(&mut self, bytes: &[u8]) {
        self.status.frames_received.fetch_add(1, Ordering::Relaxed);
        if !self.settings.bidirectional {
            return;
        }
        for piece in bytes.chunks(DECODE_PIECE_BYTES) {
            protocol::decode_s16le(piece, &mut self.odd_byte, &mut self.decoded);
            let samples = match &mut self.upsampler {
                Some(resampler) => {
                    let written = resampler.process(&self.decoded, &mut self.bot_bus);
                    &self.bot_bus[..written]
                }
                None => &self.decoded[..],
            };
            let accepted = samples.len().min(self.bot.slots());
            if let Ok(mut chunk) = self.bot.write_chunk(accepted) {
                let (first, second) = chunk.as_mut_slices();
                let split = first.len();
                first.copy_from_slice(&samples[..split]);
                second.copy_from_slice(&samples[split..accepted]);
                chunk.commit_all();
                self.shared
                    .queued_total
                    .fetch_add(accepted as u64, Ordering::Release);
            }
            let dropped = samples.len() - accepted;
            if dropped > 0 {
                self.status
                    .dropped_samples
                    .fetch_add(dropped as u64, Ordering::Relaxed);
            }
        }
    }

    /// Acts on a text frame from the bot; true if the bot asked to disconnect.
    fn bot_command(&mut self, text: &str, outgoing: &mpsc::Sender<Message>) -> bool {
        match protocol::parse_command(text) {
            Ok(BotCommand::KillAudio) => {
                let queued = self.shared.queued_total.load(Ordering::Acquire);
                self.shared.discard_through.store(queued, Ordering::Release);
                // The filter's memory of the killed audio must not leak into what follows.
                if let Some(resampler) = &mut self.upsampler {
                    resampler.reset();
                }
                self.odd_byte = None;
                self.status.kills.fetch_add(1, Ordering::Relaxed);
                for (name, outcome) in self.marks.clear() {
                    send_mark(outgoing, &name, outcome);
                }
            }
            Ok(BotCommand::Mark { name }) => {
                let position = self.shared.queued_total.load(Ordering::Acquire);
                if let Some((name, outcome)) = self.marks.place(name, position) {
                    send_mark(outgoing, &name, outcome);
                }
            }
            Ok(BotCommand::ClearMarks) => {
                for (name, outcome) in self.marks.clear() {
                    send_mark(outgoing, &name, outcome);
                }
            }
            Ok(BotCommand::Disconnect) => return true,
            Ok(BotCommand::Other(_)) | Err(_) => {
                self.status.ignored_messages.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.status
            .marks_pending
            .store(self.marks.len() as u64, Ordering::Relaxed);
        false
    }

    fn answer_played_marks(&mut self, outgoing: &mpsc::Sender<Message>) {
        let taken = self.shared.taken.load(Ordering::Acquire);
        for (name, outcome) in self.marks.played(taken) {
            send_mark(outgoing, &name, outcome);
        }
        self.status
            .marks_pending
            .store(self.marks.len() as u64, Ordering::Relaxed);
    }
}

fn send_mark(outgoing: &mpsc::Sender<Message>, name: &str, outcome: MarkOutcome) {
    // A full channel means the bot is not reading; the mark is lost with the audio.
    let _ = outgoing.try_send(Message::text(protocol::mark_event(name, outcome)));
}

/// Writes queued frames, each within [`WRITE_TIMEOUT`]; when the channel closes, sends
/// a close frame. Returns why it stopped early.
async fn write_frames<S>(
    mut sink: S,
    mut queued: mpsc::Receiver<Message>,
    status: Arc<IoStatus>,
) -> Result<(), String>
where
    S: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    while let Some(message) = queued.recv().await {
        let binary = matches!(message, Message::Binary(_));
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {
                if binary {
                    status.frames_sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => return Err(format!("writing failed: {e}")),
            Err(_) => {
                return Err(format!(
                    "the bot read nothing for {} s",
                    WRITE_TIMEOUT.as_secs()
                ));
            }
        }
    }
    let _ = sink.close().await;
    Ok(())
}
