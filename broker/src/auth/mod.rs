//! Authentication and per-topic permissions.
//!
//! With no `[[user]]` in the config the broker is open: every connection may publish and
//! subscribe anywhere. With users configured, `Hello.auth_token` must be the token of one
//! of them — the config holds only its SHA-256 (`rtc-broker hash-token TOKEN` prints it),
//! never the token itself — and the connection then acts as that user: it may publish
//! (and create topics) where one of the user's `publish` patterns matches, and subscribe
//! (plainly or as a durable consumer) where one of its `subscribe` patterns covers the
//! whole requested pattern (see [`rtc_proto::topic::pattern_covers`]).
//!
//! With `[jwt]` configured, a JSON Web Token minted by the application's backend is a
//! token too: its `sub` names the connection and its `publish` / `subscribe` claims are
//! its patterns (see [`jwt`]). A broker with a `[jwt]` section is not open, users or not.
//! A token may expire: the session closes the connection then, unless it sent a fresh
//! one first (`AuthRefresh`).

pub mod jwt;

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
    /// May use the admin API and the operations that delete (topic and consumer
    /// deletion, purge, disconnecting others).
    #[serde(default)]
    pub admin: bool,
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
    /// The broker has no users and no `[jwt]`: everything is allowed.
    Open,
    /// A configured user.
    User(Arc<UserConfig>),
    /// The holder of a JWT.
    Token(Arc<jwt::Claims>),
}

impl Identity {
    /// The user's name (a JWT's `sub`), or `-` on an open broker.
    pub fn name(&self) -> &str {
        self.user_id().unwrap_or("-")
    }

    /// The patterns it may publish to and subscribe to; `None` when open.
    fn patterns(&self) -> Option<(&[String], &[String])> {
        match self {
            Identity::Open => None,
            Identity::User(u) => Some((&u.publish, &u.subscribe)),
            Identity::Token(c) => Some((&c.publish, &c.subscribe)),
        }
    }

    /// May this connection publish to (or create) `topic`?
    pub fn can_publish(&self, topic: &str) -> bool {
        self.patterns()
            .is_none_or(|(publish, _)| publish.iter().any(|p| pattern_matches(p, topic)))
    }

    /// The authenticated user's name (a user's, or a JWT's `sub`); `None` when open.
    pub fn user_id(&self) -> Option<&str> {
        match self {
            Identity::Open => None,
            Identity::User(u) => Some(&u.name),
            Identity::Token(c) => Some(&c.sub),
        }
    }

    /// May this connection subscribe to `pattern` (everything it can match)? A user's
    /// inbox (`$user.<id>`, see `rtc_proto::topic::inbox_owner`) only to the connections
    /// authenticated as `<id>`, whatever the subscribe permissions say.
    pub fn can_subscribe(&self, pattern: &str) -> bool {
        if let Some(owner) = rtc_proto::topic::inbox_owner(pattern) {
            // A wildcard there would be every user's inbox: nobody's.
            return !owner.contains(['*', '>']) && self.user_id() == Some(owner);
        }
        self.patterns()
            .is_none_or(|(_, subscribe)| subscribe.iter().any(|p| pattern_covers(p, pattern)))
    }

    /// When its token expires (ms since the epoch); `None` for never.
    /// Whether it may administer the broker: a user or token with `admin`, or anyone on
    /// a broker without users or JWT (which is open for everything).
    pub fn is_admin(&self) -> bool {
        match self {
            Identity::Open => true,
            Identity::User(u) => u.admin,
            Identity::Token(c) => c.admin,
        }
    }

    pub fn expires_at_ms(&self) -> Option<i64> {
        match self {
            Identity::Token(c) => Some(c.exp.saturating_mul(1000)),
            _ => None,
        }
    }
}

/// The configured users, by token hash, and the JWT verifier.
#[derive(Debug, Default)]
pub struct Auth {
    by_hash: HashMap<String, Arc<UserConfig>>,
    jwt: Option<jwt::Verifier>,
}

impl Auth {
    /// From the config's users (already validated), without JWTs.
    pub fn new(users: &[UserConfig]) -> Self {
        Auth {
            by_hash: users
                .iter()
                .map(|u| (u.token_hash.to_ascii_lowercase(), Arc::new(u.clone())))
                .collect(),
            jwt: None,
        }
    }

    /// From the config's users and its `[jwt]` section; an error names what is wrong
    /// with the section.
    pub fn with_jwt(users: &[UserConfig], jwt: Option<&jwt::JwtConfig>) -> Result<Self, String> {
        let mut auth = Auth::new(users);
        auth.jwt = jwt.map(jwt::Verifier::new).transpose()?;
        Ok(auth)
    }

    /// The identity `token` grants, or why it grants none on a broker that requires a
    /// valid token.
    pub fn authenticate(&self, token: &str) -> Result<Identity, String> {
        if self.by_hash.is_empty() && self.jwt.is_none() {
            return Ok(Identity::Open);
        }
        if token.is_empty() {
            return Err("this broker requires a token".into());
        }
        if let Some(user) = self.by_hash.get(&hash_token(token)) {
            return Ok(Identity::User(user.clone()));
        }
        match &self.jwt {
            Some(verifier) if jwt::looks_like_jwt(token) => verifier
                .verify(token)
                .map(|claims| Identity::Token(Arc::new(claims))),
            _ => Err("the token is not valid".into()),
        }
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
            admin: false,
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
        assert!(auth.authenticate("wrong").is_err());
        assert!(auth.authenticate("").is_err());
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
