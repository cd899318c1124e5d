//! telepatch, the gateway service.
//!
//! - [`engine`]: the sans-IO patchbay (nodes, ports, patches, 48 kHz blocks) and the
//!   paced thread that drives it;
//! - [`patchbay`]: the control side's validated model of the topology;
//! - [`service`]: calls, routes, lobby and conferences tied together in [`Gateway`];
//! - [`net`]: the tokio drivers (AudioSocket listener and sessions);
//! - [`config`]: configuration loading and validation;
//! - [`app`]: start-up and graceful shutdown of the whole service.

pub mod app;
pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod net;
pub mod patchbay;
pub mod service;

pub use service::Gateway;
