"""The admin HTTP API: nodes and drains, presence (who, lookup, counts, event tails) and
decision explanations, behind bearer tokens with roles (viewers read, operators change).
Mounted into the scheduler's app by control/launch.py; it reads the scheduler's engine,
backends and state through the scheduler's app keys."""
