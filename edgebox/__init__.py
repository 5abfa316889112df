"""edgebox: turn your own inference boxes into one fleet behind one OpenAI-compatible API."""

__version__ = "0.1.0"
