//! telepatch's control plane.
//!
//! - [`model`]: the vocabulary the gateway, the API and the database share: references
//!   to nodes and ports, and the route rules applied when a call arrives;
//! - [`store`]: the [`store::Store`] trait with its SQLite and PostgreSQL
//!   implementations, and the bounded CDR queue;
//! - [`control`]: the [`control::Control`] trait the gateway implements for the API,
//!   with the views and events it returns;
//! - [`http`]: the axum REST API, its OpenAPI document, authentication and metrics;
//! - [`jam`]: the configuration and mix settings of RTJam jam rooms;
//! - [`webhook`]: the body of the event webhooks the gateway POSTs to an application.

pub mod control;
pub mod http;
pub mod jam;
pub mod model;
pub mod store;
pub mod webhook;
