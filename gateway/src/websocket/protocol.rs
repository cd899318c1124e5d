//! The jambonz `listen` protocol as telepatch speaks it, sans IO: the first text frame,
//! the bot's JSON commands, and the events telepatch sends back.
//!
//! jambonz's documentation of the `listen` verb (docs.jambonz.org, "listen", and
//! "Bidirectional (streaming) audio") specifies: the `audio.jambonz.org` subprotocol; one
//! text frame first, holding the call's attributes (`callSid`, ...) plus `sampleRate` and
//! `mixType`, with the verb's `metadata` added; then binary frames of 16-bit PCM at
//! `sampleRate`. With bidirectional streaming the bot sends binary frames of the same PCM
//! back, and JSON text frames: `{"type": "killAudio"}` (stop what is queued),
//! `{"type": "mark", "data": {"name": ...}}` (answered with a `mark` event when the audio
//! sent before it has played, or with `"event": "cleared"` when it was killed first),
//! `{"type": "clearMarks"}` and `{"type": "disconnect"}`. With `passDtmf`, the caller's
//! digits reach the bot as `{"event": "dtmf", "dtmf": "5", "duration": ...}`.
//!
//! Where the documentation leaves a choice, telepatch makes these (also in docs/API.md):
//! `metadata`'s keys are merged at the top level of the first frame, as jambonz does, but
//! never replace `callSid`, `sampleRate` or `mixType`; binary frames are little-endian
//! (jambonz's Linux hosts are); a text frame that is not one of the commands above is
//! counted and ignored; a digit's `duration` is left out (AudioSocket does not carry it)
//! and digits are always passed when the node belongs to a call.

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The subprotocol every `listen` connection asks for.
pub const SUBPROTOCOL: &str = "audio.jambonz.org";

/// The first text frame: `attributes` (the call's, e.g. `callSid`), `sampleRate`,
/// `mixType` (`mono`), and the keys of `metadata` (which never replace the others).
pub fn first_frame(
    attributes: &Map<String, Value>,
    sample_rate: u32,
    metadata: Option<&Value>,
) -> String {
    let mut frame = Map::new();
    if let Some(Value::Object(extra)) = metadata {
        for (key, value) in extra {
            frame.insert(key.clone(), value.clone());
        }
    }
    for (key, value) in attributes {
        frame.insert(key.clone(), value.clone());
    }
    frame.insert("sampleRate".into(), json!(sample_rate));
    frame.insert("mixType".into(), json!("mono"));
    Value::Object(frame).to_string()
}

/// A JSON command from the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BotCommand {
    /// Drop everything queued for playing; pending marks are cleared.
    KillAudio,
    /// Tell the bot when the audio queued so far has played.
    Mark {
        /// The bot's name for the mark, sent back.
        name: String,
    },
    /// Forget the pending marks (each is answered `cleared`).
    ClearMarks,
    /// Close the connection.
    Disconnect,
    /// Valid JSON, but nothing telepatch acts on (its `type`, if it has one).
    Other(Option<String>),
}

/// Why a text frame from the bot is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A `mark` without `data.name`.
    #[error("a mark needs data.name (a string)")]
    MarkWithoutName,
}

#[derive(Deserialize)]
struct RawCommand {
    #[serde(rename = "type")]
    kind: Option<String>,
    data: Option<Value>,
}

/// Parses one text frame from the bot.
pub fn parse_command(text: &str) -> Result<BotCommand, CommandError> {
    let raw: RawCommand =
        serde_json::from_str(text).map_err(|e| CommandError::NotJson(e.to_string()))?;
    Ok(match raw.kind.as_deref() {
        Some("killAudio") => BotCommand::KillAudio,
        Some("clearMarks") => BotCommand::ClearMarks,
        Some("disconnect") => BotCommand::Disconnect,
        Some("mark") => {
            let name = raw
                .data
                .as_ref()
                .and_then(|d| d.get("name"))
                .and_then(Value::as_str)
                .ok_or(CommandError::MarkWithoutName)?;
            BotCommand::Mark {
                name: name.to_owned(),
            }
        }
        other => BotCommand::Other(other.map(str::to_owned)),
    })
}

/// What became of a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkOutcome {
    /// The audio queued before it has played.
    Playout,
    /// It was cleared (`killAudio` or `clearMarks`) before that.
    Cleared,
}

/// The event that answers mark `name`.
pub fn mark_event(name: &str, outcome: MarkOutcome) -> String {
    let event = match outcome {
        MarkOutcome::Playout => "playout",
        MarkOutcome::Cleared => "cleared",
    };
    json!({"type": "mark", "data": {"name": name, "event": event}}).to_string()
}

