//! QUIC datagrams: messages of `datagram = true` topics reach subscriptions that ask for
//! them as datagrams; messages too large for a datagram, and subscriptions that did not
//! ask, use the stream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{start_over, TestBroker, Transport};
use rtc_broker::topic::TopicRule;
use rtc_client::{Client, SubscribeOptions};

async fn broker() -> TestBroker {
    start_over(Transport::Quic, |c| {
        c.topic = vec![TopicRule {
            datagram: true,
            ..TopicRule::ephemeral("game.>")
        }]
    })
    .await
}

async fn subscriber(b: &TestBroker, datagrams: bool) -> (Client, rtc_client::Subscription) {
    let c = b.connect().await;
    let options = SubscribeOptions {
        datagrams,
        ..Default::default()
    };
    let s = c.subscribe_with("game.>", options).await.unwrap();
    (c, s)
}

/// Receives until `n` messages arrived or the link stayed quiet for a second.
async fn receive(sub: &mut rtc_client::Subscription, n: usize) -> Vec<rtc_client::Message> {
    let mut got = Vec::new();
    while got.len() < n {
        match tokio::time::timeout(Duration::from_secs(1), sub.next()).await {
            Ok(Some(m)) => got.push(m),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_arrive_as_datagrams() {
    let b = broker().await;
    let (client, mut sub) = subscriber(&b, true).await;
    let publisher = b.connect().await;
    for i in 0..200u32 {
        publisher
            .publish("game.pos", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    let got = receive(&mut sub, 200).await;
    let via_datagram = client.datagrams_received();
    println!(
        "datagrams: {} of 200 received, {via_datagram} as datagrams",
        got.len()
    );
    // Datagrams may be lost, even on loopback, but not many.
    assert!(got.len() >= 180, "only {} of 200 arrived", got.len());
    assert_eq!(
        via_datagram as usize,
        got.len(),
        "all of them came as datagrams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_a_datagram_uses_the_stream() {
    let b = broker().await;
    let (client, mut sub) = subscriber(&b, true).await;
    let publisher = b.connect().await;
    let big = Bytes::from(vec![7u8; 4000]);
    for _ in 0..20 {
        publisher.publish("game.map", big.clone()).await.unwrap();
    }
    let got = receive(&mut sub, 20).await;
    assert_eq!(got.len(), 20, "the stream is reliable");
    assert!(got.iter().all(|m| m.payload == big));
    assert_eq!(client.datagrams_received(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_that_do_not_ask_get_the_stream() {
    let b = broker().await;
    let (client, mut sub) = subscriber(&b, false).await;
    let publisher = b.connect().await;
    for i in 0..20u32 {
        publisher
            .publish("game.pos", i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    assert_eq!(receive(&mut sub, 20).await.len(), 20);
    assert_eq!(client.datagrams_received(), 0);
}
