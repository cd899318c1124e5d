//! `/metrics`: the gateway's counters published through the `metrics` crate and rendered
//! by `metrics-exporter-prometheus`.
//!
//! Nothing on the media path touches a registry: the media plane keeps its lock-free
//! counters ([`EngineStats`], call stats, flow stats...) and the control plane copies their
//! snapshots into registries when `/metrics` is scraped. Two registries, because series
//! live for different spans:
//!
//! - the gateway-wide metrics go to a registry that lives as long as the gateway: counters
//!   are set with `absolute`, which the exporter keeps as a running maximum, so they never
//!   go backwards; the engine block-time histogram is fed the blocks measured since the
//!   previous feed (at every scrape and once a second by [`feed_block_times_every_second`],
//!   so its sample buffer stays small between scrapes);
//! - the series of things that come and go (nodes, the clock's state, the DNS server) go to
//!   a registry built for the scrape, so a removed node's or a past clock state's series
//!   disappear with them and label sets stay bounded by what exists.
//!
//! The one metric the `metrics` crate cannot carry, a counter with a fractional value
//! (`telepatch_aes67_tx_send_delay_seconds_total`: its counters are integers), is written
//! by [`MetricFamilies`](crate::metric_families::MetricFamilies) as text after the exporter's output.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::Gateway;
use crate::engine::stats::{BLOCK_TIME_BUCKETS_US, EngineSnapshot};
use crate::metric_families::MetricFamilies;
use crate::webhooks::{WebhookSnapshot, WebhookStats};

/// Name of the engine block-time histogram.
pub const BLOCK_SECONDS: &str = "telepatch_engine_block_seconds";

/// Buckets in the engine histogram: one per bound plus the open-ended one.
const BUCKETS: usize = BLOCK_TIME_BUCKETS_US.len() + 1;

/// The gateway's persistent registry and what of the engine histogram it has been fed.
#[derive(Debug)]
pub struct GatewayMetrics {
    recorder: PrometheusRecorder,
    fed: Mutex<BlockTimesFed>,
    webhooks: Option<std::sync::Arc<WebhookStats>>,
}

/// Block-time counts and total already recorded into the exporter's histogram.
#[derive(Debug, Default)]
struct BlockTimesFed {
    buckets: [u64; BUCKETS],
    ns_total: u64,
}

/// The upper bounds of [`BLOCK_TIME_BUCKETS_US`] in seconds, as the exporter's buckets.
fn block_time_bounds_seconds() -> [f64; BLOCK_TIME_BUCKETS_US.len()] {
    BLOCK_TIME_BUCKETS_US.map(|us| us as f64 / 1e6)
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        GatewayMetrics::new()
    }
}

