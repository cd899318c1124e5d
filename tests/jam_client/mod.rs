//! A small REST client for the jam end-to-end tests: JSON requests with a token, jam
//! node status polling, and the event stream.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub fn new(base: String, token: String) -> Api {
        Api {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base,
            token,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// Creates jam node `name` with `config` (the `kind` is added); panics unless 201.
    pub async fn create_jam(&self, name: &str, mut config: Value, persistent: bool) -> Value {
        config["kind"] = json!("jam");
        let (status, body) = self
            .post(
                "/v1/nodes",
                json!({ "name": name, "config": config, "persistent": persistent }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    /// The `status` of `jam:<name>`.
    pub async fn jam_status(&self, name: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/nodes/jam:{name}")).await;
        assert_eq!(status, 200, "{body}");
        body["status"].clone()
    }

    /// A hosted room's UDP address.
    pub async fn room_addr(&self, name: &str) -> SocketAddr {
        self.jam_status(name).await["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Polls the status of `jam:<name>` until `done` holds; returns it and when.
    pub async fn wait_status(
        &self,
        name: &str,
        limit: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> Option<(Value, Instant)> {
        let until = Instant::now() + limit;
        loop {
            let status = self.jam_status(name).await;
            if done(&status) {
                return Some((status, Instant::now()));
            }
            if Instant::now() > until {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Opens the event stream for `types`.
    pub async fn events(&self, types: &str) -> reqwest::Response {
        let response = self
            .http
            .get(format!("{}/v1/events?types={types}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response
    }
}

/// The members of a jam status whose client_id is `id`.
pub fn member(status: &Value, id: u32) -> Option<&Value> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["client_id"] == id)
}

/// Reads server-sent events until `until` returns true or the time is up.
pub async fn read_events(
    response: &mut reqwest::Response,
    limit: Duration,
    mut until: impl FnMut(&[Value]) -> bool,
) -> Vec<Value> {
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !until(&events) {
        let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(deadline, response.chunk()).await else {
            break;
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            for line in block.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    events.push(serde_json::from_str(data.trim()).unwrap());
                }
            }
        }
    }
    events
}

/// Level in dBFS (a sine's peak) of the tone near `hz` in `x`, robust to the small pitch
/// changes a jitter buffer makes while it adapts its delay (one-sample slips, at most
/// 0.42 %): the median over 250 ms windows of the strongest fit within ±0.6 % of `hz`.
pub fn tone_level_near(x: &[f32], rate: u32, hz: f64) -> f64 {
    let window = rate as usize / 4;
    let mut levels: Vec<f64> = x
        .chunks_exact(window)
        .map(|w| {
            (-12..=12)
                .map(|k| {
                    crate::common::tone_level_dbfs(w, rate, hz * (1.0 + f64::from(k) * 0.0005))
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect();
    assert!(!levels.is_empty(), "less than one window of audio");
    levels.sort_by(f64::total_cmp);
    levels[levels.len() / 2]
}

/// Level in dBFS of the tone near `hz` (within ±0.6 %, see [`tone_level_near`]) in each
/// `window_ms` window of `x`, in order.
pub fn tone_levels_near(x: &[f32], rate: u32, hz: f64, window_ms: u32) -> Vec<f64> {
    let window = (rate * window_ms / 1000) as usize;
    x.chunks_exact(window)
        .map(|w| {
            (-12..=12)
                .map(|k| {
                    crate::common::tone_level_dbfs(w, rate, hz * (1.0 + f64::from(k) * 0.0005))
                })
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .collect()
}

/// Asserts that the tone at `hz` is in every 100 ms window of `x` at `dbfs`: no window
/// is more than 12 dB down (muted, or most of it missing), and at most one window in 20
/// is more than 3 dB off (a gap of about 30 ms: this shared 2-core machine now and then
/// starves a sender or the gateway for that long, whatever the test does; the dips are
/// printed).
pub fn assert_tone_in_every_window(x: &[f32], rate: u32, hz: f64, dbfs: f64) {
    let levels = tone_levels_near(x, rate, hz, 100);
    assert!(levels.len() >= 10, "{} windows of audio", levels.len());
    let dips: Vec<(usize, f64)> = levels
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, level)| (level - dbfs).abs() > 3.0)
        .collect();
    if !dips.is_empty() {
        eprintln!("100 ms windows more than 3 dB off the {hz} Hz tone (window, dBFS): {dips:.1?}");
    }
    assert!(
        levels.iter().all(|level| *level > dbfs - 12.0),
        "the {hz} Hz tone is missing from windows (window, dBFS): {dips:.1?}"
    );
    assert!(
        dips.len() * 20 <= levels.len(),
        "{} of {} 100 ms windows are more than 3 dB off the {hz} Hz tone's {dbfs:.1} dBFS: \
         {dips:.1?}",
        dips.len(),
        levels.len()
    );
}
