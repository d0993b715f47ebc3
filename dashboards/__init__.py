"""imctl's Grafana dashboards, built in code with grafana-foundation-sdk (Grafana 11 schema),
and its Prometheus alert rules (alerts.yml) and scrape config (prometheus.yml).

``python -m dashboards`` (or ``imctl-dashboards``) writes ``dashboards/json/*.json``;
``--check`` says which committed files differ from a fresh build."""
