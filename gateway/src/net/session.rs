//! One AudioSocket connection: handshake, reader, paced writer (fact sheet §4-§8, §10).
//!
//! The session task owns the connection. It waits (with a deadline) for the ID message,
//! asks the [`Gateway`] to admit the call, spawns the writer half and then reads until
//! the stream ends, feeding audio straight into the call's uplink without any channel
//! hop. The writer sends one frame every `frame_ms` on absolute deadlines, silence when
//! nothing is patched, and `00 00 00` when the gateway hangs up. Whatever a peer does,
//! only its own session ends: errors are logged once with the call's UUID and peer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use api::model::AudioCoding;
use codecs::rate::SampleRate;
use futures_util::StreamExt;
use sip_glue::audiosocket::{
    AudioKind, CodecError, CodingDetector, DetectedCoding, FrameCoding, GateOutcome, IdGate,
    Limits, Message, ServerCodec, ServerMessage, write_audio_frame_with,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::codec::FramedRead;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::ReplyRate;
use crate::engine::call::{CallStats, Downlink, UplinkCoding};
use crate::net::unidentified::UnidentifiedPlace;
use crate::service::{AdmitError, CallHandle, EndReason, Gateway};

/// How long a session keeps reading after it sent a hangup, waiting for Asterisk to
/// close (it does within about 1 ms, §8).
const HANGUP_LINGER: Duration = Duration::from_secs(2);
/// Longest wait for the uplink ring to play out after the caller hung up.
const TAIL_DRAIN_LIMIT: Duration = Duration::from_millis(500);
/// Kernel send buffer of a call's socket (Linux doubles it): over a second of replies
/// at 16 kHz, far more than paced 20 ms frames ever queue while the peer reads.
const SEND_BUFFER_BYTES: usize = 64 * 1024;
/// Rate changes a call may make before it is closed as abusive (Asterisk makes none).
const MAX_RATE_CHANGES: u32 = 8;
/// DTMF digits of one call logged one line each (a person dials a few dozen at most);
/// the rest are counted.
const LOGGED_DTMF_DIGITS: u64 = 64;
/// Bytes of a malformed payload quoted in a log line (a peer must not be able to make
/// us write its 64 KiB payloads into the log).
const LOGGED_PAYLOAD_BYTES: usize = 16;
/// Largest reply frame: 20 ms at 192 kHz, plus the header.
const MAX_REPLY_FRAME: usize = 3 + 2 * 192 * 20;

/// Runs one accepted connection to completion.
pub async fn run(
    gateway: Arc<Gateway>,
    stream: TcpStream,
    peer: SocketAddr,
    unidentified: UnidentifiedPlace,
    call_slots: Arc<Semaphore>,
) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    // Replies are real time: a deep kernel send queue only turns a peer that stopped
    // reading into seconds of stale audio, and hides it from the write timeout.
    if let Err(e) = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES) {
        debug!(%peer, error = %e, "cannot bound the send buffer");
    }
    let config = gateway.config().audiosocket.clone();
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FramedRead::new(
        read_half,
        ServerCodec::new(Limits::new(config.max_message_ms)),
    );
    let shutdown = gateway.shutdown_token();

    // Handshake: the ID must come first, within the deadline (§4, §10.5).
    let mut gate = IdGate::new(std::time::Instant::now(), gateway.config().id_timeout());
    let deadline = Instant::now() + gateway.config().id_timeout();
    let id = loop {
        let next = tokio::select! {
            next = reader.next() => next,
            () = sleep_until(deadline) => {
                warn!(%peer, timeout_ms = config.id_timeout_ms, "no ID message in time; closing connection");
                return;
            }
            () = shutdown.cancelled() => return,
        };
        match next {
            None => {
                // The dialplan app on an unanswered channel connects and closes
                // without a byte (§4): worth a debug line, not an alarm.
                debug!(%peer, "connection closed before sending an ID (unanswered channel?)");
                return;
            }
            Some(Err(CodecError::TruncatedAtEof { buffered, .. })) => {
                warn!(%peer, buffered, "connection closed in the middle of its first message");
                return;
            }
            Some(Err(e)) => {
                warn!(%peer, error = %e, "protocol error before the ID; closing connection");
                return;
            }
            Some(Ok(message)) => match gate.on_message(&message) {
                Ok(GateOutcome::Identified(id)) => break id,
                Ok(GateOutcome::SkippedBeforeId { kind }) => {
                    debug!(%peer, kind, "skipped a message of unknown kind before the ID");
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(%peer, error = %e, "protocol violation; closing connection");
                    return;
                }
            },
        }
    };

    // Identified: the connection is a call now, and needs a call slot.
    drop(unidentified);
    let span = info_span!("call", uuid = %id, %peer);
    async move {
        let Ok(_call_slot) = call_slots.try_acquire_owned() else {
            gateway.count_refused();
            warn!(
                max_calls = config.max_calls,
                "call cap reached; refusing the call"
            );
            send_hangup(
                &mut write_half,
                Duration::from_millis(config.write_timeout_ms),
            )
            .await;
            return;
        };
        let admitted = match gateway.admit_call(id, peer) {
            Ok(admitted) => admitted,
            Err(e) => {
                match &e {
                    AdmitError::Duplicate { .. } => warn!(error = %e, "refusing call"),
                    AdmitError::ShuttingDown => info!("refusing call: shutting down"),
                    _ => warn!(error = %e, "cannot admit call"),
                }
                send_hangup(
                    &mut write_half,
                    Duration::from_millis(config.write_timeout_ms),
                )
                .await;
                return;
            }
        };
        info!(
            route = admitted.handle.route.as_deref().unwrap_or("(lobby)"),
            "call connected"
        );
        let handle = admitted.handle;
        // The route is applied beside the session, not before it: opening a recording or
        // waiting for the database must never keep this call's reader and writer (and
        // with them Asterisk's idle timer) waiting.
        let routing = tokio::spawn({
            let (gateway, handle) = (Arc::clone(&gateway), Arc::clone(&handle));
            async move { gateway.route_call(&handle).await }.in_current_span()
        });

        let first_audio = Arc::new(Notify::new());
        let writer = tokio::spawn(
            write_loop(
                write_half,
                admitted.downlink,
                Arc::clone(&handle),
                Arc::clone(&first_audio),
                WriterSettings {
                    reply_rate: config.reply_rate,
                    reply_rate_wait: Duration::from_millis(config.reply_rate_wait_ms),
                    frame: Duration::from_millis(u64::from(config.frame_ms)),
                    write_timeout: Duration::from_millis(config.write_timeout_ms),
                },
            )
            .in_current_span(),
        );

        let mut uplink = admitted.uplink;
        let reason = read_loop(
            &mut reader,
            &mut gate,
            &mut uplink,
            &gateway,
            &handle,
            &first_audio,
            CallCoding::new(admitted.coding),
            Duration::from_millis(u64::from(config.frame_ms)),
        )
        .await;
        if reason == EndReason::Caller {
            // Let the engine play out what the caller said last (recordings keep it).
            uplink.flush_tail();
        }
        // From here the ring running dry is the call's end, not a gap.
        uplink.mark_ended();
        if reason == EndReason::Caller {
            let drain_deadline = Instant::now() + TAIL_DRAIN_LIMIT;
            while uplink.queued() > 0 && Instant::now() < drain_deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }

        // Make sure the writer stops (it sends 00 00 00 if the line is still up), and
        // that the route is done before the call's nodes are released.
        handle.hangup.cancel();
        let writer_result = writer.await;
        if let Err(e) = routing.await {
            warn!(error = %e, "applying the route failed");
        }
        // A writer that failed (the peer stopped reading, a write error) says why the
        // call really ended, whatever the reader saw afterwards.
        let reason = match (reason, writer_result) {
            (EndReason::Caller | EndReason::Gateway { .. }, Ok(Err(e))) => {
                EndReason::Error { error: e }
            }
            (reason, _) => reason,
        };
        gateway.end_call(&handle, reason);
    }
    .instrument(span)
    .await;
}