/// The event passing a caller's DTMF digit to the bot (jambonz's `passDtmf` format,
/// without `duration`: AudioSocket does not carry it).
pub fn dtmf_event(digit: &str) -> String {
    json!({"event": "dtmf", "dtmf": digit}).to_string()
}

/// Encodes `samples` (±1.0 full scale) as 16-bit little-endian PCM onto `out`.
pub fn encode_s16le(samples: &[f32], out: &mut impl Extend<u8>) {
    out.extend(samples.iter().flat_map(|&s| {
        let value = (s.clamp(-1.0, 1.0) * 32767.0).round() as i16;
        value.to_le_bytes()
    }));
}

/// Decodes 16-bit little-endian PCM into `out` (cleared first). A trailing odd byte is
/// carried in `odd` to the next frame, so a bot that splits samples across frames is
/// heard right.
pub fn decode_s16le(bytes: &[u8], odd: &mut Option<u8>, out: &mut Vec<f32>) {
    out.clear();
    let mut rest = bytes;
    if let Some(first) = odd.take() {
        match rest.split_first() {
            Some((&second, tail)) => {
                out.push(f32::from(i16::from_le_bytes([first, second])) / 32768.0);
                rest = tail;
            }
            None => {
                *odd = Some(first);
                return;
            }
        }
    }
    let pairs = rest.chunks_exact(2);
    if let [last] = pairs.remainder() {
        *odd = Some(*last);
    }
    out.extend(pairs.map(|p| f32::from(i16::from_le_bytes([p[0], p[1]])) / 32768.0));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_frame_carries_the_attributes_rate_mix_and_metadata() {
        let mut attributes = Map::new();
        attributes.insert("callSid".into(), json!("abc"));
        let metadata = json!({"tenant": "t1", "callSid": "forged", "sampleRate": 1});
        let frame: Value =
            serde_json::from_str(&first_frame(&attributes, 16_000, Some(&metadata))).unwrap();
        assert_eq!(frame["callSid"], "abc");
        assert_eq!(frame["sampleRate"], 16_000);
        assert_eq!(frame["mixType"], "mono");
        assert_eq!(frame["tenant"], "t1");
    }

    #[test]
    fn commands_parse_by_their_type() {
        assert_eq!(
            parse_command(r#"{"type":"killAudio"}"#),
            Ok(BotCommand::KillAudio)
        );
        assert_eq!(
            parse_command(r#"{"type":"mark","data":{"name":"m1"}}"#),
            Ok(BotCommand::Mark { name: "m1".into() })
        );
        assert_eq!(
            parse_command(r#"{"type":"clearMarks"}"#),
            Ok(BotCommand::ClearMarks)
        );
        assert_eq!(
            parse_command(r#"{"type":"disconnect"}"#),
            Ok(BotCommand::Disconnect)
        );
        assert_eq!(
            parse_command(r#"{"type":"command","command":"redirect"}"#),
            Ok(BotCommand::Other(Some("command".into())))
        );
        assert_eq!(
            parse_command(r#"{"type":"mark","data":{}}"#),
            Err(CommandError::MarkWithoutName)
        );
        assert!(matches!(
            parse_command("nope"),
            Err(CommandError::NotJson(_))
        ));
    }

    #[test]
    fn mark_events_use_jambonz_field_names() {
        let event: Value = serde_json::from_str(&mark_event("m1", MarkOutcome::Playout)).unwrap();
        assert_eq!(
            event,
            json!({"type": "mark", "data": {"name": "m1", "event": "playout"}})
        );
        let event: Value = serde_json::from_str(&mark_event("m2", MarkOutcome::Cleared)).unwrap();
        assert_eq!(event["data"]["event"], "cleared");
    }

    #[test]
    fn pcm_round_trips_and_odd_bytes_carry_over() {
        let samples = [0.0, 0.5, -0.5, 0.999, -1.0];
        let mut bytes = Vec::new();
        encode_s16le(&samples, &mut bytes);
        assert_eq!(bytes.len(), 10);
        let (mut odd, mut first, mut second) = (None, Vec::new(), Vec::new());
        decode_s16le(&bytes[..3], &mut odd, &mut first);
        decode_s16le(&bytes[3..], &mut odd, &mut second);
        assert_eq!(odd, None);
        let decoded: Vec<f32> = first.into_iter().chain(second).collect();
        assert_eq!(decoded.len(), 5);
        for (a, b) in samples.iter().zip(&decoded) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }
}
