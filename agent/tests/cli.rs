//! The `weir` binary's command-line contract: bad options exit 64 with a
//! message naming the option; a missing agent is one clear line.

use std::process::Command;

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd.output().expect("weir runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn bad_flag_values_exit_64_naming_the_option() {
    let cases: &[(&[&str], &str)] = &[
        (&["--flow-ring-capacity", "70000"], "flows.ringCapacity"),
        (&["--report-interval", "soon"], "datapath.reportInterval"),
        (&["--metrics-addr", "nowhere"], "metrics.address"),
        (&["--aggregation", "bogus"], "--aggregation"),
        (&["--flow-ring-capacity", "abc"], "--flow-ring-capacity"),
        (&["--no-such-flag"], "--no-such-flag"),
    ];
    for (args, option) in cases {
        let (code, text) = run(weir().arg("agent").args(*args));
        assert_eq!(code, 64, "{args:?}: {text}");
        assert!(
            text.contains(option),
            "{args:?} should name {option}: {text}"
        );
    }
}

#[test]
fn bad_config_file_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weir.yaml");
    std::fs::write(&cfg, "flowLog:\n  outptu: stdout\n").unwrap();
    let (code, text) = run(weir().arg("agent").arg("--config").arg(&cfg));
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("outptu"), "{text}");
    assert!(text.contains("weir.yaml"), "{text}");

    std::fs::write(&cfg, "datapath:\n  ringBufferBytes: 1000\n").unwrap();
    let (code, text) = run(weir().arg("agent").arg("--config").arg(&cfg));
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("datapath.ringBufferBytes"), "{text}");

    let (code, text) = run(weir()
        .arg("agent")
        .arg("--config")
        .arg(dir.path().join("missing.yaml")));
    assert_eq!(code, 64, "{text}");
    assert!(text.contains("missing.yaml"), "{text}");
}

#[test]
fn status_without_agent_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let (code, text) = run(weir().arg("status").arg("--socket").arg(&sock));
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot reach the weir agent"), "{text}");
    assert!(text.contains("none.sock"), "{text}");
    assert_eq!(text.trim().lines().count(), 1, "one line: {text}");
}
