//! A real Asterisk 22.10.1 for the interoperability suite: started per test with a
//! generated configuration (loopback only, no SIP, exactly the modules the scenarios
//! use), driven through its CLI (`asterisk -rx`) and ARI, and killed when dropped (also
//! when the test panics). Its log file (verbose level 4) is how tests observe the
//! dialplan; MixMonitor files are how they hear what telepatch sent.
//!
//! The installation comes from `TELEPATCH_ASTERISK_PREFIX`, which `tests/interop.sh` sets
//! after building Asterisk; without it the tests fail (they never skip).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ARI user and password of the generated `ari.conf`.
const ARI_KEY: &str = "interop:interop";
/// The Stasis application the tests register through the event socket.
pub const ARI_APP: &str = "interop";

/// Modules loaded (modules.conf has `autoload=no`): AudioSocket, Local channels (core),
/// the test applications, MixMonitor with WAV/raw formats, transcoding, bridges and ARI.
const MODULES: &[&str] = &[
    "res_timing_timerfd",
    "pbx_config",
    "res_clioriginate",
    "res_audiosocket",
    "app_audiosocket",
    "chan_audiosocket",
    "app_milliwatt",
    "app_playtones",
    "app_senddtmf",
    "app_verbose",
    "app_dial",
    "app_mixmonitor",
    "codec_resample",
    "codec_ulaw",
    "format_wav",
    "format_sln",
    "bridge_simple",
    "bridge_softmix",
    "res_sorcery_config",
    "res_sorcery_memory",
    "res_http_websocket",
    "res_websocket_client",
    "res_stasis",
    "res_stasis_answer",
    "res_stasis_playback",
    "res_stasis_recording",
    "res_stasis_snoop",
    "app_stasis",
    "res_ari",
    "res_ari_model",
    "res_ari_channels",
    "res_ari_bridges",
    "res_ari_events",
];

/// The dialplan. Calls are `Local/<uuid>@<context>/n` channels: the `;2` half runs the
/// context below with the UUID as its extension, the `;1` half is the caller (an
/// application such as Milliwatt, or one of the `caller-*` contexts). MixMonitor records
/// on `;2` what telepatch sent: the write direction (`t()`) when `;2` talks to telepatch
/// itself, the read direction (`r()`) when telepatch reaches it through a bridge.
/// `INTEROP continued <uuid>` in the log proves the dialplan went on after telepatch.
const DIALPLAN: &str = r#"
[app]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav,t(${REC}/${EXTEN}-heard.wav))
 same => n,AudioSocket(${EXTEN},${GW})
 same => n,Verbose(0,INTEROP continued ${EXTEN})
 same => n,Hangup()

[dial-slin]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav,t(${REC}/${EXTEN}-heard.wav))
 same => n,Dial(AudioSocket/${GW}/${EXTEN}/c(slin))
 same => n,Verbose(0,INTEROP continued ${EXTEN} ${DIALSTATUS})
 same => n,Hangup()

[dial-slin16]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav16,t(${REC}/${EXTEN}-heard.wav16))
 same => n,Dial(AudioSocket/${GW}/${EXTEN}/c(slin16))
 same => n,Verbose(0,INTEROP continued ${EXTEN} ${DIALSTATUS})
 same => n,Hangup()

[dial-slin48]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.sln48,t(${REC}/${EXTEN}-heard.sln48))
 same => n,Dial(AudioSocket/${GW}/${EXTEN}/c(slin48))
 same => n,Verbose(0,INTEROP continued ${EXTEN} ${DIALSTATUS})
 same => n,Hangup()

[dial-ulaw]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav,t(${REC}/${EXTEN}-heard.wav))
 same => n,Dial(AudioSocket/${GW}/${EXTEN}/c(ulaw))
 same => n,Verbose(0,INTEROP continued ${EXTEN} ${DIALSTATUS})
 same => n,Hangup()

[dial-default]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav,t(${REC}/${EXTEN}-heard.wav))
 same => n,Dial(AudioSocket/${GW}/${EXTEN})
 same => n,Verbose(0,INTEROP continued ${EXTEN} ${DIALSTATUS})
 same => n,Hangup()

