//! Thin tokio drivers around the sans-IO cores: the AudioSocket listener and sessions,
//! the HTTP API's accept loop, and the file-descriptor budget they share.

pub mod burst;
pub mod fd_limit;
pub mod http;
pub mod listener;
pub mod session;
pub mod unidentified;
