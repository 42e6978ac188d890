//! [`LocalEngine`]: the local log engine as the layers above see it, through the engine
//! seam ([`Log`], [`Appender`]). Appends and topic changes go to the storage thread as
//! [`Request`]s (or, for a lone publish while the thread is idle, are processed on the
//! caller's thread; see `writer/shared.rs`); reads run on blocking threads that the
//! engine tracks, so that [`Log::shutdown`] can wait for them before the store closes;
//! topic metadata is answered from the [`Catalog`] the writer keeps current.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use rtc_proto::v1::TopicSettings;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use super::catalog::Catalog;
use super::writer::{self, first_at_or_after, Reply, Request, SharedWriter, WriterConfig};
use super::Storage;

use crate::engine::{
    Append, Appender, CommitSink, ConsumerRecord, Log, LogEntry, Stopped, StoreError,
    StoredConsumer, TopicView,
};
use crate::refusal::Refusal;
use crate::topic::TopicRules;

/// The local engine: sled under one storage thread. `O` is the origin delivery gives
/// each append (see [`crate::engine::Append`]).
pub struct LocalEngine<O> {
    tx: crossbeam_channel::Sender<Request<O>>,
    /// The writer, for inline appends, and the count of requests sent.
    shared: Arc<SharedWriter<O>>,
    catalog: Arc<Catalog>,
    storage: Arc<dyn Storage>,
    /// Blocking reads in progress.
    reads: TaskTracker,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl<O> std::fmt::Debug for LocalEngine<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalEngine")
            .field("storage", &self.storage)
            .field("shared", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<O: Send + 'static> LocalEngine<O> {
    /// Loads `storage` (topics, stats, dedup windows) and starts the storage thread,
    /// which reports what it commits to `sink`.
    pub fn open(
        storage: Arc<dyn Storage>,
        sink: Arc<dyn CommitSink<O>>,
        rules: TopicRules,
        config: WriterConfig,
    ) -> Result<Self, StoreError> {
        let catalog = Arc::new(Catalog::new(rules));
        let started = writer::start(storage.clone(), sink, catalog.clone(), config)?;
        Ok(LocalEngine {
            tx: started.tx,
            shared: started.shared,
            catalog,
            storage,
            reads: TaskTracker::new(),
            thread: Mutex::new(Some(started.thread)),
        })
    }

    /// Stores `append` on this thread if the storage thread is idle, as a lone publish
    /// would be; whether it was.
    #[cfg(test)]
    pub(crate) fn append_inline(&self, append: Append<O>) -> bool {
        let append = append.map_origin(Reply::Origin);
        self.shared.append_inline(&self.tx, append).is_none()
    }

    /// Queues a request; fails only if the storage thread has stopped.
    fn send(&self, request: Request<O>) -> Result<(), Stopped> {
        self.shared.send(&self.tx, request)
    }

    /// Sends the request `build` makes around a reply channel, and waits for the answer.
    fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(oneshot::Sender<Result<T, Refusal>>) -> Request<O>,
    ) -> BoxFuture<'static, Result<T, Refusal>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.send(build(reply));
        async move {
            sent?;
            rx.await.unwrap_or_else(|_| Err(Stopped.into()))
        }
        .boxed()
    }

    /// Runs a read of the store on a blocking thread that shutdown waits for.
    fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&dyn Storage) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, StoreError>> {
        let storage = self.storage.clone();
        let task = self.reads.spawn_blocking(move || read(&*storage));
        async move {
            task.await
                .unwrap_or_else(|e| Err(StoreError::Engine(format!("read task failed: {e}"))))
        }
        .boxed()
    }
}

impl<O: Send + 'static> Appender<O> for LocalEngine<O> {
    fn append(&self, append: Append<O>, lone: bool) -> Result<(), Stopped> {
        let append = append.map_origin(Reply::Origin);
        // A lone publish is stored right here when the storage thread is idle; others
        // are queued for it.
        let append = if lone {
            match self.shared.append_inline(&self.tx, append) {
                None => return Ok(()),
                Some(append) => append,
            }
        } else {
            append
        };
        self.send(Request::Append(append))
    }
}

