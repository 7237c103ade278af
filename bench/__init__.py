"""Rerunnable benchmarks of the crawler against a local static site (see bench/README.md)."""
