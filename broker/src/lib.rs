//! The rtc broker as a library: start it inside your own tokio program, or run the
//! `rtc-broker` binary, which is a thin layer over this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rtc_broker::BrokerError> {
//! let handle = rtc_broker::Broker::builder()
//!     .tcp("127.0.0.1:0".parse().unwrap())
//!     .http(Some("127.0.0.1:0".parse().unwrap()))
//!     .data_dir("./rtc-data")
//!     .start()
//!     .await?;
//! println!("clients connect to tcp://{}", handle.tcp_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! The layers, top to bottom (docs/architecture.md has the whole picture, the path of a
//! publish and of a delivery, and what never imports what):
//!
//! - [`server`]: the broker put together; the public [`Broker`] / [`BrokerBuilder`] /
//!   [`BrokerHandle`].
//! - [`transport`]: TCP, TLS and QUIC listeners, and the seam a new transport plugs
//!   into; `accept`: the one accept path (connection limit, handshake timeout).
//! - `session`: one per connection, transport- and encoding-neutral: handshake, auth,
//!   limits, dispatch, heartbeats.
//! - `replay` (subscriptions that start in the past), `consumer` (durable consumers).
//! - `delivery`: what happens to a committed pass: fan-out, then answers to publishers.
//! - `router` (the subscription trie and its subscriber seam), `outbound` (each
//!   connection's bounded queue and writer task).
//! - `store`: the local log engine (sled, one storage thread, group commit).
//! - `engine`: the log engine seam the store implements.
//! - Leaves: [`config`], [`auth`], [`topic`], [`refusal`], `clock`, `topic_cache`,
//!   [`error`].
//!
//! The modules marked in code as internal (`router`, `outbound`, `store`, `engine`) are
//! public only with the `internals` feature, for benchmarks, fuzzing and fault-injection
//! tests; they are not a stable API.

/// Declares modules that are public with the `internals` feature and private otherwise.
macro_rules! internal {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[cfg(feature = "internals")]
        pub mod $name;
        $(#[$meta])*
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

mod accept;
pub mod auth;
mod bus;
mod clock;
mod cluster;
pub mod config;
mod connections;
mod consumer;
mod delivery;
pub mod error;
mod events;
pub mod gateway;
mod metrics;
mod presence;
mod publish;
pub mod refusal;
mod replay;
mod request;
pub mod server;
mod session;
pub mod settings;
mod throttle;
pub mod topic;
mod topic_cache;
pub mod transport;

internal! {
    engine;
    outbound;
    router;
    store;
}

pub use config::{Config, FsyncPolicy, StoreEngine};
pub use error::BrokerError;
pub use refusal::Refusal;
pub use server::{Broker, BrokerBuilder, BrokerHandle};
