//! HTTP latency probe for the REST API: sends GET requests with a bearer token to one
//! URL, one at a time (or from `--concurrency` workers, each waiting for its answer
//! before sending the next), and prints the count, p50/p90/p99/max latency and the
//! response size. A latency is the time from sending the request to having read the
//! whole body. Warm-up requests (new connections, first allocations) are excluded.
//!
//! ```text
//! cargo run --release -p telepatch-examples --example api_latency -- \
//!     --url 'http://127.0.0.1:8080/v1/calls?limit=1000' --token "$TOKEN" --requests 500
//! ```
//!
//! The run stops after `--requests` measured requests or `--duration` seconds, whichever
//! comes first. A request that times out is counted with the time it was given (so
//! quantiles that land on one are lower bounds) and reported; any other transport error
//! or an answer other than 2xx stops the run with a non-zero exit code: the latency of
//! an error page says nothing about the endpoint.

use anyhow::{Context, bail};
use clap::Parser;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "Measure the latency of GET requests to one API URL")]
struct Args {
    /// URL to GET, e.g. `http://127.0.0.1:8080/v1/calls?limit=1000`.
    #[arg(long)]
    url: String,
    /// API token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "TELEPATCH_TOKEN", hide_env_values = true)]
    token: String,
    /// Measured requests (after the warm-up).
    #[arg(long, default_value_t = 500)]
    requests: u64,
    /// Stop measuring after this many seconds even if fewer requests were sent.
    #[arg(long)]
    duration: Option<f64>,
    /// Workers sending at once (each waits for its answer before the next request).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Requests sent before measuring, not counted.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// When the measured part of the run stops: the first limit reached.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// Requests in all workers together.
    requests: u64,
    /// No request starts after this instant.
    until: Option<Instant>,
}

/// How one request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A 2xx answer, read to the end: latency and body size.
    Answered(Duration, usize),
    /// No complete answer within the timeout; the time waited.
    TimedOut(Duration),
}

/// What one worker measured.
#[derive(Debug, Default)]
struct Samples {
    /// Every measured request's latency, timed-out ones included.
    latencies: Vec<Duration>,
    /// Requests that timed out.
    timeouts: usize,
    /// Smallest and largest body, in bytes.
    min_bytes: Option<usize>,
    max_bytes: usize,
}

impl Samples {
    fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Answered(latency, bytes) => {
                self.latencies.push(latency);
                self.min_bytes = Some(self.min_bytes.map_or(bytes, |m| m.min(bytes)));
                self.max_bytes = self.max_bytes.max(bytes);
            }
            Outcome::TimedOut(waited) => {
                self.latencies.push(waited);
                self.timeouts += 1;
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.timeouts += other.timeouts;
        if let Some(m) = other.min_bytes {
            self.min_bytes = Some(self.min_bytes.map_or(m, |mine| mine.min(m)));
        }
        self.max_bytes = self.max_bytes.max(other.max_bytes);
    }
}

/// One request, timed from send to the end of the body.
async fn timed_get(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let response = match http.get(url).bearer_auth(token).send().await {
        Ok(response) => response,
        Err(e) if e.is_timeout() => return Ok(Outcome::TimedOut(start.elapsed())),
        Err(e) => return Err(e).with_context(|| format!("GET {url}")),
    };
    let status = response.status();
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(e) if e.is_timeout() => return Ok(Outcome::TimedOut(start.elapsed())),
        Err(e) => return Err(e).with_context(|| format!("reading the body of GET {url}")),
    };
    let elapsed = start.elapsed();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        bail!("GET {url} answered {status}: {}", text.trim());
    }
    Ok(Outcome::Answered(elapsed, body.len()))
}

/// Sends requests until the budget is spent; `issued` counts every worker's requests.
async fn worker(
    http: reqwest::Client,
    url: Arc<str>,
    token: Arc<str>,
    budget: Budget,
    issued: Arc<AtomicU64>,
) -> anyhow::Result<Samples> {
    let mut samples = Samples::default();
    while budget.until.is_none_or(|end| Instant::now() < end)
        && issued.fetch_add(1, Ordering::Relaxed) < budget.requests
    {
        samples.record(timed_get(&http, &url, &token).await?);
    }
    Ok(samples)
}

/// Milliseconds with two decimals: loopback answers can take well under a millisecond.
fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

