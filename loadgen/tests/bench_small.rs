//! Runs `corecast-loadgen bench --size small` against the real `corecast`
//! binary and checks that the report adds up: every push reached every
//! member, nothing was lost, every client authenticated.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn server_binary() -> PathBuf {
    let loadgen = PathBuf::from(env!("CARGO_BIN_EXE_corecast-loadgen"));
    let server = loadgen.with_file_name("corecast");
    assert!(
        server.is_file(),
        "the corecast binary is missing at {} — build it first (`cargo build --bin corecast`, \
         or run `cargo test --workspace`, which builds it)",
        server.display()
    );
    server
}

fn u(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("report field {path} missing: {v:#}"))
}

fn check_push(report: &Value, name: &str, members_per_push: Option<u64>) {
    let r = report
        .get(name)
        .filter(|r| !r.is_null())
        .unwrap_or_else(|| {
            panic!(
                "scenario {name} has no result; failures: {}",
                report["failures"]
            )
        });
    let pushed = u(r, "/pushes_ok");
    assert!(pushed > 0, "{name}: nothing was pushed");
    assert_eq!(
        u(r, "/pushes_failed"),
        0,
        "{name}: pushes failed: {}",
        r["errors"]
    );
    if let Some(m) = members_per_push {
        assert_eq!(
            u(r, "/expected"),
            pushed * m,
            "{name}: expected = pushed × members"
        );
    }
    assert_eq!(
        u(r, "/received"),
        u(r, "/expected"),
        "{name}: received = expected"
    );
    assert_eq!(u(r, "/missing"), 0, "{name}: missing");
    assert_eq!(u(r, "/gap_lost"), 0, "{name}: lost by sequence gaps");
    assert_eq!(u(r, "/out_of_order"), 0, "{name}: out of order");
    assert_eq!(
        u(r, "/closed_by_server"),
        0,
        "{name}: server closed clients"
    );
    assert!(
        u(r, "/latency/count") >= u(r, "/received"),
        "{name}: every message timed"
    );
}

#[test]
fn small_bench_report_is_consistent() {
    let server = server_binary();
    let out = std::env::temp_dir().join(format!("corecast-bench-small-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_corecast-loadgen"))
        .args(["bench", "--size", "small", "--server-bin"])
        .arg(&server)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("running corecast-loadgen bench");
    assert!(status.success(), "bench exited with {status}");
    let report: Value = serde_json::from_slice(
        &std::fs::read(out.join("report.json")).expect("report.json written"),
    )
    .expect("report.json is JSON");
    assert_eq!(
        report["failures"],
        Value::Array(vec![]),
        "no scenario failed"
    );

    let conns = &report["conns"];
    assert_eq!(
        u(conns, "/authed"),
        u(conns, "/requested"),
        "every idle client authenticated"
    );
    assert_eq!(u(conns, "/failed"), 0);

    // Small size: 200 clients in rooms of 50 for both broadcasts.
    check_push(&report, "broadcast_ws", Some(50));
    check_push(&report, "broadcast_tcp", Some(50));
    check_push(&report, "unicast", Some(1));

    let storm = &report["storm"];
    assert_eq!(
        u(storm, "/failed"),
        0,
        "storm: no failed session: {}",
        storm["errors"]
    );
    assert!(
        u(storm, "/authed") > u(storm, "/conns"),
        "storm: clients reconnected"
    );

    let slow = &report["slow"];
    for part in ["baseline", "with_slow"] {
        let r = &slow[part];
        assert_eq!(
            u(r, "/received"),
            u(r, "/expected"),
            "slow/{part}: healthy clients got everything"
        );
        assert_eq!(u(r, "/gap_lost"), 0, "slow/{part}: lost by sequence gaps");
    }
    assert!(
        u(&slow["with_slow"], "/expected") < u(&slow["baseline"], "/expected"),
        "slow clients are excluded from the expected count"
    );
    let svg = std::fs::read_to_string(out.join("report.svg")).expect("report.svg written");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    let _ = std::fs::remove_dir_all(&out);
}
