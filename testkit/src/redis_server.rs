//! A real `redis-server` for the cluster-mode tests: installed by
//! `scripts/ensure-redis.sh` when missing, started on a free loopback port with its
//! own temp dir, killed on drop. It can be killed and started again on the same port
//! and dir (to test an outage, or a restart that reloads its append-only file).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{line_channel, START_TIMEOUT};

/// The path of redis-server, installing it first if needed (once per process).
pub fn redis_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/ensure-redis.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed: redis-server is needed for the cluster tests",
            script.display()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .clone()
}

/// A running redis-server; see the module docs.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    /// A config file to start with (a sentinel needs one it can rewrite).
    conf: Option<PathBuf>,
}

impl RedisServer {
    /// Starts redis-server with nothing saved to disk.
    pub fn start() -> RedisServer {
        Self::start_with(&["--save", "", "--appendonly", "no"])
    }

    /// Starts redis-server with `args` added (e.g. `--appendonly yes --appendfsync
    /// always`), on a free port, in a fresh temp dir.
    pub fn start_with(args: &[&str]) -> RedisServer {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        on_free_port("redis-server", |port| RedisServer {
            child: None,
            port,
            dir: crate::temp_dir(),
            args: args.clone(),
            conf: None,
        })
    }

    /// redis-server speaking TLS only (with `cert` and `key`, PEM files), and requiring
    /// `password`: for `rediss://:PASSWORD@127.0.0.1:PORT`.
    pub fn start_tls(cert: &Path, key: &Path, password: &str) -> RedisServer {
        on_free_port("redis-server (TLS)", |port| RedisServer {
            child: None,
            port,
            dir: crate::temp_dir(),
            args: [
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
                "--tls-auth-clients",
                "no",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &cert.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect(),
            conf: None,
        })
    }

    /// A Redis Sentinel watching the master on `master_port` as `mymaster`, with a
    /// quorum of 1 and short timeouts (down after 1 s), so that a test's failover takes
    /// a few seconds.
    pub fn sentinel(master_port: u16) -> RedisServer {
        on_free_port("redis sentinel", |port| {
            let dir = crate::temp_dir();
            let conf = dir.path().join("sentinel.conf");
            let text = format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 3000\n\
                 sentinel parallel-syncs mymaster 1\n"
            );
            std::fs::write(&conf, text).expect("write sentinel.conf");
            RedisServer {
                child: None,
                port,
                dir,
                args: vec!["--sentinel".to_string()],
                conf: Some(conf),
            }
        })
    }

    /// A Redis Cluster of `n` masters (no replicas) on loopback, created with
    /// `redis-cli --cluster create`, once every node reports `cluster_state:ok`.
    pub fn cluster(n: usize) -> Vec<RedisServer> {
        Self::cluster_with_replicas(n, 0)
    }

    /// A Redis Cluster of `masters` masters with `replicas` replicas each (the first
    /// `masters` servers are the masters, as `redis-cli --cluster create` assigns
    /// them), with a node timeout of 1 s so that a replica takes over a dead master
    /// within a few seconds.
    pub fn cluster_with_replicas(masters: usize, replicas: usize) -> Vec<RedisServer> {
        let n = masters * (1 + replicas);
        let servers: Vec<RedisServer> = (0..n)
            .map(|_| {
                // The cluster bus gets a free port of its own (the default, port +
                // 10000, may be taken or out of range).
                let bus = free_port().to_string();
                RedisServer::start_with(&[
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    &bus,
                ])
            })
            .collect();
        let cli = redis_server_bin().with_file_name("redis-cli");
        let addrs: Vec<String> = servers
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new(cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + START_TIMEOUT;
        for s in &servers {
            while !s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") {
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster never became ok"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // A replica can take over only once it has synced with its master.
        for s in &servers {
            while s.cli(&["ROLE"]).starts_with("slave")
                && !s
                    .cli(&["INFO", "replication"])
                    .contains("master_link_status:up")
            {
                assert!(Instant::now() < deadline, "a replica never synced");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        servers
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data dir (where an append-only file goes).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and dir, with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline && e.contains("in use") => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("redis-server did not restart: {e}"),
            }
        }
    }

    /// Runs `redis-cli -p PORT args…` and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let cli = redis_server_bin().with_file_name("redis-cli");
        let out = Command::new(cli)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut command = Command::new(redis_server_bin());
        // A config file must come first.
        if let Some(conf) = &self.conf {
            command.arg(conf);
        }
        let mut child = command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--protected-mode", "no", "--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn redis-server: {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = line_channel(stdout);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = String::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line)
                    if line.contains("Ready to accept connections")
                        || line.contains("+monitor master") =>
                {
                    self.child = Some(child);
                    return Ok(());
                }
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        Err(format!("{seen}{err}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the server `make` describes for a free port, again on another port while the
/// one picked turns out taken.
fn on_free_port(what: &str, make: impl Fn(u16) -> RedisServer) -> RedisServer {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut server = make(free_port());
        match server.spawn() {
            Ok(()) => return server,
            Err(e) if Instant::now() < deadline && e.contains("in use") => continue,
            Err(e) => panic!("{what} did not start: {e}"),
        }
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
