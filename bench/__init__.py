"""rnnserve's side-by-side benchmark suite: `python -m bench` (see docs/benchmarks.md)."""
