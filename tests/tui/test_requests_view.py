"""The recent-requests block of `edgebox top`'s detail view, from node records (pure)."""

from __future__ import annotations

from edgebox.tui.requests_view import recent_text, request_rows

RECORDS = [
    {
        "at": 990.0,
        "kind": "chat",
        "model": "smollm2-135m",
        "status": 200,
        "prompt_tokens": 12,
        "completion_tokens": 4,
        "ttft_s": 0.0421,
        "duration_s": 0.2,
        "stream": False,
    },
    {
        "at": 700.0,
        "kind": "embedding",
        "model": None,
        "status": 404,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "ttft_s": None,
        "duration_s": 0.001,
        "stream": False,
    },
]


def test_rows_show_age_tokens_and_times_in_ms() -> None:
    assert request_rows(RECORDS, now=1000.0) == [
        ("10s", "chat", "smollm2-135m", "200", "12", "4", "42 ms", "200 ms"),
        ("5m", "embedding", "-", "404", "0", "0", "-", "1 ms"),
    ]


def test_text_aligns_columns_marks_failures_and_shows_notices() -> None:
    text = recent_text(RECORDS, now=1000.0)
    lines = text.plain.splitlines()
    assert lines[0] == "recent requests" and lines[1].split()[:3] == ["age", "kind", "model"]
    assert lines[2].index("smollm2-135m") == lines[3].index("-") == lines[1].index("model")
    assert any(span.style == "red" for span in text.spans)  # the 404
    assert recent_text([]).plain == "recent requests: none yet"
    assert recent_text("recent requests: x is offline").plain == "recent requests: x is offline"
