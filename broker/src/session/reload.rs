//! Changing settings while the broker runs: a whole new config ([`Shared::reload`]:
//! SIGHUP, or `POST /v1/admin/reload`, which reread the config file) and single changes
//! ([`Shared::change`]: `PATCH /v1/admin/settings`).
//!
//! What can change: the users and the JWT settings (new connections and token refreshes
//! use them; connections already open keep the identity they have), the topic rules
//! (topics not created explicitly take their new settings, as on a restart), the limits
//! and rate limits of [`Limits`] (checked from the next request on; a connection's
//! publish rate is set when it opens), and the log filter. Everything else (listeners,
//! data directory, fsync, queue sizes, …) is read once at start; a reload leaves it as
//! it is. A new config is checked whole before anything changes: a file that does not
//! parse, does not validate, or names a bad user, JWT key, limit or log filter is
//! refused, and the old settings stay.

use serde::Deserialize;

use super::Shared;
use crate::auth::Auth;
use crate::config::Config;
use crate::refusal::Refusal;
use crate::settings::Limits;
use crate::topic::TopicRules;

/// A change to the run-time settings (`PATCH /v1/admin/settings`): the fields given.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    pub max_payload: Option<usize>,
    pub max_msg_id: Option<usize>,
    pub publish_rate: Option<u32>,
    pub publish_burst: Option<u32>,
    pub max_subscriptions_per_connection: Option<usize>,
    pub max_requests_per_connection: Option<usize>,
    pub log: Option<String>,
}

impl Shared {
    /// Applies what can change of `new` (see the module docs), or refuses it whole.
    /// Returns what changed, for people.
    pub async fn reload(&self, new: Config) -> Result<Vec<String>, Refusal> {
        let bad = |e: String| Refusal::InvalidRequest(format!("config refused: {e}"));
        new.validate().map_err(|e| bad(e.to_string()))?;
        let auth = Auth::with_jwt(&new.user, new.jwt.as_ref()).map_err(bad)?;
        let limits = Limits::of(&new);
        limits.check(self.config.max_frame_size).map_err(bad)?;
        let mut changed = Vec::new();
        if new.log != self.live.log() && self.live.can_set_log() {
            // First: the one check only the hook can make.
            self.live.set_log(&new.log).map_err(bad)?;
            changed.push(format!("log = {:?}", new.log));
        }
        let topics = self
            .log
            .set_topic_rules(TopicRules::new(&new.topic))
            .await?;
        changed.push(format!(
            "{} topic rule(s); {topics} topic(s) took new settings",
            new.topic.len()
        ));
        self.live.set_auth(auth);
        changed.push(format!(
            "{} user(s), JWT {}",
            new.user.len(),
            if new.jwt.is_some() { "on" } else { "off" }
        ));
        if limits != self.live.limits() {
            self.live.set_limits(limits);
            changed.push(format!("limits {limits:?}"));
        }
        self.live.set_current(&new);
        self.events
            .record("reload", format!("config reloaded: {}", changed.join("; ")));
        Ok(changed)
    }

    /// Rereads the config file and applies it ([`Shared::reload`]); `NOT_FOUND` when the
    /// broker was not started from a file.
    pub async fn reload_file(&self) -> Result<Vec<String>, Refusal> {
        let Some(path) = self.live.file() else {
            return Err(Refusal::NotFound(
                "this broker was started without a config file: nothing to reread".into(),
            ));
        };
        let result = match Config::from_toml_file(path) {
            Ok(new) => self.reload(new).await,
            Err(e) => Err(Refusal::InvalidRequest(format!("config refused: {e}"))),
        };
        if let Err(why) = &result {
            self.events.record(
                "reload_refused",
                format!("{}: {why}; the old settings stay", path.display()),
            );
        }
        result
    }

    /// Applies `change`, or refuses it whole; the limits in force after.
    pub fn change(&self, change: SettingsChange) -> Result<Limits, Refusal> {
        let SettingsChange {
            max_payload,
            max_msg_id,
            publish_rate,
            publish_burst,
            max_subscriptions_per_connection,
            max_requests_per_connection,
            log,
        } = change;
        let mut l = self.live.limits();
        l.max_payload = max_payload.unwrap_or(l.max_payload);
        l.max_msg_id = max_msg_id.unwrap_or(l.max_msg_id);
        l.publish_rate = publish_rate.unwrap_or(l.publish_rate);
        l.publish_burst = publish_burst.unwrap_or(l.publish_burst);
        l.max_subscriptions_per_connection =
            max_subscriptions_per_connection.unwrap_or(l.max_subscriptions_per_connection);
        l.max_requests_per_connection =
            max_requests_per_connection.unwrap_or(l.max_requests_per_connection);
        l.check(self.config.max_frame_size)
            .map_err(Refusal::InvalidRequest)?;
        if let Some(filter) = &log {
            self.live.set_log(filter).map_err(Refusal::InvalidRequest)?;
        }
        self.live.set_limits(l);
        let current = self.live.current();
        self.live.set_current(&current);
        self.events.record(
            "settings",
            format!(
                "settings changed: {l:?}{}",
                log.map(|f| format!(", log {f:?}")).unwrap_or_default()
            ),
        );
        Ok(l)
    }
}
