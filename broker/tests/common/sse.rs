//! A Server-Sent Events client for the gateway tests: the request over a raw socket,
//! then events parsed from the chunked body.
#![allow(dead_code)]

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// One event (or comment) of the stream.
#[derive(Debug, Default)]
pub struct Event {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub comment: bool,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.data.as_deref().unwrap_or("null")).unwrap()
    }
}

/// An SSE client: the request, then events from the chunked body.
pub struct Sse {
    tcp: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
}

impl Sse {
    /// Opens `path`; the status, and the stream when it is 200.
    pub async fn open(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, Option<Sse>) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let mut head =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let end = loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("response head")
                .unwrap();
            assert!(n > 0, "closed before the response head");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        if status != 200 {
            return (status, None);
        }
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        let raw = raw[end + 4..].to_vec();
        (
            status,
            Some(Sse {
                tcp,
                raw,
                body: Vec::new(),
            }),
        )
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(end) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&self.raw[..end]).unwrap().trim(), 16)
                    .expect("chunk size");
            if self.raw.len() < end + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[end + 2..end + 2 + size]);
            self.raw.drain(..end + 2 + size + 2);
        }
    }

    /// The next event; `None` when the stream ended.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            self.dechunk();
            if let Some(end) = self.body.windows(2).position(|w| w == b"\n\n") {
                let text = String::from_utf8(self.body[..end].to_vec()).unwrap();
                self.body.drain(..end + 2);
                let mut e = Event::default();
                for line in text.lines() {
                    if line.starts_with(':') {
                        e.comment = true;
                    } else if let Some((k, v)) = line.split_once(": ") {
                        match k {
                            "event" => e.event = Some(v.into()),
                            "id" => e.id = Some(v.into()),
                            "data" => e.data = Some(v.into()),
                            _ => {}
                        }
                    }
                }
                return Some(e);
            }
            let mut buf = [0u8; 16384];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut buf))
                .await
                .expect("an event within the wait")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// The next message event (skipping keep-alives, `live` and the `retry` hint).
    pub async fn next_message(&mut self) -> Event {
        loop {
            let e = self.next().await.expect("the stream is open");
            if e.data.is_some() && e.event.is_none() {
                return e;
            }
        }
    }
}
