//! The settings that change while the broker runs ([`Live`]): the limits and rate limits
//! (atomics, read on the hot path at the cost of a load), the users and JWT verifier
//! ([`Auth`], swapped whole), and the log level (through a hook the binary installs).
//! Everything else in [`Config`] is fixed at start. `Shared::reload` and
//! `Shared::change` (`session/reload.rs`) are the only writers: SIGHUP, the admin API.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::auth::Auth;
use crate::config::Config;

/// Changes the process's log filter (e.g. `"info,rtc_broker=debug"`); installed by the
/// binary, which owns the subscriber.
pub type LogHook = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The run-time adjustable limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_payload: usize,
    pub max_msg_id: usize,
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub max_subscriptions_per_connection: usize,
    pub max_requests_per_connection: usize,
}

impl Limits {
    /// The limits `config` sets.
    pub fn of(config: &Config) -> Limits {
        Limits {
            max_payload: config.max_payload,
            max_msg_id: config.max_msg_id,
            publish_rate: config.publish_rate,
            publish_burst: config.publish_burst,
            max_subscriptions_per_connection: config.max_subscriptions_per_connection,
            max_requests_per_connection: config.max_requests_per_connection,
        }
    }

    /// Why these limits cannot be used, if they cannot (`max_frame_size` is fixed).
    pub fn check(&self, max_frame_size: usize) -> Result<(), String> {
        if self.max_payload == 0 || self.max_payload >= max_frame_size {
            return Err(format!(
                "max_payload must be between 1 and max_frame_size ({max_frame_size}) - 1"
            ));
        }
        if self.max_msg_id == 0 {
            return Err("max_msg_id must be at least 1".into());
        }
        if self.publish_rate > 0 && self.publish_burst == 0 {
            return Err("publish_burst must be at least 1 with a publish_rate".into());
        }
        if self.max_subscriptions_per_connection == 0 || self.max_requests_per_connection == 0 {
            return Err("the per-connection limits must be at least 1".into());
        }
        Ok(())
    }
}

/// See the module docs.
pub struct Live {
    max_payload: AtomicUsize,
    max_msg_id: AtomicUsize,
    publish_rate: AtomicU32,
    publish_burst: AtomicU32,
    max_subscriptions: AtomicUsize,
    max_requests: AtomicUsize,
    auth: RwLock<Arc<Auth>>,
    log: Mutex<String>,
    log_hook: Option<LogHook>,
    /// The config as in force: the one the broker started with, its run-time adjustable
    /// parts as last changed.
    current: RwLock<Arc<Config>>,
    /// The file the config is reread from, if it came from one.
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("limits", &self.limits())
            .field("log", &self.log())
            .finish()
    }
}

impl Live {
    /// The settings `config` starts with.
    pub fn new(
        config: &Config,
        auth: Auth,
        log_hook: Option<LogHook>,
        file: Option<PathBuf>,
    ) -> Live {
        let l = Limits::of(config);
        Live {
            max_payload: AtomicUsize::new(l.max_payload),
            max_msg_id: AtomicUsize::new(l.max_msg_id),
            publish_rate: AtomicU32::new(l.publish_rate),
            publish_burst: AtomicU32::new(l.publish_burst),
            max_subscriptions: AtomicUsize::new(l.max_subscriptions_per_connection),
            max_requests: AtomicUsize::new(l.max_requests_per_connection),
            auth: RwLock::new(Arc::new(auth)),
            log: Mutex::new(config.log.clone()),
            log_hook,
            current: RwLock::new(Arc::new(config.clone())),
            file,
        }
    }

    /// The config file, if the broker was started from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The config in force (see [`Live::set_current`]).
    pub fn current(&self) -> Arc<Config> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the run-time adjustable parts of `new` as in force (the rest stays as the
    /// broker started).
    pub fn set_current(&self, new: &Config) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut c = Config::clone(&current);
        c.user = new.user.clone();
        c.jwt = new.jwt.clone();
        c.topic = new.topic.clone();
        c.log = self.log();
        let l = self.limits();
        c.max_payload = l.max_payload;
        c.max_msg_id = l.max_msg_id;
        c.publish_rate = l.publish_rate;
        c.publish_burst = l.publish_burst;
        c.max_subscriptions_per_connection = l.max_subscriptions_per_connection;
        c.max_requests_per_connection = l.max_requests_per_connection;
        *current = Arc::new(c);
    }

    pub fn max_payload(&self) -> usize {
        self.max_payload.load(Ordering::Relaxed)
    }

    pub fn max_msg_id(&self) -> usize {
        self.max_msg_id.load(Ordering::Relaxed)
    }

    /// Publishes per second per connection (0: no limit) and the burst.
    pub fn publish_rate(&self) -> (u32, u32) {
        (
            self.publish_rate.load(Ordering::Relaxed),
            self.publish_burst.load(Ordering::Relaxed),
        )
    }

    pub fn max_subscriptions(&self) -> usize {
        self.max_subscriptions.load(Ordering::Relaxed)
    }

    pub fn max_requests(&self) -> usize {
        self.max_requests.load(Ordering::Relaxed)
    }

    /// All the limits now.
    pub fn limits(&self) -> Limits {
        let (publish_rate, publish_burst) = self.publish_rate();
        Limits {
            max_payload: self.max_payload(),
            max_msg_id: self.max_msg_id(),
            publish_rate,
            publish_burst,
            max_subscriptions_per_connection: self.max_subscriptions(),
            max_requests_per_connection: self.max_requests(),
        }
    }

    /// Sets the limits (checked by the caller).
    pub fn set_limits(&self, l: Limits) {
        self.max_payload.store(l.max_payload, Ordering::Relaxed);
        self.max_msg_id.store(l.max_msg_id, Ordering::Relaxed);
        self.publish_rate.store(l.publish_rate, Ordering::Relaxed);
        self.publish_burst.store(l.publish_burst, Ordering::Relaxed);
        self.max_subscriptions
            .store(l.max_subscriptions_per_connection, Ordering::Relaxed);
        self.max_requests
            .store(l.max_requests_per_connection, Ordering::Relaxed);
    }

    /// The users and tokens now: a connection's handshake uses the ones in force then.
    pub fn auth(&self) -> Arc<Auth> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
    }

    /// The log filter in force.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether the log filter can be changed (the binary installed its hook).
    pub fn can_set_log(&self) -> bool {
        self.log_hook.is_some()
    }

    /// Changes the log filter.
    pub fn set_log(&self, filter: &str) -> Result<(), String> {
        let Some(hook) = &self.log_hook else {
            return Err("this broker was started without a changeable log filter".into());
        };
        hook(filter)?;
        *self.log.lock().unwrap_or_else(|p| p.into_inner()) = filter.to_string();
        Ok(())
    }
}
