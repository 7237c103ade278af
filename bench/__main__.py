"""`python -m bench`: the whole suite (bench/suite.py) -> docs/benchmarks.md and .png."""

from bench.suite import main

main()
