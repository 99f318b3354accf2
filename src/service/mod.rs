//! The node-local service: an HTTP/1.1 + JSON API over a Unix domain socket (or TCP on
//! request), and its [`Client`].
//!
//! Enabled by the `service` feature; the `weft` command-line client needs `cli`.

pub mod client;
mod socket_path;

pub use client::Client;
pub use socket_path::default_socket_path;
