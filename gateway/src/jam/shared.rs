//! State a jam node's three parts share without locks on the media path: the engine
//! node writes statistics and reads seat activity and mix settings; the socket thread
//! writes its counters and round trips; the control plane reads everything and writes
//! activity and mix settings.
//!
//! Everything here is atomics in preallocated tables. A reader may see one field of a
//! record updated before another (a jammer's depth from this block, its loss count from
//! the previous one); nothing depends on such records being consistent as a whole.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use api::jam::{JamMixSetting, MAX_MIX_SETTINGS};

use crate::engine::stats::LevelMeter;

/// Marks an empty client_id field (client_ids are u32, so this is never one).
pub const NO_CLIENT: u64 = u64::MAX;

/// One local seat: a caller's place in the room.
#[derive(Debug)]
pub struct SeatShared {
    /// The seat's client_id in the room.
    pub client_id: u32,
    /// Whether something is patched to the seat's ports (the control plane sets it; the
    /// engine sends the seat's packets only while it is set).
    pub active: AtomicBool,
    /// Packets the engine queued for sending (keepalives included).
    pub packets_queued: AtomicU64,
    /// Silent packets not sent (with `suppress_silence`).
    pub packets_suppressed: AtomicU64,
    /// Packets lost because the send ring was full (the socket thread stalled).
    pub send_ring_full: AtomicU64,
    /// Packets the socket thread sent (join: to the room server; host: one per packet,
    /// however many members it went to).
    pub packets_sent: AtomicU64,
    /// Header-only echoes of our own packets received (join).
    pub echoes: AtomicU64,
    /// Smoothed room round trip in µs from the echoes (join); `u64::MAX` until measured.
    pub round_trip_us: AtomicU64,
    /// Level of what the seat sends (channel 1).
    pub input_level: LevelMeter,
    /// Level of what the seat hears (its `out` port).
    pub output_level: LevelMeter,
}

impl SeatShared {
    fn new(client_id: u32) -> SeatShared {
        SeatShared {
            client_id,
            active: AtomicBool::new(false),
            packets_queued: AtomicU64::new(0),
            packets_suppressed: AtomicU64::new(0),
            send_ring_full: AtomicU64::new(0),
            packets_sent: AtomicU64::new(0),
            echoes: AtomicU64::new(0),
            round_trip_us: AtomicU64::new(u64::MAX),
            input_level: LevelMeter::default(),
            output_level: LevelMeter::default(),
        }
    }

    /// The measured round trip in µs, if any.
    pub fn round_trip(&self) -> Option<u64> {
        match self.round_trip_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            us => Some(us),
        }
    }
}

/// What the engine publishes about one remote jammer seated in a receiver's mixer. The
/// counters are the jammer's current stream's: they start from zero when it (re)joins.
#[derive(Debug)]
pub struct JammerSlot {
    /// The jammer's client_id, [`NO_CLIENT`] when the slot is free.
    pub client_id: AtomicU64,
    /// Jitter-buffer depth in samples (rtjam's "depth").
    pub depth_samples: AtomicU32,
    /// Target playout delay in µs.
    pub target_us: AtomicU32,
    /// RFC 3550 interarrival jitter in µs.
    pub jitter_us: AtomicU32,
    /// Audio packets received.
    pub packets: AtomicU64,
    /// Packets never received in time (concealed with silence).
    pub lost: AtomicU64,
    /// Packets that arrived after their playout time.
    pub late: AtomicU64,
    /// Times the buffer ran dry.
    pub underruns: AtomicU64,
    /// Times audio was discarded because the buffer was too deep.
    pub overruns: AtomicU64,
    /// Packets put back in order.
    pub reordered: AtomicU64,
    /// Duplicates dropped.
    pub duplicates: AtomicU64,
    /// Level of the jammer's channel 1 and 2 as played (before gain).
    pub levels: [LevelMeter; 2],
}

impl Default for JammerSlot {
    fn default() -> Self {
        JammerSlot {
            client_id: AtomicU64::new(NO_CLIENT),
            depth_samples: AtomicU32::new(0),
            target_us: AtomicU32::new(0),
            jitter_us: AtomicU32::new(0),
            packets: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            late: AtomicU64::new(0),
            underruns: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            levels: [LevelMeter::default(), LevelMeter::default()],
        }
    }
}

impl JammerSlot {
    /// The seated client_id, if any.
    pub fn client(&self) -> Option<u32> {
        u32::try_from(self.client_id.load(Ordering::Relaxed)).ok()
    }
}

/// A mix setting as the engine applies it: linear gain, pan, mute.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixGains {
    /// Linear gain (0..=8).
    pub gain: f32,
    /// Pan, -1..=1.
    pub pan: f32,
    /// Muted.
    pub mute: bool,
}

