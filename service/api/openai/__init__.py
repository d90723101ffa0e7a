"""The OpenAI-compatible completions surface for the language models: `router` (HTTP),
`protocol` (messages, validation, defaults), `serving` (choices over the engine, SSE)."""
