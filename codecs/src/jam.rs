//! RTJam: the jam-room protocol of mfvargo/rtjam_rust, sans-IO (rtjam.md).
//!
//! * [`packet`]: the datagram codec (28-byte header, offset-binary samples, validity).
//! * [`sender`]: client-side stamping of outgoing packets (sequence, server_time echo).
//! * [`jitter`]: adaptive jitter buffer for one remote jammer.
//! * [`mix`]: client receive path: seats by client_id, jitter buffers, gain/pan/mute mix.
//! * [`guard`]: one stream per client_id where only sequence and timing tell senders
//!   apart (a joined room, where everything comes from the room server).
//! * [`room`]: hosted-room core (rtjam's broadcast server, "separate" mode).
//!
//! Time is always a parameter: µs since the Unix epoch, the clock rtjam's server_time
//! and client_time use. The UDP drivers live in the gateway.

pub mod guard;
pub mod jitter;
pub mod mix;
pub mod packet;
pub mod room;
pub mod sender;

pub use guard::{GuardConfig, GuardStats, StreamGuard, StreamPoint, Verdict};
pub use jitter::{JitterBuffer, JitterConfig, JitterConfigError, JitterStats, PushOutcome};
pub use mix::{
    ChannelStrip, JamReceiver, ReceiveOutcome, ReceiverConfig, ReceiverStats, RemoteSeat,
};
pub use packet::{
    BufferError, HEADER_LEN, JamChannel, JamHeader, JamPacket, MAX_DATAGRAM_LEN, MAX_FRAMES,
    ParseError, STANDARD_FRAMES, STANDARD_PACKET_LEN, decode_sample, encode_sample, write_packet,
};
pub use room::{
    AllowList, Departure, DropReason, InvalidNetwork, Member, RoomConfig, RoomCore, RoomOutcome,
    RoomStats, Tempo,
};
pub use sender::JamSender;
