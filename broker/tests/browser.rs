//! The gateway in a real browser: headless Chromium (Debian's package, installed by
//! `scripts/ensure-chromium.sh` when missing) opens `tests/browser/page.html`, served
//! from an origin of its own, which uses the browser's own `EventSource`, `WebSocket`
//! (`rtc.v1.json`) and `fetch` against the broker. The page publishes what it saw to
//! `bt.result`; the test reads that over TCP and checks it: the history over SSE, the
//! switch to live, its own WebSocket publish acknowledged and then delivered live on the
//! SSE stream, and the CORS preflight of its cross-origin JSON POST (without which the
//! report could not arrive). A second test drives the example chat page the same way.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::browser::{chromium, open_page, open_page_with};
use common::{start_gateway, RawConn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PAGE: &str = include_str!("browser/page.html");
/// How long the page may take, Chromium's start included.
const PAGE_WAIT: Duration = Duration::from_secs(60);

/// Serves the page on 127.0.0.1:0 (any path), until the test ends.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let (status, body) = if head.starts_with(b"GET /?") {
                    ("200 OK", PAGE)
                } else {
                    ("404 Not Found", "")
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_in_chromium_uses_sse_websocket_and_fetch() {
    let browser = chromium();
    let page = serve_page().await;
    let origin = format!("http://{page}");
    let g = start_gateway(|c| c.allowed_origins = vec![origin.clone()]).await;
    let tcp = g.handle.tcp_addr();
    let mut history = RawConn::hello(tcp).await;
    history.publish_acked("bt.chat", b"history 1").await;
    history.publish_acked("bt.chat", b"history 2").await;
    let mut results = RawConn::hello(tcp).await;
    results.subscribe_ok(1, "bt.result").await;

    let url = format!("{origin}/?broker={}", g.http);
    let (mut chrome, _profile) = open_page(&browser, &url);

    let report = results.expect_deliver_within(PAGE_WAIT).await;
    let _ = chrome.kill().await;
    let report: serde_json::Value = serde_json::from_slice(&report.2).unwrap();
    println!("the page saw: {report}");
    assert!(report.get("error").is_none(), "{report}");
    assert_eq!(report["ws_protocol"], "rtc.v1.json");
    assert_eq!(report["live"], true, "the live event came");
    assert_eq!(report["ack"], 3, "its publish was stored as seq 3");
    assert_eq!(
        report["sse"],
        serde_json::json!([
            [1, "history 1"],
            [2, "history 2"],
            [3, "from the browser ✓"]
        ]),
        "history, then its own message live"
    );
    g.handle.shutdown().await;
}

/// The example chat (examples/web/chat.html), served by the broker: a link that joins a
/// room and greets it makes the page replay the room over SSE, go live, and publish
/// the greeting with fetch; the message arrives on the room's topic over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_chat_joins_a_room_and_sends_a_message() {
    let browser = chromium();
    let g = start_gateway(|_| {}).await;
    let mut room = RawConn::hello(g.handle.tcp_addr()).await;
    room.publish_acked("chat.lobby", br#"{"user":"ana","text":"merhaba"}"#)
        .await;
    room.subscribe_ok(1, "chat.lobby").await;
    let url = format!(
        "http://{}/examples/chat?user=bob&room=lobby&say=hi%20ana",
        g.http
    );
    let (mut chrome, _profile) = open_page(&browser, &url);
    let (_, topic, payload) = room.expect_deliver_within(PAGE_WAIT).await;
    let _ = chrome.kill().await;
    assert_eq!(topic, "chat.lobby");
    let message: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        message,
        serde_json::json!({"user": "bob", "text": "hi ana"})
    );
    g.handle.shutdown().await;
}

/// The example call (examples/web/call.html) in two browsers, one per user: they find
/// each other through the room's presence, signal through their `$user` inboxes, and
/// each reports the message that came over the RTCDataChannel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_signal_through_inboxes_and_open_a_data_channel() {
    const SECRET: &str = "browser test secret of at least 32 bytes";
    let token = |sub: &str| common::jwt_for(SECRET, sub, &["$user.>", "call.>"], &["call.>"]);
    let browser = chromium();
    let g = start_gateway(|c| c.jwt = Some(common::jwt_config(SECRET))).await;
    let mut results = RawConn::login(g.handle.tcp_addr(), &token("watcher")).await;
    results.subscribe_ok(1, "call.result").await;
    // Host candidates as plain addresses rather than mDNS names, which a container may
    // not resolve.
    let flags = ["--disable-features=WebRtcHideLocalIpsWithMdns"];
    let mut pages = Vec::new();
    for user in ["ana", "bob"] {
        let url = format!(
            "http://{}/examples/call?room=t1&token={}",
            g.http,
            token(user)
        );
        pages.push(open_page_with(&browser, &url, &flags));
    }
    let mut reports = std::collections::BTreeMap::new();
    while reports.len() < 2 {
        let (_, _, payload) = results.expect_deliver_within(PAGE_WAIT).await;
        let report: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        println!("a page saw: {report}");
        assert!(report.get("error").is_none(), "{report}");
        reports.insert(report["user"].as_str().unwrap().to_string(), report);
    }
    for (mut chrome, _) in pages {
        let _ = chrome.kill().await;
    }
    assert_eq!(reports["ana"]["got"], "hello from bob");
    assert_eq!(reports["bob"]["got"], "hello from ana");
    assert_eq!(reports["ana"]["opened"], true);
    g.handle.shutdown().await;
}
