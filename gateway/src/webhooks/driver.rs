//! The thin driver of webhook delivery: one task, owned by the app (its own child
//! token, joined at shutdown), that turns the gateway's call events into queued bodies,
//! sends what the [`WebhookQueue`] says is due with `reqwest` (at most `concurrency`
//! requests at once), and reports each outcome back to the queue.
//!
//! Logging stays quiet while an endpoint is down: one warning when deliveries start
//! failing and one line when they succeed again; dropped, expired and missed events
//! are counted, logged when a burst of them starts and summed up every
//! [`REPORT_EVERY`] while it lasts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::control::Event;
use api::webhook::{
    CallEndedData, CallStartedData, DtmfData, EVENT_ID_HEADER, SIGNATURE_HEADER, TalkData,
    WebhookEvent, WebhookEventType, WebhookPayload,
};
use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::config::{WebhookSecret, WebhooksConfig};
use super::queue::{Attempt, DeliveryCounts, FailureOutcome, WebhookQueue};
use super::signature::signature_header;
use super::{WebhookSnapshot, WebhookStats};

/// How long shutdown spends on a last attempt to deliver what is held.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How often a burst of dropped or expired events is summed up in the log.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The webhook driver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// `events_url` is set without a `secret` (the configuration's validation says so
    /// first; this guards callers that skip it).
    #[error("webhooks.events_url needs webhooks.secret")]
    NoSecret,
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    /// The endpoint answered, but not with 2xx.
    #[error("the endpoint answered {0}")]
    Status(u16),
    /// No answer: refused, reset, timed out...
    #[error("{0}")]
    Transport(String),
}

/// One event's request body and idempotency key, built once and sent on every attempt.
#[derive(Debug, Clone)]
pub struct PreparedEvent {
    id: Uuid,
    body: Bytes,
}

/// Says once when a burst of lost events starts, then sums it up every
/// [`REPORT_EVERY`] until a period passes without any.
#[derive(Debug, Default)]
struct BurstLog {
    since_report: u64,
    in_burst: u64,
    open: bool,
}

impl BurstLog {
    /// Notes `n` more; true if they start a burst.
    fn note(&mut self, n: u64) -> bool {
        self.since_report += n;
        self.in_burst += n;
        let starts = !self.open && n > 0;
        self.open |= n > 0;
        starts
    }

    /// At each report tick: `Some((since last tick, whole burst, burst over))` while a
    /// burst is open.
    fn tick(&mut self) -> Option<(u64, u64, bool)> {
        if !self.open {
            return None;
        }
        let report = (self.since_report, self.in_burst, self.since_report == 0);
        self.since_report = 0;
        if report.2 {
            *self = BurstLog::default();
        }
        Some(report)
    }
}

/// The webhook driver: its queue, HTTP client and counters.
pub struct WebhookDriver {
    queue: WebhookQueue<PreparedEvent>,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL without credentials or query, for the log.
    endpoint: String,
    secret: Arc<WebhookSecret>,
    events: Vec<WebhookEventType>,
    gateway: Arc<str>,
    concurrency: usize,
    queue_limit: usize,
    stats: Arc<WebhookStats>,
    lagged: u64,
    /// Attempts failed since the endpoint last accepted one, while it is failing.
    failing: Option<u64>,
    dropped_log: BurstLog,
    expired_log: BurstLog,
    seen: DeliveryCounts,
}

impl std::fmt::Debug for WebhookDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookDriver")
            .field("endpoint", &self.endpoint)
            .field("held", &self.queue.len())
            .finish_non_exhaustive()
    }
}