impl<O: Send + 'static> Log for LocalEngine<O> {
    fn settings(&self, name: &str) -> TopicSettings {
        self.catalog.settings(name)
    }

    fn settings_generation(&self) -> u64 {
        self.catalog.generation()
    }

    fn topic(&self, name: &str) -> Option<TopicView> {
        self.catalog.get(name)
    }

    fn topics(&self) -> Vec<(String, TopicView)> {
        self.catalog.list()
    }

    fn durable_matching(&self, pattern: &str) -> Vec<(String, TopicView)> {
        self.catalog.durable_matching(pattern)
    }

    fn create_topic(
        &self,
        name: String,
        settings: TopicSettings,
    ) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        self.ask(|reply| Request::CreateTopic {
            name,
            settings,
            reply,
        })
    }

    fn ensure_topic(&self, name: String) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        self.ask(|reply| Request::EnsureTopic { name, reply })
    }

    fn set_topic_rules(&self, rules: TopicRules) -> BoxFuture<'static, Result<usize, Refusal>> {
        self.ask(|reply| Request::SetRules { rules, reply })
    }

    fn delete_topic(&self, name: String) -> BoxFuture<'static, Result<(), Refusal>> {
        self.ask(|reply| Request::DeleteTopic { name, reply })
    }

    fn purge_topic(
        &self,
        name: String,
        keep: u64,
    ) -> BoxFuture<'static, Result<TopicView, Refusal>> {
        self.ask(|reply| Request::PurgeTopic { name, keep, reply })
    }

    fn delete_consumer(
        &self,
        topic: String,
        name: String,
    ) -> BoxFuture<'static, Result<(), Refusal>> {
        self.ask(|reply| Request::DeleteConsumer { topic, name, reply })
    }

    fn append_internal(
        &self,
        topic: String,
        payload: Bytes,
        headers: BTreeMap<String, String>,
    ) -> BoxFuture<'static, Result<u64, Refusal>> {
        self.ask(|reply| {
            Request::Append(Append {
                topic,
                payload,
                headers,
                msg_id: String::new(),
                origin: Reply::Internal(reply),
            })
        })
    }

    fn read(
        &self,
        topic: &str,
        from: u64,
        max_msgs: usize,
        max_bytes: usize,
    ) -> BoxFuture<'static, Result<Vec<LogEntry>, StoreError>> {
        let Some((id, view)) = self.catalog.durable(topic) else {
            return futures_util::future::ready(Ok(Vec::new())).boxed();
        };
        // Only what the writer has committed: a pass refused after its write (its flush
        // failed) may have left messages in the store until it is reopened.
        let last = view.stats.last_seq;
        self.blocking(move |storage| {
            let mut entries = storage.read(id, from, max_msgs, max_bytes)?;
            let committed = entries.partition_point(|e| e.seq <= last);
            entries.truncate(committed);
            Ok(entries)
        })
    }

    fn first_at_or_after(
        &self,
        topic: &str,
        ts_ms: i64,
    ) -> BoxFuture<'static, Result<u64, StoreError>> {
        let Some((id, view)) = self.catalog.durable(topic) else {
            return futures_util::future::ready(Ok(1)).boxed();
        };
        let (lo, hi) = (view.stats.first_seq.max(1), view.stats.last_seq);
        self.blocking(move |storage| first_at_or_after(storage, id, lo, hi, ts_ms))
    }

    fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        self.catalog.watch(topic)
    }

    fn consumers(&self) -> Result<Vec<StoredConsumer>, StoreError> {
        let names = self.catalog.names_by_id();
        let mut out = Vec::new();
        for (id, name, record) in self.storage.load_consumers()? {
            match names.get(&id) {
                Some(topic) => out.push(StoredConsumer {
                    topic: topic.clone(),
                    name,
                    record,
                }),
                None => {
                    tracing::warn!(topic_id = id, consumer = %name, "consumer of an unknown topic ignored")
                }
            }
        }
        Ok(out)
    }

    fn save_consumer(
        &self,
        topic: &str,
        name: &str,
        record: ConsumerRecord,
        stored: Option<oneshot::Sender<()>>,
    ) -> Result<(), Stopped> {
        self.send(Request::SaveConsumer {
            topic: topic.to_string(),
            name: name.to_string(),
            record,
            stored,
        })
    }

    fn enforce_retention(&self) {
        // Fails only once the thread has stopped, and then there is nothing to enforce.
        let _ = self.send(Request::Enforce);
    }

    fn shutdown(&self) -> BoxFuture<'static, ()> {
        let _ = self.send(Request::Shutdown);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        let reads = self.reads.clone();
        async move {
            reads.close();
            reads.wait().await;
            if let Some(thread) = thread {
                let _ = tokio::task::spawn_blocking(move || thread.join()).await;
            }
        }
        .boxed()
    }
}
