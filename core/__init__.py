"""Project-wide building blocks: configuration, shared names, fast provider loading."""
