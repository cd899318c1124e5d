//! Recorders: bus audio to WAV files, written off the media path.
//!
//! The recorder node only interleaves its inputs into a lock-free ring. One disk thread
//! ([`DiskWriter`]) drains every recording's ring every 20 ms into a `hound` WAV writer
//! and flushes the header once a second, so a crash still leaves a playable file. A
//! recording is finalized when its node is dropped (the ring's producer is abandoned)
//! or when the disk writer shuts down; either way every sample that reached the ring is
//! written before the file is closed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BUS_RATE, Node};

/// Sample format of recordings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingFormat {
    /// 16-bit integer PCM (about 96 dB of dynamic range; what telephony needs).
    #[default]
    S16,
    /// 24-bit integer PCM (broadcast archives).
    S24,
    /// 32-bit float (lossless copy of the bus).
    F32,
}

/// Seconds of audio a recording's ring holds before the disk thread must have drained
/// it; generous, because a slow disk must not make the media thread drop samples.
const RING_SECONDS: usize = 2;
/// How often the disk thread drains rings.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);
/// How often the WAV header is brought up to date.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Counters of one recording.
#[derive(Debug, Default)]
pub struct RecorderStats {
    /// Frames (one sample per channel) written to the file.
    pub frames_written: AtomicU64,
    /// Frames dropped because the ring was full (the disk could not keep up).
    pub frames_dropped: AtomicU64,
}

/// A recording's result, reported when the file is closed.
#[derive(Debug, Clone)]
pub struct RecordingSummary {
    /// The file.
    pub path: PathBuf,
    /// Frames in the file.
    pub frames: u64,
    /// Why the file is incomplete, if it is.
    pub error: Option<String>,
}

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// The file could not be created.
    #[error("cannot create recording {path}: {source}")]
    Create {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: hound::Error,
    },
    /// The directory could not be created.
    #[error("cannot create directory for recording {path}: {source}")]
    Directory {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The disk thread has stopped (the gateway is shutting down).
    #[error("the recording writer has stopped")]
    WriterStopped,
    /// The path is not a plain relative path inside the recordings directory.
    #[error("recording path {path} must be relative, inside the recordings directory")]
    OutsideDirectory {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path (or a directory on it) is a symbolic link, or not what it must be.
    #[error("cannot open recording {path} inside the recordings directory: {source}")]
    Open {
        /// The path asked for.
        path: PathBuf,
        /// What failed (`ELOOP`/`ENOTDIR` for a symbolic link on the way).
        #[source]
        source: std::io::Error,
    },
    /// Every numbered variant of the name is taken.
    #[error("recording {path} and its numbered variants all exist already")]
    NoFreeName {
        /// The path asked for.
        path: PathBuf,
    },
}

/// Most numbered variants (`take-1.wav`, `take-2.wav`, ...) tried for a taken name.
const MAX_NAME_VARIANTS: u32 = 999;

/// Creates a new file at `relative` inside `dir`, never following a symbolic link and
/// never truncating an existing file: a taken name (a live recording, a recording from
/// before a restart) gets the next free numbered variant. Missing directories on the
/// way are created. Returns the file and the path it was created at.
pub fn create_beneath(dir: &Path, relative: &Path) -> Result<(File, PathBuf), RecorderError> {
    use rustix::fs::{Mode, OFlags};
    use std::path::Component;

    let outside = || RecorderError::OutsideDirectory {
        path: relative.to_path_buf(),
    };
    let open_err = |source: rustix::io::Errno| RecorderError::Open {
        path: relative.to_path_buf(),
        source: source.into(),
    };
    let mut parts = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => parts.push(part),
            _ => return Err(outside()),
        }
    }
    let Some(file_name) = parts.pop() else {
        return Err(outside());
    };
    std::fs::create_dir_all(dir).map_err(|source| RecorderError::Directory {
        path: relative.to_path_buf(),
        source,
    })?;
    let mut at = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_err)?;
    let mut created_in = dir.to_path_buf();
    for part in parts {
        match rustix::fs::mkdirat(&at, part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(open_err(e)),
        }
        // NOFOLLOW: a symbolic link here (to anywhere) is refused, not followed.
        at = rustix::fs::openat(
            &at,
            part,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(open_err)?;
        created_in.push(part);
    }
    let name = Path::new(file_name);
    let stem = name.file_stem().unwrap_or(file_name).to_string_lossy();
    let extension = name.extension().map(|e| e.to_string_lossy());
    for variant in 0..=MAX_NAME_VARIANTS {
        let candidate = match (variant, &extension) {
            (0, _) => file_name.to_string_lossy().into_owned(),
            (n, Some(ext)) => format!("{stem}-{n}.{ext}"),
            (n, None) => format!("{stem}-{n}"),
        };
        // CREATE | EXCL never opens an existing file, nor follows a link in its place.
        match rustix::fs::openat(
            &at,
            candidate.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => return Ok((File::from(fd), created_in.join(candidate))),
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => return Err(open_err(e)),
        }
    }
    Err(RecorderError::NoFreeName {
        path: relative.to_path_buf(),
    })
}