/// Reads until the stream ends; returns why it ended.
#[allow(clippy::too_many_arguments)]
async fn read_loop(
    reader: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, ServerCodec>,
    gate: &mut IdGate,
    uplink: &mut crate::engine::call::Uplink,
    gateway: &Gateway,
    handle: &CallHandle,
    first_audio: &Notify,
    mut coding: CallCoding,
    frame: Duration,
) -> EndReason {
    let stats = &handle.stats;
    let mut warned = Warned::default();
    let mut last_arrival: Option<Instant> = None;
    let mut linger_until: Option<Instant> = None;
    let mut rate_changes = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            next = reader.next() => next,
            () = handle.hangup.cancelled(), if linger_until.is_none() => {
                linger_until = Some(Instant::now() + HANGUP_LINGER);
                continue;
            }
            () = sleep_until(linger_until.unwrap_or_else(Instant::now)), if linger_until.is_some() => {
                debug!("peer did not close after our hangup; dropping the connection");
                return gateway_reason(handle);
            }
        };
        let message = match next {
            None => {
                // The peer closing after we asked it to hang up (shutdown, API) is our
                // hangup, even when its EOF won the race against the cancellation.
                return if linger_until.is_some() || handle.hangup.is_cancelled() {
                    gateway_reason(handle)
                } else {
                    EndReason::Caller
                };
            }
            Some(Ok(message)) => message,
            Some(Err(CodecError::TruncatedAtEof { buffered, needed })) => {
                warn!(buffered, ?needed, "stream ended in the middle of a message");
                return EndReason::Caller;
            }
            Some(Err(CodecError::Io(e))) => {
                if linger_until.is_some() {
                    return gateway_reason(handle);
                }
                if e.kind() == std::io::ErrorKind::ConnectionReset {
                    // Asterisk sometimes closes a hung-up channel's socket with a reset
                    // instead of a FIN: the caller hung up all the same.
                    info!("caller closed the connection with a reset (hangup)");
                    return EndReason::Caller;
                }
                warn!(error = %e, "connection error");
                return EndReason::Error {
                    error: e.to_string(),
                };
            }
            Some(Err(e)) => {
                warn!(error = %e, "protocol error; closing the call");
                return EndReason::Error {
                    error: e.to_string(),
                };
            }
        };
        match gate.on_message(&message) {
            Ok(GateOutcome::SecondIdIgnored(second)) => {
                once(
                    &mut warned.second_id,
                    || warn!(%second, "second ID message ignored (protocol violation)"),
                );
                skipped(stats);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %e, "protocol violation");
                return EndReason::Error {
                    error: e.to_string(),
                };
            }
        }
        match message {
            Message::Audio {
                kind,
                payload,
                odd_byte_dropped,
            } => {
                let now = Instant::now();
                if let Some(previous) = last_arrival {
                    // Deviation of the inter-arrival time from the nominal frame time.
                    let gap = now.duration_since(previous);
                    let deviation = gap.abs_diff(frame);
                    stats.max_jitter_us.fetch_max(
                        u64::try_from(deviation.as_micros()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                }
                last_arrival = Some(now);
                if odd_byte_dropped {
                    once(
                        &mut warned.odd,
                        || warn!(kind = %kind, "odd-length audio; trailing byte dropped"),
                    );
                    skipped(stats);
                }
                let rate = kind.rate();
                if rate != uplink.rate() || handle.caller_rate() == 0 {
                    let first = handle.caller_rate() == 0;
                    if !first {
                        rate_changes += 1;
                        if rate_changes > MAX_RATE_CHANGES {
                            // Asterisk keeps one kind per session (§10.10); a peer that
                            // keeps switching makes us rebuild a resampler per message.
                            warn!(
                                changes = rate_changes,
                                "caller keeps changing its audio rate; closing the call"
                            );
                            return EndReason::Error {
                                error: format!(
                                    "caller changed its audio rate more than {MAX_RATE_CHANGES} times"
                                ),
                            };
                        }
                        info!(from = %uplink.rate(), to = %rate, "caller changed rate mid-call");
                    }
                    if let Err(e) = uplink.set_rate(rate) {
                        warn!(error = %e, "cannot resample this rate");
                        return EndReason::Error {
                            error: e.to_string(),
                        };
                    }
                    // The writer follows: replies go at the caller's current rate.
                    handle.set_caller_rate(rate.hz(), kind.byte());
                    if first {
                        first_audio.notify_one();
                    }
                }
                let decode_as = if kind == AudioKind::Slin8 {
                    coding.for_slin8_payload(&payload)
                } else {
                    Some(UplinkCoding::Slin)
                };
                match decode_as {
                    Some(decode_as) => uplink.push_payload(&payload, decode_as),
                    None => skipped(stats),
                }
            }
            Message::EmptyAudio { kind } => {
                once(
                    &mut warned.empty,
                    || warn!(kind = %kind, "zero-length audio message skipped"),
                );
                skipped(stats);
            }
            Message::Dtmf(digit) => {
                let digits = stats.dtmf_digits.fetch_add(1, Ordering::Relaxed) + 1;
                if digits <= LOGGED_DTMF_DIGITS {
                    info!(digit = %digit.as_char(), "DTMF");
                } else if digits == LOGGED_DTMF_DIGITS + 1 {
                    warn!(
                        logged = LOGGED_DTMF_DIGITS,
                        "many DTMF digits on this call; further digits are counted, not logged"
                    );
                }
                gateway.dtmf(handle.id, digit.as_char());
            }
            Message::InvalidDtmf { payload } => {
                once(&mut warned.dtmf, || {
                    warn!(
                        len = payload.len(),
                        first_bytes = ?&payload[..payload.len().min(LOGGED_PAYLOAD_BYTES)],
                        "invalid DTMF message skipped"
                    )
                });
                skipped(stats);
            }
            Message::Hangup => {
                // Asterisk never sends 0x00 (§3), but a client that does means "done".
                info!("peer sent a hangup message");
                return EndReason::Caller;
            }
            Message::Error(code) => {
                once(&mut warned.error, || {
                    warn!(code = code.bits(), "peer sent an error message")
                });
                skipped(stats);
            }
            Message::Unknown { kind, len } => {
                once(&mut warned.unknown, || {
                    warn!(kind, len, "message of unknown kind skipped")
                });
                skipped(stats);
            }
            Message::Id(_) => {}
            _ => skipped(stats),
        }
    }
}

