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
