"""prometheus-anomaly-exporter: anomaly scores for Prometheus metrics, exported as gauges."""

__version__ = "0.1.0"
