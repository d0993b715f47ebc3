"""Gray release: the Release model, sticky bucketing and rule evaluation (pure), and later the
store and step controller."""
