//! Runs `weir_export::bench` and prints the figures:
//! `cargo run --release -p weir-export --example export_bench -- [flows] [rate|max] [mask]`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flows = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let rate = match args.get(2).map(String::as_str) {
        None => Some(100_000),
        Some("max") => None,
        Some(r) => r.parse().ok(),
    };
    let field_mask = match args.get(3).map(String::as_str) {
        Some("mask") => vec![
            "time".into(),
            "verdict".into(),
            "source.pod_name".into(),
            "destination".into(),
            "l4".into(),
        ],
        _ => Vec::new(),
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = weir_export::bench::BenchOptions {
        flows,
        rate,
        field_mask,
        ..Default::default()
    };
    let r = rt
        .block_on(weir_export::bench::run(dir.path(), &opts))
        .expect("bench");
    let offered = r.pushed as f64 / r.push_time.as_secs_f64();
    eprintln!(
        "pushed {} (offered {:.0}/s) written {} dropped {} rotations {} bytes {} elapsed {:?} => {:.0} lines/s",
        r.pushed,
        offered,
        r.flows_written,
        r.dropped,
        r.rotations,
        r.bytes,
        r.elapsed,
        r.lines_per_sec
    );
}
