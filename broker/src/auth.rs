//! Authentication and per-topic permissions.
//!
//! With no `[[user]]` in the config the broker is open: every connection may publish and
//! subscribe anywhere. With users configured, `Hello.auth_token` must be the token of one
//! of them — the config holds only its SHA-256 (`rtc-broker hash-token TOKEN` prints it),
//! never the token itself — and the connection then acts as that user: it may publish
//! (and create topics) where one of the user's `publish` patterns matches, and subscribe
//! (plainly or as a durable consumer) where one of its `subscribe` patterns covers the
//! whole requested pattern (see [`rtc_proto::topic::pattern_covers`]).

use std::collections::HashMap;
use std::sync::Arc;

use rtc_proto::topic::{pattern_covers, pattern_matches, validate_pattern};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// A `[[user]]` entry of the config file.
///
/// ```toml
/// [[user]]
/// name = "billing"
/// token_hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
/// publish = ["orders.>"]
/// subscribe = ["orders.>", "$dlq.orders.>"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Name, for logs.
    pub name: String,
    /// `sha256:` followed by the hex SHA-256 of the user's token.
    pub token_hash: String,
    /// Topic patterns the user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic patterns the user may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// The stored form of `token`: `sha256:<hex>`.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl UserConfig {
    /// Checks the hash format and the patterns.
    pub fn validate(&self) -> Result<(), String> {
        let hex = self.token_hash.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "user {:?}: token_hash must be \"sha256:\" and 64 hex digits (rtc-broker hash-token TOKEN prints it)",
                self.name
            ));
        }
        for p in self.publish.iter().chain(&self.subscribe) {
            validate_pattern(p).map_err(|e| format!("user {:?}: pattern {p:?}: {e}", self.name))?;
        }
        Ok(())
    }
}

/// Who a connection acts as.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The broker has no users: everything is allowed.
    Open,
    /// An authenticated user.
    User(Arc<UserConfig>),
}

impl Identity {
    /// The user's name, or `-` on an open broker.
    pub fn name(&self) -> &str {
        match self {
            Identity::Open => "-",
            Identity::User(u) => &u.name,
        }
    }

    /// May this connection publish to (or create) `topic`?
    pub fn can_publish(&self, topic: &str) -> bool {
        match self {
            Identity::Open => true,
            Identity::User(u) => u.publish.iter().any(|p| pattern_matches(p, topic)),
        }
    }

    /// May this connection subscribe to `pattern` (everything it can match)?
    pub fn can_subscribe(&self, pattern: &str) -> bool {
        match self {
            Identity::Open => true,
            Identity::User(u) => u.subscribe.iter().any(|p| pattern_covers(p, pattern)),
        }
    }
}

/// The configured users, by token hash.
#[derive(Debug, Default)]
pub struct Auth {
    by_hash: HashMap<String, Arc<UserConfig>>,
}

impl Auth {
    /// From the config's users (already validated).
    pub fn new(users: &[UserConfig]) -> Self {
        Auth {
            by_hash: users
                .iter()
                .map(|u| (u.token_hash.to_ascii_lowercase(), Arc::new(u.clone())))
                .collect(),
        }
    }

    /// The identity `token` grants, or `None` if the broker requires a valid token and
    /// this is not one.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        if self.by_hash.is_empty() {
            return Some(Identity::Open);
        }
        self.by_hash
            .get(&hash_token(token))
            .cloned()
            .map(Identity::User)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserConfig {
        UserConfig {
            name: "billing".into(),
            token_hash: hash_token("s3cret"),
            publish: vec!["orders.>".into()],
            subscribe: vec!["orders.*".into(), "$dlq.orders.>".into()],
        }
    }

    #[test]
    fn hashing_is_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        user().validate().unwrap();
        let mut bad = user();
        bad.token_hash = "s3cret".into();
        assert!(bad.validate().unwrap_err().contains("hash-token"));
    }

    #[test]
    fn tokens_and_permissions() {
        let auth = Auth::new(&[user()]);
        assert!(auth.authenticate("wrong").is_none());
        assert!(auth.authenticate("").is_none());
        let id = auth.authenticate("s3cret").unwrap();
        assert_eq!(id.name(), "billing");
        assert!(id.can_publish("orders.eu.created"));
        assert!(!id.can_publish("payments.x"));
        assert!(id.can_subscribe("orders.eu"));
        assert!(id.can_subscribe("orders.*"));
        assert!(!id.can_subscribe("orders.>"), "wider than allowed");
        assert!(id.can_subscribe("$dlq.orders.eu.billing"));
        let open = Auth::new(&[]).authenticate("anything").unwrap();
        assert!(open.can_publish("x") && open.can_subscribe(">"));
    }
}
