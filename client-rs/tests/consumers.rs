//! Durable consumers end to end: redelivery after ack_wait, nack with a delay, dead
//! letters after max_deliver, members sharing work, a leaving member's messages going to
//! the others at once, flow control, and state surviving a restart.
//!
//! These tests wait on real (short) timers rather than tokio's paused clock: the broker
//! reads its log on blocking threads, and the paused clock would jump to the next timer
//! while such a read is still running.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{next, start, start_in, take};
use rtc_client::{Client, ConsumerOptions, ErrorCode, StartAt, SubscribeOptions, Subscription};

async fn join(c: &Client, topic: &str, consumer: ConsumerOptions) -> Subscription {
    let options = SubscribeOptions {
        consumer: Some(consumer),
        ..Default::default()
    };
    c.subscribe_with(topic, options).await.unwrap()
}

async fn publish_n(c: &Client, topic: &str, n: u64) {
    for i in 1..=n {
        c.publish(topic, format!("job {i}")).await.unwrap();
    }
}

#[tokio::test]
async fn unacked_message_is_redelivered_after_ack_wait() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "jobs", 1).await;
    let mut sub = join(
        &c,
        "jobs",
        ConsumerOptions::new("w").ack_wait(Duration::from_millis(300)),
    )
    .await;
    let first = next(&mut sub).await;
    assert_eq!((first.seq, first.delivery_count), (1, 1));
    let delivered = Instant::now();
    let again = next(&mut sub).await;
    assert_eq!((again.seq, again.delivery_count), (1, 2));
    assert!(
        delivered.elapsed() >= Duration::from_millis(250),
        "redelivered too early"
    );
    sub.ack(&again).await.unwrap();
    let info = c.consumer_info("jobs", "w").await.unwrap();
    assert_eq!((info.ack_floor, info.pending, info.redelivered), (1, 0, 1));
    assert_eq!(info.dead_letter_topic, "$dlq.jobs.w");
}

#[tokio::test]
async fn nack_redelivers_after_its_delay() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "n", 2).await;
    let mut sub = join(&c, "n", ConsumerOptions::new("w")).await;
    let m1 = next(&mut sub).await;
    let m2 = next(&mut sub).await;
    let nacked = Instant::now();
    sub.nack(&m1, Duration::from_millis(400)).await.unwrap();
    sub.nack(&m2, Duration::ZERO).await.unwrap();
    // The undelayed one comes back first, the delayed one after its delay.
    let r2 = next(&mut sub).await;
    assert_eq!((r2.seq, r2.delivery_count), (2, 2));
    let r1 = next(&mut sub).await;
    assert_eq!((r1.seq, r1.delivery_count), (1, 2));
    assert!(
        nacked.elapsed() >= Duration::from_millis(350),
        "delay not honoured"
    );
    sub.ack(&r1).await.unwrap();
    sub.ack(&r2).await.unwrap();
    assert_eq!(c.consumer_info("n", "w").await.unwrap().pending, 0);
}

#[tokio::test]
async fn message_goes_to_the_dead_letter_topic_after_max_deliver() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    c.publish_message(
        rtc_client::PublishMessage::new("pay", "poison")
            .header("k", "v")
            .msg_id("p-1"),
    )
    .await
    .unwrap();
    publish_n(&c, "pay", 1).await; // seq 2, acked normally
    let opts = ConsumerOptions::new("billing")
        .max_deliver(2)
        .ack_wait(Duration::from_millis(200));
    let mut sub = join(&c, "pay", opts).await;
    let mut deliveries = 0;
    while deliveries < 2 {
        let m = next(&mut sub).await;
        if m.seq == 2 {
            sub.ack(&m).await.unwrap();
        } else {
            deliveries += 1;
            assert_eq!(m.delivery_count, deliveries);
        }
    }
    let mut dlq = c
        .subscribe_with(
            "$dlq.pay.billing",
            SubscribeOptions {
                start: StartAt::First,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dead = next(&mut dlq).await;
    assert_eq!(dead.payload, "poison".as_bytes());
    assert_eq!(dead.headers.get("k").map(String::as_str), Some("v"));
    assert_eq!(dead.headers["rtc-dlq-reason"], "max_deliver");
    assert_eq!(dead.headers["rtc-dlq-topic"], "pay");
    assert_eq!(dead.headers["rtc-dlq-consumer"], "billing");
    assert_eq!(dead.headers["rtc-dlq-seq"], "1");
    assert_eq!(dead.headers["rtc-dlq-deliveries"], "2");
    assert_eq!(dead.headers["rtc-dlq-msg-id"], "p-1");
    // Settled on the original: nothing pending, the floor moved past it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.consumer_info("pay", "billing").await.unwrap();
        if info.dead_lettered == 1 {
            assert_eq!((info.pending, info.ack_floor), (0, 2));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dead letter not settled: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_the_work_and_nothing_is_handled_twice() {
    let b = start().await;
    let publisher = Client::connect(&b.url).await.unwrap();
    const N: usize = 300;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let c = Client::connect(&b.url).await.unwrap();
        let sub = join(&c, "work", ConsumerOptions::new("pool").max_in_flight(10)).await;
        workers.push(tokio::spawn(async move {
            let mut sub = sub;
            let mut seen = Vec::new();
            while let Ok(Some(m)) =
                tokio::time::timeout(Duration::from_millis(1500), sub.next()).await
            {
                assert_eq!(m.delivery_count, 1, "no redelivery while both ack");
                sub.ack(&m).await.unwrap();
                seen.push(m.seq);
            }
            drop(c);
            seen
        }));
    }
    publish_n(&publisher, "work", N as u64).await;
    let mut all = BTreeSet::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let seen = w.await.unwrap();
        per_worker.push(seen.len());
        for seq in seen {
            assert!(all.insert(seq), "seq {seq} handled twice");
        }
    }
    assert_eq!(all, (1..=N as u64).collect::<BTreeSet<_>>());
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "both members got work: {per_worker:?}"
    );
}

