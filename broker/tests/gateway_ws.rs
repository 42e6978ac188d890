//! The HTTP gateway's health endpoints and WebSocket transport (`rtc.v1.proto`), with a
//! real WebSocket client (tokio-tungstenite) against the broker on 127.0.0.1:0: the same
//! session as TCP, bad input answered with the same errors, origins checked, the one
//! connection limit, pings as activity, and a client that dribbles its headers closed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{http, start_gateway, RawConn, WAIT};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use rtc_proto::v1::{self, frame::Op};
use rtc_proto::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket on `/v1/ws` asking for `protocol`, with extra request headers.
async fn ws_connect(
    addr: SocketAddr,
    protocol: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    for (k, v) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName = k.parse().unwrap();
        request.headers_mut().insert(name, v.parse().unwrap());
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

async fn send(ws: &mut Ws, frame: Frame) {
    ws.send(Message::Binary(frame.encode_to_vec().into()))
        .await
        .unwrap();
}

/// The next frame, skipping the broker's heartbeat pings; `None` once closed.
async fn recv(ws: &mut Ws) -> Option<Frame> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait");
        match msg {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return None,
            Some(Ok(Message::Binary(b))) => {
                let frame = Frame::decode(b).expect("one frame per binary message");
                if let Some(Op::Ping(_)) = frame.op {
                    continue;
                }
                return Some(frame);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

async fn expect_error(ws: &mut Ws, code: ErrorCode) -> v1::Error {
    match recv(ws).await {
        Some(Frame {
            op: Some(Op::Error(e)),
        }) => {
            assert_eq!(e.error_code(), code, "{e:?}");
            e
        }
        other => panic!("expected Error {code:?}, got {other:?}"),
    }
}

async fn expect_closed(ws: &mut Ws) {
    if let Some(f) = recv(ws).await {
        panic!("expected the broker to close, got {f:?}");
    }
}

fn hello() -> Frame {
    Frame::from_op(Op::Hello(v1::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_name: "ws-test".into(),
        auth_token: String::new(),
    }))
}

/// Hello, and the Welcome it gets.
async fn handshake(ws: &mut Ws) -> v1::Welcome {
    send(ws, hello()).await;
    match recv(ws).await {
        Some(Frame {
            op: Some(Op::Welcome(w)),
        }) => w,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test]
async fn health_and_readiness_answer_while_serving() {
    let g = start_gateway(|_| {}).await;
    let a = http::get(g.http, "/healthz", &[]).await;
    assert_eq!(
        (a.status, a.json()["status"].as_str()),
        (200, Some("serving"))
    );
    let a = http::get(g.http, "/readyz", &[]).await;
    assert_eq!(
        (a.status, a.json()["status"].as_str()),
        (200, Some("ready"))
    );
    assert_eq!(http::get(g.http, "/nope", &[]).await.status, 404);
    let chat = http::get(g.http, "/examples/chat", &[]).await;
    assert_eq!(chat.status, 200);
    assert!(chat
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert!(
        chat.text().contains("/examples/rtc-client.js"),
        "the example page, on client-js"
    );
    let js = http::get(g.http, "/examples/rtc-client.js", &[]).await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/javascript"));
    assert!(
        js.text().contains("rtc.v1.json"),
        "the browser build of client-js"
    );
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_websocket_client_gets_the_same_session_as_tcp() {
    let g = start_gateway(|_| {}).await;
    let (mut ws, chosen) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("rtc.v1.proto"));
    let welcome = handshake(&mut ws).await;
    assert!(welcome.max_frame_size > 0, "{welcome:?}");

    // Subscribed over WebSocket, published over TCP.
    send(
        &mut ws,
        Frame::from_op(Op::Subscribe(v1::Subscribe {
            req_id: 1,
            sub_id: 5,
            pattern: "web.>".into(),
            ..Default::default()
        })),
    )
    .await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(Frame {
            op: Some(Op::SubAck(_))
        })
    ));
    let mut tcp = RawConn::hello(g.handle.tcp_addr()).await;
    tcp.subscribe_ok(1, "web.>").await;
    let mut tcp_pub = RawConn::hello(g.handle.tcp_addr()).await;
    tcp_pub.publish_acked("web.news", b"from tcp").await;
    match recv(&mut ws).await {
        Some(Frame {
            op: Some(Op::Deliver(d)),
        }) => {
            let m = d.message.unwrap();
            assert_eq!((d.sub_id, m.topic.as_str()), (5, "web.news"));
            assert_eq!(m.payload, Bytes::from_static(b"from tcp"));
        }
        other => panic!("expected Deliver, got {other:?}"),
    }
    assert_eq!(
        tcp.expect_deliver().await.2,
        Bytes::from_static(b"from tcp")
    );

    // Published over WebSocket (durable, acknowledged), received over TCP.
    send(
        &mut ws,
        Frame::from_op(Op::Publish(v1::Publish {
            req_id: 2,
            topic: "web.chat".into(),
            payload: Bytes::from_static(b"from ws"),
            msg_id: "w-1".into(),
            ..Default::default()
        })),
    )
    .await;
    let mut acked = None;
    for _ in 0..2 {
        match recv(&mut ws).await {
            Some(Frame {
                op: Some(Op::PubAck(a)),
            }) => acked = Some(a),
            // Its own subscription gets it too.
            Some(Frame {
                op: Some(Op::Deliver(_)),
            }) => {}
            other => panic!("expected PubAck, got {other:?}"),
        }
    }
    let acked = acked.expect("a PubAck");
    assert_eq!((acked.req_id, acked.seq, acked.duplicate), (2, 1, false));
    assert_eq!(tcp.expect_deliver().await.2, Bytes::from_static(b"from ws"));
    g.handle.shutdown().await;
}

#[tokio::test]
async fn bad_websocket_input_gets_the_tcp_errors_and_a_close() {
    let g = start_gateway(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    // A text message on the binary subprotocol.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    handshake(&mut ws).await;
    ws.send(Message::Text("{\"hello\":{}}".into()))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::BadFrame).await;
    expect_closed(&mut ws).await;
    // Bytes that are not a frame.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    handshake(&mut ws).await;
    ws.send(Message::Binary(vec![0x0f, 0xff, 0xff, 0xff].into()))
        .await
        .unwrap();
    expect_error(&mut ws, ErrorCode::BadFrame).await;
    expect_closed(&mut ws).await;
    // A message above max_frame_size.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    let w = handshake(&mut ws).await;
    ws.send(Message::Binary(
        vec![0u8; w.max_frame_size as usize + 1].into(),
    ))
    .await
    .unwrap();
    expect_error(&mut ws, ErrorCode::FrameTooLarge).await;
    expect_closed(&mut ws).await;
    // A publish before Hello.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    send(&mut ws, Frame::from_op(Op::Ping(v1::Ping { nonce: 1 }))).await;
    expect_error(&mut ws, ErrorCode::HandshakeRequired).await;
    // No Hello at all.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    expect_error(&mut ws, ErrorCode::HandshakeTimeout).await;
    expect_closed(&mut ws).await;
    // Still serving.
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    handshake(&mut ws).await;
    g.handle.shutdown().await;
}

#[tokio::test]
async fn origins_are_checked() {
    let g = start_gateway(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let refused = ws_connect(
        g.http,
        "rtc.v1.proto",
        &[("Origin", "https://evil.example")],
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("PERMISSION_DENIED"), "{body}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[("Origin", "https://app.example")])
        .await
        .unwrap();
    handshake(&mut ws).await;
    // The broker's own host is always allowed.
    let own = format!("http://{}", g.http);
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[("Origin", &own)])
        .await
        .unwrap();
    handshake(&mut ws).await;
    g.handle.shutdown().await;
}

#[tokio::test]
async fn one_connection_limit_covers_websockets_too() {
    let g = start_gateway(|c| c.max_connections = 1).await;
    let _tcp = RawConn::hello(g.handle.tcp_addr()).await;
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    expect_error(&mut ws, ErrorCode::LimitExceeded).await;
    expect_closed(&mut ws).await;
    g.handle.shutdown().await;
}

#[tokio::test]
async fn websocket_pings_keep_a_quiet_connection_open() {
    let g = start_gateway(|c| c.heartbeat_interval = Duration::from_millis(100)).await;
    let (mut pinging, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    handshake(&mut pinging).await;
    let (mut silent, _) = ws_connect(g.http, "rtc.v1.proto", &[]).await.unwrap();
    handshake(&mut silent).await;
    // Three heartbeat intervals of silence close a connection; pings every 50 ms, for
    // ten intervals, keep the other one open. Neither answers the broker's rtc Pings.
    let (closed, ()) = tokio::join!(
        async {
            expect_error(&mut silent, ErrorCode::HeartbeatTimeout).await;
        },
        async {
            for _ in 0..20 {
                pinging.send(Message::Ping(Bytes::new())).await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    );
    let () = closed;
    send(
        &mut pinging,
        Frame::from_op(Op::Ping(v1::Ping { nonce: 9 })),
    )
    .await;
    match recv(&mut pinging).await {
        Some(Frame {
            op: Some(Op::Pong(p)),
        }) => assert_eq!(p.nonce, 9),
        other => panic!("the pinging connection is open: expected Pong, got {other:?}"),
    }
    g.handle.shutdown().await;
}

#[tokio::test]
async fn a_client_that_dribbles_its_headers_is_closed() {
    let g = start_gateway(|c| c.handshake_timeout = Duration::from_millis(300)).await;
    let mut slow = TcpStream::connect(g.http).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        // A byte every 100 ms would keep a naive server waiting for ever.
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::select! {
                r = slow.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the broker kept a dribbling client");
    assert_eq!(http::get(g.http, "/healthz", &[]).await.status, 200);
    g.handle.shutdown().await;
}

/// The next JSON frame, skipping the broker's heartbeat pings; `None` once closed.
async fn recv_json(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message within the wait");
        match msg {
            None | Some(Ok(Message::Close(_))) | Some(Err(_)) => return None,
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v.get("ping").is_some() {
                    continue;
                }
                return Some(v);
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
        }
    }
}

async fn send_json(ws: &mut Ws, json: serde_json::Value) {
    ws.send(Message::Text(json.to_string().into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_json_subprotocol_needs_no_protobuf() {
    let g = start_gateway(|_| {}).await;
    let (mut ws, chosen) = ws_connect(g.http, "rtc.v1.json", &[]).await.unwrap();
    assert_eq!(chosen.as_deref(), Some("rtc.v1.json"));
    send_json(
        &mut ws,
        serde_json::json!({"hello": {"protocol_version": 1, "client_name": "page"}}),
    )
    .await;
    let welcome = recv_json(&mut ws).await.unwrap();
    assert!(
        welcome["welcome"]["max_frame_size"].as_u64().unwrap() > 0,
        "{welcome}"
    );
    send_json(
        &mut ws,
        serde_json::json!({"subscribe": {"req_id": 1, "sub_id": 7, "pattern": "js.>"}}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await.unwrap()["sub_ack"]["sub_id"], 7);

    // Text and binary payloads, both ways.
    send_json(&mut ws, serde_json::json!({"publish": {"req_id": 2, "topic": "js.chat", "payload": "héllo", "msg_id": "p1"}})).await;
    let mut tcp = RawConn::hello(g.handle.tcp_addr()).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(recv_json(&mut ws).await.unwrap());
    }
    let ack = got
        .iter()
        .find(|v| v.get("pub_ack").is_some())
        .expect("a pub_ack");
    assert_eq!(
        (
            ack["pub_ack"]["req_id"].as_u64(),
            ack["pub_ack"]["seq"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let d = got
        .iter()
        .find(|v| v.get("deliver").is_some())
        .expect("a deliver");
    assert_eq!(d["deliver"]["message"]["payload"], "héllo");
    assert_eq!(d["deliver"]["message"]["msg_id"], "p1");
    tcp.publish_acked("js.bin", &[0, 1, 255]).await;
    let d = recv_json(&mut ws).await.unwrap();
    assert_eq!(
        d["deliver"]["message"]["payload"],
        serde_json::json!({"base64": "AAH/"})
    );
    send_json(
        &mut ws,
        serde_json::json!({"publish": {"topic": "js.bin", "payload": {"base64": "AAH/"}}}),
    )
    .await;
    assert_eq!(
        recv_json(&mut ws).await.unwrap()["deliver"]["message"]["seq"],
        2
    );

    // An operation this broker does not know: UNSUPPORTED, and the connection stays.
    send_json(&mut ws, serde_json::json!({"teleport": {"to": "mars"}})).await;
    let e = recv_json(&mut ws).await.unwrap();
    assert_eq!(e["error"]["code"], "UNSUPPORTED", "{e}");
    send_json(&mut ws, serde_json::json!({"ping": {"nonce": 5}})).await;
    assert_eq!(recv_json(&mut ws).await.unwrap()["pong"]["nonce"], 5);

    // Not JSON, and a binary message on the JSON subprotocol: BAD_FRAME and a close.
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(
        recv_json(&mut ws).await.unwrap()["error"]["code"],
        "BAD_FRAME"
    );
    assert!(recv_json(&mut ws).await.is_none(), "closed");
    let (mut ws, _) = ws_connect(g.http, "rtc.v1.json", &[]).await.unwrap();
    ws.send(Message::Binary(hello().encode_to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        recv_json(&mut ws).await.unwrap()["error"]["code"],
        "BAD_FRAME"
    );
    g.handle.shutdown().await;
}

/// A page's connection in the JSON mapping, after its Hello: the socket and the Welcome.
async fn json_page(http: SocketAddr) -> (Ws, serde_json::Value) {
    let (mut ws, _) = ws_connect(http, "rtc.v1.json", &[]).await.unwrap();
    send_json(
        &mut ws,
        serde_json::json!({"hello": {"protocol_version": 1, "client_name": "page"}}),
    )
    .await;
    let welcome = recv_json(&mut ws).await.unwrap();
    (ws, welcome)
}

/// Request-reply in the JSON mapping: a page asks, a TCP responder answers; and a page
/// answers a request from TCP.
#[tokio::test]
async fn request_reply_over_json() {
    let g = start_gateway(|_| {}).await;
    let (mut ws, welcome) = json_page(g.http).await;
    assert!(welcome.get("welcome").is_some());
    let mut responder = RawConn::hello(g.handle.tcp_addr()).await;
    responder.subscribe_ok(1, "svc.time").await;
    send_json(
        &mut ws,
        serde_json::json!({"request": {"req_id": 3, "topic": "svc.time", "payload": "now?", "timeout_ms": 5000}}),
    )
    .await;
    let request = match responder.recv().await {
        Some(Frame {
            op: Some(Op::Deliver(d)),
        }) => d.message.unwrap(),
        other => panic!("expected the request, got {other:?}"),
    };
    assert_eq!(&request.payload[..], b"now?");
    responder
        .send(Frame::from_op(Op::Reply(v1::Reply {
            reply_to: request.reply_to,
            payload: Bytes::from_static(b"noon"),
            ..Default::default()
        })))
        .await;
    let response = recv_json(&mut ws).await.unwrap();
    assert_eq!(
        response,
        serde_json::json!({"response": {"req_id": 3, "payload": "noon", "headers": {}}})
    );

    // The page as the responder.
    send_json(
        &mut ws,
        serde_json::json!({"subscribe": {"req_id": 4, "sub_id": 1, "pattern": "page.ask", "group": "pages"}}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await.unwrap()["sub_ack"]["sub_id"], 1);
    responder
        .send(Frame::from_op(Op::Request(v1::Request {
            req_id: 8,
            topic: "page.ask".into(),
            payload: Bytes::from_static(b"who?"),
            ..Default::default()
        })))
        .await;
    let asked = recv_json(&mut ws).await.unwrap();
    let reply_to = asked["deliver"]["message"]["reply_to"].as_str().unwrap();
    send_json(
        &mut ws,
        serde_json::json!({"reply": {"req_id": 5, "reply_to": reply_to, "payload": "a page"}}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await.unwrap()["confirm"]["req_id"], 5);
    match responder.recv().await {
        Some(Frame {
            op: Some(Op::Response(r)),
        }) => assert_eq!((r.req_id, &r.payload[..]), (8, &b"a page"[..])),
        other => panic!("expected the Response, got {other:?}"),
    }
    g.handle.shutdown().await;
}

/// Presence in the JSON mapping: a page joins a room with its info and events, sees a
/// TCP client join and leave, and queries the room.
#[tokio::test]
async fn presence_over_json() {
    let g = start_gateway(|_| {}).await;
    let (mut ws, welcome) = json_page(g.http).await;
    let me = format!("anon-{}", welcome["welcome"]["connection_id"]);
    send_json(
        &mut ws,
        serde_json::json!({"subscribe": {"req_id": 1, "sub_id": 1, "pattern": "room.a",
            "presence": {"info": "{\"name\":\"Ana\"}", "events": true}}}),
    )
    .await;
    assert_eq!(recv_json(&mut ws).await.unwrap()["sub_ack"]["sub_id"], 1);
    let own = recv_json(&mut ws).await.unwrap();
    assert_eq!(own["presence_event"]["kind"], 1, "JOIN: {own}");
    assert_eq!(own["presence_event"]["member"]["user"], me.as_str());
    let mut tcp = RawConn::hello(g.handle.tcp_addr()).await;
    tcp.send(Frame::from_op(Op::Subscribe(v1::Subscribe {
        req_id: 1,
        sub_id: 1,
        pattern: "room.a".into(),
        presence: Some(v1::PresenceJoin::default()),
        ..Default::default()
    })))
    .await;
    tcp.recv().await;
    let joined = recv_json(&mut ws).await.unwrap();
    assert_eq!(joined["presence_event"]["members"], 2, "{joined}");
    send_json(
        &mut ws,
        serde_json::json!({"presence_request": {"req_id": 2, "topic": "room.a"}}),
    )
    .await;
    let info = recv_json(&mut ws).await.unwrap();
    assert_eq!(info["presence_info"]["members"], 2, "{info}");
    let infos: Vec<&str> = info["presence_info"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["info"].as_str().unwrap())
        .collect();
    assert!(infos.contains(&"{\"name\":\"Ana\"}"), "{infos:?}");
    drop(tcp);
    let left = recv_json(&mut ws).await.unwrap();
    assert_eq!(
        (
            &left["presence_event"]["kind"],
            &left["presence_event"]["members"]
        ),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "LEAVE: {left}"
    );
    g.handle.shutdown().await;
}
