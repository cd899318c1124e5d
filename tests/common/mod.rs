//! Shared harness of the end-to-end tests: runs the real `telepatch` binary on
//! loopback with a config written for the test, and measures what callers hear.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use codecs::measure::{SineFit, fit_sine};
use codecs::rate::SampleRate;

pub mod host_watch;

/// The path of a file in `tests/data`.
pub fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data")
        .join(name)
}

/// A running `telepatch serve` process.
pub struct GatewayProcess {
    child: Child,
    /// Its AudioSocket address (port chosen by the OS).
    pub addr: SocketAddr,
    /// Its HTTP API address (port chosen by the OS).
    pub api_addr: SocketAddr,
    /// Scratch directory holding the config and recordings.
    pub dir: tempfile::TempDir,
    /// The database URL it runs with.
    pub database: String,
    /// Its recordings directory (in `dir`, unless `--recordings-dir` was given).
    recordings: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
    /// While set, nobody reads the process's stderr (a log sink that stopped reading).
    logs_paused: Arc<std::sync::atomic::AtomicBool>,
    started_at: SystemTime,
}

impl GatewayProcess {
    /// Starts the gateway with `config` (TOML) and waits until it listens.
    pub fn start(config: &str) -> GatewayProcess {
        Self::start_with_args(config, &[])
    }

    /// Same, with extra command-line flags.
    pub fn start_with_args(config: &str, args: &[&str]) -> GatewayProcess {
        Self::start_command(config, args, Command::new(env!("CARGO_BIN_EXE_telepatch")))
    }

    /// Same, with soft and hard `RLIMIT_NOFILE` set to `limit` (through `prlimit`, which
    /// then runs the gateway in its own place, so the pid stays the gateway's).
    pub fn start_with_fd_limit(config: &str, limit: u64) -> GatewayProcess {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={limit}:{limit}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_telepatch"));
        Self::start_command(config, &[], command)
    }

    fn start_command(config: &str, args: &[&str], mut command: Command) -> GatewayProcess {
        host_watch::start();
        let started_at = SystemTime::now();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("telepatch.toml");
        std::fs::write(&config_path, config).unwrap();
        let database = if args.contains(&"--database-url") {
            None
        } else {
            Some(database_url(dir.path()))
        };
        let given_recordings = args
            .iter()
            .position(|a| *a == "--recordings-dir")
            .and_then(|at| args.get(at + 1))
            .map(PathBuf::from);
        let recordings = given_recordings
            .clone()
            .unwrap_or_else(|| dir.path().join("recordings"));
        let mut child = command
            .arg("--config")
            .arg(&config_path)
            .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
            .args(["--log-level", "info,telepatch=debug,gateway=debug"])
            .args(
                database
                    .iter()
                    .flat_map(|url| ["--database-url".to_owned(), url.clone()]),
            )
            .args(
                given_recordings
                    .is_none()
                    .then(|| {
                        [
                            "--recordings-dir".into(),
                            recordings.clone().into_os_string(),
                        ]
                    })
                    .into_iter()
                    .flatten(),
            )
            .args(args)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("TELEPATCH_CONFIG")
            .spawn()
            .expect("start telepatch");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let logs_paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let paused = Arc::clone(&logs_paused);
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            loop {
                while paused.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let Some(Ok(line)) = lines.next() else {
                    break;
                };
                if std::env::var_os("TELEPATCH_TEST_ECHO").is_some() {
                    eprintln!("[gateway] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let database = database.unwrap_or_else(|| {
            let at = args
                .iter()
                .position(|a| *a == "--database-url")
                .unwrap_or(0);
            args.get(at + 1).map(|s| s.to_string()).unwrap_or_default()
        });
        let mut process = GatewayProcess {
            child,
            addr: unbound,
            api_addr: unbound,
            dir,
            database,
            recordings,
            logs,
            logs_paused,
            started_at,
        };
        let line = process
            .wait_log("AudioSocket listener ready", Duration::from_secs(20))
            .unwrap_or_else(|| {
                panic!(
                    "gateway did not start; logs:\n{}",
                    process.logs().join("\n")
                )
            });
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("addr in the ready line");
        process.addr = addr.parse().unwrap();
        let line = process
            .wait_log("HTTP API ready", Duration::from_secs(20))
            .unwrap_or_else(|| panic!("API did not start; logs:\n{}", process.logs().join("\n")));
        let addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("addr in the API line");
        process.api_addr = addr.parse().unwrap();
        process
    }

    /// Creates an API token with `scope` (`read` or `admin`) through the CLI.
    pub fn token(&self, name: &str, scope: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_telepatch"))
            .arg("--database-url")
            .arg(&self.database)
            .args(["token", "create", "--name", name, "--scope", scope])
            .env_remove("TELEPATCH_CONFIG")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    }

    /// The base URL of the API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> Option<String> {
        self.wait_log_count(needle, 1, limit)
    }

