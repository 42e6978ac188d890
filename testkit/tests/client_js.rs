//! client-js (the TypeScript client) as part of the workspace's tests: its packages from
//! the lock file (`npm ci`), the type check, the linter, and `npm test` — the build, then
//! node's test runner against the real `rtc-broker` binary this `cargo test` built
//! (`RTC_BROKER_BIN`), headless Chromium among them (installed by
//! scripts/ensure-chromium.sh when missing) — and that the browser build the examples
//! use (examples/web/rtc-client.js) is the current one. Needs the machine's Node 20+ and
//! npm; it fails, saying so, without them.

use std::path::Path;
use std::process::Command;

use rtc_testkit::workspace_bin;

fn npm(dir: &Path, args: &[&str]) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("RTC_BROKER_BIN", workspace_bin("rtc-broker"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("npm {args:?}: {e} (client-js needs Node 20+ and npm)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("$ npm {}\n{stdout}", args.join(" "));
    assert!(
        out.status.success(),
        "npm {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn client_js_installs_checks_lints_and_passes_its_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client-js");
    npm(&dir, &["ci", "--no-audit", "--no-fund"]);
    npm(&dir, &["run", "check"]);
    npm(&dir, &["run", "lint"]);
    npm(&dir, &["test"]);
    // The examples import the browser build the broker serves from the repository: it
    // must be this build.
    let built = std::fs::read(dir.join("dist/rtc-client.browser.js")).expect("the browser build");
    let served = std::fs::read(dir.join("../examples/web/rtc-client.js")).unwrap_or_default();
    assert!(
        built == served,
        "examples/web/rtc-client.js is not the current browser build: run `npm run examples` in client-js/ and commit it"
    );
}
