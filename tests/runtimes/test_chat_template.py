import pytest

from edgebox.runtimes.base import BackendError
from edgebox.runtimes.chat_template import ChatTemplate, fallback_template


def render(name: str, messages: list[dict[str, str]]) -> str:
    _, source = fallback_template(name, {})
    return ChatTemplate(source, name=name, bos_token="<bos>", eos_token="<eos>").render(messages)


def test_gemma_fallback_folds_system_into_first_user_turn() -> None:
    text = render(
        "gemma3",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )


def test_fallback_choice_follows_architecture_and_vocabulary() -> None:
    assert fallback_template("gemma3", {})[0] == "gemma"
    assert fallback_template("llama", {"<|start_header_id|>": True})[0] == "llama3"
    assert fallback_template("qwen2", {"<|im_start|>": True})[0] == "chatml"
    assert fallback_template("gpt2", {})[0] == "transcript"


def test_templates_from_model_files_run_sandboxed() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    template = ChatTemplate(evil, name="gguf", bos_token="", eos_token="")
    with pytest.raises(BackendError):
        template.render([{"role": "user", "content": "x"}])


def test_raise_exception_in_template_becomes_a_clear_error() -> None:
    source = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}"
    template = ChatTemplate(source, name="gguf", bos_token="", eos_token="")
    with pytest.raises(BackendError, match="first must be user"):
        template.render([{"role": "assistant", "content": "x"}])
