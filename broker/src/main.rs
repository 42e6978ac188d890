//! `rtc-broker`: the broker daemon. Reads flags and the optional TOML config (flags win),
//! starts the library's [`rtc_broker::Broker`], prints one `listening <transport> <addr>`
//! line per listener on stdout (`tcp`, or `tls` when a certificate is configured; `quic`;
//! `http`, or `https`), and
//! shuts down gracefully on SIGINT or SIGTERM (stop accepting, flush in-flight writes,
//! exit 0). Logs go to stderr.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rtc_broker::{Broker, BrokerHandle, Config};

/// mimalloc rather than glibc's malloc: buffers are allocated on one thread and freed on
/// another (a session's frames by the storage thread, chunks by writers), which glibc
/// serves with arena locks and `malloc_consolidate`; mimalloc's per-thread heaps free
/// across threads without them (docs/benchmarks.md, "Figures behind the code"). See
/// [`no_huge_pages`] for what keeps its memory use at glibc's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc asks for them on its
/// arenas (`MADV_HUGEPAGE`), and each thread that touches its heap then faults in and
/// zeroes a whole 2 MiB page: an idle broker holds several times the memory it uses, and
/// the zeroing shows in the profile of a growing durable topic. The kernel honours this
/// flag even for regions already advised.
#[cfg(feature = "mimalloc")]
fn no_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if r != 0 {
        // Older kernels: only memory use is at stake.
        tracing::debug!(
            "PR_SET_THP_DISABLE failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime does
/// for NATS: every connection holds a descriptor, and so does each durable topic's
/// newest log segment, and the common soft default of 1024 would refuse both long
/// before `max_connections`. Logged, not fatal, if the system says no.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the one struct given, owned here.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            before == lim.rlim_max || libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
        }
    };
    if raised {
        tracing::debug!(open_files = lim.rlim_cur, "open files limit");
    } else {
        tracing::warn!(
            "cannot raise the open files limit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The rtc message broker.
#[derive(Debug, Parser)]
#[command(name = "rtc-broker", version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TCP listen address [default: 127.0.0.1:7400]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Data directory, created if missing [default: ./rtc-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file; flags given on the command line override it.
    #[arg(long, value_name = "FILE", env = "RTC_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log level or tracing filter, e.g. `info` or `rtc_broker=debug` [default: info].
    #[arg(long, value_name = "LEVEL")]
    log: Option<String>,
    /// QUIC listen address (UDP), e.g. 127.0.0.1:7400 [default: off].
    #[arg(long, value_name = "ADDR")]
    quic: Option<SocketAddr>,
    /// HTTP gateway address (WebSocket, health), or `off` [default: 127.0.0.1:7401].
    /// With --tls-cert it speaks HTTPS.
    #[arg(long, value_name = "ADDR|off", value_parser = parse_listen)]
    http: Option<Listen>,
    /// PEM certificate chain: with --tls-key, the TCP listener speaks TLS (tls:// URLs).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Cluster mode: every broker given this Redis (redis://HOST:PORT, rediss:// for
    /// TLS) acts as one broker; `[cluster]` in the config file sets the key prefix too.
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
}

/// A listen address, or none (`off`).
#[derive(Debug, Clone)]
struct Listen(Option<SocketAddr>);

fn parse_listen(s: &str) -> Result<Listen, String> {
    rtc_broker::config::addr_or_off::parse(s).map(Listen)
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the hash of TOKEN for a `[[user]]` entry's `token_hash` (the config never
    /// holds the token itself).
    HashToken {
        /// The token a client will send.
        token: String,
    },
    /// Print an HS256 JWT signed with the config's `[jwt] hs256_secret`, for development
    /// (in production the application's backend mints them).
    MintToken {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// A topic pattern the holder may publish to (repeat for more).
        #[arg(long, value_name = "PATTERN")]
        publish: Vec<String>,
        /// A topic pattern the holder may subscribe to (repeat for more).
        #[arg(long, value_name = "PATTERN")]
        subscribe: Vec<String>,
        /// The holder may use the admin API and delete topics and consumers.
        #[arg(long)]
        admin: bool,
        /// How long the token is valid, e.g. 1h or 15m.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Copy a data directory whose messages are in sled (`store_engine = "sled"`, made
    /// before the segment files) into a new data directory of the segment store. The
    /// source is only read; stop the broker using it first. Start the broker on the new
    /// directory once this succeeds.
    ConvertStore {
        /// The data directory to read.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// The new data directory (must not exist, or be empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
    },
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    no_huge_pages();
    let args = Args::parse();
    match &args.command {
        Some(Command::HashToken { token }) => {
            println!("{}", rtc_broker::auth::hash_token(token));
            return ExitCode::SUCCESS;
        }
        Some(Command::MintToken {
            sub,
            publish,
            subscribe,
            admin,
            ttl,
        }) => {
            return match mint_token(&args, sub, publish, subscribe, *admin, *ttl) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rtc-broker mint-token: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::ConvertStore { from, to }) => {
            let converted = rtc_broker::server::convert_store(from, to);
            return match converted {
                Ok(c) => {
                    println!(
                        "converted {} topics, {} messages and {} consumers into {}",
                        c.topics,
                        c.messages,
                        c.consumers,
                        to.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("rtc-broker convert-store: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rtc-broker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// An HS256 token signed with the config's secret.
fn mint_token(
    args: &Args,
    sub: &str,
    publish: &[String],
    subscribe: &[String],
    admin: bool,
    ttl: std::time::Duration,
) -> anyhow::Result<String> {
    use rtc_broker::auth::jwt;
    let config = match &args.config {
        Some(path) => Config::from_toml_file(path)?,
        None => anyhow::bail!("give the broker's config (--config FILE or RTC_CONFIG), whose [jwt] hs256_secret signs the token"),
    };
    let Some(secret) = config.jwt.as_ref().and_then(|j| j.hs256_secret.as_ref()) else {
        anyhow::bail!("the config has no [jwt] hs256_secret to sign with");
    };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let claims = jwt::Claims {
        sub: sub.to_string(),
        exp: (now + ttl).as_secs() as i64,
        nbf: None,
        publish: publish.to_vec(),
        subscribe: subscribe.to_vec(),
        admin,
    };
    jwt::mint_hs256(secret, &claims).map_err(anyhow::Error::msg)
}

fn load_config(args: Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_toml_file(path)?,
        None => Config::default(),
    };
    if let Some(tcp) = args.tcp {
        config.tcp = tcp;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(log) = args.log {
        config.log = log;
    }
    if args.quic.is_some() {
        config.quic = args.quic;
    }
    if let Some(Listen(http)) = args.http {
        config.http = http;
    }
    if let Some(redis) = args.cluster {
        let cluster = config.cluster.get_or_insert_with(Default::default);
        cluster.redis = redis;
    }
    if args.tls_cert.is_some() {
        config.tls_cert = args.tls_cert;
        config.tls_key = args.tls_key;
    }
    Ok(config)
}

fn run(args: Args) -> anyhow::Result<()> {
    let config_file = args.config.clone();
    let config = load_config(args)?;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .map_err(|e| anyhow::anyhow!("invalid --log {:?}: {e}", config.log))?;
    // The filter sits in a reload layer so that the admin API and SIGHUP can change it.
    let (filter, reload) = tracing_subscriber::reload::Layer::new(filter);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    let log_hook: rtc_broker::settings::LogHook = std::sync::Arc::new(move |spec: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(spec)
            .map_err(|e| format!("invalid log filter {spec:?}: {e}"))?;
        reload.reload(filter).map_err(|e| e.to_string())
    });
    raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Handlers go in before the listening line, so a supervisor that signals as soon
        // as it sees the line gets a graceful shutdown, not the default kill.
        let mut signals = Signals::install()?;
        let mut builder = Broker::builder().config(config).log_hook(log_hook);
        if let Some(path) = config_file {
            builder = builder.config_file(path);
        }
        let handle = builder.start().await?;
        announce(&handle)?;
        while signals.wait().await == Signal::Reload {
            // SIGHUP: reread the config file; a bad one changes nothing.
            match handle.reload().await {
                Ok(changed) => tracing::info!(changed = %changed.join("; "), "config reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "config reload refused; the old settings stay")
                }
            }
        }
        tracing::info!("signal received; shutting down");
        handle.shutdown().await;
        Ok(())
    })
}

/// Prints the listener lines scripts and tests wait for.
fn announce(handle: &BrokerHandle) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "listening {} {}",
        handle.tcp_scheme(),
        handle.tcp_addr()
    )?;
    if let (Some(addr), Some(fp)) = (handle.quic_addr(), handle.quic_fingerprint()) {
        writeln!(out, "listening quic {addr}")?;
        writeln!(out, "quic certificate sha256 {fp}")?;
    }
    if let (Some(scheme), Some(addr)) = (handle.http_scheme(), handle.http_addr()) {
        writeln!(out, "listening {scheme} {addr}")?;
    }
    out.flush()
}

/// SIGTERM, SIGINT and SIGHUP handlers, installed once at start.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    async fn wait(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
