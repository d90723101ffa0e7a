"""Peer servers for the side-by-side benchmarks. Each runs in its own venv (bench/venvs.py)."""
