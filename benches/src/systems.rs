//! The systems a live workload can run against, behind one small interface: subscribe
//! to a topic (a stream of payloads) and publish fire-and-forget (with a flush at the
//! end). `rtc` is always there; `nats` (core) and `redis` (pub/sub) need the `peers`
//! feature (`benches/compare.sh` builds with it).

use std::any::Any;

use anyhow::Context;
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt};

use crate::harness::Target;

/// A system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum System {
    /// rtc (an in-process broker; see `--transport`).
    Rtc,
    /// NATS core at `--nats-url`.
    Nats,
    /// Redis pub/sub at `--redis-url`.
    Redis,
}

/// Where the rival servers listen.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerUrls {
    /// NATS server URL (benches/compare.sh starts one).
    #[arg(long, default_value = "nats://127.0.0.1:14222")]
    pub nats_url: String,
    /// Redis server URL (benches/compare.sh starts one).
    #[arg(long, default_value = "redis://127.0.0.1:16379")]
    pub redis_url: String,
}

/// Something that must stay alive for a subscription to keep receiving.
pub type Keep = Box<dyn Any + Send>;

/// A subscription: payloads as they arrive.
pub type Payloads = BoxStream<'static, Bytes>;

/// Subscribes to `topic`; returns once the subscription is active.
pub async fn subscribe(
    system: System,
    rtc: &Target,
    peers: &PeerUrls,
    topic: &str,
) -> anyhow::Result<(Payloads, Keep)> {
    match system {
        System::Rtc if rtc.http.is_some() => ws_subscribe(rtc, topic).await,
        System::Rtc => {
            let client = rtc.connect().await?;
            let sub = client.subscribe(topic).await?;
            Ok((sub.map(|m| m.payload).boxed(), Box::new(client)))
        }
        System::Nats => peer::nats_subscribe(&peers.nats_url, topic).await,
        System::Redis => peer::redis_subscribe(&peers.redis_url, topic).await,
    }
}

/// A subscriber on a WebSocket to the target's HTTP gateway (`rtc.v1.proto`): the
/// payloads of its deliveries.
async fn ws_subscribe(rtc: &Target, topic: &str) -> anyhow::Result<(Payloads, Keep)> {
    use futures_util::SinkExt;
    use prost::Message as _;
    use rtc_proto::v1::{self, frame::Op};
    use rtc_proto::Frame;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
    let http = rtc.http.context("the gateway is off")?;
    let mut request = format!("ws://{http}/v1/ws").into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "rtc.v1.proto".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await?;
    let hello = Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: rtc_proto::PROTOCOL_VERSION,
        client_name: "rtc-bench".into(),
        auth_token: String::new(),
    }));
    let subscribe = Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: topic.into(),
        ..Default::default()
    }));
    for f in [hello, subscribe] {
        ws.send(Message::Binary(f.encode_to_vec().into())).await?;
    }
    // Welcome, then SubAck: the subscription is in place.
    let mut answers = 0;
    while answers < 2 {
        match ws.next().await {
            Some(Ok(Message::Binary(_))) => answers += 1,
            Some(Ok(_)) => {}
            other => anyhow::bail!("WebSocket handshake: {other:?}"),
        }
    }
    let payloads = ws.filter_map(|m| async move {
        match m {
            Ok(Message::Binary(b)) => match Frame::decode(b).ok()?.op? {
                Op::Deliver(d) => d.message.map(|m| m.payload),
                _ => None,
            },
            _ => None,
        }
    });
    Ok((payloads.boxed(), Box::new(())))
}

/// A fire-and-forget publisher. Each keeps the last topic it published to in its client
/// library's shared form (rtc's `Topic`, NATS's `Subject`), as an application streaming
/// to one topic would, so neither allocates a topic string per message.
pub enum Publisher {
    /// rtc.
    /// rtc: the client, the last topic (reused), and the client's streaming publisher.
    Rtc(
        rtc_client::Client,
        Option<rtc_client::Topic>,
        rtc_client::Publisher,
    ),
    /// Other systems.
    #[allow(dead_code)]
    Peer(peer::PeerPublisher),
}

impl Publisher {
    /// Connects a publisher.
    pub async fn connect(
        system: System,
        rtc: &Target,
        peers: &PeerUrls,
    ) -> anyhow::Result<Publisher> {
        Ok(match system {
            System::Rtc => {
                let client = rtc.connect().await?;
                let publisher = client.publisher();
                Publisher::Rtc(client, None, publisher)
            }
            other => Publisher::Peer(peer::publisher(other, peers).await?),
        })
    }

    /// Publishes without waiting for the system to confirm.
    pub async fn send(&mut self, topic: &str, payload: Bytes) -> anyhow::Result<()> {
        match self {
            Publisher::Rtc(_, last, publisher) => {
                let topic = reuse(last, topic);
                let message = rtc_client::PublishMessage::new(topic, payload);
                Ok(publisher.publish(&message).await?)
            }
            Publisher::Peer(p) => p.send(topic, payload).await,
        }
    }

