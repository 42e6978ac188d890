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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
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
                members: self.members.len() as u64,
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
        }
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
        room.watchers.remove(&seat);
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

    /// Tells the watchers of a change: at once in a small room, by count later in a
    /// large one.
    fn changed(
        &self,
        topic: &str,
        room: &mut Room,
        kind: PresenceEventKind,
        member: v1::PresenceMember,
    ) {
        match room.events {
            None => {}
            Some(max) if room.members.len() > max => room.count_due = true,
            Some(_) => room.tell(topic, kind, Some(member)),
        }
    }

    /// A page of `topic`'s members (all of `request` but its `req_id` is used).
    pub fn query(&self, request: &v1::PresenceRequest) -> v1::PresenceInfo {
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
        let Some(room) = rooms.get(topic) else {
            return info;
        };
        info.members = room.members.len() as u64;
        info.connections = room.seats as u64;
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
mod tests {
    use super::*;

    fn query(p: &Presence, after: &str, limit: u32) -> v1::PresenceInfo {
        p.query(&v1::PresenceRequest {
            req_id: 1,
            topic: "room".into(),
            count_only: false,
            after: after.into(),
            limit,
        })
    }

    #[test]
    fn one_user_on_three_seats_is_one_member_until_the_last_leaves() {
        let p = Presence::new(100, 0, &[]);
        for seat in [(1, 1), (2, 1), (3, 7)] {
            p.join("room", "ana", seat, "{}".into(), None);
        }
        p.join("room", "bob", (4, 1), r#"{"n":1}"#.into(), None);
        let info = query(&p, "", 0);
        assert_eq!((info.members, info.connections), (2, 4));
        assert_eq!(info.list[0].connections, 3);
        p.leave("room", "ana", (1, 1));
        p.leave("room", "ana", (2, 1));
        assert_eq!(query(&p, "", 0).members, 2);
        p.leave("room", "ana", (3, 7));
        p.leave("room", "ana", (3, 7));
        let info = query(&p, "", 0);
        assert_eq!((info.members, info.connections), (1, 1));
        p.leave("room", "bob", (4, 1));
        assert!(p.rooms().is_empty(), "an empty room is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn state_expires_after_its_ttl_and_updates_are_rate_limited() {
        let p = Presence::new(100, 2, &[]);
        p.join("room", "ana", (1, 1), String::new(), None);
        let typing = |p: &Presence| query(p, "", 0).list[0].state.get("typing").cloned();
        p.update(
            "room",
            "ana",
            (1, 1),
            "typing",
            "true",
            Some(Duration::from_secs(5)),
        )
        .unwrap();
        assert_eq!(typing(&p).as_deref(), Some("true"));
        tokio::time::advance(Duration::from_secs(4)).await;
        p.tick(Instant::now());
        assert_eq!(typing(&p).as_deref(), Some("true"), "not yet");
        tokio::time::advance(Duration::from_secs(2)).await;
        p.tick(Instant::now());
        assert_eq!(typing(&p), None, "expired");
        // A burst of 4 (twice the rate), then refused until tokens accrue.
        for i in 0..4 {
            p.update("room", "ana", (1, 1), "k", &i.to_string(), None)
                .unwrap();
        }
        assert!(matches!(
            p.update("room", "ana", (1, 1), "k", "x", None),
            Err(Refusal::RateLimited(_))
        ));
        // Another connection of another user, or a room not joined: not a member.
        assert!(matches!(
            p.update("room", "ana", (9, 1), "k", "x", None),
            Err(Refusal::NotFound(_))
        ));
        assert!(matches!(
            p.update("other", "ana", (1, 1), "k", "x", None),
            Err(Refusal::NotFound(_))
        ));
    }

    #[test]
    fn pages_follow_each_other_in_user_order() {
        let p = Presence::new(100, 0, &[]);
        for i in 0..25 {
            p.join("room", &format!("u{i:02}"), (i, 1), String::new(), None);
        }
        let mut seen = Vec::new();
        let mut after = String::new();
        loop {
            let page = query(&p, &after, 10);
            seen.extend(page.list.iter().map(|m| m.user.clone()));
            if page.next.is_empty() {
                break;
            }
            after = page.next;
        }
        let all: Vec<String> = (0..25).map(|i| format!("u{i:02}")).collect();
        assert_eq!(seen, all);
    }
}
