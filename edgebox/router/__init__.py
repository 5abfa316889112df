"""The fleet endpoint: one OpenAI-compatible API in front of many nodes and cloud upstreams."""
