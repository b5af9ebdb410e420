//! Prints the OTLP flow exporter's throughput (see `weir_otel::bench`):
//! `cargo run --release -p weir-otel --example otlp_throughput [flows] [rate]`.

use weir_otel::{Protocol, bench};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let flows: u64 = args.next().map_or(Ok(500_000), |a| a.parse())?;
    let rate: u64 = args.next().map_or(Ok(100_000), |a| a.parse())?;
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let r = bench::run(bench::BenchConfig {
            protocol,
            flows,
            rate,
            ..bench::BenchConfig::default()
        })
        .await?;
        println!(
            "{:<14} offered {} at {:.0}/s: exported {} ({:.0}/s), received {}, dropped: subscription {} exporter {}, {} requests, {:.2?}, accounted {}",
            protocol.as_str(),
            r.offered,
            r.offered_per_sec,
            r.exported,
            r.exported_per_sec,
            r.received,
            r.dropped_subscription,
            r.dropped_exporter,
            r.requests,
            r.elapsed,
            r.accounted()
        );
    }
    Ok(())
}
