//! Recorders: bus audio to WAV files, written off the media path.
//!
//! The recorder node only interleaves its inputs into a lock-free ring. One disk thread
//! ([`DiskWriter`]) drains every recording's ring every 20 ms into a `hound` WAV writer
//! and flushes the header once a second. A recording is finalized when its node is
//! dropped (the ring's producer is abandoned) or when the disk writer shuts down; either
//! way every sample that reached the ring is written before the file is closed.
//!
//! Crashes: the disk thread notes every open file in a journal
//! ([`super::recording_journal`]); the next start sets the header of each file a crash
//! left open to the whole frames on disk ([`repair_file`]).
//!
//! Failures: a recording's header is on disk before it counts as started, or the file is
//! removed and the start refused ([`RecorderError::Header`]). A file that stops taking
//! audio (a full disk) is given up at once: its header is set to the frames that reached
//! the disk, so it stays a valid WAV, the failure is told once (log, the recorder's
//! status, [`OpenedRecording::failed`]), and its ring is kept empty. Only the disk
//! thread ever waits for the disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{BUS_RATE, Node};
use crate::threads::{OwnedThread, Priority};

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
    /// Frames that did not reach the file: the ring was full (the disk could not keep
    /// up), or the file had failed.
    pub frames_dropped: AtomicU64,
    /// Why the file stopped taking audio, once it has (a full disk, an I/O error). The
    /// file then holds, as a valid WAV, the frames written before.
    pub error: std::sync::OnceLock<String>,
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
    /// The file was created but its header could not be written (a full disk); the
    /// file has been removed again.
    #[error("cannot write the header of recording {path}: {source}")]
    Header {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: hound::Error,
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

impl RecorderError {
    /// Whether the disk failed (as opposed to a path that is not allowed).
    pub fn is_disk_failure(&self) -> bool {
        matches!(
            self,
            RecorderError::Create { .. }
                | RecorderError::Directory { .. }
                | RecorderError::Open { .. }
                | RecorderError::Header { .. }
        )
    }
}

/// Most numbered variants (`take-1.wav`, `take-2.wav`, ...) tried for a taken name.
const MAX_NAME_VARIANTS: u32 = 999;

/// Creates a new file at `relative` inside `dir`, never following a symbolic link and
/// never truncating an existing file: a taken name (a live recording, a recording from
/// before a restart) gets the next free numbered variant. Missing directories on the
/// way are created. Returns the file and the path it was created at.
pub fn create_beneath(dir: &Path, relative: &Path) -> Result<(File, PathBuf), RecorderError> {
    let created = create_in_directory(dir, relative)?;
    Ok((created.file, created.path))
}

/// A file just created by [`create_in_directory`], with the directory it is in (so it
/// can be removed again without following a path).
struct Created {
    file: File,
    path: PathBuf,
    parent: rustix::fd::OwnedFd,
    name: String,
}

/// Opens the directory that holds `relative` inside `dir`, every step without following
/// a symbolic link, creating missing directories when `create` says so. Returns it, the
/// file name, and the directory's path.
fn open_parent_beneath(
    dir: &Path,
    relative: &Path,
    create: bool,
) -> Result<(rustix::fd::OwnedFd, std::ffi::OsString, PathBuf), RecorderError> {
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
    if create {
        std::fs::create_dir_all(dir).map_err(|source| RecorderError::Directory {
            path: relative.to_path_buf(),
            source,
        })?;
    }
    let mut at = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(open_err)?;
    let mut parent = dir.to_path_buf();
    for part in parts {
        if create {
            match rustix::fs::mkdirat(&at, part, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(open_err(e)),
            }
        }
        // NOFOLLOW: a symbolic link here (to anywhere) is refused, not followed.
        at = rustix::fs::openat(
            &at,
            part,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(open_err)?;
        parent.push(part);
    }
    Ok((at, file_name.to_owned(), parent))
}

fn create_in_directory(dir: &Path, relative: &Path) -> Result<Created, RecorderError> {
    use rustix::fs::{Mode, OFlags};

    let (at, file_name, created_in) = open_parent_beneath(dir, relative, true)?;
    let name = Path::new(&file_name);
    let stem = name.file_stem().unwrap_or(&file_name).to_string_lossy();
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
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => {
                return Ok(Created {
                    file: File::from(fd),
                    path: created_in.join(&candidate),
                    parent: at,
                    name: candidate,
                });
            }
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                return Err(RecorderError::Open {
                    path: relative.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
    Err(RecorderError::NoFreeName {
        path: relative.to_path_buf(),
    })
}

/// A recording's file brought in line with its audio by [`repair_file`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repair {
    /// Whole frames in the file.
    pub frames: u64,
    /// Frames the header stated before (`None` if nothing had to change).
    pub stated_before: Option<u64>,
}

/// Sets the size fields of `file` (one of our WAV layouts) to the whole frames on disk
/// and cuts off a partial trailing frame. Needs no new space, so it works on a full
/// disk. `None` if the file is not one of our layouts (it is left untouched).
pub fn repair_file(file: &File) -> std::io::Result<Option<Repair>> {
    use std::os::unix::fs::FileExt as _;

    let mut head = [0u8; super::wav_header::MAX_HEADER_LEN];
    let mut read = 0;
    while read < head.len() {
        match file.read_at(&mut head[read..], read as u64)? {
            0 => break,
            n => read += n,
        }
    }
    let Some(layout) = super::wav_header::parse(&head[..read]) else {
        return Ok(None);
    };
    let Some(fix) = super::wav_header::size_fix(&layout, file.metadata()?.len()) else {
        return Ok(None);
    };
    if !fix.needed {
        return Ok(Some(Repair {
            frames: fix.frames(&layout),
            stated_before: None,
        }));
    }
    if file.metadata()?.len() > fix.file_len {
        file.set_len(fix.file_len)?;
    }
    for (at, bytes) in fix.writes(&layout) {
        file.write_all_at(&bytes, at)?;
    }
    Ok(Some(Repair {
        frames: fix.frames(&layout),
        stated_before: Some(u64::from(layout.data_size) / layout.block_align),
    }))
}

/// Repairs `relative` inside `dir` (see [`repair_file`]), reaching it without following
/// a symbolic link; only regular files are opened. `Ok(None)` if it is gone or not ours.
pub fn repair_beneath(dir: &Path, relative: &Path) -> Result<Option<Repair>, RecorderError> {
    use rustix::fs::{Mode, OFlags};

    let (at, name, _) = match open_parent_beneath(dir, relative, false) {
        Ok(found) => found,
        Err(RecorderError::Open { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let open_err = |source: std::io::Error| RecorderError::Open {
        path: relative.to_path_buf(),
        source,
    };
    let fd = match rustix::fs::openat(
        &at,
        name.as_os_str(),
        // NONBLOCK: a FIFO planted under the name must not hang the start-up.
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => return Err(open_err(e.into())),
    };
    let file = File::from(fd);
    if !file.metadata().map_err(open_err)?.file_type().is_file() {
        return Ok(None);
    }
    repair_file(&file).map_err(open_err)
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
    /// The path inside the recordings directory, as the journal names it.
    relative: PathBuf,
    channels: usize,
    format: RecordingFormat,
    ring: rtrb::Consumer<f32>,
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    /// The same file, to set its header from what is on disk once the writer failed.
    file: File,
    stats: Arc<RecorderStats>,
    error: Option<String>,
    /// The header could not be set after a failure: the next start tries again.
    header_stale: bool,
    /// Told once, when the file stops taking audio.
    failed: Option<tokio::sync::oneshot::Sender<String>>,
    done: Option<tokio::sync::oneshot::Sender<RecordingSummary>>,
}

impl ActiveRecording {
    /// Moves everything waiting in the ring into the file.
    fn drain(&mut self, failures: &AtomicU64) {
        let channels = self.channels.max(1);
        let Some(writer) = self.writer.as_mut() else {
            // The file failed earlier: keep the ring empty so the node never blocks.
            let n = self.ring.slots();
            if let Ok(chunk) = self.ring.read_chunk(n) {
                chunk.commit_all();
                self.stats
                    .frames_dropped
                    .fetch_add((n / channels) as u64, Ordering::Relaxed);
            }
            return;
        };
        let available = self.ring.slots();
        let whole = available - available % channels;
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
        match failure {
            Some(message) => self.fail(message, whole as u64, failures),
            None => {
                self.stats
                    .frames_written
                    .fetch_add((whole / channels) as u64, Ordering::Relaxed);
            }
        }
    }

    fn flush(&mut self, failures: &AtomicU64) {
        if let Some(writer) = self.writer.as_mut()
            && let Err(e) = writer.flush()
        {
            self.fail(e.to_string(), 0, failures);
        }
    }

    /// The file stopped taking audio: give up on it, set its header to the whole frames
    /// that reached the disk, and say so once (log, status, the `failed` channel).
    /// `samples_in_flight` were taken from the ring but not all written.
    fn fail(&mut self, message: String, samples_in_flight: u64, failures: &AtomicU64) {
        // Dropping hound's writer tries to update the header through its buffer, which
        // fails the same way; the header is set below from what is on disk instead.
        drop(self.writer.take());
        let written_before = self.stats.frames_written.load(Ordering::Relaxed);
        let frames = match repair_file(&self.file) {
            Ok(Some(repair)) => repair.frames,
            Ok(None) => 0,
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot set the failed recording's header");
                self.header_stale = true;
                0
            }
        };
        // Buffered frames that never reached the disk are lost too.
        let lost = (written_before + samples_in_flight / self.channels.max(1) as u64)
            .saturating_sub(frames);
        self.stats.frames_written.store(frames, Ordering::Relaxed);
        self.stats.frames_dropped.fetch_add(lost, Ordering::Relaxed);
        let _ = self.stats.error.set(message.clone());
        failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            path = %self.path.display(),
            error = %message,
            frames,
            "recording failed; the file keeps the audio written before"
        );
        if let Some(failed) = self.failed.take() {
            let _ = failed.send(message.clone());
        }
        self.error = Some(message);
    }

    /// Closes the file; returns its journal name and whether its header matches its
    /// audio.
    fn finalize(mut self, failures: &AtomicU64) -> (PathBuf, bool) {
        self.drain(failures);
        if let Some(writer) = self.writer.take()
            && let Err(e) = writer.finalize()
        {
            self.fail(e.to_string(), 0, failures);
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
                tracing::error!(path = %summary.path.display(), frames = summary.frames, error = %e, "recording incomplete")
            }
        }
        // The failure (if any) is told before the summary.
        drop(self.failed.take());
        if let Some(done) = self.done.take() {
            let _ = done.send(summary);
        }
        (self.relative, !self.header_stale)
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

/// A recording just created: its node, counters, where it was created, and receivers
/// for its failure and its end.
pub struct OpenedRecording {
    /// The engine node that feeds the file.
    pub node: RecorderNode,
    /// Its counters.
    pub stats: Arc<RecorderStats>,
    /// Where the file was created (a numbered variant when the name was taken).
    pub path: PathBuf,
    /// Resolves with the error if the file stops taking audio (a full disk); closed
    /// without a value if the recording ends well.
    pub failed: tokio::sync::oneshot::Receiver<String>,
    /// Resolves with the summary once the file is closed.
    pub done: tokio::sync::oneshot::Receiver<RecordingSummary>,
}

/// The disk thread that owns every open recording file.
pub struct DiskWriter {
    opener: RecordingOpener,
    /// Told to stop by a [`DiskCommand::Shutdown`] (its wake-up), which it takes after
    /// the commands queued before it.
    thread: OwnedThread,
}

/// Creates recordings and hands them to the disk thread. Cheap to clone, so callers
/// create files (which waits for the disk) without holding any lock others need.
#[derive(Clone)]
pub struct RecordingOpener {
    dir: PathBuf,
    commands: mpsc::Sender<DiskCommand>,
    failures: Arc<AtomicU64>,
}

impl DiskWriter {
    /// Starts the disk thread for recordings inside `dir`. Before it takes any new
    /// recording, the thread repairs the recordings a stopped gateway left open in
    /// `dir` (see [`super::recording_journal`]) and from then on keeps its own journal.
    pub fn start(dir: &Path) -> std::io::Result<DiskWriter> {
        let (commands, rx) = mpsc::channel();
        let failures = Arc::new(AtomicU64::new(0));
        let thread_failures = Arc::clone(&failures);
        let thread_dir = dir.to_path_buf();
        let thread = OwnedThread::spawn("telepatch-disk", Priority::Normal, move |_stop| {
            let journal = recover_unfinished(&thread_dir);
            disk_loop(rx, journal, &thread_failures)
        })?;
        let shutdown = commands.clone();
        let thread = thread.with_wake(move || {
            let _ = shutdown.send(DiskCommand::Shutdown);
        });
        Ok(DiskWriter {
            opener: RecordingOpener {
                dir: dir.to_path_buf(),
                commands,
                failures,
            },
            thread,
        })
    }

    /// Recordings that failed since start: refused because their header could not be
    /// written, or stopped mid-way.
    pub fn failures(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.opener.failures)
    }

    /// A handle that creates recordings.
    pub fn opener(&self) -> RecordingOpener {
        self.opener.clone()
    }

    /// See [`RecordingOpener::open`].
    pub fn open(
        &self,
        relative: &Path,
        channels: u16,
        format: RecordingFormat,
        block: usize,
    ) -> Result<OpenedRecording, RecorderError> {
        self.opener.open(relative, channels, format, block)
    }

    /// Finalizes every open recording (draining what reached their rings) and stops the
    /// thread. Blocking: call from `spawn_blocking` in async code.
    pub fn shutdown(self) {
        let _ = self.thread.stop();
    }
}

impl RecordingOpener {
    /// Creates a recording at `relative` inside the recordings directory (see
    /// [`create_beneath`]: no symbolic links, no file overwritten) and returns the node
    /// that feeds it, the path it was created at, and receivers for its failure and end.
    /// The file and its header are written here, so a bad path or a full disk fails
    /// before any patch is made, and leaves no file behind.
    pub fn open(
        &self,
        relative: &Path,
        channels: u16,
        format: RecordingFormat,
        block: usize,
    ) -> Result<OpenedRecording, RecorderError> {
        let created = create_in_directory(&self.dir, relative)?;
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
        let path = created.path.clone();
        let header_failed = |source: hound::Error| {
            // Nothing of the recording is on disk: leave no empty or partial file.
            let _ = rustix::fs::unlinkat(
                &created.parent,
                created.name.as_str(),
                rustix::fs::AtFlags::empty(),
            );
            self.failures.fetch_add(1, Ordering::Relaxed);
            RecorderError::Header {
                path: path.clone(),
                source,
            }
        };
        let file = created
            .file
            .try_clone()
            .map_err(|e| header_failed(hound::Error::IoError(e)))?;
        let mut writer = match hound::WavWriter::new(std::io::BufWriter::new(created.file), spec) {
            Ok(writer) => writer,
            Err(e) => return Err(header_failed(e)),
        };
        // The header goes to disk now, so a recording either starts as a WAV or not at all.
        if let Err(e) = writer.flush() {
            // Drop the writer first: its buffer must not be written into a removed file.
            drop(writer);
            return Err(header_failed(e));
        }
        let (producer, consumer) =
            rtrb::RingBuffer::new(BUS_RATE.hz() as usize * RING_SECONDS * channels_usize);
        let stats = Arc::new(RecorderStats::default());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let recording = ActiveRecording {
            relative: path
                .strip_prefix(&self.dir)
                .unwrap_or(relative)
                .to_path_buf(),
            path: path.clone(),
            channels: channels_usize,
            format,
            ring: consumer,
            writer: Some(writer),
            file,
            stats: Arc::clone(&stats),
            error: None,
            header_stale: false,
            failed: Some(failed_tx),
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
            failed: failed_rx,
            done: done_rx,
        })
    }
}

/// Takes over the journal of a stopped gateway in `dir` and repairs every recording it
/// left open. Returns the journal this gateway keeps, if it could get one.
fn recover_unfinished(dir: &Path) -> Option<super::recording_journal::Journal> {
    let (journal, unfinished) = match super::recording_journal::Journal::take(dir) {
        Ok(taken) => taken,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep a journal of open recordings; a crash will leave their headers up to a second behind");
            return None;
        }
    };
    for relative in unfinished {
        let path = dir.join(&relative);
        match repair_beneath(dir, &relative) {
            Ok(Some(Repair {
                frames,
                stated_before: Some(before),
            })) => tracing::warn!(
                path = %path.display(),
                frames,
                header_said = before,
                "recording left open by an unclean stop repaired"
            ),
            Ok(Some(Repair {
                stated_before: None,
                ..
            })) => tracing::debug!(path = %path.display(), "recording left open needed no repair"),
            Ok(None) => {
                tracing::debug!(path = %path.display(), "recording left open is gone or not a WAV of ours; left alone")
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot repair a recording left open")
            }
        }
    }
    Some(journal)
}

/// Notes a new recording in the journal (before any of its audio is written) and
/// starts draining it.
fn start_recording(
    recording: ActiveRecording,
    active: &mut Vec<ActiveRecording>,
    journal: &mut Option<super::recording_journal::Journal>,
) {
    if let Some(j) = journal.as_mut()
        && let Err(e) = j.opened(&recording.relative)
    {
        tracing::warn!(path = %recording.path.display(), error = %e, "cannot note the recording in the journal; a crash may leave its header stale");
    }
    active.push(recording);
}

fn disk_loop(
    commands: mpsc::Receiver<DiskCommand>,
    mut journal: Option<super::recording_journal::Journal>,
    failures: &AtomicU64,
) {
    let mut active: Vec<ActiveRecording> = Vec::new();
    let mut last_flush = Instant::now();
    loop {
        let mut shutting_down = false;
        match commands.recv_timeout(DRAIN_INTERVAL) {
            Ok(DiskCommand::Start(recording)) => {
                start_recording(*recording, &mut active, &mut journal)
            }
            Ok(DiskCommand::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                shutting_down = true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        // Take any further queued commands without waiting.
        while let Ok(command) = commands.try_recv() {
            match command {
                DiskCommand::Start(recording) => {
                    start_recording(*recording, &mut active, &mut journal)
                }
                DiskCommand::Shutdown => shutting_down = true,
            }
        }

        for recording in &mut active {
            recording.drain(failures);
        }
        // A recording whose node is gone is complete: finalize it.
        let mut index = 0;
        while index < active.len() {
            if shutting_down || active[index].ring.is_abandoned() {
                let (relative, header_matches) = active.swap_remove(index).finalize(failures);
                if header_matches
                    && let Some(j) = journal.as_mut()
                    && let Err(e) = j.closed(&relative)
                {
                    tracing::debug!(error = %e, "cannot note a closed recording in the journal");
                }
            } else {
                index += 1;
            }
        }
        if shutting_down {
            return;
        }
        if last_flush.elapsed() >= FLUSH_INTERVAL {
            for recording in &mut active {
                recording.flush(failures);
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
        let disk = DiskWriter::start(dir.path()).unwrap();
        let OpenedRecording {
            mut node,
            stats,
            path,
            done,
            ..
        } = disk
            .open(Path::new("sub/take.wav"), 2, RecordingFormat::S16, 4)
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
        let disk = DiskWriter::start(dir.path()).unwrap();
        let OpenedRecording {
            mut node,
            path,
            done,
            ..
        } = disk
            .open(Path::new("open.wav"), 1, RecordingFormat::F32, 48)
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
        let disk = DiskWriter::start(Path::new("/proc/telepatch")).unwrap();
        let result = disk.open(Path::new("x.wav"), 1, RecordingFormat::S16, 48);
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
