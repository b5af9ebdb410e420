//! The agent's Prometheus registry as OTLP metrics: one snapshot of
//! `Registry::gather()` becomes one `ExportMetricsServiceRequest`. Pure
//! conversion; no I/O.
//!
//! Mapping: counters -> `Sum` (monotonic, cumulative since the exporter
//! started), gauges and untyped -> `Gauge`, histograms -> `Histogram`
//! (cumulative; Prometheus' cumulative bucket counts become per-bucket counts
//! and the `+Inf` bound is implied), summaries -> `Summary`. Labels become
//! attributes. Names are kept exactly as Prometheus spells them (`_total`
//! included), so the same name finds the same series in both worlds; the
//! help text is the description.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::summary_data_point::ValueAtQuantile;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};

use crate::logs::{kv, scope};

fn attributes(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|l| kv(l.name(), Value::StringValue(l.value().to_owned())))
        .collect()
}

fn number(m: &prometheus::proto::Metric, value: f64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attributes(m),
        start_time_unix_nano: start,
        time_unix_nano: now,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsDouble(value)),
    }
}

/// One metric family as an OTLP metric; `start` is the start of the
/// cumulative period (the exporter's start), `now` the snapshot time.
pub fn family_to_metric(mf: &MetricFamily, start: u64, now: u64) -> Metric {
    let data = match mf.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: mf
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_counter().get_value(), start, now))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: mf
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_gauge().get_value(), 0, now))
                .collect(),
        }),
        // Reason: prometheus marks untyped as protobuf-specific, yet custom
        // collectors can still produce it; it is exported as a gauge.
        #[allow(deprecated)]
        MetricType::UNTYPED => metric::Data::Gauge(Gauge {
            data_points: mf
                .get_metric()
                .iter()
                .map(|m| number(m, m.get_untyped().get_value(), 0, now))
                .collect(),
        }),
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: mf
                .get_metric()
                .iter()
                .map(|m| {
                    let h = m.get_histogram();
                    let mut bounds = Vec::with_capacity(h.get_bucket().len());
                    let mut counts = Vec::with_capacity(h.get_bucket().len() + 1);
                    let mut below = 0u64;
                    for b in h.get_bucket() {
                        if b.upper_bound().is_infinite() {
                            continue;
                        }
                        bounds.push(b.upper_bound());
                        counts.push(b.cumulative_count().saturating_sub(below));
                        below = b.cumulative_count();
                    }
                    counts.push(h.get_sample_count().saturating_sub(below));
                    HistogramDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.get_sample_count(),
                        sum: Some(h.get_sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        exemplars: Vec::new(),
                        flags: 0,
                        min: None,
                        max: None,
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        MetricType::SUMMARY => metric::Data::Summary(Summary {
            data_points: mf
                .get_metric()
                .iter()
                .map(|m| {
                    let s = m.get_summary();
                    SummaryDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: s.sample_count(),
                        sum: s.sample_sum(),
                        quantile_values: s
                            .get_quantile()
                            .iter()
                            .map(|q| ValueAtQuantile {
                                quantile: q.quantile(),
                                value: q.value(),
                            })
                            .collect(),
                        flags: 0,
                    }
                })
                .collect(),
        }),
    };
    Metric {
        name: mf.name().to_owned(),
        description: mf.help().to_owned(),
        unit: String::new(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// Data points in a metric (what OTLP's `rejected_data_points` counts).
pub fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        None => 0,
    }
}

/// A whole registry snapshot as one request.
pub fn metrics_request(
    resource: &Resource,
    families: &[MetricFamily],
    start: u64,
    now: u64,
) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource.clone()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics: families
                    .iter()
                    .map(|mf| family_to_metric(mf, start, now))
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

    #[test]
    fn converts_each_type() {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("weir_x_total", "x help"), &["reason"]).unwrap();
        let g = IntGauge::new("weir_g", "g help").unwrap();
        let h = Histogram::with_opts(
            HistogramOpts::new("weir_h_seconds", "h help").buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        r.register(Box::new(c.clone())).unwrap();
        r.register(Box::new(g.clone())).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        c.with_label_values(&["a"]).inc_by(3);
        c.with_label_values(&["b"]).inc_by(5);
        g.set(-7);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        let req = metrics_request(&crate::logs::node_resource("n1"), &r.gather(), 10, 20);
        let ms = &req.resource_metrics[0].scope_metrics[0].metrics;
        let by = |n: &str| {
            ms.iter()
                .find(|m| m.name == n)
                .unwrap_or_else(|| panic!("{n}"))
        };
        match &by("weir_x_total").data {
            Some(metric::Data::Sum(s)) => {
                assert!(s.is_monotonic);
                assert_eq!(
                    s.aggregation_temporality,
                    AggregationTemporality::Cumulative as i32
                );
                let vals: Vec<(String, f64)> = s
                    .data_points
                    .iter()
                    .map(|p| {
                        let Some(Value::StringValue(l)) =
                            p.attributes[0].value.as_ref().and_then(|v| v.value.clone())
                        else {
                            panic!("label")
                        };
                        let Some(number_data_point::Value::AsDouble(v)) = p.value else {
                            panic!("value")
                        };
                        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (10, 20));
                        (l, v)
                    })
                    .collect();
                assert_eq!(vals, vec![("a".into(), 3.0), ("b".into(), 5.0)]);
            }
            other => panic!("counter became {other:?}"),
        }
        match &by("weir_g").data {
            Some(metric::Data::Gauge(g)) => assert_eq!(
                g.data_points[0].value,
                Some(number_data_point::Value::AsDouble(-7.0))
            ),
            other => panic!("gauge became {other:?}"),
        }
        match &by("weir_h_seconds").data {
            Some(metric::Data::Histogram(h)) => {
                let p = &h.data_points[0];
                assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
                assert_eq!(p.bucket_counts, vec![1, 2, 1]);
                assert_eq!(p.count, 4);
                assert!((p.sum.unwrap() - 4.25).abs() < 1e-9);
            }
            other => panic!("histogram became {other:?}"),
        }
        assert_eq!(by("weir_x_total").description, "x help");
    }
}
