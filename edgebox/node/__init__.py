"""The node agent: serves local runtimes on an OpenAI-compatible HTTP API."""
