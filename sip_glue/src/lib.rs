//! Asterisk-facing glue for telepatch.
//!
//! - [`audiosocket`]: the AudioSocket wire protocol as a sans-IO frame codec plus a
//!   `tokio-util` `Decoder`/`Encoder` pair.
//! - [`dialplan`]: builders for the dialplan and ARI strings that point Asterisk at us.
//! - [`fake_asterisk`]: a client that behaves like Asterisk on the wire, for tests,
//!   examples and load generation.

pub mod audiosocket;
pub mod dialplan;
pub mod fake_asterisk;