/// The recorder node: `channels` inputs interleaved into a WAV file.
pub struct RecorderNode {
    channels: usize,
    ring: rtrb::Producer<f32>,
    interleaved: Vec<f32>,
    stats: Arc<RecorderStats>,
}

impl Node for RecorderNode {
    fn produce(&mut self, _outputs: &mut [f32], _block: usize) {}

    fn consume(&mut self, inputs: &[f32], block: usize) {
        let frames = block.min(self.interleaved.len() / self.channels.max(1));
        for (frame_index, frame) in self
            .interleaved
            .chunks_exact_mut(self.channels)
            .take(frames)
            .enumerate()
        {
            for (channel, slot) in frame.iter_mut().enumerate() {
                *slot = inputs
                    .get(channel * block + frame_index)
                    .copied()
                    .unwrap_or(0.0);
            }
        }
        let wanted = frames * self.channels;
        let (_, dropped) = self.ring.push_partial_slice(&self.interleaved[..wanted]);
        if !dropped.is_empty() {
            self.stats.frames_dropped.fetch_add(
                (dropped.len() / self.channels.max(1)) as u64,
                Ordering::Relaxed,
            );
        }
    }
}

struct ActiveRecording {
    path: PathBuf,
    channels: usize,
    format: RecordingFormat,
    ring: rtrb::Consumer<f32>,
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    stats: Arc<RecorderStats>,
    error: Option<String>,
    done: Option<tokio::sync::oneshot::Sender<RecordingSummary>>,
}

impl ActiveRecording {
    /// Moves everything waiting in the ring into the file.
    fn drain(&mut self) {
        let Some(writer) = self.writer.as_mut() else {
            // The file failed earlier: keep the ring empty so the node never blocks.
            let n = self.ring.slots();
            if let Ok(chunk) = self.ring.read_chunk(n) {
                chunk.commit_all();
            }
            return;
        };
        let available = self.ring.slots();
        let whole = available - available % self.channels.max(1);
        let Ok(chunk) = self.ring.read_chunk(whole) else {
            return;
        };
        let (first, second) = chunk.as_slices();
        let mut failure = None;
        for &sample in first.iter().chain(second) {
            let result = match self.format {
                RecordingFormat::S16 => writer.write_sample(to_int(sample, 16) as i16),
                RecordingFormat::S24 => writer.write_sample(to_int(sample, 24)),
                RecordingFormat::F32 => writer.write_sample(sample),
            };
            if let Err(e) = result {
                failure = Some(e.to_string());
                break;
            }
        }
        chunk.commit_all();
        if let Some(message) = failure {
            self.error = Some(message);
            self.writer = None;
        } else {
            self.stats
                .frames_written
                .fetch_add((whole / self.channels.max(1)) as u64, Ordering::Relaxed);
        }
    }

    fn flush(&mut self) {
        if let Some(writer) = self.writer.as_mut()
            && let Err(e) = writer.flush()
        {
            self.error = Some(e.to_string());
        }
    }

    fn finalize(mut self) {
        self.drain();
        if let Some(writer) = self.writer.take()
            && let Err(e) = writer.finalize()
        {
            self.error = Some(e.to_string());
        }
        let summary = RecordingSummary {
            path: self.path.clone(),
            frames: self.stats.frames_written.load(Ordering::Relaxed),
            error: self.error.take(),
        };
        match &summary.error {
            None => {
                tracing::info!(path = %summary.path.display(), frames = summary.frames, "recording finalized")
            }
            Some(e) => {
                tracing::error!(path = %summary.path.display(), error = %e, "recording incomplete")
            }
        }
        if let Some(done) = self.done.take() {
            let _ = done.send(summary);
        }
    }
}

fn to_int(sample: f32, bits: u32) -> i32 {
    let full = (1i64 << (bits - 1)) as f32;
    (sample * full).round().clamp(-full, full - 1.0) as i32
}

enum DiskCommand {
    Start(Box<ActiveRecording>),
    Shutdown,
}

/// A recording just created: its node, counters, where it was created, and a receiver
/// that resolves when the file is closed.
pub struct OpenedRecording {
    /// The engine node that feeds the file.
    pub node: RecorderNode,
    /// Its counters.
    pub stats: Arc<RecorderStats>,
    /// Where the file was created (a numbered variant when the name was taken).
    pub path: PathBuf,
    /// Resolves with the summary once the file is closed.
    pub done: tokio::sync::oneshot::Receiver<RecordingSummary>,
}

