//! The body of the event webhooks: what the gateway POSTs to `[webhooks] events_url`
//! for each call event (see `docs/API.md`, "Event webhooks").
//!
//! One [`WebhookEvent`] per request: an envelope (`id`, `created_at`, `gateway`, `call`,
//! `seq`) and the event itself as [`WebhookPayload`], an adjacently tagged enum
//! (`"type"` names it, `"data"` carries its fields). A new kind of call event is one
//! more variant of [`WebhookPayload`] and of [`WebhookEventType`]; receivers skip types
//! they do not know.
//!
//! The types are here, in `api`, so that the OpenAPI document describes the body
//! (`webhooks` and `components.schemas`) from the same definitions the gateway
//! serializes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::store::CdrRecord;

/// Name of the header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "Telepatch-Signature";

/// Name of the header carrying the event's id, the same on every attempt (the
/// idempotency key).
pub const EVENT_ID_HEADER: &str = "Telepatch-Event-Id";

/// One webhook request's JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookEvent {
    /// The event's id (also in the `Telepatch-Event-Id` header): the same on every
    /// attempt to deliver it, so a receiver can skip an event it already handled.
    pub id: Uuid,
    /// When the gateway saw the event (RFC 3339, UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The gateway that sent it: its `gateway.instance` (by default the host name).
    #[schema(example = "studio-2")]
    pub gateway: String,
    /// The call the event is about (its AudioSocket UUID).
    pub call: Uuid,
    /// The event's number among this call's events, from 1. Events of one call are
    /// delivered in this order; a number missing means an event was given up or
    /// dropped.
    #[schema(minimum = 1)]
    pub seq: u64,
    /// What happened: `type` and `data`.
    #[serde(flatten)]
    pub payload: WebhookPayload,
}

/// What happened, tagged by `type`, with its fields in `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum WebhookPayload {
    /// The call connected and was identified.
    CallStarted(CallStartedData),
    /// A DTMF digit arrived.
    Dtmf(DtmfData),
    /// Voice activity detection heard the caller start talking.
    TalkStart(TalkData),
    /// Voice activity detection heard the caller stop talking.
    TalkStop(TalkData),
    /// The call ended; `data.record` is its call record.
    CallEnded(CallEndedData),
}

impl WebhookPayload {
    /// Its type.
    pub fn event_type(&self) -> WebhookEventType {
        match self {
            WebhookPayload::CallStarted(_) => WebhookEventType::CallStarted,
            WebhookPayload::Dtmf(_) => WebhookEventType::Dtmf,
            WebhookPayload::TalkStart(_) => WebhookEventType::TalkStart,
            WebhookPayload::TalkStop(_) => WebhookEventType::TalkStop,
            WebhookPayload::CallEnded(_) => WebhookEventType::CallEnded,
        }
    }
}

/// The types of webhook events (the `type` of a [`WebhookEvent`], and the names
/// `[webhooks] events` lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEventType {
    /// `call_started`.
    CallStarted,
    /// `dtmf`.
    Dtmf,
    /// `talk_start`.
    TalkStart,
    /// `talk_stop`.
    TalkStop,
    /// `call_ended`.
    CallEnded,
}

impl WebhookEventType {
    /// Every type, in the order of a call's life.
    pub const ALL: [WebhookEventType; 5] = [
        WebhookEventType::CallStarted,
        WebhookEventType::Dtmf,
        WebhookEventType::TalkStart,
        WebhookEventType::TalkStop,
        WebhookEventType::CallEnded,
    ];

    /// Its name, as in `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::CallStarted => "call_started",
            WebhookEventType::Dtmf => "dtmf",
            WebhookEventType::TalkStart => "talk_start",
            WebhookEventType::TalkStop => "talk_stop",
            WebhookEventType::CallEnded => "call_ended",
        }
    }
}

/// `data` of `call_started`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallStartedData {
    /// Asterisk's address.
    #[schema(example = "127.0.0.1:40312")]
    pub peer: String,
    /// The route applied, if any.
    pub route: Option<String>,
}

/// `data` of `dtmf`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DtmfData {
    /// The digit: `0`-`9`, `*`, `#`, `A`-`D`.
    #[schema(example = "#")]
    pub digit: String,
}

/// `data` of `talk_start` and `talk_stop` (nothing beyond the envelope).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TalkData {}

/// `data` of `call_ended`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CallEndedData {
    /// Who ended it: `caller`, `gateway` or `error`.
    pub ended_by: String,
    /// Why, in words.
    pub reason: String,
    /// How long it lasted, in ms.
    pub duration_ms: u64,
    /// The call's record, as `GET /v1/cdrs` will show it.
    pub record: Box<CdrRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_the_documented_shape() {
        let event = WebhookEvent {
            id: Uuid::nil(),
            created_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
            gateway: "studio-2".into(),
            call: Uuid::nil(),
            seq: 3,
            payload: WebhookPayload::Dtmf(DtmfData { digit: "#".into() }),
        };
        let json = serde_json::to_value(&event).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "00000000-0000-0000-0000-000000000000",
                "created_at": "2023-11-14T22:13:20Z",
                "gateway": "studio-2",
                "call": "00000000-0000-0000-0000-000000000000",
                "seq": 3,
                "type": "dtmf",
                "data": {"digit": "#"},
            })
        );
        let back: WebhookEvent = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, event);
        let talk = serde_json::to_value(WebhookPayload::TalkStop(TalkData {})).unwrap_or_default();
        assert_eq!(talk, serde_json::json!({"type": "talk_stop", "data": {}}));
        for kind in WebhookEventType::ALL {
            assert_eq!(
                serde_json::to_value(kind).unwrap_or_default(),
                serde_json::json!(kind.as_str())
            );
        }
    }
}