impl GatewayMetrics {
    /// An empty registry with the engine histogram's buckets.
    pub fn new() -> GatewayMetrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(BLOCK_SECONDS.into()),
                &block_time_bounds_seconds(),
            )
            .map_or_else(
                // Only an empty bucket list is refused, and ours is a non-empty constant.
                |_| PrometheusBuilder::new().build_recorder(),
                PrometheusBuilder::build_recorder,
            );
        metrics::with_local_recorder(&recorder, describe_gateway_metrics);
        GatewayMetrics {
            recorder,
            fed: Mutex::new(BlockTimesFed::default()),
            webhooks: None,
        }
    }

    /// Also publishes the event webhooks' counters and queue depth.
    pub fn with_webhooks(mut self, stats: std::sync::Arc<WebhookStats>) -> GatewayMetrics {
        self.webhooks = Some(stats);
        self
    }

    /// Records into the histogram the blocks `engine` counts beyond those fed before.
    pub fn feed_block_times(&self, engine: &EngineSnapshot) {
        let mut fed = self.fed.lock().unwrap_or_else(PoisonError::into_inner);
        let mut delta = [0u64; BUCKETS];
        for ((new, now), seen) in delta
            .iter_mut()
            .zip(&engine.block_time_buckets)
            .zip(&fed.buckets)
        {
            *new = now.saturating_sub(*seen);
        }
        let seconds = engine.block_time_ns_total.saturating_sub(fed.ns_total) as f64 / 1e9;
        metrics::with_local_recorder(&self.recorder, || {
            let histogram = metrics::histogram!(BLOCK_SECONDS);
            for (value, count) in bucket_samples(&delta, seconds) {
                histogram.record_many(value, usize::try_from(count).unwrap_or(usize::MAX));
            }
        });
        for (seen, now) in fed.buckets.iter_mut().zip(&engine.block_time_buckets) {
            *seen = (*seen).max(*now);
        }
        fed.ns_total = fed.ns_total.max(engine.block_time_ns_total);
        drop(fed);
        // Moves the samples into the histogram's bucket counts.
        self.recorder.handle().run_upkeep();
    }

    /// `/metrics` in Prometheus text format.
    pub fn render(&self, gateway: &Gateway) -> String {
        metrics::with_local_recorder(&self.recorder, || {
            publish_gateway_metrics(gateway);
            if let Some(webhooks) = &self.webhooks {
                publish_webhook_metrics(&webhooks.snapshot());
            }
        });
        self.feed_block_times(&gateway.engine_stats().snapshot());
        let mut text = self.recorder.handle().render();

        let scrape = PrometheusBuilder::new().build_recorder();
        let mut families = MetricFamilies::default();
        metrics::with_local_recorder(&scrape, || {
            gateway.aes67().publish_metrics();
            gateway.clock().publish_metrics();
            for (node, service) in gateway.node_services() {
                service.publish_metrics(&node, &mut families);
            }
            gateway.dns().publish_metrics();
        });
        text.push_str(&scrape.handle().render());
        families.render_fractional(&mut text);
        text
    }
}

/// Feeds the engine histogram once a second until the gateway shuts down.
pub async fn feed_block_times_every_second(
    gateway: std::sync::Arc<Gateway>,
    metrics: std::sync::Arc<GatewayMetrics>,
) {
    let shutdown = gateway.shutdown_token();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        metrics.feed_block_times(&gateway.engine_stats().snapshot());
    }
}

/// One sample value per bucket, to be recorded `count` times, that lands each bucket's
/// blocks in that bucket and, whenever the measured total allows it, adds up to it.
///
/// The engine counts a block in bucket `i` when its time is at least bound `i-1` and
/// below bound `i`; the exporter counts a value `v` under the first bound `v <= bound`.
/// So every value is kept in `(lower, upper]`, at the same fraction of each finite bucket,
/// that fraction chosen so the total matches; blocks beyond the last bound take the rest.
fn bucket_samples(counts: &[u64; BUCKETS], total_seconds: f64) -> Vec<(f64, u64)> {
    let bounds = block_time_bounds_seconds();
    let lower = |i: usize| if i == 0 { 0.0 } else { bounds[i - 1] };
    let finite = BLOCK_TIME_BUCKETS_US.len();
    let overflow = counts[finite];
    let (mut at_lower, mut at_upper) = (0.0, 0.0);
    for (i, &count) in counts[..finite].iter().enumerate() {
        at_lower += count as f64 * lower(i);
        at_upper += count as f64 * bounds[i];
    }
    let finite_target = total_seconds - overflow as f64 * bounds[finite - 1];
    let fraction = if at_upper > at_lower {
        ((finite_target - at_lower) / (at_upper - at_lower)).clamp(1e-6, 1.0)
    } else {
        1.0
    };
    let mut samples = Vec::with_capacity(BUCKETS);
    let mut finite_sum = 0.0;
    for (i, &count) in counts[..finite].iter().enumerate() {
        if count > 0 {
            let value = lower(i) + fraction * (bounds[i] - lower(i));
            finite_sum += count as f64 * value;
            samples.push((value, count));
        }
    }
    if overflow > 0 {
        let floor = bounds[finite - 1] * (1.0 + 1e-9);
        let value = ((total_seconds - finite_sum) / overflow as f64).max(floor);
        samples.push((value, overflow));
    }
    samples
}