impl MixGains {
    /// Unity, centre, unmuted.
    pub const UNITY: MixGains = MixGains {
        gain: 1.0,
        pan: 0.0,
        mute: false,
    };

    /// Gain into a mono mix (pan does not change a constant-power level).
    pub fn mono(&self) -> f32 {
        if self.mute { 0.0 } else { self.gain }
    }

    /// (left, right) gains with rtjam's pan law √(1 − p), √(1 + p) (rtjam.md §10).
    pub fn stereo(&self) -> (f32, f32) {
        let g = self.mono();
        (g * (1.0 - self.pan).sqrt(), g * (1.0 + self.pan).sqrt())
    }
}

#[derive(Debug)]
struct MixEntry {
    client_id: AtomicU64,
    gain_bits: AtomicU32,
    pan_bits: AtomicU32,
    mute: AtomicBool,
}

/// Per-jammer mix settings by client_id, written by the control plane and read by the
/// engine without locks. A version counter tells the engine when to re-read.
#[derive(Debug)]
pub struct MixTable {
    entries: Vec<MixEntry>,
    version: AtomicU64,
    /// Serializes writers (API requests); the engine never takes it.
    writer: Mutex<()>,
}

impl Default for MixTable {
    fn default() -> Self {
        MixTable {
            entries: (0..MAX_MIX_SETTINGS)
                .map(|_| MixEntry {
                    client_id: AtomicU64::new(NO_CLIENT),
                    gain_bits: AtomicU32::new(1.0f32.to_bits()),
                    pan_bits: AtomicU32::new(0.0f32.to_bits()),
                    mute: AtomicBool::new(false),
                })
                .collect(),
            version: AtomicU64::new(0),
            writer: Mutex::new(()),
        }
    }
}

impl MixTable {
    /// Bumped after every change.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The gains of `client_id` (unity when it has no setting).
    pub fn gains(&self, client_id: u32) -> MixGains {
        let id = u64::from(client_id);
        self.entries
            .iter()
            .find(|e| e.client_id.load(Ordering::Acquire) == id)
            .map_or(MixGains::UNITY, |e| MixGains {
                gain: f32::from_bits(e.gain_bits.load(Ordering::Relaxed)),
                pan: f32::from_bits(e.pan_bits.load(Ordering::Relaxed)),
                mute: e.mute.load(Ordering::Relaxed),
            })
    }

    /// Stores a setting (validated by the caller); false when the table is full.
    pub fn set(&self, setting: &JamMixSetting) -> bool {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = u64::from(setting.client_id);
        let slot = self
            .entries
            .iter()
            .find(|e| e.client_id.load(Ordering::Relaxed) == id)
            .or_else(|| {
                self.entries
                    .iter()
                    .find(|e| e.client_id.load(Ordering::Relaxed) == NO_CLIENT)
            });
        let Some(entry) = slot else {
            return false;
        };
        let gain = 10f32
            .powf(setting.gain_db / 20.0)
            .clamp(0.0, codecs::jam::mix::MAX_LINEAR_GAIN);
        entry.gain_bits.store(gain.to_bits(), Ordering::Relaxed);
        entry
            .pan_bits
            .store(setting.pan.clamp(-1.0, 1.0).to_bits(), Ordering::Relaxed);
        entry.mute.store(setting.mute, Ordering::Relaxed);
        // Published last: a reader that finds the id sees the values stored above.
        entry.client_id.store(id, Ordering::Release);
        self.version.fetch_add(1, Ordering::AcqRel);
        true
    }

