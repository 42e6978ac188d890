//! Headless Chromium for the browser tests: Debian's package (installed by
//! `scripts/ensure-chromium.sh` when missing), a profile per page, and a minimal Chrome
//! DevTools Protocol client ([`Cdp`]) to read the page, press its buttons and take a
//! screenshot — JSON over the page's own WebSocket, no driver in between.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The browser, installed if missing; fails the test if it cannot be.
pub fn chromium() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-chromium.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: Chromium is needed for this test",
        script.display()
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Headless Chromium on `url`, with a profile of its own (kept until the test ends).
pub fn open_page(browser: &str, url: &str) -> (tokio::process::Child, tempfile::TempDir) {
    open_page_with(browser, url, &[])
}

/// [`open_page`] with more Chromium flags.
pub fn open_page_with(
    browser: &str,
    url: &str,
    extra: &[&str],
) -> (tokio::process::Child, tempfile::TempDir) {
    let profile = tempfile::tempdir().unwrap();
    // The flags the machine notes give: no sandbox as root, and no background traffic
    // to hosts a closed network refuses.
    let chrome = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {browser}: {e}"));
    (chrome, profile)
}

/// A page's DevTools connection.
pub struct Cdp {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Cdp {
    /// Connects to the first page of the Chromium whose profile is `profile` (started
    /// with `--remote-debugging-port=0`, which writes the port it took into the profile).
    pub async fn attach(profile: &Path) -> Cdp {
        let file = profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.lines().next().map(str::to_string))
                .filter(|p| !p.is_empty())
            {
                break port;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Chromium wrote no {}",
                file.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let url = loop {
            let pages = devtools_list(addr).await;
            let page = pages
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                .map(str::to_string);
            if let Some(url) = page {
                break url;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no page target: {pages}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("DevTools WebSocket");
        Cdp { ws, next_id: 1 }
    }

    /// Calls `method` and returns its `result`.
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(WsMessage::text(msg.to_string()))
            .await
            .expect("send to DevTools");
        loop {
            let frame = tokio::time::timeout(super::WAIT, self.ws.next())
                .await
                .expect("DevTools answers")
                .expect("DevTools open")
                .expect("DevTools frame");
            let WsMessage::Text(text) = frame else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is `true`, for at most `wait` (an expression that
    /// throws, say on a page still loading, is not true yet); how long it took.
    pub async fn wait_for(&mut self, expression: &str, wait: Duration) -> Duration {
        let start = tokio::time::Instant::now();
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&guarded).await == serde_json::Value::Bool(true) {
                return start.elapsed();
            }
            assert!(start.elapsed() < wait, "not within {wait:?}: {expression}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A PNG of the page as it looks now.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({ "format": "png" }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("image data"))
            .expect("base64 image")
    }
}

/// `GET /json/list` of DevTools' HTTP endpoint, which keeps the connection open: the
/// answer is read up to its Content-Length.
async fn devtools_list(addr: std::net::SocketAddr) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET /json/list HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&raw).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .expect("a Content-Length");
            if raw.len() >= end + 4 + len {
                return serde_json::from_slice(&raw[end + 4..end + 4 + len]).unwrap();
            }
        }
        let n = tokio::time::timeout(super::WAIT, tcp.read(&mut buf))
            .await
            .expect("DevTools answers")
            .unwrap();
        assert!(n > 0, "DevTools closed: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
}