    /// Waits for a log line containing every one of `needles`.
    pub fn wait_log_all(&self, needles: &[&str], limit: Duration) -> Option<String> {
        self.poll_logs(limit, |logs| {
            logs.iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned()
        })
    }

    /// Waits until `count` log lines contain `needle`; returns the last.
    pub fn wait_log_count(&self, needle: &str, count: usize, limit: Duration) -> Option<String> {
        self.poll_logs(limit, |logs| {
            let matching: Vec<&String> = logs.iter().filter(|l| l.contains(needle)).collect();
            (matching.len() >= count).then(|| matching[matching.len() - 1].clone())
        })
    }

    /// Reads the log every 20 ms until `found` returns something or `limit` passes.
    fn poll_logs<T>(
        &self,
        limit: Duration,
        mut found: impl FnMut(&[String]) -> Option<T>,
    ) -> Option<T> {
        let until = Instant::now() + limit;
        off_the_runtime(|| {
            loop {
                if let Some(hit) = found(&self.logs()) {
                    return Some(hit);
                }
                if Instant::now() > until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops reading the process's stderr, as a log sink that stopped reading would: once
    /// the pipe's buffer is full, the process's writes to stderr cannot complete.
    pub fn stop_reading_logs(&self) {
        self.logs_paused
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads the process's stderr again.
    pub fn resume_reading_logs(&self) {
        self.logs_paused
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// The recordings directory.
    pub fn recordings(&self) -> PathBuf {
        self.recordings.clone()
    }

    /// Kills the process with SIGKILL (a crash: nothing is finalized) and waits for it.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(Instant::now() < until, "gateway did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The test failed: say what the machine and the gateway went through, so a
            // failure the machine caused can be told from one the code caused.
            eprintln!("{}", host_watch::report_since(self.started_at));
            let notable: Vec<String> = self
                .logs()
                .into_iter()
                .filter(|l| {
                    l.contains("WARN")
                        || l.contains("ERROR")
                        || l.contains("engine thread")
                        || l.contains("call ended")
                })
                .collect();
            let skip = notable.len().saturating_sub(40);
            eprintln!(
                "gateway warnings, engine notes and call summaries ({} lines, last 40):",
                notable.len()
            );
            for line in &notable[skip..] {
                eprintln!("  {line}");
            }
        }
    }
}

/// Runs a blocking wait. Called from a test's multi-threaded runtime, the worker first
/// hands its queued tasks (fake callers, API clients) to another thread, so a test that
/// polls the gateway's log cannot hold up its own callers' frames.
pub fn off_the_runtime<T>(wait: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

/// The SQLite database of a test gateway living in `dir`.
pub fn database_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("telepatch.db").display())
}

/// Reads a WAV file as f32 channels (full scale 1.0) and its rate.
pub fn read_wav(path: &Path) -> (Vec<Vec<f32>>, u32) {
    let mut reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().map(Result::unwrap).collect(),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.unwrap() as f32 * scale)
                .collect()
        }
    };
    let mut split = vec![Vec::with_capacity(samples.len() / channels); channels];
    for frame in samples.chunks(channels) {
        for (c, s) in frame.iter().enumerate() {
            split[c].push(*s);
        }
    }
    (split, spec.sample_rate)
}

/// Waits until a finalized WAV appears at `path` (the gateway logs it).
pub fn wait_recording(gateway: &GatewayProcess, path: &Path) {
    let needle = format!("recording finalized path={}", path.display());
    gateway
        .wait_log(&needle, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("no {needle:?}; logs:\n{}", gateway.logs().join("\n")));
}

/// First and last index where the 5 ms envelope of `x` exceeds `threshold`.
pub fn active_span(x: &[f32], rate: u32, threshold: f32) -> Option<(usize, usize)> {
    let window = (rate / 200) as usize;
    let loud = |i: usize| {
        x[i..(i + window).min(x.len())]
            .iter()
            .any(|s| s.abs() > threshold)
    };
    let first = (0..x.len()).step_by(window / 4).find(|&i| loud(i))?;
    let last = (0..x.len())
        .rev()
        .step_by(window / 4)
        .find(|&i| loud(i.saturating_sub(window)))?;
    Some((first, last))
}

