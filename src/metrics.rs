//! How a module's metrics join the registry that `GET /metrics` serves: each metrics struct
//! lists what it exports as one table of (name, help, metric) rows handed to
//! [`register_all`], so the list reads as what is exported rather than as a `register` call
//! of five lines per metric.
//!
//! A row holds a clone of the metric: prometheus-client metrics are handles to one shared
//! value, so the struct keeps updating what the registry encodes.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Metric, Registry};

/// One metric to register: its name (under the registry's prefix), help text and handle.
pub struct Described {
    name: &'static str,
    help: &'static str,
    metric: Box<dyn Metric>,
}

/// A row of a metrics table.
pub fn described(name: &'static str, help: &'static str, metric: impl Metric) -> Described {
    Described {
        name,
        help,
        metric: Box::new(metric),
    }
}

/// Registers every row in `r`, in order.
pub fn register_all(r: &mut Registry, rows: impl IntoIterator<Item = Described>) {
    for row in rows {
        r.register(row.name, row.help, Boxed(row.metric));
    }
}

/// A boxed metric as a metric: prometheus-client encodes `Box<dyn EncodeMetric>` but that box
/// is not `Send + Sync`, which `register` needs; `Box<dyn Metric>` is.
#[derive(Debug)]
struct Boxed(Box<dyn Metric>);

impl EncodeMetric for Boxed {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    #[test]
    fn rows_are_encoded_like_directly_registered_metrics() {
        let (c, g) = (Counter::<u64>::default(), Gauge::<i64>::default());
        let mut direct = Registry::with_prefix("athena");
        direct.register("x_events", "Events", c.clone());
        direct.register("x_level", "Level", g.clone());
        let mut table = Registry::with_prefix("athena");
        register_all(
            &mut table,
            [
                described("x_events", "Events", c.clone()),
                described("x_level", "Level", g.clone()),
            ],
        );
        // Updated after registration: the table holds handles, not copies of the values.
        c.inc_by(3);
        g.set(-2);
        let text = |r: &Registry| {
            let mut s = String::new();
            prometheus_client::encoding::text::encode(&mut s, r).expect("encode");
            s
        };
        assert_eq!(text(&table), text(&direct));
        assert!(
            text(&table).contains("athena_x_events_total 3"),
            "{}",
            text(&table)
        );
        assert!(
            text(&table).contains("athena_x_level -2"),
            "{}",
            text(&table)
        );
    }
}
