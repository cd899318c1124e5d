//! telepatch's control plane vocabulary.
//!
//! [`model`] holds the types that both the gateway and the (forthcoming) REST API and
//! database speak: references to nodes and ports, and the route rules that decide what
//! happens to a call when it arrives. They are plain data with parsing and validation,
//! so routes read from a config file today and from the database later behave the same.

pub mod model;
pub mod store;
