//! telepatch, the gateway service.
//!
//! - [`engine`]: the sans-IO patchbay (nodes, ports, patches, 48 kHz blocks) and the
//!   paced thread that drives it;
//! - [`patchbay`]: the control side's validated model of the topology;
//! - [`service`]: calls, routes and the node kinds tied together in [`Gateway`], the
//!   driver of the [`switchboard`];
//! - [`switchboard`]: the sans-IO topology rules: lobby, patches, seats, clean-up;
//! - [`net`]: the tokio drivers (AudioSocket listener and sessions);
//! - [`kinds`]: the node-kind seam: one builder per kind, registered at start-up;
//! - [`node_service`]: the control half every node kind gives the gateway;
//! - [`jam`]: RTJam jam rooms, joined or hosted (engine node, socket thread, service);
//! - [`dns`]: AoDNS broadcasts (`dns` nodes) and their authoritative DNS server;
//! - [`media_clock`]: the trait AES67 flows get PTP time from;
//! - [`clock`]: the configured media clock (host clock or PTP follower);
//! - [`aes67`]: AES67 transmit and receive flows, their SDP and SAP;
//! - [`ptp`]: the built-in PTPv2 follower behind the clock's `follow` mode;
//! - [`scrape`]: `/metrics`, the counters published through the `metrics` crate;
//! - [`metric_families`]: per-node metric samples, labelled with their node;
//! - [`config`]: configuration loading and validation;
//! - [`threads`]: owned, named threads (real-time priority, stop, one join);
//! - [`webhooks`]: call events POSTed to an application, signed, in order per call;
//! - [`app`]: start-up and graceful shutdown of the whole service.

pub mod aes67;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod dns;
pub mod engine;
pub mod jam;
pub mod kinds;
pub mod media_clock;
pub mod metric_families;
pub mod net;
pub mod node_service;
pub mod patchbay;
pub mod ptp;
pub mod scrape;
pub mod service;
pub mod switchboard;
pub mod threads;
pub mod webhooks;
pub mod websocket;

#[cfg(test)]
mod topology_tests;

pub use service::Gateway;
