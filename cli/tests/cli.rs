//! `rtc-cli` driven as a process against the real `rtc-broker` binary.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rtc_testkit::{temp_dir, wait_for_line, wait_timeout, workspace_bin, BrokerProcess};

const CLI: &str = env!("CARGO_BIN_EXE_rtc-cli");
const WAIT: Duration = Duration::from_secs(20);

fn broker(dir: &Path) -> BrokerProcess {
    BrokerProcess::start(&workspace_bin("rtc-broker"), dir, &[])
}

fn cli(server: &str, args: &[&str]) -> Command {
    let mut c = Command::new(CLI);
    c.env("RTC_SERVER", server).args(args);
    c
}

/// Starts `rtc-cli sub ...` and returns once it reports the subscription is active.
fn start_sub(server: &str, args: &[&str]) -> std::process::Child {
    start_until(server, args, "subscribed to")
}

/// Starts `rtc-cli ARGS` and returns once its stderr has a line starting with `line`.
fn start_until(server: &str, args: &[&str], line: &str) -> std::process::Child {
    let mut child = cli(server, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rtc-cli");
    let stderr = child.stderr.take().unwrap();
    let (ok, _rest) = wait_for_line(stderr, line, WAIT);
    assert!(ok, "rtc-cli {args:?} did not say {line:?}");
    child
}

fn finish(mut child: std::process::Child) -> Output {
    let status = wait_timeout(&mut child, WAIT).expect("rtc-cli exits in time");
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    Output {
        status,
        stdout,
        stderr: Vec::new(),
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run rtc-cli")
}

#[test]
fn sub_in_one_process_prints_what_pub_sends_from_another() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let sub = start_sub(&b.url(), &["sub", "demo.>", "--count", "1"]);
    let out = run(&mut cli(&b.url(), &["pub", "demo.x", "hello"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = finish(sub);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

#[test]
fn pub_count_and_stdin_lines() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let sub = start_sub(
        &b.url(),
        &["--server", &b.url(), "sub", "lines.*", "--count", "5"],
    );
    let out = run(&mut cli(
        "tcp://127.0.0.1:1",
        &["--server", &b.url(), "pub", "lines.a", "x", "--count", "2"],
    ));
    assert!(
        out.status.success(),
        "--server flag wins over RTC_SERVER: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut publisher = cli(&b.url(), &["pub", "lines.b", "--count", "3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Four lines in, but --count 3 publishes only three.
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\nthree\nfour\n")
        .unwrap();
    assert!(wait_timeout(&mut publisher, WAIT).unwrap().success());
    let out = finish(sub);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "x\nx\none\ntwo\nthree\n"
    );
}

#[test]
fn sub_json_shows_topic_headers_and_binary_payloads() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let sub = start_sub(&b.url(), &["sub", "j.>", "--count", "1", "--json"]);
    let out = run(&mut cli(
        &b.url(),
        &[
            "pub",
            "j.k",
            "{\"a\":1}",
            "--header",
            "trace=abc",
            "-H",
            "x=y",
        ],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = finish(sub);
    let line = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(v["topic"], "j.k");
    assert_eq!(v["payload"], "{\"a\":1}");
    assert_eq!(v["headers"]["trace"], "abc");
    assert_eq!(v["headers"]["x"], "y");
    assert!(v["timestamp_ms"].as_i64().unwrap() > 0);
}

#[test]
fn unreachable_broker_is_one_line_and_nonzero() {
    for args in [&["pub", "a", "b"][..], &["sub", "a", "--count", "1"][..]] {
        let out = run(&mut cli("tcp://127.0.0.1:1", args));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains("127.0.0.1:1"), "{err}");
    }
}

#[test]
fn broker_refusal_is_reported_with_its_code() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let out = run(&mut cli(&b.url(), &["pub", "bad..topic", "x"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("INVALID_TOPIC"), "{err}");
    let out = run(&mut cli(
        &b.url(),
        &["pub", "t", "x", "--header", "novalue"],
    ));
    assert!(!out.status.success(), "malformed --header is rejected");
}

fn stdout_of(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn pub_ack_prints_seq_and_duplicates() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let url = b.url();
    assert_eq!(
        stdout_of(&run(&mut cli(&url, &["pub", "d.x", "one", "--ack"]))),
        "seq=1\n"
    );
    assert_eq!(
        stdout_of(&run(&mut cli(
            &url,
            &["pub", "d.x", "two", "--ack", "--id", "k"]
        ))),
        "seq=2\n"
    );
    assert_eq!(
        stdout_of(&run(&mut cli(
            &url,
            &["pub", "d.x", "two", "--ack", "--id", "k"]
        ))),
        "seq=2 duplicate\n"
    );
    // Several messages with --id get distinct IDs k2-1, k2-2.
    assert_eq!(
        stdout_of(&run(&mut cli(
            &url,
            &["pub", "d.x", "m", "--count", "2", "--ack", "--id", "k2"]
        ))),
        "seq=3\nseq=4\n"
    );
    assert_eq!(
        stdout_of(&run(&mut cli(&url, &["pub", "d.x", "without ack"]))),
        ""
    );
}

#[test]
fn sub_from_replays_history_with_seq_and_ids_in_json() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let url = b.url();
    for (i, word) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let id = format!("id-{i}");
        stdout_of(&run(&mut cli(&url, &["pub", "h.x", word, "--id", &id])));
    }
    let out = stdout_of(&run(&mut cli(
        &url,
        &["sub", "h.x", "--from", "first", "--count", "3"],
    )));
    assert_eq!(out, "alpha\nbeta\ngamma\n");
    let out = stdout_of(&run(&mut cli(
        &url,
        &["sub", "h.x", "--from", "seq:2", "--count", "2", "--json"],
    )));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["seq"], 2);
    assert_eq!(lines[0]["msg_id"], "id-1");
    assert_eq!(lines[1]["payload"], "gamma");
    assert!(lines[1]["timestamp"].as_str().unwrap().ends_with('Z'));
    let bad = run(&mut cli(&url, &["sub", "h.x", "--from", "yesterday"]));
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("yesterday"));
}

#[test]
fn topic_create_ls_and_info() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let url = b.url();
    let out = stdout_of(&run(&mut cli(
        &url,
        &[
            "topic",
            "create",
            "orders",
            "--max-age",
            "7d",
            "--max-msgs",
            "1000",
            "--dedup-window",
            "5m",
        ],
    )));
    assert!(out.contains("storage:      durable"), "{out}");
    assert!(out.contains("max msgs:     1000"), "{out}");
    assert!(out.contains("max age:      7days"), "{out}");
    stdout_of(&run(&mut cli(
        &url,
        &["topic", "create", "game.pos", "--ephemeral"],
    )));
    stdout_of(&run(&mut cli(&url, &["pub", "orders", "o1"])));
    stdout_of(&run(&mut cli(&url, &["pub", "orders", "o2"])));
    let ls = stdout_of(&run(&mut cli(&url, &["topic", "ls"])));
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0][..5], ["game.pos", "ephemeral", "0", "0", "0"]);
    assert_eq!(rows[1][..5], ["orders", "durable", "1", "2", "2"]);
    let info = stdout_of(&run(&mut cli(&url, &["topic", "info", "orders"])));
    assert!(
        info.contains("last seq:     2") && info.contains("messages:     2"),
        "{info}"
    );
    // The same as JSON, one object per topic.
    let ls = stdout_of(&run(&mut cli(&url, &["topic", "ls", "--json"])));
    let topics: Vec<serde_json::Value> = ls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(topics.len(), 2);
    assert_eq!(
        (
            &topics[1]["name"],
            &topics[1]["storage"],
            &topics[1]["last_seq"]
        ),
        (&"orders".into(), &"durable".into(), &2.into())
    );
    let info = stdout_of(&run(&mut cli(&url, &["topic", "info", "orders", "--json"])));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["messages"], 2);
    let missing = run(&mut cli(&url, &["topic", "info", "nope"]));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
}