/// The tone in `x` after `skip_s` at both ends, as the median 100 ms window sees it:
/// the fit of the window with the median SNR, carrying the median frequency and level of
/// all windows. One glitch (a caller's frames late on a stalled host) spoils a window,
/// not the reading; a test that must see gaps looks for them explicitly.
pub fn steady_fit(x: &[f32], rate: u32, skip_s: f64) -> SineFit {
    let skip = (skip_s * f64::from(rate)) as usize;
    assert!(
        x.len() > 2 * skip + rate as usize / 2,
        "too little audio: {} samples",
        x.len()
    );
    let sample_rate = SampleRate::new(rate).unwrap();
    let mut fits: Vec<SineFit> = x[skip..x.len() - skip]
        .chunks_exact(rate as usize / 10)
        .map(|w| fit_sine(w, sample_rate).expect("a tone"))
        .collect();
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let frequency_hz = median(fits.iter().map(|f| f.frequency_hz).collect());
    let amplitude = median(fits.iter().map(|f| f.amplitude).collect());
    fits.sort_by(|a, b| a.snr_db.total_cmp(&b.snr_db));
    let middle = fits.len() / 2;
    SineFit {
        frequency_hz,
        amplitude,
        amplitude_dbfs: 20.0 * amplitude.log10(),
        ..fits.swap_remove(middle)
    }
}

/// Level (dBFS, as a sine's peak level) of the component at `hz`: the median of
/// fixed-frequency fits over 100 ms windows, or one fit over all of `x` when it is
/// shorter than 0.5 s. One dropout or phase jump (a thread stalled for tens of
/// milliseconds on a busy host) spoils a window, not the reading; tests that must see
/// gaps look for them explicitly.
pub fn tone_level_dbfs(x: &[f32], rate: u32, hz: f64) -> f64 {
    let fit = |w: &[f32]| {
        codecs::measure::fit_sine_at(w, SampleRate::new(rate).unwrap(), hz)
            .map(|f| f.amplitude_dbfs)
            .unwrap_or(-200.0)
    };
    let window = rate as usize / 10;
    if x.len() < 5 * window {
        return fit(x);
    }
    let mut levels: Vec<f64> = x.chunks_exact(window).map(fit).collect();
    levels.sort_by(f64::total_cmp);
    levels[levels.len() / 2]
}

/// Routes every call to a recording named after its UUID.
/// Call buffering that rides through 100 ms of lateness in both directions, for tests
/// that check every window of a call's audio for gaps: a busy virtual machine stalls
/// every thread (the gateway's and its peers') for 20-90 ms now and then, and with the
/// defaults (20 ms up, 10 ms down) each such stall would be a gap the test is not about.
pub const STALL_PROOF_CALL_BUFFERS: &str =
    "[audiosocket]\nuplink_buffer_ms = 100\ndownlink_buffer_ms = 100\n\n";

pub const RECORD_ALL: &str = r#"
[[routes]]
name = "record-everything"
match = "default"
actions = [{ action = "record", path = "{uuid}.wav" }]
"#;