    /// Forgets the setting of `client_id` (back to unity).
    pub fn remove(&self, client_id: u32) {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = u64::from(client_id);
        for entry in &self.entries {
            if entry.client_id.load(Ordering::Relaxed) == id {
                entry.client_id.store(NO_CLIENT, Ordering::Release);
            }
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Replaces every setting.
    pub fn replace(&self, settings: &[JamMixSetting]) {
        {
            let _writer = self
                .writer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for entry in &self.entries {
                entry.client_id.store(NO_CLIENT, Ordering::Release);
            }
        }
        for setting in settings {
            self.set(setting);
        }
        self.version.fetch_add(1, Ordering::AcqRel);
    }
}

/// Counters of the socket thread.
#[derive(Debug, Default)]
pub struct IoCounters {
    /// Datagrams received.
    pub datagrams: AtomicU64,
    /// Shorter than the 28-byte header.
    pub too_short: AtomicU64,
    /// Longer than 1024 bytes.
    pub too_long: AtomicU64,
    /// Odd length.
    pub odd_length: AtomicU64,
    /// Audio not a whole number of frames.
    pub ragged_audio: AtomicU64,
    /// From a source outside the allow-list (host) or not the room server (join).
    pub not_allowed: AtomicU64,
    /// From a new source while the room was full (host).
    pub room_full: AtomicU64,
    /// Over the sending member's packet rate (host).
    pub rate_limited: AtomicU64,
    /// A second stream under a client_id an established jammer holds: from another
    /// address (host), or interleaved with the jammer's stream (join).
    pub intruder: AtomicU64,
    /// Did not continue its jammer's stream, held back while the jammer may be
    /// restarting (join).
    pub out_of_stream: AtomicU64,
    /// Accepted datagrams forwarded to the other members (host).
    pub forwarded: AtomicU64,
    /// Datagrams sent (copies, echoes and seat packets).
    pub sent: AtomicU64,
    /// Sends the kernel refused (buffer full, unreachable).
    pub send_errors: AtomicU64,
    /// Received packets the engine could not take (its ring was full).
    pub receive_ring_full: AtomicU64,
}

impl IoCounters {
    /// Counts one dropped datagram by its parse error.
    pub fn count_malformed(&self, error: &codecs::jam::ParseError) {
        use codecs::jam::ParseError;
        let counter = match error {
            ParseError::TooShort { .. } => &self.too_short,
            ParseError::TooLong { .. } => &self.too_long,
            ParseError::OddLength { .. } => &self.odd_length,
            ParseError::RaggedAudio { .. } => &self.ragged_audio,
            _ => &self.ragged_audio,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Datagrams dropped for any reason.
    pub fn dropped(&self) -> u64 {
        [
            &self.too_short,
            &self.too_long,
            &self.odd_length,
            &self.ragged_audio,
            &self.not_allowed,
            &self.room_full,
            &self.rate_limited,
            &self.intruder,
            &self.out_of_stream,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

/// Everything shared by one jam node's engine node, socket thread and service.
#[derive(Debug)]
pub struct JamShared {
    /// Local seats, in port order.
    pub seats: Vec<SeatShared>,
    /// Remote jammers per receiver (join: one receiver per seat; host: one), each with
    /// `mix_seats` slots.
    pub jammers: Vec<Vec<JammerSlot>>,
    /// Per-jammer mix settings.
    pub mix: MixTable,
    /// Skip silent packets (keepalives keep the seat).
    pub suppress_silence: AtomicBool,
    /// Socket-thread counters.
    pub io: IoCounters,
}

impl JamShared {
    /// Tables for `seats` seats from `first_client_id` on, and `receivers` receivers of
    /// `mix_seats` remote jammers each.
    pub fn new(first_client_id: u32, seats: u16, receivers: usize, mix_seats: usize) -> JamShared {
        JamShared {
            seats: (0..u32::from(seats))
                .map(|k| SeatShared::new(first_client_id + k))
                .collect(),
            jammers: (0..receivers)
                .map(|_| (0..mix_seats).map(|_| JammerSlot::default()).collect())
                .collect(),
            mix: MixTable::default(),
            suppress_silence: AtomicBool::new(false),
            io: IoCounters::default(),
        }
    }

    /// Whether `client_id` is one of this node's own seats.
    pub fn is_own(&self, client_id: u32) -> bool {
        self.seats.iter().any(|s| s.client_id == client_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_table_sets_replaces_and_forgets() {
        let table = MixTable::default();
        assert_eq!(table.gains(7), MixGains::UNITY);
        let v0 = table.version();
        assert!(table.set(&JamMixSetting {
            client_id: 7,
            gain_db: -6.0206,
            mute: false,
            pan: 0.5,
        }));
        assert!(table.version() > v0);
        let g = table.gains(7);
        assert!((g.gain - 0.5).abs() < 1e-4);
        assert_eq!(g.pan, 0.5);
        let (l, r) = g.stereo();
        assert!((l * l + r * r - 2.0 * 0.25).abs() < 1e-4, "constant power");
        table.set(&JamMixSetting {
            client_id: 7,
            gain_db: 0.0,
            mute: true,
            pan: 0.0,
        });
        assert_eq!(table.gains(7).mono(), 0.0);
        table.remove(7);
        assert_eq!(table.gains(7), MixGains::UNITY);
        for id in 0..MAX_MIX_SETTINGS as u32 {
            assert!(table.set(&JamMixSetting::unity(id)));
        }
        assert!(!table.set(&JamMixSetting::unity(999)), "full");
        table.replace(&[JamMixSetting {
            client_id: 999,
            gain_db: 18.0,
            mute: false,
            pan: -1.0,
        }]);
        assert_eq!(table.gains(0), MixGains::UNITY);
        assert!((table.gains(999).gain - 7.943).abs() < 1e-2);
    }
}