#[test]
fn topic_purge_rm_and_consumer_rm() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let url = b.url();
    for i in 1..=5 {
        stdout_of(&run(&mut cli(&url, &["pub", "old", &format!("m{i}")])));
    }
    let purged = stdout_of(&run(&mut cli(
        &url,
        &["topic", "purge", "old", "--keep", "2", "--json"],
    )));
    let purged: serde_json::Value = serde_json::from_str(&purged).unwrap();
    assert_eq!(
        (&purged["first_seq"], &purged["messages"]),
        (&4.into(), &2.into())
    );
    let args = ["sub", "old", "--durable", "w", "--ack", "--count", "1"];
    assert_eq!(
        stdout_of(&run(&mut cli(&url, &args))),
        "m4
"
    );
    let rm = stdout_of(&run(&mut cli(&url, &["consumer", "rm", "old", "w"])));
    assert_eq!(
        rm,
        "deleted consumer w of old
"
    );
    let info = run(&mut cli(&url, &["consumer", "info", "old", "w"]));
    assert!(String::from_utf8_lossy(&info.stderr).contains("NOT_FOUND"));
    let epoch = |url: &str| {
        let info = stdout_of(&run(&mut cli(url, &["topic", "info", "old", "--json"])));
        serde_json::from_str::<serde_json::Value>(&info).unwrap()["epoch"].clone()
    };
    let before = epoch(&url);
    assert_eq!(
        stdout_of(&run(&mut cli(&url, &["topic", "rm", "old"]))),
        "deleted topic old
"
    );
    let missing = run(&mut cli(&url, &["topic", "info", "old"]));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
    let again = run(&mut cli(&url, &["topic", "rm", "old"]));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("NOT_FOUND"));
    assert_eq!(
        stdout_of(&run(&mut cli(&url, &["pub", "old", "new", "--ack"]))),
        "seq=1\n",
        "the name starts again at seq 1"
    );
    assert_ne!(epoch(&url), before);
}

