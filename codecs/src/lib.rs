//! Sans-IO DSP and wire formats used by telepatch.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: every
//! function takes its input as slices and writes into caller-owned buffers, so the
//! same code runs on the media path, in tests on virtual time and under the fuzzer.

pub mod aes67;
pub mod aodns;
pub mod base91;
pub mod drift;
pub mod jam;
pub mod measure;
pub mod opus;
pub mod pcm;
pub mod ptp;
pub mod rate;
pub mod resample;
pub mod rtp;
pub mod sap;
pub mod sdp;