fn skipped(stats: &CallStats) {
    stats.skipped_messages.fetch_add(1, Ordering::Relaxed);
}

fn gateway_reason(handle: &CallHandle) -> EndReason {
    EndReason::Gateway {
        why: handle.hangup_reason().unwrap_or_else(|| "hangup".into()),
    }
}

/// Which oddities were already logged for this call (one line each, then counters).
#[derive(Default)]
struct Warned {
    second_id: bool,
    odd: bool,
    empty: bool,
    dtmf: bool,
    unknown: bool,
    error: bool,
}

/// Runs `log` the first time only.
fn once(flag: &mut bool, log: impl FnOnce()) {
    if !*flag {
        *flag = true;
        log();
    }
}

/// How one call's kind-0x10 payloads are decoded: fixed by its route or the
/// configuration, or told from its first loud frames (fact sheet §9.2).
enum CallCoding {
    Fixed(UplinkCoding),
    Detect(CodingDetector),
}

impl CallCoding {
    fn new(choice: AudioCoding) -> CallCoding {
        match choice {
            AudioCoding::Auto => CallCoding::Detect(CodingDetector::new()),
            AudioCoding::Slin => CallCoding::Fixed(UplinkCoding::Slin),
            AudioCoding::Ulaw => CallCoding::Fixed(UplinkCoding::Ulaw),
            AudioCoding::Alaw => CallCoding::Fixed(UplinkCoding::Alaw),
        }
    }

