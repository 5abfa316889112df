import json
import os
import subprocess
import sys
from pathlib import Path


def edgebox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgebox", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_models_json_lists_the_bundled_models(tmp_path: Path) -> None:
    # a home of its own: the store under the user's home lists what earlier runs put there
    result = edgebox("models", "--json", env={"EDGEBOX_HOME": str(tmp_path)})
    assert result.returncode == 0
    rows = json.loads(result.stdout)
    assert {r["name"] for r in rows} == {"smollm2-135m", "gemma3-270m", "all-minilm-l6-v2"}
    assert [r["name"] for r in rows if r["default"]] == ["smollm2-135m", "all-minilm-l6-v2"]
    assert {r["name"]: r["kind"] for r in rows}["all-minilm-l6-v2"] == "embeddings"


def test_serve_with_an_unavailable_model_fails_in_one_line_without_traceback() -> None:
    result = edgebox(
        "serve",
        "--model",
        "someorg/somerepo:x.gguf",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("error:") and "Hugging Face cache" in result.stderr


def test_help_lists_the_serve_options() -> None:
    result = edgebox("serve", "--help")
    assert result.returncode == 0
    options = ("--model", "--alias", "--port", "--ctx", "--threads", "--api-key", "--parallel")
    for option in (*options, "--max-tokens", "--temperature"):
        assert option in result.stdout
