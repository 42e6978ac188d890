//! The rtc broker as a library: start it inside your own tokio program, or run the
//! `rtc-broker` binary, which is a thin layer over this crate.
//!
//! ```no_run
//! # async fn demo() -> Result<(), rtc_broker::BrokerError> {
//! let handle = rtc_broker::Broker::builder()
//!     .tcp("127.0.0.1:0".parse().unwrap())
//!     .data_dir("./rtc-data")
//!     .start()
//!     .await?;
//! println!("clients connect to tcp://{}", handle.tcp_addr());
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`config`]: settings, defaults, TOML file, validation.
//! - [`auth`]: users, token hashes, per-topic permissions.
//! - [`tls`]: the TLS acceptor for the TCP listener.
//! - [`quic`]: the QUIC listener (one bidirectional stream per connection).
//! - [`server`]: listeners, accept loop, connection limit, shutdown; the public
//!   [`Broker`] / [`BrokerBuilder`] / [`BrokerHandle`].
//! - `session`: one per connection: handshake, read loop, dispatch of requests.
//! - [`outbound`]: each connection's bounded outbound queue and its writer task; the
//!   slow-consumer policy.
//! - [`router`]: the subscription trie and live fan-out.
//! - [`replay`]: subscriptions that start in the past; the switch-over to live.
//! - [`consumer`]: durable consumers: acks, redelivery, dead letters, shared work.
//! - [`store`]: the sled store and the storage thread (group commit).
//! - [`topic`]: topic settings, `[[topic]]` rules.
//! - [`topic_cache`]: what a publishing session remembers about the topics it uses.
//! - [`error`]: [`BrokerError`], why the broker could not start.
//!
//! Data path of a publish: `session` decodes `Publish` → validates the topic (once per
//! topic, remembered in a `topic_cache`) → `router` finds matching subscriptions (also
//! remembered until the subscriptions change) and pushes the message, encoded once, into
//! each one's `Outbox` → each connection's writer drains its queue into its socket.

pub mod auth;
pub mod config;
pub mod consumer;
pub mod error;
pub mod outbound;
pub mod quic;
pub mod replay;
pub mod router;
pub mod server;
mod session;
pub mod store;
pub mod tls;
pub mod topic;
pub mod topic_cache;

pub use config::{Config, FsyncPolicy};
pub use error::BrokerError;
pub use server::{Broker, BrokerBuilder, BrokerHandle};
