"""Presence: who is online where. A ring of shards (embedded or Redis), batch operations,
exact counts, an event stream, and the controller that expires and evicts."""