/// The `p`-quantile of sorted values by the nearest-rank method (the smallest value
/// with at least `p` of the values at or below it).
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let timeout = Duration::try_from_secs_f64(args.timeout).context("--timeout")?;
    let http = reqwest::Client::builder()
        // Loopback measurements: a proxy from the environment would be measured instead.
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("building the HTTP client")?;
    let url: Arc<str> = Arc::from(args.url.as_str());
    let token: Arc<str> = Arc::from(args.token.trim());

    // Warm-up: opens the connections the workers will reuse (one per worker). Not
    // counted, but a slow or timed-out warm-up is reported: it says the server stalled.
    let mut warm = JoinSet::new();
    let per_worker = args.warmup.div_ceil(args.concurrency as u64);
    for _ in 0..args.concurrency {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        warm.spawn(async move {
            let mut samples = Samples::default();
            for _ in 0..per_worker {
                samples.record(timed_get(&http, &url, &token).await?);
            }
            anyhow::Ok(samples)
        });
    }
    let warm_started = Instant::now();
    let mut warmup = Samples::default();
    while let Some(joined) = warm.join_next().await {
        warmup.merge(joined.context("warm-up task panicked")??);
    }
    let warm_wall = warm_started.elapsed();

    let until = match args.duration {
        Some(secs) => {
            let d = Duration::try_from_secs_f64(secs).context("--duration")?;
            Some(Instant::now() + d)
        }
        None => None,
    };
    let budget = Budget {
        requests: args.requests,
        until,
    };
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..args.concurrency {
        set.spawn(worker(
            http.clone(),
            url.clone(),
            token.clone(),
            budget,
            issued.clone(),
        ));
    }
    let mut all = Samples::default();
    while let Some(joined) = set.join_next().await {
        all.merge(joined.context("worker panicked")??);
    }
    let wall = started.elapsed();

    all.latencies.sort_unstable();
    let n = all.latencies.len();
    if n == 0 {
        bail!("no request was measured");
    }
    let total: Duration = all.latencies.iter().sum();
    let mean = total / u32::try_from(n).unwrap_or(u32::MAX);
    println!("url {}", args.url);
    println!(
        "requests {n}  concurrency {}  wall {:.3} s  {:.1} req/s",
        args.concurrency,
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    println!(
        "warm-up {} requests in {:.3} s, slowest {} ms, timeouts {} (not counted)",
        warmup.latencies.len(),
        warm_wall.as_secs_f64(),
        ms(warmup.latencies.iter().max().copied().unwrap_or_default()),
        warmup.timeouts
    );
    println!(
        "latency ms: p50 {}  p90 {}  p99 {}  max {}  mean {}",
        ms(quantile(&all.latencies, 0.50)),
        ms(quantile(&all.latencies, 0.90)),
        ms(quantile(&all.latencies, 0.99)),
        ms(all.latencies[n - 1]),
        ms(mean)
    );
    if all.timeouts > 0 {
        println!(
            "timeouts {} of {n} (after {} s; counted at the time waited, so the \
             quantiles that land on them are lower bounds)",
            all.timeouts, args.timeout
        );
    }
    let min_bytes = all.min_bytes.unwrap_or(0);
    if all.min_bytes.is_none() {
        println!("response: none complete");
    } else if min_bytes == all.max_bytes {
        println!("response {} bytes", all.max_bytes);
    } else {
        println!("response {min_bytes}..{} bytes", all.max_bytes);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn nearest_rank_quantiles() {
        let sorted = millis(&(1..=100).collect::<Vec<_>>());
        assert_eq!(quantile(&sorted, 0.50), Duration::from_millis(50));
        assert_eq!(quantile(&sorted, 0.90), Duration::from_millis(90));
        assert_eq!(quantile(&sorted, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&sorted, 1.0), Duration::from_millis(100));
        let few = millis(&[3, 7, 9]);
        assert_eq!(quantile(&few, 0.50), Duration::from_millis(7));
        assert_eq!(quantile(&few, 0.99), Duration::from_millis(9));
        assert_eq!(quantile(&few, 0.0), Duration::from_millis(3));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn samples_track_body_sizes_and_timeouts() {
        let mut a = Samples::default();
        a.record(Outcome::Answered(Duration::from_millis(1), 500));
        a.record(Outcome::Answered(Duration::from_millis(2), 300));
        let mut b = Samples::default();
        b.record(Outcome::Answered(Duration::from_millis(3), 900));
        b.record(Outcome::TimedOut(Duration::from_secs(30)));
        a.merge(b);
        a.merge(Samples::default());
        assert_eq!(a.latencies.len(), 4);
        assert_eq!(a.timeouts, 1);
        assert_eq!(a.min_bytes, Some(300));
        assert_eq!(a.max_bytes, 900);
    }
}
