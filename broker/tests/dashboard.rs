//! The dashboard (`GET /`) in headless Chromium, driven over the DevTools protocol: it
//! logs in with an admin token, shows three clients within 2 s of their connecting, a
//! press on a row's disconnect button closes that client's connection (the client gets
//! `Error{DISCONNECTED}`), the live tail of a topic shows a message published after it
//! opened, and a setting edited on the page is in force. The test saves screenshots as
//! `dashboard.png` and `dashboard-phone.png` (390 px wide) under the target directory
//! (`target/tmp/`), for a reviewer to look at.

mod common;

use std::time::Duration;

use common::browser::{chromium, open_page_with, Cdp};
use common::{start_gateway, RawConn};
use rtc_proto::ErrorCode;

const SECRET: &str = "dashboard test secret of 32+ bytes!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_clients_disconnects_one_and_tails_a_topic() {
    let browser = chromium();
    let g = start_gateway(|c| c.jwt = Some(common::jwt_config(SECRET))).await;
    let tcp = g.handle.tcp_addr();
    let admin = common::jwt_with(SECRET, "ops", &[">"], &[">"], true);
    let mut publisher = RawConn::login(tcp, &admin).await;
    publisher.publish_acked("tail.t", b"before the page").await;
    drop(publisher);

    let url = format!("http://{}/?token={admin}", g.http);
    let (mut chrome, profile) = open_page_with(
        &browser,
        &url,
        &["--remote-debugging-port=0", "--window-size=1280,1600"],
    );
    let mut page = Cdp::attach(profile.path()).await;
    // Live: the events stream is open, and the broker's one connection is gone.
    page.wait_for(
        "document.getElementById('status').textContent === 'live' && document.getElementById('connections-count').textContent === '0'",
        Duration::from_secs(60),
    )
    .await;

    let mut clients = Vec::new();
    for user in ["c1", "c2", "c3"] {
        let token = common::jwt_for(SECRET, user, &["tail.>"], &["tail.>"]);
        let mut c = RawConn::login(tcp, &token).await;
        c.subscribe_ok(1, "tail.>").await;
        clients.push(c);
    }
    let took = page
        .wait_for(
            "document.getElementById('connections-count').textContent === '3' && document.querySelectorAll('#connections tbody tr').length === 3",
            Duration::from_secs(2),
        )
        .await;
    println!("the page showed 3 connections {took:?} after the third connected");

    // Disconnect c2 from its row.
    let pressed = page
        .eval(
            "(() => { const row = [...document.querySelectorAll('#connections tbody tr')].find((r) => r.cells[3].textContent === 'c2'); row.querySelector('button.disconnect').click(); return true; })()",
        )
        .await;
    assert_eq!(pressed, true);
    let e = clients[1].expect_error(ErrorCode::Disconnected).await;
    assert!(e.message.contains("from the dashboard"), "{e:?}");
    clients[1].expect_closed().await;
    page.wait_for(
        "document.getElementById('connections-count').textContent === '2'",
        Duration::from_secs(10),
    )
    .await;

    // The live tail of tail.t shows what is published after it opened.
    page.eval("document.querySelector('button.tail[data-topic=\"tail.t\"]').click(), true")
        .await;
    page.wait_for(
        "document.getElementById('tail-topic').textContent === 'tail.t'",
        Duration::from_secs(10),
    )
    .await;
    let mut publisher = RawConn::login(tcp, &admin).await;
    // The tail's stream may still be opening: publish until it shows the message.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        publisher
            .publish_acked("tail.t", b"hello from the test")
            .await;
        let shown = page
            .eval("document.getElementById('tail-log').textContent.includes('hello from the test')")
            .await;
        if shown == true {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tail never showed the message"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("the tail showed the message after {n} publish(es)");
    // The clients still connected get it too.
    for i in [0, 2] {
        clients[i]
            .expect_deliver_within(Duration::from_secs(10))
            .await;
    }

    // A setting edited on the page is in force.
    page.eval("(() => { const i = document.querySelector('#adjust input[name=max_payload]'); i.value = '4321'; document.querySelector('#adjust button[type=submit]').click(); return true; })()")
        .await;
    let admin_header = format!("Authorization: Bearer {admin}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = common::http::get(g.http, "/v1/admin/settings", &[&admin_header])
            .await
            .json();
        if s["max_payload"] == 4321 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the edit never applied: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let png = page.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    // And as a phone shows it: one column, nothing cut off at the side but the wide
    // tables, which scroll inside their box.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    )
    .await;
    let overflow = page
        .eval("document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(overflow, true, "the page is no wider than a phone's screen");
    let path = path.with_file_name("dashboard-phone.png");
    std::fs::write(&path, page.screenshot().await).unwrap();
    println!("screenshot: {}", path.display());
    let _ = chrome.kill().await;
    g.handle.shutdown().await;
}
