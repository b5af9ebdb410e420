//! `weir demo` runs, prints, and leaves nothing behind. NEEDS THE AGENT
//! (root, target/debug/weir, target/debug/weir-cni).

mod common;

use std::time::Duration;

use weir_integration::demo::{self, DemoOptions};

#[test]
fn demo_runs_for_a_while_and_leaves_nothing_behind() {
    let Some(options) =
        common::agent_lab_options("demo_runs_for_a_while_and_leaves_nothing_behind")
    else {
        return;
    };
    let before = weir_integration::netns::list("weirlab-");
    let dir = std::env::temp_dir().join(format!("weirlab-demo-{}", std::process::id()));
    let socket = dir.join("sock").join("weir.sock");
    let opts = DemoOptions {
        weir_bin: options.weir_bin.clone(),
        cni_bin: options.cni_bin.clone(),
        metrics_addr: "127.0.0.1:0".parse().unwrap(),
        socket: socket.clone(),
        duration: Some(Duration::from_secs(3)),
    };
    demo::run(opts).expect("demo runs and stops cleanly");
    let after = weir_integration::netns::list("weirlab-");
    let new: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
    assert!(new.is_empty(), "namespaces left: {new:?}");
    assert!(!socket.exists(), "socket left");
    assert!(
        !dir.join("sock").exists(),
        "socket directory the demo created is left"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
