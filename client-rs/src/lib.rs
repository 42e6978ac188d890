//! Async Rust client for the rtc message broker.
//!
//! ```no_run
//! use rtc_client::{Client, PublishMessage};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), rtc_client::Error> {
//!     let client = Client::connect("tcp://127.0.0.1:7400").await?;
//!
//!     // Subscribe first: live subscriptions see messages published after they start.
//!     let mut orders = client.subscribe("orders.*.created").await?;
//!
//!     // Publish and wait for the broker's acknowledgement.
//!     client.publish("orders.eu.created", "order #1").await?;
//!     client
//!         .publish_message(PublishMessage::new("orders.us.created", "order #2").header("source", "web"))
//!         .await?;
//!
//!     for _ in 0..2 {
//!         let msg = orders.next().await.expect("connection open");
//!         println!("{} {:?}", msg.topic, msg.payload);
//!     }
//!     client.close().await;
//!     Ok(())
//! }
//! ```
//!
//! # Errors
//! Every call returns [`Error`]. When the broker refuses a request, the `Error` frame it
//! sends is routed to that call as [`Error::Server`] with a stable
//! [`rtc_proto::ErrorCode`]; the connection stays up.
//!
//! # Layout
//! - `client`: [`Client`] and [`ConnectOptions`]: the public API.
//! - `requests`: what a client and its subscriptions share: how a request travels and
//!   meets its answer.
//! - `subscription`: [`Subscription`], a `Stream` of [`Message`]s.
//! - `message`: [`Message`], [`PublishMessage`], [`PubAck`].
//! - `options`: [`SubscribeOptions`] and [`StartAt`] (replay positions); message IDs.
//! - `topics`: topic administration ([`TopicConfig`], [`TopicInfo`]).
//! - `supervisor`: keeps the client connected: reconnect with backoff and jitter
//!   ([`ReconnectPolicy`]), then restore subscriptions and resend the outbox.
//! - `connection`: URL parsing, handshake, one connection's writer and reader.
//! - `outgoing`: what the API hands the writer, and how each item is encoded.
//! - `direct`: a lone request written to the socket by its caller, not the writer task.
//! - `queue`: the bounded queues from API calls to the writer and from the reader to
//!   each subscription.
//! - `state`: what the API and the connection tasks share: waiting requests,
//!   subscriptions and how to resume them, [`ConnectionState`].
//! - `outbox`: unacknowledged publishes (bounded, optionally kept in a file).
//! - `error`: [`Error`].

mod client;
mod connection;
mod direct;
mod error;
mod message;
mod options;
mod outbox;
mod outgoing;
mod presence;
mod publisher;
mod queue;
mod requests;
mod service;
mod state;
mod subscription;
mod supervisor;
mod tls;
mod topics;

pub use client::{Client, ConnectOptions};
pub use error::Error;
pub use message::{Message, PubAck, PublishMessage, Topic};
pub use options::{ConsumerOptions, StartAt, SubscribeOptions};
pub use publisher::Publisher;
pub use rtc_proto::v1::{
    PresenceEvent, PresenceEventKind, PresenceInfo, PresenceJoin, PresenceMember,
};
pub use rtc_proto::ErrorCode;
pub use service::Response;
pub use state::ConnectionState;
pub use subscription::Subscription;
pub use supervisor::ReconnectPolicy;
pub use topics::{ConsumerInfo, TopicConfig, TopicInfo};
