"""`--workers N`: the supervisor (`supervisor.py`), the engine process and the API workers."""