#[test]
fn durable_sub_with_ack_resumes_where_it_left_off_and_consumer_commands_show_it() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let url = b.url();
    for i in 1..=5 {
        stdout_of(&run(&mut cli(&url, &["pub", "jobs", &format!("job{i}")])));
    }
    let args = ["sub", "jobs", "--durable", "w", "--ack", "--count", "2"];
    assert_eq!(stdout_of(&run(&mut cli(&url, &args))), "job1\njob2\n");
    // The acks were confirmed before the first run exited: the next run continues.
    assert_eq!(stdout_of(&run(&mut cli(&url, &args))), "job3\njob4\n");
    let info = stdout_of(&run(&mut cli(&url, &["consumer", "info", "jobs", "w"])));
    assert!(info.contains("ack floor:         4"), "{info}");
    // job5 was delivered into the window freed by the first ack, never printed, and went
    // back to the consumer when the CLI left: pending, to be redelivered.
    assert!(info.contains("pending:           1"), "{info}");
    assert!(info.contains("dead-letter topic: $dlq.jobs.w"), "{info}");
    let ls = stdout_of(&run(&mut cli(&url, &["consumer", "ls", "jobs"])));
    let row: Vec<&str> = ls.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..4], ["w", "4", "6", "1"]);
    let ls = stdout_of(&run(&mut cli(&url, &["consumer", "ls", "jobs", "--json"])));
    let c: serde_json::Value = serde_json::from_str(ls.trim()).unwrap();
    assert_eq!(
        (&c["name"], &c["ack_floor"], &c["pending"]),
        (&"w".into(), &4.into(), &1.into())
    );
    let info = stdout_of(&run(&mut cli(
        &url,
        &["consumer", "info", "jobs", "w", "--json"],
    )));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["dead_letter_topic"], "$dlq.jobs.w");
    assert_eq!(
        stdout_of(&run(&mut cli(
            &url,
            &["sub", "jobs", "--durable", "w", "--ack", "--count", "1"]
        ))),
        "job5\n"
    );
    let no_durable = run(&mut cli(&url, &["sub", "jobs", "--ack"]));
    assert!(!no_durable.status.success(), "--ack needs --durable");
}

#[test]
fn token_from_flag_or_env_against_a_broker_with_users() {
    let dir = temp_dir();
    let hash = Command::new(workspace_bin("rtc-broker"))
        .args(["hash-token", "let-me-in"])
        .output()
        .unwrap();
    let hash = String::from_utf8(hash.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("sha256:"), "{hash}");
    let config = dir.path().join("rtc.toml");
    std::fs::write(
        &config,
        format!("[[user]]\nname = \"ops\"\ntoken_hash = \"{hash}\"\npublish = [\"ops.>\"]\nsubscribe = [\"ops.>\"]\n"),
    )
    .unwrap();
    let b = BrokerProcess::start(
        &workspace_bin("rtc-broker"),
        &dir.path().join("d"),
        &["--config", config.to_str().unwrap()],
    );
    let url = b.url();
    let denied = run(&mut cli(&url, &["pub", "ops.x", "hi"]));
    assert!(!denied.status.success());
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(
        err.contains("UNAUTHORIZED") && err.lines().count() == 1,
        "{err}"
    );
    stdout_of(&run(&mut cli(
        &url,
        &["--token", "let-me-in", "pub", "ops.x", "hi"],
    )));
    stdout_of(&run(
        cli(&url, &["pub", "ops.y", "hi"]).env("RTC_TOKEN", "let-me-in")
    ));
    let outside = run(&mut cli(
        &url,
        &["--token", "let-me-in", "pub", "other", "hi"],
    ));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("PERMISSION_DENIED"));
}

