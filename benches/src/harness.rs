//! Where a benchmark's broker comes from — a fresh in-process broker on 127.0.0.1:0 with
//! a temp data dir (the default), or an already running one given by URL — and over
//! which transport clients reach it (TCP, TLS with a fresh self-signed certificate,
//! QUIC with the broker's own, or WebSockets for subscribers).

use rtc_broker::{Broker, BrokerHandle, Config};
use rtc_client::{Client, ConnectOptions};

/// How clients reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// One QUIC stream per connection.
    Quic,
    /// Subscribers on WebSockets to the HTTP gateway (`rtc.v1.proto`); publishers on TCP.
    Ws,
}

/// A broker to benchmark against; stops an in-process one when done.
pub struct Target {
    /// URL clients connect to.
    pub url: String,
    /// The HTTP gateway, for WebSocket subscribers (`ws`).
    pub http: Option<std::net::SocketAddr>,
    ca: Option<std::path::PathBuf>,
    local: Option<(BrokerHandle, tempfile::TempDir)>,
}

impl Target {
    /// A broker running at `url` (TCP).
    pub fn remote(url: &str) -> Target {
        Target {
            url: url.to_string(),
            http: None,
            ca: None,
            local: None,
        }
    }

    /// `server` if given (TCP), else a fresh in-process broker over `transport`,
    /// configured by `tweak`.
    pub async fn new(
        server: Option<&str>,
        transport: Transport,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Target> {
        if let Some(url) = server {
            return Ok(Target::remote(url));
        }
        let dir = tempfile::tempdir()?;
        let mut tls = None;
        if transport == Transport::Tls {
            let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert, made.cert.pem())?;
            std::fs::write(&key, made.signing_key.serialize_pem())?;
            tls = Some((cert, key));
        }
        let files = tls.clone();
        let handle = Broker::builder()
            .tcp("127.0.0.1:0".parse()?)
            .http((transport == Transport::Ws).then(|| "127.0.0.1:0".parse().expect("valid")))
            .data_dir(dir.path())
            .configure(|c| {
                if let Some((cert, key)) = files {
                    c.tls_cert = Some(cert);
                    c.tls_key = Some(key);
                }
                if transport == Transport::Quic {
                    c.quic = Some("127.0.0.1:0".parse().expect("valid address"));
                }
                // Benchmarks measure the broker, not the rate limiter.
                c.publish_rate = 0;
                tweak(c)
            })
            .start()
            .await?;
        let (url, ca) = match transport {
            Transport::Tcp | Transport::Ws => (handle.url(), None),
            Transport::Tls => (handle.url(), tls.map(|(cert, _)| cert)),
            Transport::Quic => (
                format!("quic://{}", handle.quic_addr().expect("QUIC is on")),
                Some(dir.path().join(rtc_broker::transport::quic::GENERATED_CERT)),
            ),
        };
        Ok(Target {
            url,
            http: handle.http_addr(),
            ca,
            local: Some((handle, dir)),
        })
    }

    /// The same target, its WebSocket subscribers on the gateway at `http`.
    pub fn with_http(mut self, http: std::net::SocketAddr) -> Self {
        self.http = Some(http);
        self
    }

    /// A client connected to the target.
    pub async fn connect(&self) -> anyhow::Result<Client> {
        let options = ConnectOptions {
            ca_file: self.ca.clone(),
            ..Default::default()
        };
        Ok(Client::connect_with(&self.url, options).await?)
    }

    /// Shuts an in-process broker down.
    pub async fn stop(self) {
        if let Some((handle, _dir)) = self.local {
            handle.shutdown().await;
        }
    }
}