    /// How to decode this 0x10 payload (`None`: drop it, it is an unclear frame before
    /// the detector decided); logs the detector's decision once per call.
    fn for_slin8_payload(&mut self, payload: &[u8]) -> Option<UplinkCoding> {
        match self {
            CallCoding::Fixed(coding) => Some(*coding),
            CallCoding::Detect(detector) => {
                let undecided = detector.decided().is_none();
                let frame = detector.observe(payload);
                if undecided && let Some(decided) = detector.decided() {
                    info!(
                        coding = match decided {
                            DetectedCoding::Slin => "slin",
                            DetectedCoding::Ulaw => "ulaw",
                        },
                        frames = detector.frames_seen(),
                        "kind 0x10 coding told from the caller's audio"
                    );
                }
                match frame {
                    FrameCoding::Slin => Some(UplinkCoding::Slin),
                    FrameCoding::Ulaw => Some(UplinkCoding::Ulaw),
                    FrameCoding::Mute => None,
                }
            }
        }
    }
}

struct WriterSettings {
    reply_rate: ReplyRate,
    reply_rate_wait: Duration,
    frame: Duration,
    write_timeout: Duration,
}

/// Sends one frame per `frame` period until the call ends; `00 00 00` on a gateway
/// hangup. Returns an error text if the peer stopped accepting data.
async fn write_loop(
    mut writer: OwnedWriteHalf,
    mut downlink: Downlink,
    handle: Arc<CallHandle>,
    first_audio: Arc<Notify>,
    settings: WriterSettings,
) -> Result<(), String> {
    // Learn the reply rate: fixed, or the caller's. Asterisk would rather see one rate
    // per connection (§7), so the writer waits a little for the caller's first audio;
    // a caller that starts silent (an ARI channel before it is bridged, a `c(slin16)`
    // channel whose far end says nothing yet) is answered at 8 kHz until its kind shows.
    let follow_caller = settings.reply_rate == ReplyRate::Caller;
    let mut rate = match settings.reply_rate {
        ReplyRate::Fixed(hz) => SampleRate::new(hz).unwrap_or(SampleRate::HZ_8000),
        ReplyRate::Caller => {
            tokio::select! {
                () = first_audio.notified() => {}
                () = tokio::time::sleep(settings.reply_rate_wait) => {}
                () = handle.hangup.cancelled() => {}
            }
            match caller_rate(&handle) {
                Some(rate) => rate,
                None => {
                    info!(
                        wait_ms = settings.reply_rate_wait.as_millis() as u64,
                        "no audio from the caller yet; replying at 8 kHz until its rate shows"
                    );
                    SampleRate::HZ_8000
                }
            }
        }
    };
    let mut kind = AudioKind::for_rate(rate).unwrap_or(AudioKind::Slin8);
    downlink.discard_queued();
    if let Err(e) = downlink.set_reply_rate(rate) {
        return Err(e.to_string());
    }
    debug!(rate = %rate, "reply rate set");

    let mut frame = vec![0u8; MAX_REPLY_FRAME];
    let mut next = Instant::now();
    loop {
        tokio::select! {
            biased;
            () = handle.hangup.cancelled() => break,
            () = sleep_until(next) => {}
        }
        if follow_caller
            && let Some(caller) = caller_rate(&handle)
            && caller != rate
        {
            info!(from = %rate, to = %caller, "reply rate follows the caller");
            if let Err(e) = downlink.set_reply_rate(caller) {
                return Err(e.to_string());
            }
            rate = caller;
            kind = AudioKind::for_rate(rate).unwrap_or(AudioKind::Slin8);
        }
        let samples = downlink.frame_samples();
        let len = match write_audio_frame_with(kind, samples, &mut frame, |payload| {
            downlink.next_frame(payload);
        }) {
            Ok(len) => len,
            Err(e) => return Err(e.to_string()),
        };
        // One write per message (§7: the payload must follow its header within 5 ms).
        match timeout(settings.write_timeout, writer.write_all(&frame[..len])).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return closed_or(e),
            Err(_) => {
                warn!(
                    timeout_ms = settings.write_timeout.as_millis() as u64,
                    "peer stopped reading; giving up"
                );
                // End the whole call: a peer that takes nothing must not stay listed
                // (and hold a call slot) for as long as it keeps the socket open.
                handle.request_hangup("peer stopped reading");
                return Err("peer stopped reading".into());
            }
        }
        next += settings.frame;
        // Paced from absolute deadlines; if the runtime stalled for more than three
        // frames, skip ahead instead of bursting (Asterisk does not re-time, §7). A stall
        // that long is heard by the caller, so it is counted and logged.
        let now = Instant::now();
        if now > next + settings.frame * 3 {
            let late = now.duration_since(next);
            let stats = &handle.stats;
            stats.writer_stalls.fetch_add(1, Ordering::Relaxed);
            let late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
            let longest = stats
                .longest_writer_stall_ms
                .fetch_max(late_ms, Ordering::Relaxed);
            if late_ms > longest {
                warn!(
                    late_ms,
                    stalls = stats.writer_stalls.load(Ordering::Relaxed),
                    "reply frames were held up (the session's thread was blocked or starved)"
                );
            }
            next = now;
        }
    }
    send_hangup(&mut writer, settings.write_timeout).await;
    Ok(())
}

/// The caller's rate as last seen in its audio, if it sent any.
fn caller_rate(handle: &CallHandle) -> Option<SampleRate> {
    match handle.caller_rate() {
        0 => None,
        hz => SampleRate::new(hz).ok(),
    }
}

fn closed_or(e: std::io::Error) -> Result<(), String> {
    match e.kind() {
        // The peer went away: the reader reports the end of the call.
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => Ok(()),
        _ => Err(e.to_string()),
    }
}

/// Sends `00 00 00` ("done, continue the dialplan", §8) and half-closes.
async fn send_hangup(writer: &mut OwnedWriteHalf, limit: Duration) {
    let mut bytes = [0u8; 3];
    if ServerMessage::Hangup.write_to(&mut bytes).is_ok() {
        let _ = timeout(limit, writer.write_all(&bytes)).await;
    }
    let _ = timeout(limit, writer.shutdown()).await;
}
