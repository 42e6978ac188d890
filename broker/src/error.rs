//! Errors that stop the broker from starting or from running. Errors about one request go
//! to the client as `Error` frames (see `rtc_proto::ErrorCode`), never through this type.

use std::path::PathBuf;

/// Why the broker could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for [`crate::Config`].
    #[error("invalid config file {path}: {message}")]
    ConfigParse {
        /// The file.
        path: PathBuf,
        /// What is wrong, on one line.
        message: String,
    },
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The data directory could not be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The store could not be opened (locked, corrupt, incompatible, unreadable). The
    /// message names the path.
    #[error("{0}")]
    Storage(String),
    /// Cluster mode: Redis could not be reached, or its topics not loaded.
    #[error("cluster: {0}")]
    Cluster(String),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not bind its address.
    #[error("cannot listen on {transport} {addr}: {source}")]
    Bind {
        /// `tcp`, `tls` or `quic`.
        transport: &'static str,
        /// The requested address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}