fn describe_gateway_metrics() {
    describe_gauge!("telepatch_calls_active", "Calls connected now.");
    describe_counter!("telepatch_calls_total", "Calls admitted since start.");
    describe_counter!(
        "telepatch_calls_refused_total",
        "Connections refused (call cap, duplicates, shutdown)."
    );
    describe_counter!(
        "telepatch_frames_in_total",
        "Audio messages received from Asterisk."
    );
    describe_counter!(
        "telepatch_frames_out_total",
        "Audio messages sent to Asterisk."
    );
    describe_counter!(
        "telepatch_uplink_gaps_total",
        "Times a caller's audio ran dry while playing."
    );
    describe_counter!(
        "telepatch_downlink_underruns_total",
        "Reply frames padded because the engine was late."
    );
    describe_counter!(
        "telepatch_audiosocket_source_refused_total",
        "AudioSocket connections from sources outside audiosocket.allow."
    );
    describe_counter!(
        "telepatch_unidentified_refused_total",
        "Connections closed before their ID because too many were waiting for theirs."
    );
    describe_counter!(
        "telepatch_audiosocket_accept_errors_total",
        "Failed accepts of the AudioSocket listener (out of file descriptors...)."
    );
    describe_counter!(
        "telepatch_api_connections_refused_total",
        "HTTP API connections closed at once because api.max_connections were open."
    );
    describe_counter!(
        "telepatch_api_accept_errors_total",
        "Failed accepts of the HTTP API (out of file descriptors...)."
    );
    describe_counter!(
        "telepatch_writer_stalls_total",
        "Times a call's reply frames were held up more than three frames (a blocked or starved session thread)."
    );
    describe_counter!(
        "telepatch_recording_failures_total",
        "Recordings the disk failed: refused because their header could not be written, or stopped mid-way (the file keeps what was written)."
    );
    describe_counter!("telepatch_engine_blocks_total", "Engine blocks processed.");
    describe_counter!(
        "telepatch_engine_late_restarts_total",
        "Times the engine fell too far behind and restarted its schedule."
    );
    describe_counter!(
        "telepatch_engine_skipped_blocks_total",
        "Blocks the engine skipped when it restarted its schedule (bus time lost to stalls)."
    );
    describe_gauge!(
        "telepatch_engine_recent_load",
        "Share of real time the engine spent processing blocks, averaged over about a second (1 = all of it)."
    );
    describe_gauge!(
        "telepatch_cdr_pending",
        "Call record writes (opens, refreshes, ends) waiting to be written."
    );
    describe_counter!("telepatch_cdr_written_total", "Call record writes applied.");
    describe_counter!(
        "telepatch_cdr_dropped_total",
        "Call record writes lost (queue full or shutdown)."
    );
    describe_counter!(
        "telepatch_cdr_retries_total",
        "Failed attempts to write call records."
    );
    describe_counter!(
        "telepatch_cdr_interrupted_closed_total",
        "Open call records closed as interrupted (their gateway stopped unexpectedly)."
    );
    describe_histogram!(BLOCK_SECONDS, "Time to process one engine block.");
    describe_counter!(
        WEBHOOK_DELIVERIES,
        "Event webhook outcomes: delivered (2xx), retried (a failed attempt scheduled again), \
         dropped (queue full), expired (given up: too old or out of attempts), lagged (missed \
         from the gateway's event stream)."
    );
    describe_gauge!(
        WEBHOOK_QUEUE_DEPTH,
        "Event webhook events held for delivery (at most webhooks.queue_limit)."
    );
}

/// Outcomes of event webhooks, by `result`.
pub const WEBHOOK_DELIVERIES: &str = "telepatch_webhook_deliveries_total";

/// Events held by the webhook driver.
pub const WEBHOOK_QUEUE_DEPTH: &str = "telepatch_webhook_queue_depth";

