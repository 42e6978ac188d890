//! Presence: who is in each room (a room is a topic), broker-wide and in memory.
//!
//! A subscription that joins a room's presence makes its connection's user a member
//! ([`Presence::join`]); the member leaves when its last joined subscription ends
//! ([`Presence::leave`]: unsubscribe, a clean close, or a dead connection found by the
//! heartbeat timeout). A user on three connections is one member counted three times.
//! Subscriptions that ask for events are the room's watchers: each change is sent to
//! them as a `PresenceEvent`, queued without waiting; a watcher whose queue is backlogged
//! misses events (it can query again) rather than growing the broker's memory.
//!
//! Large rooms: above `presence_events_max` members (the broker's, or a topic rule's) a
//! join or leave is not sent to every watcher; the room is marked, and
//! [`Presence::tick`] (every [`TICK`]) sends each marked room's count once. So a room of
//! 10 000 members costs one count event per watcher per tick, not one per join. A topic
//! rule with `presence_events = false` turns a room's events off altogether.
//!
//! A member's ephemeral state (typing, away) is a few keys with an optional time to
//! live ([`Presence::update`]): a change is an `UPDATE` event, and the tick clears keys
//! past their deadline (so a TTL ends within one [`TICK`] after it). Updates are rate
//! limited per member and room (a token bucket): a client sending one per keystroke is
//! refused `RATE_LIMITED` beyond the rate, and the others get no more events for it.
//!
//! Nothing here is stored: after a restart, rooms are empty until clients join again.
//!
//! In cluster mode a [`Roster`] (the Redis engine) carries each room's members to and
//! from the other nodes; `remote` merges theirs with this node's (see `remote.rs`), so
//! queries and events describe the whole cluster.

mod remote;

pub use remote::Roster;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rtc_proto::v1::{self, frame::Op, PresenceEventKind};
use rtc_proto::Frame;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::outbound::Outbox;
use crate::refusal::Refusal;
use crate::throttle::Throttle;

/// How often large rooms' counts go out.
pub const TICK: Duration = Duration::from_millis(500);
/// Members per page of a query when it asks for none.
const DEFAULT_PAGE: usize = 100;
/// The largest page.
const MAX_PAGE: usize = 1000;

/// Keys of state one member may have in a room.
pub const MAX_STATE_KEYS: usize = 16;
/// The longest state key.
pub const MAX_STATE_KEY: usize = 64;
/// The longest state value.
pub const MAX_STATE_VALUE: usize = 256;

/// One subscription joined to a room: its connection and sub_id.
type Seat = (u64, u64);

#[derive(Debug)]
struct Member {
    info: String,
    seats: BTreeSet<Seat>,
    /// Ephemeral state: value, and when it expires.
    state: BTreeMap<String, (String, Option<Instant>)>,
    /// Its updates' rate limit.
    throttle: Option<Throttle>,
}

#[derive(Debug, Default)]
struct Room {
    /// Changes are told one by one up to this many members, as counts above; `None`: not
    /// at all (a topic rule's `presence_events = false`).
    events: Option<usize>,
    members: BTreeMap<String, Member>,
    watchers: HashMap<Seat, Arc<Outbox>>,
    /// Joined subscriptions, for the connection count.
    seats: usize,
    /// A change not yet told as a count (above the event limit).
    count_due: bool,
    /// Other nodes' members (cluster mode, while this node has watchers here).
    remote: remote::Lists,
}

