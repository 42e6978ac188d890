//! Server-Sent Events and long-polling through the gateway, over real sockets: an SSE
//! stream over several topics dropped mid-flow and resumed with `Last-Event-ID` while
//! publishing goes on (no gap, no duplicate); the explicit `gap` event when retention
//! removed the position; keep-alives; a slow reader; refusals before the stream starts;
//! long-polls handing their position on from connection to connection.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sse::{Event, Sse};
use common::{start_gateway, RawConn, TestGateway, WAIT};
use rtc_broker::auth::{hash_token, UserConfig};
use rtc_broker::topic::TopicRule;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_several_topics_resumes_with_last_event_id_while_publishing_goes_on() {
    let g = start_gateway(|_| {}).await;
    const PER_TOPIC: u64 = 100;
    let topics = ["feed.a", "feed.b", "feed.c"];
    // Some history first, then publishing goes on while the stream is dropped and
    // reopened.
    let tcp = g.handle.tcp_addr();
    let mut p = RawConn::hello(tcp).await;
    for t in topics {
        p.publish_acked(t, b"before").await;
    }
    let publisher = tokio::spawn(async move {
        for _ in 1..PER_TOPIC {
            for t in topics {
                p.publish_acked(t, b"during").await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    fn record(got: &mut BTreeMap<String, Vec<u64>>, e: &Event) {
        let m = e.json();
        let topic = m["topic"].as_str().unwrap().to_string();
        got.entry(topic)
            .or_default()
            .push(m["seq"].as_u64().unwrap());
    }
    let (status, sse) = Sse::open(g.http, "/v1/sse?topic=feed.%3E&from=first", &[]).await;
    assert_eq!(status, 200);
    let mut sse = sse.unwrap();
    let mut last_id = None;
    for _ in 0..40 {
        let e = sse.next_message().await;
        record(&mut got, &e);
        last_id = e.id.clone();
    }
    // The connection drops mid-flow, as a network would; EventSource reconnects with
    // the last id it saw.
    drop(sse);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let header = format!("Last-Event-ID: {}", last_id.unwrap());
    let (status, sse) = Sse::open(g.http, "/v1/sse?topic=feed.%3E&from=first", &[&header]).await;
    assert_eq!(status, 200);
    let mut sse = sse.unwrap();
    let total = PER_TOPIC as usize * topics.len();
    while got.values().map(Vec::len).sum::<usize>() < total {
        let e = sse.next_message().await;
        record(&mut got, &e);
    }
    publisher.await.unwrap();
    for t in topics {
        assert_eq!(
            got.get(t).cloned().unwrap_or_default(),
            (1..=PER_TOPIC).collect::<Vec<_>>(),
            "{t}: every message once, in order, across the reconnect"
        );
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_position_removed_by_retention_is_reported_then_the_stream_continues() {
    let g = start_gateway(|c| {
        c.topic = vec![TopicRule {
            max_msgs: Some(5),
            storage: rtc_broker::topic::StorageName::Durable,
            ..TopicRule::ephemeral("ret.>")
        }]
    })
    .await;
    let mut p = RawConn::hello(g.handle.tcp_addr()).await;
    for _ in 0..3 {
        p.publish_acked("ret.x", b"m").await;
    }
    let (_, sse) = Sse::open(g.http, "/v1/sse?topic=ret.x&from=first", &[]).await;
    let mut sse = sse.unwrap();
    let mut id = None;
    for seq in 1..=2 {
        let e = sse.next_message().await;
        assert_eq!(e.json()["seq"], seq);
        id = e.id;
    }
    drop(sse);
    for _ in 0..20 {
        p.publish_acked("ret.x", b"m").await;
    }
    // Retention runs about every second: wait until it has cut the log to 5.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let info = p.topic_info("ret.x").await;
        if info.first_seq > 3 {
            break info.first_seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let header = format!("Last-Event-ID: {}", id.unwrap());
    let (_, sse) = Sse::open(g.http, "/v1/sse?topic=ret.x&from=first", &[&header]).await;
    let mut sse = sse.unwrap();
    let gap = loop {
        let e = sse.next().await.unwrap();
        if e.event.as_deref() == Some("gap") {
            break e.json();
        }
        assert!(
            e.data.is_none() || e.event.is_some(),
            "a message before the gap: {e:?}"
        );
    };
    assert_eq!(
        gap,
        serde_json::json!({"topic": "ret.x", "after": 2, "next": first})
    );
    assert_eq!(sse.next_message().await.json()["seq"], first);
    g.handle.shutdown().await;
}

#[tokio::test]
async fn keep_alives_come_every_heartbeat_interval() {
    let g = start_gateway(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let (_, sse) = Sse::open(g.http, "/v1/sse?topic=quiet.x", &[]).await;
    let mut sse = sse.unwrap();
    let mut comments = 0;
    while comments < 5 {
        // Bounded by next()'s wait; a quiet stream would be closed by the broker after
        // three intervals if the source did not report the connection alive.
        if sse.next().await.expect("still open").comment {
            comments += 1;
        }
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn refusals_come_before_the_stream_with_a_status() {
    let g = start_gateway(|c| {
        c.user = vec![UserConfig {
            name: "viewer".into(),
            token_hash: hash_token("view-token"),
            publish: vec![],
            subscribe: vec!["news.>".into()],
            admin: false,
        }]
    })
    .await;
    let status = |path: &'static str, headers: &'static [&'static str]| async move {
        Sse::open(g.http, path, headers).await.0
    };
    assert_eq!(status("/v1/sse?topic=news.%3E", &[]).await, 401);
    assert_eq!(status("/v1/sse?topic=news.%3E&token=nope", &[]).await, 401);
    assert_eq!(
        status("/v1/sse?topic=news.%3E&token=view-token", &[]).await,
        200
    );
    assert_eq!(
        status(
            "/v1/sse?topic=news.%3E",
            &["Authorization: Bearer view-token"]
        )
        .await,
        200
    );
    assert_eq!(
        status("/v1/sse?topic=admin.%3E&token=view-token", &[]).await,
        403
    );
    assert_eq!(status("/v1/sse?token=view-token", &[]).await, 400);
    assert_eq!(
        status("/v1/sse?topic=a..b&token=view-token", &[]).await,
        400
    );
    assert_eq!(
        status(
            "/v1/sse?topic=news.x&token=view-token",
            &["Last-Event-ID: garbage"]
        )
        .await,
        400
    );
    g.handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_told_what_it_missed_and_slows_nobody() {
    let g = start_gateway(|c| {
        c.outbound_queue_bytes = 1 << 20;
        c.topic = vec![TopicRule::ephemeral("fast.>")];
    })
    .await;
    let (_, slow) = Sse::open(g.http, "/v1/sse?topic=fast.%3E", &[]).await;
    let mut slow = slow.unwrap();
    let mut fast = RawConn::hello(g.handle.tcp_addr()).await;
    fast.subscribe_ok(1, "fast.>").await;
    // The stream's headers can come before its session has subscribed (and a message of
    // an ephemeral topic published before that reaches nobody): wait until the admin
    // API lists its subscription.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let list = common::http::get(g.http, "/v1/admin/connections", &[])
            .await
            .json();
        let subscribed = list["connections"].as_array().unwrap().iter().any(|c| {
            c["transport"] == "sse"
                && c["subscriptions"]
                    .as_object()
                    .is_some_and(|s| !s.is_empty())
        });
        if subscribed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream never subscribed: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A first message through it.
    let mut p = RawConn::hello(g.handle.tcp_addr()).await;
    p.publish_acked("fast.x", b"first").await;
    assert_eq!(slow.next_message().await.json()["payload"], "first");
    assert_eq!(fast.expect_deliver().await.2, &b"first"[..]);
    // The fast subscriber reads as it comes.
    let fast = tokio::spawn(async move {
        let mut n = 0;
        loop {
            let (_, _, payload) = fast.expect_deliver().await;
            n += 1;
            if &payload[..] == b"last" {
                return n;
            }
        }
    });
    // 16 MiB past a reader that does not read: the publisher and the fast subscriber
    // go on.
    let payload = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
    for _ in 0..1024 {
        p.publish_unacked("fast.x", payload.clone()).await;
    }
    p.publish_acked("fast.x", b"last").await;
    let n = tokio::time::timeout(WAIT, fast)
        .await
        .expect("the fast subscriber keeps up")
        .unwrap();
    assert_eq!(n, 1024 + 1, "the fast subscriber got everything");
    // When the slow one reads at last: what fitted, then the notice of what was dropped.
    let notice = loop {
        let e = slow.next().await.expect("still open");
        if e.event.as_deref() == Some("rtc-error") {
            break e.json();
        }
    };
    assert_eq!(notice["code"], "SLOW_CONSUMER", "{notice}");
    g.handle.shutdown().await;
}

/// One long-poll: `(messages, next)`.
async fn poll(g: &TestGateway, query: &str) -> (Vec<serde_json::Value>, String) {
    let a = common::http::get(g.http, &format!("/v1/poll?{query}"), &[]).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let v = a.json();
    let messages = v["messages"].as_array().cloned().unwrap_or_default();
    (messages, v["next"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_hand_the_position_on_and_miss_nothing() {
    let g = start_gateway(|_| {}).await;
    let mut p = RawConn::hello(g.handle.tcp_addr()).await;
    p.publish_acked("lp.a", b"old").await;
    // History at once, then waiting: nothing within the timeout, the position unchanged.
    let (messages, next) = poll(&g, "topic=lp.%3E&from=first&timeout=5s").await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        (
            messages[0]["topic"].as_str(),
            messages[0]["payload"].as_str()
        ),
        (Some("lp.a"), Some("old"))
    );
    let started = tokio::time::Instant::now();
    let (none, same) = poll(&g, &format!("topic=lp.%3E&after={next}&timeout=300ms")).await;
    assert!(none.is_empty() && same == next, "{none:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");

    // Publishing on two topics while polls come one after another, each on a new
    // connection: every message once, in order.
    const PER_TOPIC: u64 = 60;
    let publisher = tokio::spawn(async move {
        for _ in 0..PER_TOPIC {
            p.publish_acked("lp.a", b"m").await;
            p.publish_acked("lp.b", b"m").await;
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    got.insert("lp.a".into(), vec![1]);
    let mut next = next;
    let mut polls = 0;
    while got.values().map(Vec::len).sum::<usize>() < 1 + 2 * PER_TOPIC as usize {
        polls += 1;
        assert!(polls < 1000, "polls made no progress");
        let (messages, n) = poll(&g, &format!("topic=lp.%3E&after={next}&timeout=5s")).await;
        for m in messages {
            got.entry(m["topic"].as_str().unwrap().into())
                .or_default()
                .push(m["seq"].as_u64().unwrap());
        }
        next = n;
    }
    publisher.await.unwrap();
    assert_eq!(got["lp.a"], (1..=PER_TOPIC + 1).collect::<Vec<_>>());
    assert_eq!(got["lp.b"], (1..=PER_TOPIC).collect::<Vec<_>>());
    println!("{polls} polls");

    // A live message ends a waiting poll at once.
    let waiting = {
        let (addr, next) = (g.http, next.clone());
        tokio::spawn(async move {
            common::http::get(
                addr,
                &format!("/v1/poll?topic=lp.%3E&after={next}&timeout=20s"),
                &[],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut p = RawConn::hello(g.handle.tcp_addr()).await;
    p.publish_acked("lp.c", b"new topic").await;
    let a = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered once the message came")
        .unwrap();
    let v = a.json();
    assert_eq!(v["messages"][0]["payload"], "new topic");

    for bad in [
        "topic=lp.a&timeout=forever",
        "topic=lp.a&timeout=10m",
        "topic=lp.a&after=xyz",
    ] {
        let a = common::http::get(g.http, &format!("/v1/poll?{bad}"), &[]).await;
        assert_eq!(a.status, 400, "{bad}: {}", a.text());
    }
    g.handle.shutdown().await;
}
