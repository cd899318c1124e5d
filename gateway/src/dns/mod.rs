//! AoDNS broadcasts: any output of the patchbay, on air as Opus in DNS TXT records
//! that the reference AoDNS client (and `telepatch listen-dns`) plays (aodns.md).
//!
//! - [`broadcast`]: the `dns` node: an engine node that copies its input into a ring,
//!   and an encoder thread that resamples, encodes Opus, builds packs and publishes
//!   each new state of the zone;
//! - [`zone`]: a zone's records as immutable snapshots, swapped whole, and the registry
//!   of zones;
//! - [`config`]: the `[dns]` section of the configuration;
//! - [`server`]: the authoritative server on hickory-server (UDP and TCP, its own
//!   runtime, started with the first broadcast);
//! - [`handler`]: our `RequestHandler`: what each query gets;
//! - [`retiring`]: deleted broadcasts kept while their zones are still served;
//! - [`ratelimit`]: per-client-address token buckets;
//! - [`ledger`]: sequence numbers that keep increasing across calls and restarts.
//!
//! The wire formats (base91, packs, the `sequence` list, TTLs, names) are the sans-IO
//! code in `codecs::aodns`; this module is the gateway's driver around them.

pub mod broadcast;
pub mod config;
pub mod handler;
pub mod ledger;
pub mod ratelimit;
pub mod retiring;
pub mod server;
pub mod zone;

pub use broadcast::{BroadcastError, BroadcastService, BroadcastSettings};
pub use ledger::{SequenceError, SequenceStore, StoreSequences};
pub use server::{DnsServer, DnsServerError};