    /// Sends what a batching client holds back (rtc's streaming publisher, Redis
    /// pipelines), without a barrier.
    pub async fn flush_pipeline(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Rtc(_, _, publisher) => Ok(publisher.flush().await?),
            Publisher::Peer(p) => p.flush_pipeline().await,
        }
    }

    /// Waits until the system has taken everything sent so far.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Rtc(c, _, publisher) => {
                publisher.flush().await?;
                c.publish("bench.flush", "").await?;
                Ok(())
            }
            Publisher::Peer(p) => p.flush().await,
        }
    }
}

/// `last` if it is `topic`, else `topic` made into a `T` and kept in `last`.
fn reuse<T>(last: &mut Option<T>, topic: &str) -> T
where
    T: Clone + AsRef<str> + for<'a> From<&'a str>,
{
    match last {
        Some(t) if t.as_ref() == topic => t.clone(),
        _ => last.insert(T::from(topic)).clone(),
    }
}

#[cfg(feature = "peers")]
mod peer {
    use bytes::Bytes;
    use futures_util::stream::StreamExt;
    use redis::AsyncCommands;

    use super::{reuse, Keep, Payloads, PeerUrls, System};

    /// Redis PUBLISH commands sent per pipeline (it answers each one).
    const REDIS_BATCH: usize = 256;

    pub async fn nats_subscribe(url: &str, topic: &str) -> anyhow::Result<(Payloads, Keep)> {
        let client = async_nats::connect(url).await?;
        let sub = client.subscribe(topic.to_string()).await?;
        client.flush().await?;
        Ok((sub.map(|m| m.payload).boxed(), Box::new(client)))
    }

    pub async fn redis_subscribe(url: &str, topic: &str) -> anyhow::Result<(Payloads, Keep)> {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(topic).await?;
        let stream = pubsub
            .into_on_message()
            .map(|m| Bytes::copy_from_slice(m.get_payload_bytes()));
        Ok((stream.boxed(), Box::new(client)))
    }

    pub enum PeerPublisher {
        Nats(async_nats::Client, Option<async_nats::Subject>),
        Redis(redis::aio::MultiplexedConnection, redis::Pipeline, usize),
    }

    pub async fn publisher(system: System, urls: &PeerUrls) -> anyhow::Result<PeerPublisher> {
        Ok(match system {
            System::Nats => PeerPublisher::Nats(async_nats::connect(&urls.nats_url).await?, None),
            System::Redis => {
                let conn = redis::Client::open(urls.redis_url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                PeerPublisher::Redis(conn, redis::pipe(), 0)
            }
            System::Rtc => unreachable!("rtc has its own publisher"),
        })
    }

    impl PeerPublisher {
        pub async fn send(&mut self, topic: &str, payload: Bytes) -> anyhow::Result<()> {
            match self {
                PeerPublisher::Nats(c, last) => Ok(c.publish(reuse(last, topic), payload).await?),
                PeerPublisher::Redis(conn, pipe, n) => {
                    pipe.publish(topic, payload.as_ref()).ignore();
                    *n += 1;
                    if *n >= REDIS_BATCH {
                        let _: () = pipe.query_async(conn).await?;
                        pipe.clear();
                        *n = 0;
                    }
                    Ok(())
                }
            }
        }

        pub async fn flush_pipeline(&mut self) -> anyhow::Result<()> {
            if let PeerPublisher::Redis(conn, pipe, n) = self {
                if *n > 0 {
                    let _: () = pipe.query_async(conn).await?;
                    pipe.clear();
                    *n = 0;
                }
            }
            Ok(())
        }

        pub async fn flush(&mut self) -> anyhow::Result<()> {
            match self {
                PeerPublisher::Nats(c, _) => Ok(c.flush().await?),
                PeerPublisher::Redis(conn, pipe, n) => {
                    if *n > 0 {
                        let _: () = pipe.query_async(conn).await?;
                        pipe.clear();
                        *n = 0;
                    }
                    let _: () = conn.publish("bench.flush", "").await?;
                    Ok(())
                }
            }
        }
    }
}

/// The error for a rival run in a build without the `peers` feature.
#[cfg(not(feature = "peers"))]
pub fn peers_missing() -> anyhow::Error {
    anyhow::anyhow!("NATS and Redis runs need the `peers` feature: cargo run --release -p rtc-benches --features peers (or benches/compare.sh)")
}

#[cfg(not(feature = "peers"))]
mod peer {
    use bytes::Bytes;

    use super::{Keep, Payloads, PeerUrls, System};

    use super::peers_missing as missing;

    pub async fn nats_subscribe(_: &str, _: &str) -> anyhow::Result<(Payloads, Keep)> {
        Err(missing())
    }

    pub async fn redis_subscribe(_: &str, _: &str) -> anyhow::Result<(Payloads, Keep)> {
        Err(missing())
    }

    pub enum PeerPublisher {}

    pub async fn publisher(_: System, _: &PeerUrls) -> anyhow::Result<PeerPublisher> {
        Err(missing())
    }

    impl PeerPublisher {
        pub async fn send(&mut self, _: &str, _: Bytes) -> anyhow::Result<()> {
            match *self {}
        }

        pub async fn flush(&mut self) -> anyhow::Result<()> {
            match *self {}
        }

        pub async fn flush_pipeline(&mut self) -> anyhow::Result<()> {
            match *self {}
        }
    }
}
