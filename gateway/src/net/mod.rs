//! Thin tokio drivers around the sans-IO cores: the AudioSocket listener and sessions.

pub mod listener;
pub mod session;
