"""``imctl load``: a population of simulated clients against a running cluster, spread over
worker processes, with a Markdown report and pictures at the end.

scenario.py (the run's settings from flags and a YAML file, pure), stats.py (latency
histograms and per-second windows, pure), churn.py (who logs out when, pure), client.py
(one simulated client), worker.py (a process of clients reporting once a second),
operator.py (what a scenario does to the cluster: kill, drain, gray), run.py (the parent:
workers, aggregation, progress, the report), report.py (Markdown and PNGs)."""
