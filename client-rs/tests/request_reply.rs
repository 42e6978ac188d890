//! Request-reply through rtc-client against a real in-process broker on 127.0.0.1:0, over
//! TCP, TLS and QUIC: responders in a queue group answering with `reply`, the first
//! answer reaching `request`, NO_RESPONDERS at once, and TIMEOUT for a silent responder.

mod common;

transport_tests!(
    a_group_of_responders_answers_every_request_once,
    nobody_subscribed_and_nobody_answering_are_told_apart,
);

use std::time::Duration;

use common::{next, start_over, Transport};
use rtc_client::{ErrorCode, SubscribeOptions};

async fn a_group_of_responders_answers_every_request_once(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let (answered, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
    let mut responders = Vec::new();
    for name in ["a", "b"] {
        let answered = answered.clone();
        let client = b.connect().await;
        let options = SubscribeOptions {
            group: Some("upper".into()),
            ..Default::default()
        };
        let mut sub = client.subscribe_with("svc.upper", options).await.unwrap();
        responders.push(tokio::spawn(async move {
            while let Some(request) = sub.next().await {
                let text = String::from_utf8_lossy(&request.payload).to_uppercase();
                client
                    .reply(&request, format!("{text} from {name}"))
                    .await
                    .unwrap();
                let _ = answered.send(request.payload);
            }
        }));
    }
    let requester = b.connect().await;
    let mut from = std::collections::BTreeMap::new();
    for i in 0..10 {
        let r = requester
            .request("svc.upper", format!("job {i}"), Duration::from_secs(5))
            .await
            .unwrap();
        let text = String::from_utf8(r.payload.to_vec()).unwrap();
        let (answer, who) = text.split_once(" from ").unwrap();
        assert_eq!(answer, format!("JOB {i}"));
        *from.entry(who.to_string()).or_insert(0) += 1;
    }
    assert_eq!(
        from.into_iter().collect::<Vec<_>>(),
        [("a".into(), 5), ("b".into(), 5)]
    );
    // Every reply confirmed to its responder, and none twice.
    let mut replies = Vec::new();
    for _ in 0..10 {
        let got = tokio::time::timeout(common::WAIT, confirmed.recv()).await;
        replies.push(got.expect("a confirmed reply").expect("responders run"));
    }
    replies.sort();
    replies.dedup();
    assert_eq!(replies.len(), 10);
    assert!(confirmed.try_recv().is_err(), "no eleventh reply");
    responders.iter().for_each(|r| r.abort());
    requester.close().await;
    b.handle.shutdown().await;
}

async fn nobody_subscribed_and_nobody_answering_are_told_apart(t: Transport) {
    let b = start_over(t, |_| {}).await;
    let client = b.connect().await;
    let e = client
        .request("svc.none", "?", Duration::from_secs(30))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NoResponders), "{e}");
    let mut silent = client.subscribe("svc.silent").await.unwrap();
    let asking = client.request("svc.silent", "?", Duration::from_millis(300));
    let (answer, request) = tokio::join!(asking, next(&mut silent));
    assert_eq!(answer.unwrap_err().code(), Some(ErrorCode::Timeout));
    // Answering now is too late.
    let late = client.reply_confirmed(&request, "late").await.unwrap_err();
    assert_eq!(late.code(), Some(ErrorCode::NotFound));
    // A message that is not a request cannot be answered.
    client.publish("svc.silent", "plain").await.unwrap();
    let plain = next(&mut silent).await;
    assert!(client.reply(&plain, "x").await.is_err());
    client.close().await;
}
