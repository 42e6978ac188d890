//! Where a benchmark's broker comes from: a fresh in-process broker on 127.0.0.1:0 with a
//! temp data dir (the default), or an already running one given by URL.

use rtc_broker::{Broker, BrokerHandle, Config};

/// A broker to benchmark against; stops an in-process one when done.
pub struct Target {
    /// URL clients connect to.
    pub url: String,
    local: Option<(BrokerHandle, tempfile::TempDir)>,
}

impl Target {
    /// `server` if given, else a fresh in-process broker configured by `tweak`.
    pub async fn new(
        server: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Target> {
        if let Some(url) = server {
            return Ok(Target {
                url: url.to_string(),
                local: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let handle = Broker::builder()
            .tcp("127.0.0.1:0".parse()?)
            .data_dir(dir.path())
            .configure(tweak)
            .start()
            .await?;
        Ok(Target {
            url: format!("tcp://{}", handle.tcp_addr()),
            local: Some((handle, dir)),
        })
    }

    /// Shuts an in-process broker down.
    pub async fn stop(self) {
        if let Some((handle, _dir)) = self.local {
            handle.shutdown().await;
        }
    }
}
