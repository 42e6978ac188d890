//! Replays every input saved in `fuzz/regressions/<target>/` through the same check its
//! fuzz target runs (`fuzz/checks.rs`), so that a crash found by fuzzing stays fixed.
//! Also runs each check on a few hand-written edge cases.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::path::Path;

#[test]
fn saved_fuzz_inputs_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for (target, check) in checks::ALL {
        let dir = root.join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(&data);
            replayed += 1;
        }
    }
    println!("replayed {replayed} saved fuzz inputs");
}

#[test]
fn edge_cases_pass_every_check() {
    let cases: &[&[u8]] = &[
        b"",
        b"\0",
        b"\xff\xff\xff\xff",
        b"\0\0\0\x03\x98\x06\x01",
        b">\na",
        b"*.>\na.b",
        b"seq:18446744073709551615",
        b"time:-18446744073709551615s",
        b"[[topic]]\npattern = \"a.>\"\nmax_age = \"1ns\"",
        b"heartbeat_interval = \"99999999999999999999h\"",
    ];
    for (_, check) in checks::ALL {
        for case in cases {
            check(case);
        }
    }
}
