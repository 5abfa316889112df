"""Writes a tiny MLX-format model (llama architecture, random weights, a real byte-level BPE
tokenizer trained on the spot, a ChatML chat template) into a directory."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France. "
    "Edge boxes serve small language models on a local endpoint, one token at a time. "
    "Hello world, hello there, how are you today? Numbers: 0 1 2 3 4 5 6 7 8 9. "
)


def write_tokenizer(directory: Path) -> int:
    """tokenizer.json + tokenizer_config.json (ChatML template); returns the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 20, trainer=trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return int(tok.get_vocab_size())


def write_tiny_mlx_model(directory: Path, *, seed: int = 0) -> Path:
    """A ~0.1M-parameter llama with random weights; returns `directory`."""
    import mlx.core as mx
    from mlx_lm.models import llama
    from mlx_lm.utils import save_model

    directory.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(directory)
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "eos_token_id": 2,  # <|im_end|>
    }
    (directory / "config.json").write_text(json.dumps(config))
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    # The default init: sampled text varies from seed to seed, greedy text is not one token.
    mx.eval(model.parameters())
    save_model(directory, model)
    return directory