fn publish_webhook_metrics(webhooks: &WebhookSnapshot) {
    for (result, value) in [
        ("delivered", webhooks.delivered),
        ("retried", webhooks.retried),
        ("dropped", webhooks.dropped),
        ("expired", webhooks.expired),
        ("lagged", webhooks.lagged),
    ] {
        metrics::counter!(WEBHOOK_DELIVERIES, "result" => result).absolute(value);
    }
    metrics::gauge!(WEBHOOK_QUEUE_DEPTH).set(webhooks.depth as f64);
}

fn publish_gateway_metrics(gateway: &Gateway) {
    use std::sync::atomic::Ordering::Relaxed;

    let (calls, totals) = gateway.calls_and_totals();
    let live =
        |field: fn(&crate::service::CallHandle) -> u64| calls.iter().map(|c| field(c)).sum::<u64>();
    let engine = gateway.engine_stats().snapshot();
    let counter = |name: &'static str, value: u64| metrics::counter!(name).absolute(value);

    metrics::gauge!("telepatch_calls_active").set(calls.len() as f64);
    counter("telepatch_calls_total", totals.calls);
    counter("telepatch_calls_refused_total", totals.refused);
    counter(
        "telepatch_frames_in_total",
        totals.frames_in + live(|c| c.stats.frames_in.load(Relaxed)),
    );
    counter(
        "telepatch_frames_out_total",
        totals.frames_out + live(|c| c.stats.frames_out.load(Relaxed)),
    );
    counter(
        "telepatch_uplink_gaps_total",
        totals.uplink_gaps + live(|c| c.stats.uplink_gaps.load(Relaxed)),
    );
    counter(
        "telepatch_downlink_underruns_total",
        totals.downlink_underruns + live(|c| c.stats.downlink_underruns.load(Relaxed)),
    );
    counter(
        "telepatch_audiosocket_source_refused_total",
        totals.source_refused,
    );
    counter(
        "telepatch_unidentified_refused_total",
        totals.unidentified_refused,
    );
    counter(
        "telepatch_audiosocket_accept_errors_total",
        totals.audiosocket_accept_errors,
    );
    counter(
        "telepatch_api_connections_refused_total",
        totals.api_connections_refused,
    );
    counter(
        "telepatch_api_accept_errors_total",
        totals.api_accept_errors,
    );
    counter(
        "telepatch_writer_stalls_total",
        totals.writer_stalls + live(|c| c.stats.writer_stalls.load(Relaxed)),
    );
    counter(
        "telepatch_recording_failures_total",
        gateway.recording_failures(),
    );
    counter("telepatch_engine_blocks_total", engine.blocks);
    counter("telepatch_engine_late_restarts_total", engine.late_restarts);
    counter(
        "telepatch_engine_skipped_blocks_total",
        engine.skipped_blocks,
    );
    metrics::gauge!("telepatch_engine_recent_load").set(gateway.engine_load());
    if let Some(cdr) = gateway.cdr_stats() {
        metrics::gauge!("telepatch_cdr_pending").set(cdr.pending as f64);
        counter("telepatch_cdr_written_total", cdr.written);
        counter("telepatch_cdr_dropped_total", cdr.dropped);
        counter("telepatch_cdr_retries_total", cdr.retries);
        counter(
            "telepatch_cdr_interrupted_closed_total",
            cdr.interrupted_closed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the line `series value` in `text`.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn snapshot(buckets: [u64; BUCKETS], ns_total: u64) -> EngineSnapshot {
        EngineSnapshot {
            blocks: buckets.iter().sum(),
            block_time_ns_total: ns_total,
            block_time_buckets: buckets.to_vec(),
            ..EngineSnapshot::default()
        }
    }

    /// Block times (ns) counted the engine's way, then fed: the exporter's cumulative
    /// buckets, count and sum agree with the blocks.
    #[test]
    fn histogram_keeps_the_engines_buckets_counts_and_total() {
        let stats = crate::engine::stats::EngineStats::default();
        let times_ns: [u64; 9] = [
            3_000, 9_999, 10_000, 24_500, 150_000, 999_000, 1_000_000, 4_999_999, 7_000_000,
        ];
        for ns in times_ns {
            stats.record_block_time(Duration::from_nanos(ns));
        }
        let metrics = GatewayMetrics::new();
        metrics.feed_block_times(&stats.snapshot());
        let text = metrics.recorder.handle().render();
        assert!(
            text.contains("# TYPE telepatch_engine_block_seconds histogram"),
            "{text}"
        );
        for (le, expected) in [
            ("0.00001", 2.0),
            ("0.000025", 4.0),
            ("0.00005", 4.0),
            ("0.0002", 5.0),
            ("0.001", 6.0),
            ("0.002", 7.0),
            ("0.005", 8.0),
            ("+Inf", 9.0),
        ] {
            let series = format!("telepatch_engine_block_seconds_bucket{{le=\"{le}\"}}");
            assert_eq!(value(&text, &series), Some(expected), "{series} in\n{text}");
        }
        assert_eq!(
            value(&text, "telepatch_engine_block_seconds_count"),
            Some(9.0)
        );
        let sum = value(&text, "telepatch_engine_block_seconds_sum").unwrap();
        let expected = times_ns.iter().sum::<u64>() as f64 / 1e9;
        assert!((sum - expected).abs() < 1e-12, "{sum} vs {expected}");
    }

    /// Feeding twice records only the new blocks; a stale snapshot records nothing.
    #[test]
    fn histogram_feeds_only_new_blocks() {
        let metrics = GatewayMetrics::new();
        let mut buckets = [0; BUCKETS];
        buckets[3] = 10; // 50..100 us
        metrics.feed_block_times(&snapshot(buckets, 10 * 60_000));
        buckets[3] = 15;
        buckets[BUCKETS - 1] = 1; // beyond 5 ms
        metrics.feed_block_times(&snapshot(buckets, 15 * 60_000 + 8_000_000));
        metrics.feed_block_times(&snapshot(buckets, 15 * 60_000 + 8_000_000));
        let text = metrics.recorder.handle().render();
        assert_eq!(
            value(
                &text,
                "telepatch_engine_block_seconds_bucket{le=\"0.0001\"}"
            ),
            Some(15.0)
        );
        assert_eq!(
            value(&text, "telepatch_engine_block_seconds_bucket{le=\"0.005\"}"),
            Some(15.0)
        );
        assert_eq!(
            value(&text, "telepatch_engine_block_seconds_count"),
            Some(16.0)
        );
        let sum = value(&text, "telepatch_engine_block_seconds_sum").unwrap();
        assert!((sum - 0.0089).abs() < 1e-12, "{sum}");
    }

    /// Each bucket's value stays inside it, whatever total the counts come with.
    #[test]
    fn bucket_samples_stay_in_their_buckets() {
        let bounds = block_time_bounds_seconds();
        let mut counts = [0; BUCKETS];
        counts[0] = 4;
        counts[5] = 2;
        counts[BUCKETS - 1] = 1;
        // Totals below, inside and above what the buckets can hold.
        for total in [0.0, 0.006, 1.0] {
            let samples = bucket_samples(&counts, total);
            assert_eq!(samples.len(), 3);
            let (v0, v5, vo) = (samples[0].0, samples[1].0, samples[2].0);
            assert!(v0 > 0.0 && v0 <= bounds[0], "{v0}");
            assert!(v5 > bounds[4] && v5 <= bounds[5], "{v5}");
            assert!(vo > bounds[BUCKETS - 2], "{vo}");
        }
        // A consistent total is met exactly.
        let samples = bucket_samples(&counts, 0.0065);
        let sum: f64 = samples.iter().map(|(v, n)| v * *n as f64).sum();
        assert!((sum - 0.0065).abs() < 1e-15, "{sum}");
    }
}
