//! No import circle among the top-level modules of any crate in the workspace: a lower
//! layer defines the interface it calls up through, and a higher one implements it
//! (see docs/architecture.md). On failure this prints each circle and the files whose
//! imports make it.

use std::path::Path;

use rtc_testkit::modcycles::circles;

const CRATES: &[&str] = &["proto", "broker", "client-rs", "cli", "benches", "testkit"];

#[test]
fn no_crate_has_an_import_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = String::new();
    for name in CRATES {
        let src = root.join(name).join("src");
        let found = circles(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        for circle in found {
            report.push_str(&format!("{name}/src: {circle}"));
        }
    }
    assert!(report.is_empty(), "import circles:\n{report}");
}
