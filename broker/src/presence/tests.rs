//! Presence on one node: members, seats, events, large rooms, state with a TTL.
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
