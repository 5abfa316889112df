"""The wire layer node, router and hub share: OpenAI request models and error shapes, bounded
body reading, SSE framing, bearer-key auth, the `/health` report, the KV snapshot and identity
proof constants, and the slow-client connection guard. It imports nothing else of edgebox, so
every other package may build on it."""
