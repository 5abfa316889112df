"""A model's memory need, read from its GGUF header before loading; sizes as users write them."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgebox.models.footprint import Footprint, format_size, model_footprint, parse_size


def test_the_bundled_models_report_weights_and_kv_per_token(
    smollm2_path: Path, gemma_path: Path
) -> None:
    smol, gemma = model_footprint(smollm2_path), model_footprint(gemma_path)
    assert smol.weights == smollm2_path.stat().st_size
    # SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) x 2 bytes
    assert smol.kv_bytes_per_token == 30 * 3 * 128 * 2
    assert smol.context_length == 8192
    # Gemma 3 270M: 18 layers x 1 KV head x (256 + 256) x 2 bytes (the brief measured ~18 KB)
    assert gemma.kv_bytes_per_token == 18 * 1 * 512 * 2
    assert gemma.need(1024) == gemma.weights + gemma.kv_bytes_per_token * 1024


def test_the_context_is_capped_at_the_trained_one() -> None:
    f = Footprint(weights=1000, kv_bytes_per_token=10, context_length=100)
    assert f.need(4096, slots=2) == 1000 + 10 * 100 * 2


def test_a_file_that_is_not_gguf_counts_its_weights(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\xff" * 40)
    assert model_footprint(bogus) == Footprint(44)


@pytest.mark.parametrize(
    ("text", "value"),
    [("123", 123), ("600MB", 600 * 10**6), ("2GiB", 2 << 30), ("1.5g", 1_500_000_000)],
)
def test_sizes_parse(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "lots", "5 parsecs", "-1GB"])
def test_a_bad_size_names_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match="GiB"):
        parse_size(text)


def test_sizes_print_short() -> None:
    assert format_size(241_000_000) == "241 MB"
    assert format_size(1_230_000_000) == "1.2 GB"