impl WebhookDriver {
    /// A driver for `config`, or `None` when no `events_url` is configured. `gateway`
    /// names this instance in every body.
    pub fn new(
        config: &WebhooksConfig,
        gateway: &str,
        stats: Arc<WebhookStats>,
    ) -> Result<Option<WebhookDriver>, WebhookError> {
        let Some(url) = &config.events_url else {
            return Ok(None);
        };
        let secret = config.secret.clone().ok_or(WebhookError::NoSecret)?;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.timeout_ms))
            .connect_timeout(Duration::from_millis(config.timeout_ms))
            // The endpoint is addressed directly, whatever proxy the environment names.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("telepatch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookError::Client)?;
        let url = url.url().clone();
        let mut endpoint = url.clone();
        let _ = endpoint.set_username("");
        let _ = endpoint.set_password(None);
        endpoint.set_query(None);
        Ok(Some(WebhookDriver {
            queue: WebhookQueue::new(config.retry_policy(), jitter_seed()),
            client,
            url,
            endpoint: endpoint.to_string(),
            secret: Arc::new(secret),
            events: config.events.clone(),
            gateway: gateway.into(),
            concurrency: config.concurrency,
            queue_limit: config.queue_limit,
            stats,
            lagged: 0,
            failing: None,
            dropped_log: BurstLog::default(),
            expired_log: BurstLog::default(),
            seen: DeliveryCounts::default(),
        }))
    }

    /// Delivers the events of `events` until `stop` is cancelled, then makes one last
    /// attempt of at most [`SHUTDOWN_GRACE`] at what is held and logs what is left.
    /// Subscribe `events` before the first call is admitted, so none is missed.
    pub async fn run(mut self, mut events: broadcast::Receiver<Event>, stop: CancellationToken) {
        tracing::info!(
            endpoint = %self.endpoint,
            events = ?self.events.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "event webhooks on"
        );
        let mut in_flight = InFlight::default();
        let mut report = tokio::time::interval(REPORT_EVERY);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_due(&mut in_flight);
            self.publish();
            let wake = self.wake_at(&in_flight);
            tokio::select! {
                () = stop.cancelled() => break,
                received = events.recv() => match received {
                    Ok(event) => self.take(&event),
                    Err(RecvError::Lagged(missed)) => self.missed(missed),
                    Err(RecvError::Closed) => break,
                },
                Some((key, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(key, result);
                }
                () = sleep_until(wake), if wake.is_some() => {}
                _ = report.tick() => self.report_bursts(),
            }
        }
        // What was published before the stop (the calls' last events) is still queued.
        loop {
            match events.try_recv() {
                Ok(event) => self.take(&event),
                Err(TryRecvError::Lagged(missed)) => self.missed(missed),
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        self.flush(&mut in_flight).await;
    }

    /// The last attempt at shutdown: everything held is due now; whatever is not
    /// delivered within [`SHUTDOWN_GRACE`] is logged and left.
    async fn flush(&mut self, in_flight: &mut InFlight) {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        self.queue.hurry(Instant::now());
        while !self.queue.is_empty() {
            self.start_due(in_flight);
            let wake = self.wake_at(in_flight);
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                Some((key, result)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.finish(key, result);
                }
                () = sleep_until(wake), if wake.is_some() => {}
            }
        }
        self.report_bursts();
        self.publish();
        if self.queue.is_empty() {
            tracing::info!("event webhooks stopped; nothing left undelivered");
        } else {
            tracing::warn!(
                undelivered = self.queue.len(),
                endpoint = %self.endpoint,
                "event webhooks stopped with events undelivered"
            );
        }
        // Dropping the set aborts requests still under way.
        in_flight.tasks.abort_all();
    }

    /// When the next queued attempt falls due, if a request slot is free for it.
    fn wake_at(&self, in_flight: &InFlight) -> Option<tokio::time::Instant> {
        if in_flight.len() >= self.concurrency {
            return None;
        }
        self.queue.next_due().map(tokio::time::Instant::from_std)
    }

    /// Starts every attempt that is due, up to the concurrency limit.
    fn start_due(&mut self, in_flight: &mut InFlight) {
        while in_flight.len() < self.concurrency {
            let Some(attempt) = self.queue.poll_due(Instant::now()) else {
                break;
            };
            let request = self.request(&attempt);
            in_flight.spawn(attempt.key, request);
        }
        self.note_counts();
    }

    /// The POST of one attempt, signed now.
    fn request(
        &self,
        attempt: &Attempt<PreparedEvent>,
    ) -> impl std::future::Future<Output = Result<(), SendError>> + Send + 'static {
        let now = chrono::Utc::now().timestamp();
        let body = attempt.payload.body.clone();
        let request = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(EVENT_ID_HEADER, attempt.payload.id.to_string())
            .header(
                SIGNATURE_HEADER,
                signature_header(self.secret.expose(), now, &body),
            )
            .body(body);
        async move {
            let response = request
                .send()
                .await
                .map_err(|e| SendError::Transport(transport_error(&e)))?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(SendError::Status(status.as_u16()))
            }
        }
    }

    /// Queues `event` if it is a call event the configuration asks for.
    fn take(&mut self, event: &Event) {
        let Some((call, payload)) = webhook_payload(event) else {
            return;
        };
        if !self.events.contains(&payload.event_type()) {
            return;
        }
        let last = matches!(payload, WebhookPayload::CallEnded(_));
        let gateway = Arc::clone(&self.gateway);
        let pushed = self.queue.push(call, last, Instant::now(), |seq| {
            let event = WebhookEvent {
                id: Uuid::new_v4(),
                created_at: chrono::Utc::now(),
                gateway: gateway.to_string(),
                call,
                seq,
                payload,
            };
            PreparedEvent {
                id: event.id,
                // Plain structs with string keys: serializing them cannot fail.
                body: serde_json::to_vec(&event)
                    .map(Bytes::from)
                    .unwrap_or_default(),
            }
        });
        if pushed.dropped > 0 {
            self.note_counts();
        }
    }

    /// The event broadcast ran ahead of the driver: `missed` events are lost.
    fn missed(&mut self, missed: u64) {
        self.lagged += missed;
        tracing::warn!(
            missed,
            "the webhook driver fell behind the gateway's events; they are lost (counted as \
             result=\"lagged\")"
        );
    }

    /// Applies one attempt's outcome.
    fn finish(&mut self, key: u64, result: Result<(), SendError>) {
        let now = Instant::now();
        match result {
            Ok(()) => {
                self.queue.delivered(key, now);
                if let Some(failed_attempts) = self.failing.take() {
                    tracing::info!(
                        endpoint = %self.endpoint,
                        failed_attempts,
                        held = self.queue.len(),
                        "webhook endpoint accepts events again"
                    );
                }
            }
            Err(error) => {
                let outcome = self.queue.failed(key, now);
                match &mut self.failing {
                    Some(failed_attempts) => *failed_attempts += 1,
                    None => {
                        self.failing = Some(1);
                        tracing::warn!(
                            endpoint = %self.endpoint,
                            %error,
                            retried = matches!(outcome, FailureOutcome::RetryAt(_)),
                            "webhook endpoint is failing; events are held (up to \
                             webhooks.queue_limit) and retried with backoff"
                        );
                    }
                }
            }
        }
        self.note_counts();
    }

    /// Logs the start of a burst of dropped or expired events.
    fn note_counts(&mut self) {
        let counts = self.queue.counts();
        if self.dropped_log.note(counts.dropped - self.seen.dropped) {
            tracing::warn!(
                queue_limit = self.queue_limit,
                "webhook queue full: dropping the oldest events (counted as result=\"dropped\")"
            );
        }
        if self.expired_log.note(counts.expired - self.seen.expired) {
            tracing::warn!(
                "webhook events given up after webhooks.max_attempts or webhooks.max_age_s \
                 (counted as result=\"expired\")"
            );
        }
        self.seen = counts;
    }

    /// Sums up open bursts.
    fn report_bursts(&mut self) {
        for (log, what) in [
            (&mut self.dropped_log, "dropped (queue full)"),
            (&mut self.expired_log, "given up"),
        ] {
            match log.tick() {
                Some((recent, _, false)) => {
                    tracing::warn!(events = recent, "webhook events {what} in the last 10 s")
                }
                Some((_, total, true)) => {
                    tracing::info!(events = total, "webhook events {what}: the burst is over")
                }
                None => {}
            }
        }
    }

    /// Copies the counters for `/metrics`.
    fn publish(&self) {
        let counts = self.queue.counts();
        self.stats.store(WebhookSnapshot {
            delivered: counts.delivered,
            retried: counts.retried,
            dropped: counts.dropped,
            expired: counts.expired,
            lagged: self.lagged,
            depth: self.queue.len() as u64,
        });
    }
}