[ari-milliwatt]
exten => _[0-9a-f].,1,Answer()
 same => n,MixMonitor(${REC}/${EXTEN}-mix.wav16,r(${REC}/${EXTEN}-heard.wav16))
 same => n,Milliwatt()

[caller-late]
exten => s,1,Wait(1)
 same => n,Milliwatt()

[caller-dtmf]
exten => s,1,Wait(0.5)
 same => n,SendDTMF(123#)
 same => n,Milliwatt()

[caller-silent]
exten => s,1,Wait(60)

[caller-2s]
exten => s,1,PlayTones(1004/1000)
 same => n,Wait(2)
 same => n,Hangup()
"#;

/// The installation prefix from `TELEPATCH_ASTERISK_PREFIX`; panics when it is missing.
pub fn prefix() -> PathBuf {
    let prefix = std::env::var_os("TELEPATCH_ASTERISK_PREFIX")
        .map(PathBuf::from)
        .expect(
            "TELEPATCH_ASTERISK_PREFIX is not set: run the interop suite with tests/interop.sh, \
         which builds Asterisk 22.10.1 and sets it",
        );
    assert!(
        prefix.join("sbin/asterisk").is_file(),
        "no {}/sbin/asterisk: run tests/interop.sh to build it",
        prefix.display()
    );
    prefix
}

/// A free TCP port on 127.0.0.1 (bound, then released for Asterisk's HTTP server).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running Asterisk.
pub struct Asterisk {
    child: Child,
    prefix: PathBuf,
    /// The configuration, log and run directory.
    pub conf: tempfile::TempDir,
    /// Where MixMonitor writes.
    pub recordings: PathBuf,
    /// ARI and HTTP, on loopback.
    pub http: SocketAddr,
    /// The telepatch AudioSocket address the dialplan connects to.
    pub gateway: SocketAddr,
    log: PathBuf,
}

impl Asterisk {
    /// Starts Asterisk with the dialplan pointing at telepatch's `gateway` address and
    /// waits until it is fully booted with every module loaded.
    pub fn start(gateway: SocketAddr) -> Asterisk {
        assert!(gateway.ip().is_loopback(), "interop tests stay on loopback");
        let prefix = prefix();
        let conf = tempfile::tempdir().unwrap();
        let dir = conf.path();
        let recordings = dir.join("rec");
        for sub in ["rec", "log", "run", "spool", "db", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (p, d) = (prefix.display(), dir.display());
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write(
            "asterisk.conf",
            format!(
                "[directories]\nastcachedir => {d}/cache\nastetcdir => {d}\n\
                 astmoddir => {p}/lib/asterisk/modules\nastvarlibdir => {p}/var/lib/asterisk\n\
                 astdbdir => {d}/db\nastkeydir => {d}\nastdatadir => {p}/var/lib/asterisk\n\
                 astagidir => {p}/var/lib/asterisk/agi-bin\nastspooldir => {d}/spool\n\
                 astrundir => {d}/run\nastlogdir => {d}/log\nastsbindir => {p}/sbin\n\
                 [options]\nverbose = 4\n"
            ),
        );
        write(
            "logger.conf",
            "[general]\ndateformat = %F %T.%3q\n[logfiles]\n\
             full => notice,warning,error,verbose(4)\n"
                .into(),
        );
        let loads: String = MODULES
            .iter()
            .map(|m| format!("load => {m}.so\n"))
            .collect();
        write("modules.conf", format!("[modules]\nautoload = no\n{loads}"));
        write(
            "http.conf",
            format!(
                "[general]\nenabled = yes\nbindaddr = 127.0.0.1\nbindport = {}\n",
                http.port()
            ),
        );
        let (user, password) = ARI_KEY.split_once(':').unwrap();
        write(
            "ari.conf",
            format!(
                "[general]\nenabled = yes\n[{user}]\ntype = user\nread_only = no\n\
                 password = {password}\npassword_format = plain\n"
            ),
        );
        write(
            "extensions.conf",
            format!(
                "[general]\nstatic = yes\nwriteprotect = yes\n[globals]\nGW = {gateway}\n\
                 REC = {}\n{DIALPLAN}",
                recordings.display()
            ),
        );
        let stdout = std::fs::File::create(dir.join("stdout.txt")).unwrap();
        let child = Command::new(prefix.join("sbin/asterisk"))
            .arg("-C")
            .arg(dir.join("asterisk.conf"))
            // Real-time priority when allowed (as root), like telepatch's engine: on a
            // busy host a starved Asterisk delivers the caller's frames late, which
            // would show as gaps that are not telepatch's.
            .args(["-f", "-n", "-p"])
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stdout)
            .spawn()
            .expect("start asterisk");
        let asterisk = Asterisk {
            child,
            prefix,
            log: dir.join("log/full"),
            conf,
            recordings,
            http,
            gateway,
        };
        let until = Instant::now() + Duration::from_secs(30);
        while !asterisk.cli_ok("core waitfullybooted") {
            assert!(
                Instant::now() < until,
                "Asterisk did not boot; its log:\n{}",
                asterisk.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = asterisk.log_text();
        assert!(
            !log.contains("Error loading module"),
            "a module failed to load:\n{log}"
        );
        let loaded = asterisk.cli("module show like .so");
        for module in MODULES {
            assert!(
                loaded.contains(&format!("{module}.so")),
                "{module} is not loaded:\n{loaded}"
            );
        }
        asterisk
    }

    fn rx(&self, command: &str) -> std::process::Output {
        Command::new(self.prefix.join("sbin/asterisk"))
            .arg("-C")
            .arg(self.conf.path().join("asterisk.conf"))
            .arg("-rx")
            .arg(command)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn cli_ok(&self, command: &str) -> bool {
        self.rx(command).status.success()
    }

    /// Runs a CLI command and returns its output; panics if the CLI cannot connect.
    pub fn cli(&self, command: &str) -> String {
        let output = self.rx(command);
        assert!(
            output.status.success(),
            "asterisk -rx {command:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Starts a call: `Local/<id>@<context>/n` whose caller half runs `caller`
    /// (`application Milliwatt` or `extension s@caller-late`).
    pub fn originate(&self, context: &str, id: &str, caller: &str) {
        let out = self.cli(&format!(
            "channel originate Local/{id}@{context}/n {caller}"
        ));
        assert!(
            !out.to_lowercase().contains("error") && !out.contains("Unable"),
            "originate: {out}"
        );
    }

    /// Asks Asterisk to hang up a channel by name.
    pub fn hangup_channel(&self, name: &str) {
        let out = self.cli(&format!("channel request hangup {name}"));
        assert!(out.contains("Requested Hangup"), "hangup {name}: {out}");
    }

    /// The AudioSocket channel driver's name for a call (`Dial(AudioSocket/...)`).
    pub fn audiosocket_channel(&self, id: &str) -> String {
        format!("AudioSocket/{}-{id}", self.gateway)
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for a log line containing every one of `needles`.
    pub fn wait_log(&self, needles: &[&str], limit: Duration) -> String {
        let until = Instant::now() + limit;
        loop {
            if let Some(line) = self
                .log_text()
                .lines()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < until,
                "no Asterisk log line with {needles:?} within {limit:?}; log tail:\n{}",
                tail(&self.log_text(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until MixMonitor has closed the files of the call `id` (logged after it
    /// closed them).
    pub fn wait_mixmonitor_closed(&self, id: &str, limit: Duration) {
        self.wait_log(&["End MixMonitor Recording", id], limit);
    }

    /// The MixMonitor file of what the call `id` heard from telepatch, as f32 samples and
    /// their rate (`.wav` 8 kHz, `.wav16` 16 kHz, `.sln48` raw 48 kHz).
    pub fn heard(&self, id: &str) -> (Vec<f32>, u32) {
        for (ext, rate) in [("wav", 8_000), ("wav16", 16_000), ("sln48", 48_000)] {
            let path = self.recordings.join(format!("{id}-heard.{ext}"));
            if !path.exists() {
                continue;
            }
            if ext == "sln48" {
                let bytes = std::fs::read(&path).unwrap();
                let samples = bytes
                    .chunks_exact(2)
                    .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                    .collect();
                return (samples, rate);
            }
            let (mut channels, file_rate) = crate::common::read_wav(&path);
            assert_eq!(file_rate, rate, "{}", path.display());
            return (channels.swap_remove(0), rate);
        }
        panic!(
            "no MixMonitor recording for {id} in {}",
            self.recordings.display()
        );
    }

    /// A client of this Asterisk's ARI.
    pub fn ari(&self) -> Ari {
        Ari {
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: format!("http://{}/ari", self.http),
        }
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "Asterisk log (last 60 lines):\n{}",
                tail(&self.log_text(), 60)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("Remote UNIX connection"))
        .collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// ARI over HTTP (the REST half).
pub struct Ari {
    http: reqwest::Client,
    base: String,
}

impl Ari {
    /// Sends a request with query parameters; returns the status and the JSON body.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let url = reqwest::Url::parse_with_params(
            &format!("{}{path}", self.base),
            std::iter::once(&("api_key", ARI_KEY)).chain(query),
        )
        .unwrap();
        let response = self.http.request(method, url).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// `POST`, asserting a 2xx answer.
    pub async fn post(&self, path: &str, query: &[(&str, &str)]) -> serde_json::Value {
        let (status, body) = self.request(reqwest::Method::POST, path, query).await;
        assert!((200..300).contains(&status), "POST {path}: {status} {body}");
        body
    }

    /// `DELETE`, asserting a 2xx answer.
    pub async fn delete(&self, path: &str) {
        let (status, body) = self.request(reqwest::Method::DELETE, path, &[]).await;
        assert!(
            (200..300).contains(&status),
            "DELETE {path}: {status} {body}"
        );
    }
}

/// The ARI event socket of [`ARI_APP`]: connecting it registers the Stasis application
/// (ARI refuses to start channels in an application nobody listens to). Events are
/// collected as JSON. It is only ever read, so a handshake and unmasked server frames
/// are all of WebSocket it needs.
pub struct AriEvents {
    events: Arc<Mutex<Vec<serde_json::Value>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl AriEvents {
    /// Connects to `/ari/events?app=interop`.
    pub async fn connect(asterisk: &Asterisk) -> AriEvents {
        let mut socket = tokio::net::TcpStream::connect(asterisk.http).await.unwrap();
        let request = format!(
            "GET /ari/events?app={ARI_APP}&api_key={ARI_KEY} HTTP/1.1\r\nHost: {}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            asterisk.http
        );
        socket.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(socket.read(&mut byte).await.unwrap(), 1, "ARI closed");
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "ARI event socket: {head}");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let reader = tokio::spawn(async move {
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 16384];
            loop {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
                while let Some((opcode, payload, used)) = server_frame(&buffer) {
                    if opcode == 1
                        && let Ok(event) = serde_json::from_slice(&payload)
                    {
                        sink.lock().unwrap().push(event);
                    }
                    buffer.drain(..used);
                }
            }
        });
        AriEvents { events, reader }
    }

    /// Waits for an event of `kind` about the channel `channel_id`.
    pub async fn wait(&self, kind: &str, channel_id: &str, limit: Duration) -> serde_json::Value {
        let until = tokio::time::Instant::now() + limit;
        loop {
            let found = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind && e["channel"]["id"] == channel_id)
                .cloned();
            if let Some(event) = found {
                return event;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "no {kind} for {channel_id} within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AriEvents {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// One complete unmasked frame at the start of `buffer`: opcode, payload, bytes used.
fn server_frame(buffer: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let opcode = buffer.first()? & 0x0f;
    let short = buffer.get(1)? & 0x7f;
    let (len, start) = match short {
        126 => (
            usize::from(u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = buffer.get(2..10)?.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buffer.get(start..start + len)?.to_vec();
    Some((opcode, payload, start + len))
}

/// Checks that `path` is a well-formed RIFF/WAVE file whose sizes match the file: the RIFF
/// size is the file length minus 8 and the `data` chunk runs exactly to the end.
/// Returns the data length in bytes.
pub fn assert_wav_sizes_match(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert!(
        bytes.len() >= 44,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(&bytes[0..4], b"RIFF", "{}", path.display());
    assert_eq!(&bytes[8..12], b"WAVE", "{}", path.display());
    assert_eq!(u32_at(4), bytes.len() - 8, "{}: RIFF size", path.display());
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32_at(at + 4);
        if &bytes[at..at + 4] == b"data" {
            assert_eq!(
                at + 8 + size,
                bytes.len(),
                "{}: data chunk size does not reach the end of the file",
                path.display()
            );
            return size;
        }
        at += 8 + size + (size & 1);
    }
    panic!("{}: no data chunk", path.display());
}