#[tokio::test]
async fn a_leaving_members_unacked_messages_go_to_the_others_at_once() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "hand", 4).await;
    let slow = Client::connect(&b.url).await.unwrap();
    // ack_wait of an hour: only the member leaving can bring these back in time.
    let opts = ConsumerOptions::new("w")
        .ack_wait(Duration::from_secs(3600))
        .max_in_flight(4);
    let mut gone = join(&slow, "hand", opts.clone()).await;
    assert_eq!(take(&mut gone, 4).await.len(), 4);
    let mut other = join(&c, "hand", opts).await;
    slow.close().await;
    let got = take(&mut other, 4).await;
    let mut seqs: Vec<u64> = got.iter().map(|m| m.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert!(got.iter().all(|m| m.delivery_count == 2));
}

#[tokio::test]
async fn max_in_flight_caps_unacked_deliveries() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "fc", 20).await;
    let mut sub = join(&c, "fc", ConsumerOptions::new("w").max_in_flight(5)).await;
    let first = take(&mut sub, 5).await;
    let info = c.consumer_info("fc", "w").await.unwrap();
    assert_eq!(
        (info.pending, info.next_seq),
        (5, 6),
        "the broker stopped at 5 in flight"
    );
    sub.ack(&first[0]).await.unwrap();
    assert_eq!(next(&mut sub).await.seq, 6);
    let info = c.consumer_info("fc", "w").await.unwrap();
    assert_eq!((info.pending, info.next_seq, info.ack_floor), (5, 7, 1));
}

#[tokio::test]
async fn ack_mode_none_settles_on_delivery() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "na", 3).await;
    let mut sub = join(&c, "na", ConsumerOptions::new("w").no_ack()).await;
    assert_eq!(take(&mut sub, 3).await.len(), 3);
    let info = c.consumer_info("na", "w").await.unwrap();
    assert_eq!((info.pending, info.ack_floor), (0, 3));
}

#[tokio::test]
async fn consumer_state_survives_a_restart_and_resumes_at_the_first_unacked() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "rs", 6).await;
    let mut sub = join(&c, "rs", ConsumerOptions::new("keep")).await;
    let got = take(&mut sub, 6).await;
    for m in [&got[0], &got[1], &got[3]] {
        sub.ack(m).await.unwrap();
    }
    c.close().await;
    let dir = b.stop().await;

    let b = start_in(dir, |_| {}).await;
    let c = Client::connect(&b.url).await.unwrap();
    let info = c.consumer_info("rs", "keep").await.unwrap();
    assert_eq!((info.ack_floor, info.pending, info.next_seq), (2, 3, 7));
    let mut sub = join(&c, "rs", ConsumerOptions::new("keep")).await;
    let again: Vec<(u64, u32)> = take(&mut sub, 3)
        .await
        .iter()
        .map(|m| (m.seq, m.delivery_count))
        .collect();
    assert_eq!(again, vec![(3, 2), (5, 2), (6, 2)]);
    publish_n(&c, "rs", 1).await;
    assert_eq!(next(&mut sub).await.seq, 7);
}

#[tokio::test]
async fn consumer_requests_are_validated() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    let bad = |name: &str| SubscribeOptions {
        consumer: Some(ConsumerOptions::new(name)),
        ..Default::default()
    };
    let err = c.subscribe_with("a.*", bad("w")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    let err = c.subscribe_with("a", bad("no.dots")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidRequest), "{err}");
    c.create_topic(
        "eph",
        &rtc_client::TopicConfig {
            ephemeral: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let err = c.subscribe_with("eph", bad("w")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    let plain = c.subscribe("a").await.unwrap();
    c.publish("a", "x").await.unwrap();
    let mut plain = plain;
    let m = next(&mut plain).await;
    let err = plain.ack(&m).await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::InvalidRequest),
        "acks need a durable consumer"
    );
    let err = c.consumer_info("a", "nobody").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let listed = c.list_consumers("a").await.unwrap();
    assert!(listed.is_empty());
}

#[tokio::test]
async fn in_progress_restarts_the_ack_wait() {
    let b = start().await;
    let c = Client::connect(&b.url).await.unwrap();
    publish_n(&c, "ip", 1).await;
    let mut sub = join(
        &c,
        "ip",
        ConsumerOptions::new("w").ack_wait(Duration::from_millis(400)),
    )
    .await;
    let m = next(&mut sub).await;
    // 3 x 250 ms of work is well past one ack_wait; each InProgress restarts it.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sub.in_progress(&m).await.unwrap();
    }
    let info = c.consumer_info("ip", "w").await.unwrap();
    assert_eq!(
        (info.redelivered, info.pending),
        (0, 1),
        "not redelivered while in progress"
    );
    sub.ack(&m).await.unwrap();
    let info = c.consumer_info("ip", "w").await.unwrap();
    assert_eq!((info.redelivered, info.pending, info.ack_floor), (0, 0, 1));
}
