"""rnnserve: train recurrent sequence models and serve them with stateful sessions."""

__version__ = "0.1.0"
