//! The journal of open recordings: which files in the recordings directory this gateway
//! is writing, so the next start can repair the ones a crash left with stale headers.
//!
//! The journal is a hidden file in the recordings directory (`.telepatch-recordings`,
//! or a numbered variant), held with an exclusive `flock` for the life of the gateway
//! that writes it. A journal nobody holds belongs to a gateway that stopped; the next
//! one takes it over, repairs what it lists as open and starts it afresh. Gateways that
//! share a directory each hold their own journal and never touch each other's files.
//!
//! Lines are JSON, `{"open":"sub/take.wav"}` or `{"close":"sub/take.wav"}`, paths
//! relative to the recordings directory. Listing a closed file as open is harmless (its
//! header already matches its audio, so it needs no repair); a line cut short by a crash
//! is skipped.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// The journal's file name; numbered variants (`-1`, `-2`, ...) for further gateways.
pub const JOURNAL_NAME: &str = ".telepatch-recordings";
/// Journals tried before giving up (gateways sharing one directory).
const MAX_JOURNALS: u32 = 64;
/// Beyond this many bytes the journal is rewritten with only the open recordings.
const COMPACT_AT: u64 = 64 * 1024;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum Entry {
    Open(String),
    Close(String),
}

/// A journal held by this process.
#[derive(Debug)]
pub struct Journal {
    file: File,
    len: u64,
    open: BTreeSet<String>,
}

/// The recordings a stopped gateway's journal listed as open.
pub type Unfinished = Vec<PathBuf>;

impl Journal {
    /// Takes the first journal in `dir` that no running gateway holds (creating it if
    /// need be) and returns it, emptied, with the recordings it listed as open.
    pub fn take(dir: &Path) -> std::io::Result<(Journal, Unfinished)> {
        use rustix::fs::{FlockOperation, Mode, OFlags};
        std::fs::create_dir_all(dir)?;
        let at = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        for variant in 0..MAX_JOURNALS {
            let name = match variant {
                0 => JOURNAL_NAME.to_owned(),
                n => format!("{JOURNAL_NAME}-{n}"),
            };
            let fd = rustix::fs::openat(
                &at,
                name.as_str(),
                OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )?;
            match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {}
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(e.into()),
            }
            let mut file = File::from(fd);
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            let unfinished = replay(&text);
            file.set_len(0)?;
            return Ok((
                Journal {
                    file,
                    len: 0,
                    open: BTreeSet::new(),
                },
                unfinished,
            ));
        }
        Err(std::io::Error::other(format!(
            "all {MAX_JOURNALS} recording journals in {} are held by running gateways",
            dir.display()
        )))
    }

    /// Notes that `relative` is being written.
    pub fn opened(&mut self, relative: &Path) -> std::io::Result<()> {
        let name = relative.to_string_lossy().into_owned();
        self.append(&Entry::Open(name.clone()))?;
        self.open.insert(name);
        Ok(())
    }

    /// Notes that `relative` is closed with a header that matches its audio.
    pub fn closed(&mut self, relative: &Path) -> std::io::Result<()> {
        let name = relative.to_string_lossy().into_owned();
        self.open.remove(&name);
        if self.len >= COMPACT_AT {
            return self.compact();
        }
        self.append(&Entry::Close(name))
    }

    fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all_at(&line, self.len)?;
        self.len += line.len() as u64;
        Ok(())
    }

    /// Rewrites the journal with the open recordings only. A crash halfway leaves the
    /// new lines followed by old ones: still every open recording, and perhaps some
    /// closed ones, which need no repair.
    fn compact(&mut self) -> std::io::Result<()> {
        let mut text = Vec::new();
        for name in &self.open {
            text.extend(
                serde_json::to_vec(&Entry::Open(name.clone())).map_err(std::io::Error::other)?,
            );
            text.push(b'\n');
        }
        self.file.write_all_at(&text, 0)?;
        self.file.set_len(text.len() as u64)?;
        self.len = text.len() as u64;
        Ok(())
    }
}

/// The recordings `text` leaves open, in the order they were opened.
fn replay(text: &[u8]) -> Unfinished {
    let mut open: Vec<String> = Vec::new();
    for line in text.split(|&b| b == b'\n') {
        match serde_json::from_slice::<Entry>(line) {
            Ok(Entry::Open(name)) => {
                if !open.contains(&name) {
                    open.push(name);
                }
            }
            Ok(Entry::Close(name)) => open.retain(|n| *n != name),
            // An empty line, or one a crash cut short.
            Err(_) => {}
        }
    }
    open.into_iter().map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_journal_lists_what_its_gateway_left_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, unfinished) = Journal::take(dir.path()).unwrap();
            assert!(unfinished.is_empty());
            journal.opened(Path::new("a.wav")).unwrap();
            journal.opened(Path::new("sub/b \"quoted\"\n.wav")).unwrap();
            journal.opened(Path::new("c.wav")).unwrap();
            journal.closed(Path::new("a.wav")).unwrap();
            // A crash cuts the last line short.
            let len = journal.len;
            journal.file.write_all_at(b"{\"open\":\"d.w", len).unwrap();
        }
        let (journal, unfinished) = Journal::take(dir.path()).unwrap();
        assert_eq!(
            unfinished,
            vec![
                PathBuf::from("sub/b \"quoted\"\n.wav"),
                PathBuf::from("c.wav")
            ]
        );
        assert_eq!(
            journal.file.metadata().unwrap().len(),
            0,
            "taken journals start empty"
        );
    }

    #[test]
    fn a_journal_held_by_a_running_gateway_is_never_taken() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, _) = Journal::take(dir.path()).unwrap();
        first.opened(Path::new("live.wav")).unwrap();
        let (_second, unfinished) = Journal::take(dir.path()).unwrap();
        assert!(unfinished.is_empty(), "{unfinished:?}");
        assert!(dir.path().join(format!("{JOURNAL_NAME}-1")).exists());
        // The first journal still lists its recording.
        let text = std::fs::read_to_string(dir.path().join(JOURNAL_NAME)).unwrap();
        assert_eq!(text, "{\"open\":\"live.wav\"}\n");
    }

    #[test]
    fn compaction_keeps_exactly_the_open_recordings() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut journal, _) = Journal::take(dir.path()).unwrap();
            journal.opened(Path::new("long-call.wav")).unwrap();
            let mut n = 0;
            while journal.len < COMPACT_AT {
                let name = format!("short-{n}.wav");
                journal.opened(Path::new(&name)).unwrap();
                journal.closed(Path::new(&name)).unwrap();
                n += 1;
            }
            journal.opened(Path::new("x.wav")).unwrap();
            journal.closed(Path::new("x.wav")).unwrap();
            assert!(journal.len < 100, "compacted to {} bytes", journal.len);
        }
        let (_, unfinished) = Journal::take(dir.path()).unwrap();
        assert_eq!(unfinished, vec![PathBuf::from("long-call.wav")]);
    }
}
