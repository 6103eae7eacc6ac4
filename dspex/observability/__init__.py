"""Files generated for operators: Grafana dashboards, the metrics reference,
the Prometheus report and the optimization plot. Internal; the CLI calls it.
"""
