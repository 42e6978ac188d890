//! Helpers for tests that drive rtc's real binaries as processes: start `rtc-broker` on
//! `127.0.0.1:0` with a temp data dir, learn its address from the `listening tcp ADDR`
//! line it prints, send it signals, and collect its exit status and stderr.
//!
//! It depends on no rtc crate, so any crate can use it as a dev-dependency.
//!
//! [`redis_server`] runs a real redis-server for the cluster-mode tests.
//!
//! [`modcycles`] finds import circles between a crate's modules; CI runs it on every
//! crate of the workspace (`tests/import_circles.rs`).

pub mod modcycles;
pub mod redis_server;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a broker may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Path of a workspace binary built next to the running test (`target/<profile>/NAME`).
/// `cargo test --workspace` builds every binary before running any test.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo test --workspace` or `cargo build -p ...`)",
        path.display()
    );
    path
}

/// A running `rtc-broker` process. Killed (SIGKILL) on drop if still running.
pub struct BrokerProcess {
    child: Child,
    /// The TCP address it printed.
    pub addr: SocketAddr,
    /// The QUIC address it printed, when started with `--quic`.
    pub quic: Option<SocketAddr>,
    /// The HTTP gateway's address it printed, when started with `--http` (otherwise it
    /// is started with `--http off`).
    pub http: Option<SocketAddr>,
    /// Its data directory.
    pub data_dir: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl BrokerProcess {
    /// Starts `bin --tcp 127.0.0.1:0 --data-dir DATA_DIR [extra...]` and waits for its
    /// `listening tcp` line.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> BrokerProcess {
        Self::start_on(bin, data_dir, "127.0.0.1:0", extra)
    }

    /// Like [`BrokerProcess::start`] on a given address (to restart a broker where its
    /// clients will reconnect). Retries for a few seconds while the port is still taken.
    pub fn start_on(bin: &Path, data_dir: &Path, tcp: &str, extra: &[&str]) -> BrokerProcess {
        Self::start_limited(bin, data_dir, tcp, extra, None)
    }

    /// Like [`BrokerProcess::start_on`], with the process's open-file limit (soft and
    /// hard `RLIMIT_NOFILE`) set to `max_fds` when given.
    pub fn start_limited(
        bin: &Path,
        data_dir: &Path,
        tcp: &str,
        extra: &[&str],
        max_fds: Option<u64>,
    ) -> BrokerProcess {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match Self::try_start(bin, data_dir, tcp, extra, max_fds) {
                Ok(b) => return b,
                Err(stderr) if Instant::now() < deadline && stderr.contains("in use") => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(stderr) => panic!("rtc-broker did not start: {stderr}"),
            }
        }
    }

    fn try_start(
        bin: &Path,
        data_dir: &Path,
        tcp: &str,
        extra: &[&str],
        max_fds: Option<u64>,
    ) -> Result<BrokerProcess, String> {
        let mut command = Command::new(bin);
        command
            .args(["--tcp", tcp, "--data-dir"])
            .arg(data_dir)
            .args(extra)
            // The gateway's default port would be shared by every broker a test starts.
            .args(if extra.contains(&"--http") {
                &[][..]
            } else {
                &["--http", "off"][..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(max) = max_fds {
            use std::os::unix::process::CommandExt;
            let limit = libc::rlimit {
                rlim_cur: max as libc::rlim_t,
                rlim_max: max as libc::rlim_t,
            };
            // SAFETY: setrlimit is async-signal-safe, and the closure touches nothing
            // but its own copy of `limit`.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // A broker that fails to start exits, closing stdout: the channel then ends.
        let lines = line_channel(stdout);
        let Ok(line) = lines.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(stderr.join().unwrap_or_default());
        };
        let addr = line
            .strip_prefix("listening tcp ")
            .or_else(|| line.strip_prefix("listening tls "))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
        // The QUIC line follows the first one in the same write.
        let quic = extra.contains(&"--quic").then(|| {
            let line = lines
                .recv_timeout(START_TIMEOUT)
                .expect("a `listening quic` line");
            line.strip_prefix("listening quic ")
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        });
        // Then the HTTP line, after the QUIC certificate's.
        let http = extra.contains(&"--http").then(|| loop {
            let line = lines
                .recv_timeout(START_TIMEOUT)
                .expect("a `listening http` line");
            let addr = line
                .strip_prefix("listening http ")
                .or_else(|| line.strip_prefix("listening https "));
            if let Some(addr) = addr {
                break addr
                    .parse()
                    .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
            }
        });
        Ok(BrokerProcess {
            child,
            addr,
            quic,
            http,
            data_dir: data_dir.to_path_buf(),
            stderr: Some(stderr),
        })
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// File descriptors the process has open (from /proc).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc fd")
            .count()
    }

    /// `tcp://ADDR`.
    pub fn url(&self) -> String {
        format!("tcp://{}", self.addr)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.child.id());
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(self) {
        self.kill_collecting_stderr();
    }

    /// SIGKILLs the process, reaps it, and returns what it wrote to stderr.
    pub fn kill_collecting_stderr(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits (at most `limit`) for the process to exit; returns its status and stderr.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String) {
        let status = wait_timeout(&mut self.child, limit)
            .unwrap_or_else(|| panic!("rtc-broker did not exit within {limit:?}"));
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, stderr)
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `child` until it exits or `limit` passes.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads lines from `reader` on a thread until one contains `needle` (returns true) or
/// `limit` passes (false). The reader keeps being drained afterwards so the child never
/// blocks on a full pipe; the returned receiver yields the remaining lines.
pub fn wait_for_line<R: Read + Send + 'static>(
    reader: R,
    needle: &str,
    limit: Duration,
) -> (bool, mpsc::Receiver<String>) {
    let rx = line_channel(reader);
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return (true, rx),
            Ok(_) => continue,
            Err(_) => return (false, rx),
        }
    }
}

/// Reads `reader` line by line on a thread, sending each line; ends at EOF or when the
/// receiver is dropped.
pub fn line_channel<R: Read + Send + 'static>(reader: R) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A tmpfs of a given size mounted on a fresh temp directory (a small filesystem a test
/// can fill), unmounted on drop. Mounting needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Whether this process may mount one: it runs as root.
    pub fn can_mount() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    /// Mounts a tmpfs of `mib` MiB.
    pub fn mount(mib: u64) -> Tmpfs {
        let dir = temp_dir();
        run_mount(
            &["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"],
            dir.path(),
        );
        Tmpfs { dir }
    }

    /// Grows (or shrinks) it to `mib` MiB, keeping what it holds.
    pub fn resize(&self, mib: u64) {
        run_mount(&["-o", &format!("remount,size={mib}m")], self.dir.path());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn run_mount(args: &[&str], target: &Path) {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a process still holding files in it cannot keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A fresh temp directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub use libc::{SIGHUP, SIGINT, SIGKILL, SIGTERM};
