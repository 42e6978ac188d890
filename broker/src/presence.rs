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
//! Large rooms: above `presence_events_max` members a join or leave is not sent to every
//! watcher; the room is marked, and [`Presence::tick`] (every [`TICK`]) sends each marked
//! room's count once. So a room of 10 000 members costs one count event per watcher per
//! tick, not one per join.
//!
//! Nothing here is stored: after a restart, rooms are empty until clients join again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rtc_proto::v1::{self, frame::Op, PresenceEventKind};
use rtc_proto::Frame;
use tokio_util::sync::CancellationToken;

use crate::outbound::Outbox;

/// How often large rooms' counts go out.
pub const TICK: Duration = Duration::from_millis(500);
/// Members per page of a query when it asks for none.
const DEFAULT_PAGE: usize = 100;
/// The largest page.
const MAX_PAGE: usize = 1000;

/// One subscription joined to a room: its connection and sub_id.
type Seat = (u64, u64);

#[derive(Debug)]
struct Member {
    info: String,
    seats: BTreeSet<Seat>,
}

#[derive(Debug, Default)]
struct Room {
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
}

impl Presence {
    /// Rooms whose joins and leaves are sent one by one up to `events_max` members.
    pub fn new(events_max: usize) -> Presence {
        Presence {
            rooms: Mutex::default(),
            events_max,
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
        let room = rooms.entry(topic.to_string()).or_default();
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

    /// Tells the watchers of a change: at once in a small room, by count later in a
    /// large one.
    fn changed(
        &self,
        topic: &str,
        room: &mut Room,
        kind: PresenceEventKind,
        member: v1::PresenceMember,
    ) {
        if room.members.len() > self.events_max {
            room.count_due = true;
        } else {
            room.tell(topic, kind, Some(member));
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

    /// Sends the counts of the large rooms that changed since the last tick.
    pub fn tick(&self) {
        let mut rooms = self.lock();
        for (topic, room) in rooms.iter_mut() {
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
                _ = ticks.tick() => self.tick(),
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
        let p = Presence::new(100);
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

    #[test]
    fn pages_follow_each_other_in_user_order() {
        let p = Presence::new(100);
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
