//! The `rtc-broker` binary as a process: its listening line, flags and config file,
//! clear start-up errors, and graceful exit on SIGTERM / SIGINT.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::RawConn;
use rtc_proto::ErrorCode;
use rtc_testkit::{temp_dir, BrokerProcess, SIGINT, SIGTERM};

const BIN: &str = env!("CARGO_BIN_EXE_rtc-broker");
const EXIT_WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn prints_listening_line_serves_and_exits_0_on_sigterm() {
    let dir = temp_dir();
    let data = dir.path().join("nested/data");
    let broker = BrokerProcess::start(Path::new(BIN), &data, &[]);
    assert!(broker.addr.ip().is_loopback());
    assert_ne!(broker.addr.port(), 0);
    assert!(data.is_dir(), "data dir created");
    common::assert_serving(broker.addr).await;

    // A connected subscriber is told the broker is going away before the close.
    let mut sub = RawConn::hello(broker.addr).await;
    sub.subscribe_ok(1, "x").await;
    broker.signal(SIGTERM);
    sub.expect_error(ErrorCode::ShuttingDown).await;
    sub.expect_closed().await;
    let (status, stderr) = broker.wait(EXIT_WAIT);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn exits_0_on_sigint() {
    let dir = temp_dir();
    let broker = BrokerProcess::start(Path::new(BIN), dir.path(), &[]);
    broker.signal(SIGINT);
    let (status, stderr) = broker.wait(EXIT_WAIT);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
}

#[test]
fn config_file_is_read_and_flags_override_it() {
    let dir = temp_dir();
    let config = dir.path().join("rtc.toml");
    std::fs::write(
        &config,
        "tcp = \"127.0.0.1:1\"\nheartbeat_interval = \"2s\"\n",
    )
    .unwrap();
    // The file's port 1 is overridden by the --tcp flag the helper passes.
    let broker = BrokerProcess::start(
        Path::new(BIN),
        dir.path(),
        &["--config", config.to_str().unwrap()],
    );
    assert_ne!(broker.addr.port(), 1);
    broker.signal(SIGTERM);
    assert_eq!(broker.wait(EXIT_WAIT).0.code(), Some(0));
}

fn run_expecting_failure(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        // Not the default gateway port, which another test's broker may hold.
        .args(["--http", "off"])
        .output()
        .expect("run rtc-broker");
    assert!(!out.status.success(), "expected failure for {args:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line of error, got: {stderr}"
    );
    stderr
}

#[test]
fn bad_config_stops_start_with_one_clear_line() {
    let dir = temp_dir();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "heartbeat_interval = \"sometimes\"\n").unwrap();
    let data = dir.path().join("d");
    let err = run_expecting_failure(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        err.contains("bad.toml") && err.contains("sometimes"),
        "{err}"
    );

    let err = run_expecting_failure(&["--config", "/nonexistent/rtc.toml"]);
    assert!(err.contains("/nonexistent/rtc.toml"), "{err}");
}