/// The webhook body of a gateway event, with its call; `None` for events that are not
/// about one call.
pub fn webhook_payload(event: &Event) -> Option<(Uuid, WebhookPayload)> {
    Some(match event {
        Event::CallStarted { call, peer, route } => (
            *call,
            WebhookPayload::CallStarted(CallStartedData {
                peer: peer.clone(),
                route: route.clone(),
            }),
        ),
        Event::Dtmf { call, digit } => (
            *call,
            WebhookPayload::Dtmf(DtmfData {
                digit: digit.clone(),
            }),
        ),
        Event::TalkStart { call } => (*call, WebhookPayload::TalkStart(TalkData {})),
        Event::TalkStop { call } => (*call, WebhookPayload::TalkStop(TalkData {})),
        Event::CallEnded {
            call,
            ended_by,
            reason,
            duration_ms,
            record,
        } => (
            *call,
            WebhookPayload::CallEnded(CallEndedData {
                ended_by: ended_by.clone(),
                reason: reason.clone(),
                duration_ms: *duration_ms,
                record: record.clone(),
            }),
        ),
        _ => return None,
    })
}

/// A transport error in words, with its causes (reqwest's own message is terse).
fn transport_error(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        error.to_string()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A jitter seed that differs between gateways and starts.
fn jitter_seed() -> u64 {
    let uuid = Uuid::new_v4().as_u128();
    (uuid as u64) ^ ((uuid >> 64) as u64)
}

/// Sleeps until `at`; never returns without one (the branch is disabled then).
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The requests under way, each with its queue key.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<Result<(), SendError>>,
    keys: HashMap<tokio::task::Id, u64>,
}