/// The disk thread that owns every open recording file.
pub struct DiskWriter {
    commands: mpsc::Sender<DiskCommand>,
    thread: Option<JoinHandle<()>>,
}

impl DiskWriter {
    /// Starts the disk thread.
    pub fn start() -> std::io::Result<DiskWriter> {
        let (commands, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("telepatch-disk".into())
            .spawn(move || disk_loop(rx))?;
        Ok(DiskWriter {
            commands,
            thread: Some(thread),
        })
    }

    /// Creates a recording at `relative` inside `dir` (see [`create_beneath`]: no
    /// symbolic links, no file overwritten) and returns the node that feeds it, the path
    /// it was created at, and a receiver that resolves when the file is closed. The file
    /// is created here, so a bad path fails before any patch is made.
    pub fn open(
        &self,
        dir: &Path,
        relative: &Path,
        channels: u16,
        format: RecordingFormat,
        block: usize,
    ) -> Result<OpenedRecording, RecorderError> {
        let (file, path) = create_beneath(dir, relative)?;
        let channels_usize = usize::from(channels.max(1));
        let (bits, sample_format) = match format {
            RecordingFormat::S16 => (16, hound::SampleFormat::Int),
            RecordingFormat::S24 => (24, hound::SampleFormat::Int),
            RecordingFormat::F32 => (32, hound::SampleFormat::Float),
        };
        let spec = hound::WavSpec {
            channels: channels.max(1),
            sample_rate: BUS_RATE.hz(),
            bits_per_sample: bits,
            sample_format,
        };
        let writer =
            hound::WavWriter::new(std::io::BufWriter::new(file), spec).map_err(|source| {
                RecorderError::Create {
                    path: path.clone(),
                    source,
                }
            })?;
        let (producer, consumer) =
            rtrb::RingBuffer::new(BUS_RATE.hz() as usize * RING_SECONDS * channels_usize);
        let stats = Arc::new(RecorderStats::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let recording = ActiveRecording {
            path: path.to_path_buf(),
            channels: channels_usize,
            format,
            ring: consumer,
            writer: Some(writer),
            stats: Arc::clone(&stats),
            error: None,
            done: Some(done_tx),
        };
        self.commands
            .send(DiskCommand::Start(Box::new(recording)))
            .map_err(|_| RecorderError::WriterStopped)?;
        let node = RecorderNode {
            channels: channels_usize,
            ring: producer,
            interleaved: vec![0.0; block * channels_usize],
            stats: Arc::clone(&stats),
        };
        Ok(OpenedRecording {
            node,
            stats,
            path,
            done: done_rx,
        })
    }

    /// Finalizes every open recording (draining what reached their rings) and stops the
    /// thread. Blocking: call from `spawn_blocking` in async code.
    pub fn shutdown(mut self) {
        let _ = self.commands.send(DiskCommand::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("disk writer thread panicked");
        }
    }
}

fn disk_loop(commands: mpsc::Receiver<DiskCommand>) {
    let mut active: Vec<ActiveRecording> = Vec::new();
    let mut last_flush = Instant::now();
    loop {
        let mut shutting_down = false;
        match commands.recv_timeout(DRAIN_INTERVAL) {
            Ok(DiskCommand::Start(recording)) => active.push(*recording),
            Ok(DiskCommand::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                shutting_down = true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Take any further queued commands without waiting.
        while let Ok(command) = commands.try_recv() {
            match command {
                DiskCommand::Start(recording) => active.push(*recording),
                DiskCommand::Shutdown => shutting_down = true,
            }
        }

        for recording in &mut active {
            recording.drain();
        }
        // A recording whose node is gone is complete: finalize it.
        let mut index = 0;
        while index < active.len() {
            if shutting_down || active[index].ring.is_abandoned() {
                active.swap_remove(index).finalize();
            } else {
                index += 1;
            }
        }
        if shutting_down {
            return;
        }
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            for recording in &mut active {
                recording.flush();
            }
            last_flush = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_consumed_sample_and_finalizes_when_the_node_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskWriter::start().unwrap();
        let OpenedRecording {
            mut node,
            stats,
            path,
            done,
        } = disk
            .open(
                dir.path(),
                Path::new("sub/take.wav"),
                2,
                RecordingFormat::S16,
                4,
            )
            .unwrap();
        assert_eq!(path, dir.path().join("sub/take.wav"));
        // Two channels, blocks of 4: channel 0 ramps up, channel 1 is constant.
        for b in 0..1000 {
            let base = b as f32 * 4.0;
            let inputs = [
                base / 10_000.0,
                (base + 1.0) / 10_000.0,
                (base + 2.0) / 10_000.0,
                (base + 3.0) / 10_000.0,
                -0.5,
                -0.5,
                -0.5,
                -0.5,
            ];
            node.consume(&inputs, 4);
        }
        drop(node);
        let summary = done.blocking_recv().unwrap();
        assert_eq!(summary.frames, 4000);
        assert!(summary.error.is_none());
        assert_eq!(stats.frames_dropped.load(Ordering::Relaxed), 0);

        let mut reader = hound::WavReader::open(&path).unwrap();
        assert_eq!(reader.spec().sample_rate, 48_000);
        assert_eq!(reader.spec().channels, 2);
        let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
        assert_eq!(samples.len(), 8000);
        assert_eq!(samples[0], 0);
        assert_eq!(samples[1], -16384);
        assert_eq!(samples[2 * 3999], to_int(3999.0 / 10_000.0, 16) as i16);
        disk.shutdown();
    }

    #[test]
    fn shutdown_finalizes_open_recordings() {
        let dir = tempfile::tempdir().unwrap();
        let disk = DiskWriter::start().unwrap();
        let OpenedRecording {
            mut node,
            path,
            done,
            ..
        } = disk
            .open(
                dir.path(),
                Path::new("open.wav"),
                1,
                RecordingFormat::F32,
                48,
            )
            .unwrap();
        node.consume(&[0.25; 48], 48);
        disk.shutdown();
        let summary = done.blocking_recv().unwrap();
        assert_eq!(summary.frames, 48);
        let mut reader = hound::WavReader::open(&path).unwrap();
        let samples: Vec<f32> = reader.samples::<f32>().map(Result::unwrap).collect();
        assert_eq!(samples, vec![0.25; 48]);
        drop(node);
    }

    #[test]
    fn an_unwritable_path_fails_before_anything_starts() {
        let disk = DiskWriter::start().unwrap();
        let result = disk.open(
            Path::new("/proc/telepatch"),
            Path::new("x.wav"),
            1,
            RecordingFormat::S16,
            48,
        );
        assert!(matches!(
            result,
            Err(RecorderError::Directory { .. } | RecorderError::Open { .. })
        ));
        disk.shutdown();
    }

    #[test]
    fn paths_leaving_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for path in ["../x.wav", "/tmp/x.wav", "a/../../x.wav", "", "./"] {
            assert!(
                matches!(
                    create_beneath(dir.path(), Path::new(path)),
                    Err(RecorderError::OutsideDirectory { .. })
                ),
                "{path:?}"
            );
        }
    }

    #[test]
    fn symbolic_links_inside_the_directory_are_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let recordings = dir.path().join("recordings");
        std::fs::create_dir(&recordings).unwrap();
        // A link to a directory outside, and a link where a file would go.
        std::os::unix::fs::symlink(elsewhere.path(), recordings.join("escape")).unwrap();
        let victim = elsewhere.path().join("victim.wav");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, recordings.join("victim.wav")).unwrap();

        let through_dir = create_beneath(&recordings, Path::new("escape/x.wav"));
        assert!(
            matches!(through_dir, Err(RecorderError::Open { .. })),
            "{through_dir:?}"
        );
        assert!(!elsewhere.path().join("x.wav").exists());
        // The linked name is taken, so the recording gets a fresh name beside it and the
        // link's target is untouched.
        let (_file, path) = create_beneath(&recordings, Path::new("victim.wav")).unwrap();
        assert_eq!(path, recordings.join("victim-1.wav"));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn a_taken_name_gets_the_next_numbered_variant_and_nothing_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("show.wav"), b"earlier audio").unwrap();
        let (_a, first) = create_beneath(dir.path(), Path::new("show.wav")).unwrap();
        let (_b, second) = create_beneath(dir.path(), Path::new("show.wav")).unwrap();
        let (_c, bare) = create_beneath(dir.path(), Path::new("notes")).unwrap();
        let (_d, bare2) = create_beneath(dir.path(), Path::new("notes")).unwrap();
        assert_eq!(first, dir.path().join("show-1.wav"));
        assert_eq!(second, dir.path().join("show-2.wav"));
        assert_eq!(
            (bare, bare2),
            (dir.path().join("notes"), dir.path().join("notes-1"))
        );
        assert_eq!(
            std::fs::read(dir.path().join("show.wav")).unwrap(),
            b"earlier audio"
        );
    }

    #[test]
    fn int_conversion_saturates() {
        assert_eq!(to_int(1.5, 16), 32767);
        assert_eq!(to_int(-1.5, 16), -32768);
        assert_eq!(to_int(0.5, 24), 4_194_304);
    }
}