#[test]
fn req_gets_the_reply_of_a_command_and_nobody_subscribed_is_an_error() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let upper = start_until(
        &b.url(),
        &[
            "reply",
            "svc.upper",
            "--count",
            "1",
            "--command",
            "tr a-z A-Z",
        ],
        "replying on",
    );
    let out = run(&mut cli(&b.url(), &["req", "svc.upper", "hello"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_of(&out), "HELLO\n");
    assert!(finish(upper).status.success(), "exits after --count");

    // Two echo responders in one group share the requests.
    let echoes: Vec<_> = (0..2)
        .map(|_| {
            start_until(
                &b.url(),
                &[
                    "reply", "svc.echo", "--group", "g", "--count", "2", "--echo",
                ],
                "replying on",
            )
        })
        .collect();
    for i in 0..4 {
        let out = run(&mut cli(&b.url(), &["req", "svc.echo", &format!("m{i}")]));
        assert_eq!(stdout_of(&out), format!("m{i}\n"));
    }
    for echo in echoes {
        assert!(finish(echo).status.success(), "each answered its two");
    }

    let out = run(&mut cli(
        &b.url(),
        &["req", "svc.none", "x", "--timeout", "30s"],
    ));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NO_RESPONDERS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn presence_lists_who_is_in_a_room() {
    let dir = temp_dir();
    let b = broker(dir.path());
    let out = run(&mut cli(&b.url(), &["presence", "room.a", "--count"]));
    assert_eq!(stdout_of(&out), "0 0\n");
    let mut ana = start_sub(
        &b.url(),
        &["sub", "room.a", "--presence", r#"{"name":"Ana"}"#],
    );
    let mut bob = start_sub(&b.url(), &["sub", "room.a", "--presence", "{}"]);
    let out = run(&mut cli(&b.url(), &["presence", "room.a", "--count"]));
    assert_eq!(stdout_of(&out), "2 2\n");
    let out = run(&mut cli(&b.url(), &["presence", "room.a"]));
    let members: Vec<serde_json::Value> = stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(members.len(), 2);
    assert!(
        members.iter().any(|m| m["info"]["name"] == "Ana"),
        "{members:?}"
    );
    assert!(members.iter().all(|m| m["connections"] == 1));
    // A killed subscriber leaves: its connection closes with the process.
    bob.kill().unwrap();
    bob.wait().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let mut count = String::new();
    while std::time::Instant::now() < deadline {
        count = stdout_of(&run(&mut cli(&b.url(), &["presence", "room.a", "--count"])));
        if count == "1 1\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count, "1 1\n");
    ana.kill().unwrap();
    ana.wait().unwrap();
}

#[test]
fn top_shows_the_figures_and_the_connections() {
    let dir = temp_dir();
    let b = BrokerProcess::start(
        &workspace_bin("rtc-broker"),
        dir.path(),
        &["--http", "127.0.0.1:0"],
    );
    let url = b.url();
    let http = format!("http://{}", b.http.expect("the gateway is on"));
    stdout_of(&run(&mut cli(&url, &["pub", "top.t", "one"])));
    let sub = start_sub(&url, &["sub", "top.>", "--count", "1"]);
    let screen = stdout_of(&run(&mut cli(
        &url,
        &["top", "--http", &http, "--count", "1"],
    )));
    assert!(screen.contains("connections 1"), "{screen}");
    assert!(screen.contains("top.t"), "{screen}");
    assert!(
        screen.contains(" tcp "),
        "the connection's transport: {screen}"
    );
    let json = stdout_of(&run(&mut cli(
        &url,
        &["top", "--http", &http, "--count", "2", "--json"],
    )));
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    assert_eq!(lines[0]["stats"]["connections"], 1);
    assert_eq!(lines[0]["connections"][0]["subscriptions"]["1"], "top.>");
    assert_eq!(lines[0]["topics"][0]["name"], "top.t");
    stdout_of(&run(&mut cli(&url, &["pub", "top.t", "two"])));
    assert_eq!(finish(sub).stdout, b"two\n");
    let refused = run(&mut cli(
        &url,
        &["top", "--http", "https://x:1", "--count", "1"],
    ));
    assert!(!refused.status.success());
}