/// The gateway's `/metrics`, as Prometheus text.
pub async fn metrics_text(gateway: &GatewayProcess) -> String {
    reqwest::get(format!("{}/metrics", gateway.api_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of an unlabelled metric in Prometheus text; panics, showing the text, if
/// it is missing.
pub fn metric_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
}

/// A fresh random call UUID.
pub fn uuid() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

/// Checks the recording `<uuid>.wav` of a caller that sent a 3 s, -6 dBFS, 1 kHz tone:
/// the tone lasts 3 s within one 20 ms frame, at 1 kHz ±0.5 Hz and -6 dBFS ±0.3 dB, with
/// at least `min_snr_db` of SNR. Returns the fitted SNR.
pub fn check_tone_recording(gateway: &GatewayProcess, id: uuid::Uuid, min_snr_db: f64) -> f64 {
    let path = gateway.recordings().join(format!("{id}.wav"));
    wait_recording(gateway, &path);
    let (channels, rate) = read_wav(&path);
    assert_eq!(rate, 48_000, "recordings are on the bus rate");
    assert_eq!(channels.len(), 1);
    let voice = &channels[0];
    let (first, last) = active_span(voice, rate, 0.05).expect("the tone is in the recording");
    let tone_seconds = (last - first) as f64 / f64::from(rate);
    assert!(
        (tone_seconds - 3.0).abs() <= 0.020,
        "{id}: tone lasts {tone_seconds:.4} s, expected 3 s within one 20 ms frame"
    );
    let fit = steady_fit(&voice[first..last], rate, 0.1);
    assert!(
        (fit.frequency_hz - 1000.0).abs() < 0.5,
        "{id}: frequency {:.3} Hz",
        fit.frequency_hz
    );
    assert!(
        (fit.amplitude_dbfs + 6.0).abs() < 0.3,
        "{id}: level {:.2} dBFS",
        fit.amplitude_dbfs
    );
    assert!(
        fit.snr_db >= min_snr_db,
        "{id}: SNR {:.1} dB < {min_snr_db} dB",
        fit.snr_db
    );
    fit.snr_db
}

/// The call record of `id` through `GET /v1/cdrs`, waiting up to 5 s for it to be written
/// (`Value::Null` if it never is).
pub async fn wait_cdr(gateway: &GatewayProcess, token: &str, id: uuid::Uuid) -> serde_json::Value {
    let http = reqwest::Client::new();
    for _ in 0..50 {
        let page: serde_json::Value = http
            .get(format!("{}/v1/cdrs?uuid={id}", gateway.api_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(item) = page["items"].as_array().and_then(|items| items.first()) {
            return item.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    serde_json::Value::Null
}

/// A regular file that other processes cannot open yet, as if it sat on a stalled disk:
/// a helper process holds a write lease on it, so another process's `open` waits (up to
/// `/proc/sys/fs/lease-break-time`, 45 s by default) until [`StalledFile::release`].
pub struct StalledFile {
    holder: Child,
}

/// Takes the lease, says so, and holds it until its standard input closes. The kernel
/// tells a lease holder with SIGIO that someone waits: ignored, only the wait matters.
const LEASE_HOLDER: &str = r#"
import fcntl, os, signal, sys
signal.signal(signal.SIGIO, signal.SIG_IGN)
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
print("held", flush=True)
sys.stdin.read()
fcntl.fcntl(fd, 1024, fcntl.F_UNLCK)
"#;

impl StalledFile {
    /// Writes `contents` to `path` and has the lease taken.
    pub fn create(path: &Path, contents: &[u8]) -> StalledFile {
        std::fs::write(path, contents).unwrap();
        let mut holder = Command::new("python3")
            .arg("-c")
            .arg(LEASE_HOLDER)
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 holds the file lease");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "held",
            "the lease on {} was not taken",
            path.display()
        );
        StalledFile { holder }
    }

    /// Lets waiting readers in.
    pub fn release(mut self) {
        drop(self.holder.stdin.take());
        let status = self.holder.wait().unwrap();
        assert!(status.success(), "the lease holder failed: {status}");
    }
}

/// Opens `GET /v1/events?types={types}` with a read token; the stream is answered 200.
pub async fn open_events(gateway: &GatewayProcess, types: &str) -> reqwest::Response {
    let token = gateway.token("board", "read");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let stream = http
        .get(format!("{}/v1/events?types={types}", gateway.api_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    stream
}

/// Reads server-sent events until `until` returns true or the time is up.
pub async fn read_events(
    response: &mut reqwest::Response,
    limit: Duration,
    mut until: impl FnMut(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
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

/// The PostgreSQL server the tests use (`TELEPATCH_TEST_POSTGRES_URL`), as its admin URL.
pub fn postgres_admin_url() -> String {
    std::env::var("TELEPATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs `sql` on the test server with `psql`; panics with its error if it fails.
pub fn psql(sql: &str) {
    let output = Command::new("psql")
        .arg(postgres_admin_url())
        .args(["-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL database of one test's own, dropped at the end whatever happens.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    /// Creates `<prefix>_<random>`.
    pub fn create(prefix: &str) -> PgDatabase {
        let name = format!("{prefix}_{}", uuid().simple());
        psql(&format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        let admin = postgres_admin_url();
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base)
            .to_owned();
        format!("{base}/{}", self.name)
    }

    /// Refuses new connections and ends the open ones: the database is gone for its
    /// clients until [`PgDatabase::restore`].
    pub fn cut_off(&self) {
        psql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS false",
            self.name
        ));
        psql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}'",
            self.name
        ));
    }

    /// Takes connections again.
    pub fn restore(&self) {
        psql(&format!(
            "ALTER DATABASE {} ALLOW_CONNECTIONS true",
            self.name
        ));
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .arg(postgres_admin_url())
            .args([
                "-qc",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            ])
            .output();
    }
}
