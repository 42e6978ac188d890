//! `$user.<id>` inboxes against the real broker on 127.0.0.1:0, with JWT identities:
//! only the user may subscribe to its inbox (not another user, not a wildcard, not an
//! unauthenticated connection), whoever may publish there can, and wildcard patterns
//! never reach the broker's `$` topics.

mod common;

use bytes::Bytes;
use common::{start_with, RawConn};
use rtc_proto::ErrorCode;

const SECRET: &str = "test secret of at least thirty-two bytes";

fn token(sub: &str, publish: &[&str], subscribe: &[&str]) -> String {
    common::jwt_for(SECRET, sub, publish, subscribe)
}

async fn login(addr: std::net::SocketAddr, token: &str) -> RawConn {
    RawConn::login(addr, token).await
}

#[tokio::test]
async fn only_the_user_reads_its_inbox() {
    let b = start_with(|c| c.jwt = Some(common::jwt_config(SECRET))).await;
    // Even "everything" as a subscribe permission does not open other inboxes.
    let mut ana = login(b.addr, &token("ana", &["$user.>"], &[">"])).await;
    let mut bob = login(b.addr, &token("bob", &["$user.>"], &[">"])).await;
    ana.subscribe_ok(1, "$user.ana").await;
    bob.subscribe_ok(1, "$user.bob.>").await;
    for pattern in ["$user.bob", "$user.*", "$user.>", "$user.*.calls"] {
        ana.subscribe(2, pattern).await;
        ana.expect_error(ErrorCode::PermissionDenied).await;
    }
    // A subscription to everything sees no inbox.
    ana.subscribe_ok(3, ">").await;
    // Bob writes to Ana; Ana gets it once, on her inbox subscription.
    bob.publish_acked("$user.ana", b"hi ana").await;
    let (sub_id, topic, payload) = ana.expect_deliver().await;
    assert_eq!((sub_id, topic.as_str()), (1, "$user.ana"));
    assert_eq!(payload, Bytes::from_static(b"hi ana"));
    ana.publish_acked("$user.bob.calls", b"offer").await;
    let (_, topic, _) = bob.expect_deliver().await;
    assert_eq!(topic, "$user.bob.calls");
    ana.ping(1).await;
    // Publishing needs the permission, like any topic.
    let mut eve = login(b.addr, &token("eve", &["chat.>"], &["chat.>"])).await;
    let req_id = eve.publish("$user.ana", b"spam").await;
    let e = eve.expect_error(ErrorCode::PermissionDenied).await;
    assert_eq!(e.req_id, req_id);
    // Other `$` topics stay reserved for the broker.
    bob.publish("$dlq.x", b"no").await;
    bob.expect_error(ErrorCode::InvalidTopic).await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn an_open_broker_has_no_inboxes_to_read() {
    let b = common::start().await;
    let mut anyone = RawConn::hello(b.addr).await;
    anyone.subscribe(1, "$user.ana").await;
    anyone.expect_error(ErrorCode::PermissionDenied).await;
    b.handle.shutdown().await;
}