impl Room {
    fn member(user: &str, m: &Member) -> v1::PresenceMember {
        v1::PresenceMember {
            user: user.to_string(),
            info: m.info.clone(),
            connections: m.seats.len() as u32,
            state: m
                .state
                .iter()
                .map(|(k, (v, _))| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Members in the room, this node's and the other nodes' (a user once).
    fn count(&self) -> usize {
        if self.remote.is_empty() {
            return self.members.len();
        }
        let mut users: BTreeSet<&str> = self.members.keys().map(String::as_str).collect();
        for list in self.remote.values() {
            users.extend(list.keys().map(String::as_str));
        }
        users.len()
    }

    /// `user`'s entry merged with the other nodes' (and `lists` for theirs, when given).
    fn merged(&self, user: &str, lists: &remote::Lists) -> Option<v1::PresenceMember> {
        let local = self.members.get(user).map(|m| Room::member(user, m));
        remote::merged(user, local, lists)
    }

    /// Sends `kind` about `user` (or only the count) to every watcher.
    fn tell(&self, topic: &str, kind: PresenceEventKind, member: Option<v1::PresenceMember>) {
        for (&(_, sub_id), outbox) in &self.watchers {
            if outbox.is_backlogged() {
                continue;
            }
            let event = v1::PresenceEvent {
                sub_id,
                topic: topic.to_string(),
                kind: kind as i32,
                member: member.clone(),
                members: self.count() as u64,
            };
            let _ = outbox.push_frame_now(Frame::from_op(Op::PresenceEvent(event)));
        }
    }
}

/// Every room.
#[derive(Debug)]
pub struct Presence {
    rooms: Mutex<HashMap<String, Room>>,
    /// Above this many members, joins and leaves are told as counts, once per tick.
    events_max: usize,
    /// The topic rules, for the rooms that set their own events.
    rules: Vec<crate::topic::TopicRule>,
    /// State updates per second per member and room (0: no limit).
    update_rate: u32,
    /// The other nodes, in cluster mode.
    roster: OnceLock<Arc<dyn Roster>>,
}

impl Presence {
    /// Rooms whose joins and leaves are sent one by one up to `events_max` members
    /// (unless the first of `rules` matching a room says otherwise), and whose members
    /// may update their state `update_rate` times a second.
    pub fn new(events_max: usize, update_rate: u32, rules: &[crate::topic::TopicRule]) -> Presence {
        Presence {
            rooms: Mutex::default(),
            events_max,
            rules: rules.to_vec(),
            update_rate,
            roster: OnceLock::new(),
        }
    }

    /// Shares the rooms with the other nodes of a cluster through `roster`.
    pub fn set_roster(&self, roster: Arc<dyn Roster>) {
        let _ = self.roster.set(roster);
    }

    /// How a new room `topic` tells its changes (see [`Room::events`]).
    fn events_of(&self, topic: &str) -> Option<usize> {
        match self
            .rules
            .iter()
            .find(|r| rtc_proto::topic::pattern_matches(&r.pattern, topic))
        {
            Some(rule) => rule.presence_events(self.events_max),
            None => Some(self.events_max),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Room>> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins subscription `seat` as `user` with `info`; with `watcher`, it also gets the
    /// room's events.
    pub fn join(
        &self,
        topic: &str,
        user: &str,
        seat: Seat,
        info: String,
        watcher: Option<Arc<Outbox>>,
    ) {
        let mut rooms = self.lock();
        let room = rooms.entry(topic.to_string()).or_insert_with(|| Room {
            events: self.events_of(topic),
            ..Room::default()
        });
        if let Some(outbox) = watcher {
            if room.watchers.is_empty() {
                if let Some(roster) = self.roster.get() {
                    roster.follow(topic);
                }
            }
            room.watchers.insert(seat, outbox);
        }
        room.seats += 1;
        let (kind, member) = match room.members.get_mut(user) {
            Some(m) => {
                m.seats.insert(seat);
                m.info = info;
                (PresenceEventKind::Update, Room::member(user, m))
            }
            None => {
                let m = Member {
                    info,
                    seats: BTreeSet::from([seat]),
                    state: BTreeMap::new(),
                    // A burst of twice the rate: a quick "typing" then "stopped" passes.
                    throttle: Throttle::new(self.update_rate, self.update_rate.saturating_mul(2)),
                };
                let member = Room::member(user, &m);
                room.members.insert(user.to_string(), m);
                (PresenceEventKind::Join, member)
            }
        };
        self.changed(topic, room, kind, member);
    }

    /// Subscription `seat` of `user` leaves `topic`.
    pub fn leave(&self, topic: &str, user: &str, seat: Seat) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(topic) else {
            return;
        };
        if room.watchers.remove(&seat).is_some() && room.watchers.is_empty() {
            room.remote.clear();
            if let Some(roster) = self.roster.get() {
                roster.unfollow(topic);
            }
        }
        let Some(m) = room.members.get_mut(user) else {
            return;
        };
        if !m.seats.remove(&seat) {
            return;
        }
        room.seats -= 1;
        let (kind, member) = if m.seats.is_empty() {
            let member = Room::member(user, m);
            room.members.remove(user);
            (PresenceEventKind::Leave, member)
        } else {
            (PresenceEventKind::Update, Room::member(user, m))
        };
        self.changed(topic, room, kind, member);
        if room.members.is_empty() && room.watchers.is_empty() {
            rooms.remove(topic);
        }
    }

    /// Sets (or with an empty `value`, clears) `key` of `user`'s state in `topic` for
    /// `ttl` (`None`: until changed), if `seat` has joined the room.
    pub fn update(
        &self,
        topic: &str,
        user: &str,
        seat: Seat,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), Refusal> {
        if key.is_empty() || key.len() > MAX_STATE_KEY || value.len() > MAX_STATE_VALUE {
            return Err(Refusal::InvalidRequest(format!(
                "a state key is 1 to {MAX_STATE_KEY} bytes and a value at most {MAX_STATE_VALUE}"
            )));
        }
        let mut rooms = self.lock();
        let not_joined = || {
            Refusal::NotFound(format!(
                "this connection has not joined the presence of {topic:?}"
            ))
        };
        let room = rooms.get_mut(topic).ok_or_else(not_joined)?;
        let m = room.members.get_mut(user).ok_or_else(not_joined)?;
        if !m.seats.contains(&seat) {
            return Err(not_joined());
        }
        if !m.state.contains_key(key) && !value.is_empty() && m.state.len() >= MAX_STATE_KEYS {
            return Err(Refusal::LimitExceeded(format!(
                "a member has at most {MAX_STATE_KEYS} state keys"
            )));
        }
        if let Some(Err(wait)) = m.throttle.as_mut().map(Throttle::try_take) {
            return Err(Refusal::RateLimited(format!(
                "at most {} presence updates per second; retry in {} ms",
                self.update_rate,
                wait.as_millis().max(1)
            )));
        }
        let changed = if value.is_empty() {
            m.state.remove(key).is_some()
        } else {
            let deadline = ttl.map(|t| Instant::now() + t);
            let old = m
                .state
                .insert(key.to_string(), (value.to_string(), deadline));
            old.is_none_or(|(v, _)| v != value)
        };
        if changed {
            let member = Room::member(user, m);
            self.changed(topic, room, PresenceEventKind::Update, member);
        }
        Ok(())
    }

    /// A change of this node's member: told to the watchers (as the merged entry: a
    /// join or leave of a user still on another node is an update), and to the other
    /// nodes.
    fn changed(
        &self,
        topic: &str,
        room: &mut Room,
        kind: PresenceEventKind,
        member: v1::PresenceMember,
    ) {
        let (kind, member) = match room.merged(&member.user, &room.remote) {
            Some(m) if room.remote.values().any(|l| l.contains_key(&member.user)) => {
                (PresenceEventKind::Update, m)
            }
            Some(m) => (kind, m),
            None => (kind, member),
        };
        self.tell_change(topic, room, kind, member);
        if let Some(roster) = self.roster.get() {
            let mine = room
                .members
                .iter()
                .map(|(u, m)| Room::member(u, m))
                .collect();
            roster.publish(topic, mine);
        }
    }

    /// Tells the watchers of a change: at once in a small room, by count later in a
    /// large one.
    fn tell_change(
        &self,
        topic: &str,
        room: &mut Room,
        kind: PresenceEventKind,
        member: v1::PresenceMember,
    ) {
        match room.events {
            None => {}
            Some(max) if room.count() > max => room.count_due = true,
            Some(_) => room.tell(topic, kind, Some(member)),
        }
    }

    /// Node `node`'s members of `topic` are now `members` (cluster mode): the watchers
    /// here are told what that changes in the merged view. Kept only while the room
    /// has watchers here.
    pub fn remote(&self, topic: &str, node: &str, members: Vec<v1::PresenceMember>) {
        let mut rooms = self.lock();
        let Some(room) = rooms.get_mut(topic).filter(|r| !r.watchers.is_empty()) else {
            return;
        };
        let new = remote::by_user(members);
        let old = room.remote.remove(node).unwrap_or_default();
        let users: BTreeSet<String> = old.keys().chain(new.keys()).cloned().collect();
        // Each user before and after, from the other lists and this node's.
        let mut changes = Vec::new();
        for user in users {
            let base = room.merged(&user, &room.remote);
            let with = |list: &BTreeMap<String, v1::PresenceMember>| {
                let mut m = base.clone();
                if let Some(theirs) = list.get(&user) {
                    match &mut m {
                        Some(m) => remote::merge(m, theirs),
                        None => m = Some(theirs.clone()),
                    }
                }
                m
            };
            changes.push((with(&old), with(&new)));
        }
        if !new.is_empty() {
            room.remote.insert(node.to_string(), new);
        }
        for (before, after) in changes {
            let (kind, member) = match (before, after) {
                (None, Some(a)) => (PresenceEventKind::Join, a),
                (Some(b), None) => (PresenceEventKind::Leave, b),
                (Some(b), Some(a)) if a != b => (PresenceEventKind::Update, a),
                _ => continue,
            };
            self.tell_change(topic, room, kind, member);
        }
    }

    /// A page of `topic`'s members, the whole cluster's: for a room this node does not
    /// follow, the other nodes' lists are read first.
    pub async fn query_now(&self, request: &v1::PresenceRequest) -> v1::PresenceInfo {
        let followed = self
            .lock()
            .get(&request.topic)
            .is_some_and(|r| !r.watchers.is_empty());
        match self.roster.get() {
            Some(roster) if !followed => {
                let lists = roster.fetch(&request.topic).await;
                let lists = lists
                    .into_iter()
                    .map(|(node, members)| (node, remote::by_user(members)))
                    .collect();
                self.query_with(request, Some(&lists))
            }
            _ => self.query(request),
        }
    }

    /// A page of `topic`'s members (all of `request` but its `req_id` is used), with
    /// the other nodes' lists this node follows.
    pub fn query(&self, request: &v1::PresenceRequest) -> v1::PresenceInfo {
        self.query_with(request, None)
    }

    /// [`Presence::query`], with `lists` for the other nodes' members when given.
    fn query_with(
        &self,
        request: &v1::PresenceRequest,
        lists: Option<&remote::Lists>,
    ) -> v1::PresenceInfo {
        let v1::PresenceRequest {
            req_id,
            topic,
            count_only,
            after,
            limit,
        } = request;
        let rooms = self.lock();
        let mut info = v1::PresenceInfo {
            req_id: *req_id,
            topic: topic.clone(),
            ..Default::default()
        };
        let empty = Room::default();
        let room = rooms.get(topic).unwrap_or(&empty);
        let lists = lists.unwrap_or(&room.remote);
        // The merged view, by user (only built when other nodes have members here).
        let merged: BTreeMap<String, v1::PresenceMember> = if lists.is_empty() {
            BTreeMap::new()
        } else {
            let mut users: BTreeSet<&String> = room.members.keys().collect();
            lists.values().for_each(|l| users.extend(l.keys()));
            users
                .into_iter()
                .filter_map(|u| Some((u.clone(), room.merged(u, lists)?)))
                .collect()
        };
        if lists.is_empty() {
            info.members = room.members.len() as u64;
            info.connections = room.seats as u64;
        } else {
            info.members = merged.len() as u64;
            info.connections = merged.values().map(|m| u64::from(m.connections)).sum();
        }
        if *count_only {
            return info;
        }
        let limit = match *limit as usize {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let start = if after.is_empty() {
            std::ops::Bound::Unbounded
        } else {
            std::ops::Bound::Excluded(after.as_str())
        };
        if !lists.is_empty() {
            let mut page = merged
                .range::<str, _>((start, std::ops::Bound::Unbounded))
                .take(limit + 1);
            info.list = page.by_ref().take(limit).map(|(_, m)| m.clone()).collect();
            if page.next().is_some() {
                info.next = info.list.last().map(|m| m.user.clone()).unwrap_or_default();
            }
            return info;
        }
        let mut page = room
            .members
            .range::<str, _>((start, std::ops::Bound::Unbounded))
            .take(limit + 1);
        info.list = page
            .by_ref()
            .take(limit)
            .map(|(user, m)| Room::member(user, m))
            .collect();
        if page.next().is_some() {
            info.next = info.list.last().map(|m| m.user.clone()).unwrap_or_default();
        }
        info
    }

    /// Clears state past its time to live at `now`, and sends the counts of the large
    /// rooms that changed since the last tick.
    pub fn tick(&self, now: Instant) {
        let mut rooms = self.lock();
        for (topic, room) in rooms.iter_mut() {
            let mut expired = Vec::new();
            for (user, m) in room.members.iter_mut() {
                let before = m.state.len();
                m.state
                    .retain(|_, (_, deadline)| deadline.is_none_or(|d| d > now));
                if m.state.len() != before {
                    expired.push(Room::member(user, m));
                }
            }
            for member in expired {
                self.changed(topic, room, PresenceEventKind::Update, member);
            }
            if std::mem::take(&mut room.count_due) {
                room.tell(topic, PresenceEventKind::Count, None);
            }
        }
    }

    /// Ticks until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                now = ticks.tick() => self.tick(now),
            }
        }
    }

    /// Rooms with anyone in them (for tests and stats).
    pub fn rooms(&self) -> HashSet<String> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests;
