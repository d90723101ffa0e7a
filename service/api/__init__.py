"""HTTP and WebSocket surfaces: one router module per surface, thin handlers over the engine."""
