"""Benchmarks: the no-op transport floor (`noop_server`) and the one-command benchmark (`run`, with `cases`,
`peers`, `measure` and `report`)."""