impl InFlight {
    fn spawn(
        &mut self,
        key: u64,
        request: impl std::future::Future<Output = Result<(), SendError>> + Send + 'static,
    ) {
        let handle = self.tasks.spawn(request);
        self.keys.insert(handle.id(), key);
    }

    fn len(&self) -> usize {
        self.tasks.len()
    }

    fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The next finished request; a request task that panicked counts as a failure.
    async fn next(&mut self) -> Option<(u64, Result<(), SendError>)> {
        let (id, result) = match self.tasks.join_next_with_id().await? {
            Ok((id, result)) => (id, result),
            Err(error) => (
                error.id(),
                Err(SendError::Transport(format!(
                    "request task failed: {error}"
                ))),
            ),
        };
        let key = self.keys.remove(&id)?;
        Some((key, result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_are_told_once_then_summed_up_until_quiet() {
        let mut log = BurstLog::default();
        assert_eq!(log.tick(), None);
        assert!(log.note(3));
        assert!(!log.note(2));
        assert_eq!(log.tick(), Some((5, 5, false)));
        assert!(!log.note(1));
        assert_eq!(log.tick(), Some((1, 6, false)));
        assert_eq!(log.tick(), Some((0, 6, true)));
        assert_eq!(log.tick(), None);
        assert!(!log.note(0));
        assert!(log.note(1));
    }

    #[test]
    fn only_call_events_become_webhooks() {
        let call = Uuid::from_u128(7);
        let (id, payload) = webhook_payload(&Event::Dtmf {
            call,
            digit: "5".into(),
        })
        .unwrap_or_else(|| panic!("dtmf is a call event"));
        assert_eq!(id, call);
        assert_eq!(payload.event_type(), WebhookEventType::Dtmf);
        assert!(
            webhook_payload(&Event::CallState {
                call,
                state: api::control::CallState::Patched
            })
            .is_none()
        );
        assert!(webhook_payload(&Event::PatchRemoved { id: 1 }).is_none());
    }
}