#[test]
fn unusable_data_dir_and_busy_port_are_clear_errors() {
    let dir = temp_dir();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a dir").unwrap();
    let err =
        run_expecting_failure(&["--tcp", "127.0.0.1:0", "--data-dir", file.to_str().unwrap()]);
    assert!(err.contains("a-file"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let data = dir.path().join("d");
    let err = run_expecting_failure(&["--tcp", &addr, "--data-dir", data.to_str().unwrap()]);
    assert!(err.contains(&addr), "{err}");
}

/// Deterministic junk bytes (xorshift), to overwrite a store file with.
fn junk(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test]
async fn locked_damaged_or_foreign_data_dir_stops_the_broker_with_one_line_naming_it() {
    let dir = temp_dir();
    let data = dir.path().join("d");
    let data_arg = data.to_str().unwrap();
    let broker = BrokerProcess::start(Path::new(BIN), &data, &[]);
    let mut c = RawConn::hello(broker.addr).await;
    for _ in 0..50 {
        c.publish_acked("keep.me", b"important").await;
    }

    // Locked: a second broker on the same directory.
    let err = run_expecting_failure(&["--tcp", "127.0.0.1:0", "--data-dir", data_arg]);
    assert!(err.contains(data_arg) && err.contains("locked"), "{err}");
    broker.signal(SIGTERM);
    assert_eq!(broker.wait(EXIT_WAIT).0.code(), Some(0));

    // Damaged: sled's main file overwritten.
    let db = data.join("store").join("db");
    let original = std::fs::read(&db).unwrap();
    std::fs::write(&db, junk(original.len().max(4096))).unwrap();
    let err = run_expecting_failure(&["--tcp", "127.0.0.1:0", "--data-dir", data_arg]);
    assert!(err.contains(data_arg) && err.contains("corrupt"), "{err}");
    std::fs::write(&db, original).unwrap();

    // From another format version.
    let marker = data.join("store").join("rtc-format");
    let version = std::fs::read(&marker).unwrap();
    std::fs::write(&marker, "99\n").unwrap();
    let err = run_expecting_failure(&["--tcp", "127.0.0.1:0", "--data-dir", data_arg]);
    assert!(
        err.contains(data_arg) && err.contains("version 99"),
        "{err}"
    );
    std::fs::write(&marker, version).unwrap();

    // Restored, it starts and still has the messages.
    let broker = BrokerProcess::start(Path::new(BIN), &data, &[]);
    let mut c = RawConn::hello(broker.addr).await;
    c.send(rtc_proto::Frame::from_op(rtc_proto::Op::TopicInfoRequest(
        rtc_proto::v1::TopicInfoRequest {
            req_id: 1,
            name: "keep.me".into(),
        },
    )))
    .await;
    match c.recv().await {
        Some(rtc_proto::Frame {
            op: Some(rtc_proto::Op::TopicInfo(t)),
        }) => assert_eq!(t.messages, 50),
        other => panic!("expected TopicInfo, got {other:?}"),
    }
}

/// The config file for the reload test: the admin user, and `ana` when `with_ana`.
fn users_config(with_ana: bool, max_payload: usize) -> String {
    let user = |name: &str, admin: bool| {
        format!(
            "[[user]]\nname = \"{name}\"\ntoken_hash = \"{}\"\npublish = [\">\"]\nsubscribe = [\">\"]\nadmin = {admin}\n",
            rtc_broker::auth::hash_token(&format!("{name}-token"))
        )
    };
    let mut text = format!("max_payload = {max_payload}\n{}", user("ops", true));
    if with_ana {
        text.push_str(&user("ana", false));
    }
    text
}

/// The first frame the broker answers a Hello with `token` with.
async fn first_answer(addr: std::net::SocketAddr, token: &str) -> rtc_proto::Frame {
    let mut c = RawConn::connect(addr).await;
    c.send(rtc_proto::Frame::from_op(rtc_proto::v1::frame::Op::Hello(
        rtc_proto::v1::Hello {
            protocol_version: rtc_proto::PROTOCOL_VERSION,
            client_name: "reload-test".into(),
            auth_token: token.into(),
        },
    )))
    .await;
    c.recv().await.expect("an answer")
}

fn is_welcome(f: &rtc_proto::Frame) -> bool {
    matches!(f.op, Some(rtc_proto::v1::frame::Op::Welcome(_)))
}

#[tokio::test]
async fn sighup_applies_a_good_config_file_and_refuses_a_bad_one_whole() {
    let dir = temp_dir();
    let config = dir.path().join("rtc.toml");
    std::fs::write(&config, users_config(false, 1000)).unwrap();
    let data = dir.path().join("data");
    let broker = BrokerProcess::start(
        Path::new(BIN),
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--http",
            "127.0.0.1:0",
        ],
    );
    let http = broker.http.expect("the gateway is on");
    let refused = first_answer(broker.addr, "ana-token").await;
    assert!(!is_welcome(&refused), "ana is not a user yet: {refused:?}");

    // A good file: ana is let in, and the payload limit is the new one.
    std::fs::write(&config, users_config(true, 2000)).unwrap();
    broker.signal(rtc_testkit::SIGHUP);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while !is_welcome(&first_answer(broker.addr, "ana-token").await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reload never let ana in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ana = RawConn::login(broker.addr, "ana-token").await;
    static PAYLOAD: [u8; 1500] = [b'x'; 1500];
    ana.publish_acked("reload.t", &PAYLOAD).await;

    // A bad file (ana's token hash is malformed) changes nothing at all.
    let bad = users_config(true, 500).replace("sha256:", "sha1:");
    std::fs::write(&config, bad).unwrap();
    broker.signal(rtc_testkit::SIGHUP);
    let admin = "Authorization: Bearer ops-token";
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let events = common::http::get(http, "/v1/admin/events", &[admin])
            .await
            .json();
        let refused = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "reload_refused");
        if refused {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload_refused event: {events}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        is_welcome(&first_answer(broker.addr, "ana-token").await),
        "ana still a user"
    );
    ana.publish_acked("reload.t", &PAYLOAD).await;
    let settings = common::http::get(http, "/v1/admin/settings", &[admin])
        .await
        .json();
    assert_eq!(settings["max_payload"], 2000, "the old limit stays");

    broker.signal(SIGTERM);
    let (status, stderr) = broker.wait(EXIT_WAIT);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("config reload refused"), "{stderr}");
    assert!(stderr.contains("config reloaded"), "{stderr}");
}

/// `rtc-broker convert-store`: a data dir of `store_engine = "sled"` copied into a new one
/// that the broker then serves from segment files; and one clear line for what it cannot
/// convert.
#[tokio::test]
async fn convert_store_copies_a_sled_data_dir_the_broker_then_serves() {
    let dir = temp_dir();
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    let config = dir.path().join("sled.toml");
    std::fs::write(&config, "store_engine = \"sled\"\n").unwrap();
    let cfg = config.to_str().unwrap();
    let broker = BrokerProcess::start(Path::new(BIN), &old, &["--config", cfg]);
    let mut c = RawConn::hello(broker.addr).await;
    for _ in 0..3 {
        c.publish_acked("conv.x", b"kept").await;
    }
    broker.signal(SIGTERM);
    assert_eq!(broker.wait(EXIT_WAIT).0.code(), Some(0));
    assert!(!old.join("log").exists(), "made with sled");

    let convert = |from: &Path, to: &Path| {
        Command::new(BIN)
            .args(["convert-store", "--from"])
            .arg(from)
            .arg("--to")
            .arg(to)
            .output()
            .expect("run rtc-broker convert-store")
    };
    let out = convert(&old, &new);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 topics, 3 messages"), "{stdout}");

    let out = convert(&dir.path().join("nothing"), &dir.path().join("n2"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("holds no rtc store"), "{stderr}");

    // The same config (it names sled) on the new dir: served from its segment files.
    let broker = BrokerProcess::start(Path::new(BIN), &new, &["--config", cfg]);
    let mut c = RawConn::hello(broker.addr).await;
    let info = c.topic_info("conv.x").await;
    assert_eq!((info.messages, info.last_seq), (3, 3));
    c.publish_acked("conv.x", b"next").await;
    assert_eq!(c.topic_info("conv.x").await.last_seq, 4);
    assert!(new.join("log").exists());
    broker.signal(SIGTERM);
    assert_eq!(broker.wait(EXIT_WAIT).0.code(), Some(0));
}
