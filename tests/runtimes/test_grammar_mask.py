"""A grammar's mask checked along the tree of token prefixes (`grammar_mask.TokenTree`): at
every state of real replies, on SmolLM2's and Gemma 3's real vocabularies and llama.cpp's real
grammars, the same mask as checking every token; and never for a grammar with token rules,
for which it would be wrong."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgebox.runtimes.base import SamplingParams
from edgebox.runtimes.llamacpp.grammar_mask import (
    TokenTree,
    linkable,
    passes,
    references_tokens,
    token_tree,
)
from edgebox.runtimes.llamacpp.model import LlamaCppModel
from edgebox.runtimes.llamacpp.sampling import build_sampler
from edgebox.runtimes.tool_format import GENERIC, HERMES, MISTRAL, ToolConstraint, calls_text

WEEK = {
    "type": "object",
    "properties": {
        "days": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"day": {"type": "string"}, "high": {"type": "number"}},
                "required": ["day", "high"],
            },
        }
    },
    "required": ["days"],
}
# multi-byte text: accents, CJK, an emoji (split across byte tokens mid-character)
WEEK_REPLY = json.dumps(
    {"days": [{"day": "lundi é 東京 🌧 «x»", "high": -2.5}, {"day": 'say "hi"\n', "high": 21}]}
)
FUNCTIONS = (
    ("get_weather", json.dumps({"type": "object", "properties": {"city": {"type": "string"}}})),
    ("noop", '{"type":"object","properties":{}}'),
)
CALLS = [
    {"name": "get_weather", "arguments": '{"city": "Zürich"}'},
    {"name": "noop", "arguments": "{}"},
]


@pytest.fixture(scope="module")
def model(smollm2_path: Path) -> Iterator[LlamaCppModel]:
    m = LlamaCppModel(smollm2_path, vocab_only=True)
    yield m
    m.close()


@pytest.fixture(scope="module")
def tree(model: LlamaCppModel) -> TokenTree:
    built = token_tree(model, build=True)
    assert built is not None and token_tree(model) is built  # once per model
    return built


def _walk(model: LlamaCppModel, tree: TokenTree, params: SamplingParams, text: str) -> int:
    """Walk `text` through the request's grammar; at every state the tree's mask must be the
    one checking every token gives. Returns the states compared."""
    sampler = build_sampler(model, params)
    everything = np.arange(model.n_vocab, dtype=np.int32)
    try:
        tokens = model.tokenize(text, add_special=False, parse_special=False)
        for index, token in enumerate(tokens):
            want = passes(sampler.grammar, everything)
            got = tree.allowed(sampler.grammar)
            wrong = np.flatnonzero(want != got)
            assert not len(wrong), f"state {index}: tokens {wrong[:5]} differ"
            assert got[token], f"the reply's own token {index} is refused"
            sampler.accept(token)
        return len(tokens)
    finally:
        sampler.free()


@pytest.mark.parametrize(
    ("params", "text"),
    [
        (SamplingParams(temperature=0, json_schema=WEEK), WEEK_REPLY),
        (SamplingParams(temperature=0, json_mode=True), '{"a": [1, 2.5e3, true, null], "b": {}}'),
        (
            SamplingParams(temperature=0, grammar='root ::= ("yes" | "no") " " [0-9]+ [é東]'),
            "no 42東",
        ),
        (  # a negated class, a bounded repetition, alternatives, CJK and an emoji's bytes
            SamplingParams(
                temperature=0,
                grammar=r'root ::= ("ab" | [^a-z\n]){2,12} "東京" [\U0001F300-\U0001FAFF]? "."',
            ),
            "X9ab«é»東京🌧.",
        ),
        *(
            (
                SamplingParams(temperature=0, tools=ToolConstraint(fmt, FUNCTIONS, False, True)),
                calls_text(fmt, CALLS),
            )
            for fmt in (HERMES, MISTRAL, GENERIC)
        ),
        (  # tool_choice auto: free text until the call's tag, the tag, then the grammar
            SamplingParams(temperature=0, tools=ToolConstraint(HERMES, FUNCTIONS, True, False)),
            "Sure.\n" + calls_text(HERMES, CALLS[:1]),
        ),
    ],
    ids=[
        "json-schema",
        "json-mode",
        "gbnf",
        "gbnf-classes",
        "hermes",
        "mistral",
        "generic",
        "hermes-auto",
    ],
)
def test_the_trees_mask_is_the_whole_vocabularys_at_every_state(
    model: LlamaCppModel, tree: TokenTree, params: SamplingParams, text: str
) -> None:
    assert _walk(model, tree, params, text) >= 5


def test_on_gemmas_vocabulary_too(gemma_path: Path) -> None:
    """Gemma 3: 262k tokens, SentencePiece pieces and byte tokens."""
    gemma = LlamaCppModel(gemma_path, vocab_only=True)
    try:
        tree = token_tree(gemma, build=True)
        assert tree is not None
        assert _walk(gemma, tree, SamplingParams(temperature=0, json_schema=WEEK), WEEK_REPLY)
    finally:
        gemma.close()


def test_a_narrow_state_checks_a_few_hundred_tokens_not_the_vocabulary(
    model: LlamaCppModel, tree: TokenTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where JSON wants a key's quote, most of the vocabulary is never handed to the grammar."""
    from edgebox.runtimes.llamacpp import grammar_mask

    checked: list[int] = []
    real = grammar_mask.passes

    def counting(grammar: object, ids: np.ndarray) -> np.ndarray:
        checked.append(len(ids))
        return real(grammar, ids)

    sampler = build_sampler(model, SamplingParams(temperature=0, json_schema=WEEK))
    try:
        for token in model.tokenize("{", add_special=False, parse_special=False):
            sampler.accept(token)
        monkeypatch.setattr(grammar_mask, "passes", counting)
        allowed = tree.allowed(sampler.grammar)
        assert 0 < np.count_nonzero(allowed) < 100
        assert sum(checked) < model.n_vocab // 20, checked
    finally:
        sampler.free()


def test_token_rules_are_seen_in_a_grammar() -> None:
    assert references_tokens('root ::= <[12]> "a"')
    assert references_tokens("root ::= !<think> x\nx ::= [a-z]")
    assert references_tokens('root ::= "a" <|im_end|>')
    assert not references_tokens('root ::= "<tool_call>" [<>] # a <comment>\n')
    assert not references_tokens(r'root ::= "say \"<b>\"" [^\]<]')


def test_a_grammar_with_token_rules_checks_every_token(
    model: LlamaCppModel, tree: TokenTree
) -> None:
    """A token rule matches an id, not text: " hello" may be allowed while " " is not, so the
    tree would refuse it. Such a grammar's sampler masks without the tree, and its mask is
    then right."""
    hello = model.tokenize(" hello", add_special=False, parse_special=False)
    assert len(hello) == 1
    params = SamplingParams(temperature=0, grammar=f'root ::= <[{hello[0]}]> " x"')
    sampler = build_sampler(model, params)
    try:
        assert sampler.tree is None
        everything = np.arange(model.n_vocab, dtype=np.int32)
        assert np.flatnonzero(passes(sampler.grammar, everything)).tolist() == hello
        assert not tree.allowed(sampler.grammar)[hello[0]]  # why the tree is not used
        row = np.zeros(model.n_vocab, np.float32)
        assert sampler.draw(row) == hello[0]  # masked: every other token is banned
    finally:
        sampler.free()


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_masked_draw_is_the_same_with_the_tree_and_without(
    model: LlamaCppModel, tree: TokenTree, temperature: float
) -> None:
    params = SamplingParams(temperature=temperature, seed=3, json_schema=WEEK)
    with_tree = build_sampler(model, params)
    without = build_sampler(model, params)
    without.tree = None
    rng = np.random.default_rng(5)
    try:
        assert with_tree.tree is tree
        for token in model.tokenize('{"days": [', add_special=False, parse_special=False):
            with_tree.accept(token)
            without.accept(token)
        for _ in range(20):
            row = (rng.standard_normal(model.n_vocab) * 4).astype(np.float32)
            drawn = with_tree._draw_from(row, masked=True)
            assert drawn == without._draw_from(row, masked=True)
            assert with_tree.allows(drawn)
    finally:
        with_tree.free()
        without.free()


def test_the_tree_links_each_token_to_the_longest_token_its_text_begins_with() -> None:
    pieces = [b"", b"ab", b"a", b"\0x", b"abc", b"b", b"</s>", b"abd", b"ab"]
    tree = TokenTree.build(pieces, eog=[6])
    assert tree.apart.tolist() == [0, 3, 6]  # empty, NUL-first, end of generation
    # the second "ab" (8) hangs under the first, and the longer ones under it
    assert tree.parent.tolist() == [-1, 2, -1, -1, 8, -1, -1, 8, 1]
    assert [level.tolist() for level in tree.levels] == [[2, 5], [1], [8], [4, 7]]
    assert tree.deep.tolist() == [4, 7, 8] and tree.branch[[4, 7, 8]].tolist() == [1, 1, 1]


def test_texts_that_are_not_utf8_up_to_a_cut_character_are_checked_alone() -> None:
    """llama.cpp refuses the start of an overlong sequence (`\\xe0\\x80`: too few bits left
    for a character of three bytes) but allows the whole where its rule allows the character it
    decodes to, so such a text must not hang under its start; nor one that begins with a
    continuation byte, which goes on a character the tokens before it began."""
    pieces = [
        b"\xe0",  # a character's first byte (ह's): its own root
        b"\xe0\x80",  # overlong: apart
        b"\xe0\x80\x81",  # U+0001 in three bytes: apart
        b"\x80",  # a continuation byte: apart
        b"\x80\x81",  # after a token ending in \xe0 this is U+0001 again: apart
        b"\xe0\xa4",
        b"\xe0\xa4\xb9",  # ह, whole
        b"a\xc1\x81",  # "A" in two bytes after "a": apart
        b"a",
    ]
    tree = TokenTree.build(pieces, eog=[])
    assert tree.apart.tolist() == [1, 2, 3, 4, 7]
    assert tree.parent[[0, 5, 6, 8]].tolist() == [-1, 0, 5, -1]


def test_smollm2s_tokens_that_begin_inside_a_character_are_checked_alone(
    model: LlamaCppModel, tree: TokenTree
) -> None:
    """SmolLM2's byte-level BPE holds tokens such as `\\x82\\xac` (the end of "€"); after a
    token ending in `\\xe0` or `\\xf0` llama.cpp reads them on from that byte. At every such
    state the masks agree."""
    pieces = [model.token_bytes(t, special=True) for t in range(model.n_vocab)]
    inside = [t for t, p in enumerate(pieces) if p and 0x80 <= p[0] < 0xC0]
    assert len(inside) >= 64 + 10 and set(inside) <= set(tree.apart.tolist())
    everything = np.arange(model.n_vocab, dtype=np.int32)
    for lead in (b"\xe0", b"\xe2", b"\xf0"):
        for gbnf in ("root ::= .*", r'root ::= ([^"\\\x7F\x00-\x1F] | [\u0100-\u01FF])*'):
            sampler = build_sampler(model, SamplingParams(temperature=0, grammar=gbnf))
            try:
                sampler.accept(pieces.index(lead))
                want = passes(sampler.grammar, everything)
                assert np.array_equal(tree.allowed(sampler.grammar), want), (lead, gbnf)
            finally:
                sampler.free()


def test_trees_built_from_several_threads_are_one_per_model(
    smollm2_path: Path, gemma_path: Path
) -> None:
    """Requests for two models prepared at once (the node's preparation threads): each model
    gets one tree, the one every thread sees, of its own vocabulary."""
    from concurrent.futures import ThreadPoolExecutor

    small = LlamaCppModel(smollm2_path, vocab_only=True)
    gemma = LlamaCppModel(gemma_path, vocab_only=True)
    try:
        models = [small, gemma, small, gemma]
        with ThreadPoolExecutor(4) as pool:
            trees = list(pool.map(lambda m: token_tree(m, build=True), models))
        assert trees[0] is trees[2] is token_tree(small) and trees[1] is trees[3]
        assert [t.n_vocab for t in trees[:2] if t] == [small.n_vocab, gemma.n_vocab]
    finally:
        small.close()
        gemma.close()


def test_a_models_tree_build_does_not_hold_up_another_models(
    smollm2_path: Path, gemma_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two models on one node: the first grammar request for one waits for its own tree, not
    for another model's build (~1 s for Gemma 3's 262k tokens)."""
    import threading

    from edgebox.runtimes.llamacpp import grammar_mask

    small = LlamaCppModel(smollm2_path, vocab_only=True)
    gemma = LlamaCppModel(gemma_path, vocab_only=True)
    entered, release = threading.Event(), threading.Event()
    build = TokenTree.build

    def held(pieces: list[bytes], eog: tuple[int, ...]) -> TokenTree:
        if len(pieces) == gemma.n_vocab:  # Gemma's build stays in progress
            entered.set()
            assert release.wait(60)
        return build(pieces, eog)

    monkeypatch.setattr(grammar_mask.TokenTree, "build", staticmethod(held))
    slow = threading.Thread(target=token_tree, args=(gemma,), kwargs={"build": True})
    other = threading.Thread(target=token_tree, args=(small,), kwargs={"build": True})
    slow.start()
    try:
        assert entered.wait(30)
        other.start()
        other.join(20)  # while Gemma's build is held
        assert not other.is_alive(), "SmolLM2's tree waited for Gemma's build"
        tree = token_tree(small)
        assert tree is not None and tree.n_vocab == small.n_vocab
        assert token_tree(gemma) is None and slow.is_alive()
    finally:
        release.set()
        slow.join(30)
        other.join(30)
        small.close()
        gemma.close()


def test_no_tree_is_built_from_an_unloaded_model(smollm2_path: Path) -> None:
    """A preparation thread that outlived its request may ask for a tree after the model was
    unloaded: an error, not a read of the freed vocabulary."""
    from edgebox.runtimes.base import BackendError

    model = LlamaCppModel(smollm2_path, vocab_only=True)
    model.close()
    with pytest.raises(BackendError, match="unloaded"):
        token_tree(model, build=True)


def test_linkable_reads_texts_as_an_incremental_utf8_decoder_does() -> None:
    """The whole-text fast path and the incremental decoder agree on what is valid UTF-8 up to a
    character cut at the end."""
    import codecs

    def slow(text: bytes) -> bool:
        if not text or text[0] == 0 or 0x80 <= text[0] < 0xC0:
            return False
        try:
            codecs.getincrementaldecoder("utf-8")().decode(text, final=False)
        except UnicodeDecodeError:
            return False
        return True

    samples = [b"a", b" hello", "é".encode(), "日本".encode(), "😀".encode()[:2], b"\xe0\x80"]
    samples += [b"\xc1\x81", b"\xed\xa0\x80", b"a\xff", b"\xf4\x90", b"\x80", b"\x00a", b""]
    samples += [bytes([b]) for b in range(256)] + [bytes([0xE2, b]) for b in range(256)]
    assert [linkable(t) for t in samples] == [slow(t) for t in samples]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_mask_that_refused_every_token_is_an_error_not_a_banned_token(
    model: LlamaCppModel, tree: TokenTree, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tree only marks tokens the grammar passed, so it can refuse wrongly but never allow
    wrongly; were it to refuse every token, the draw fails with SamplingError (the request
    ends in an error) and no banned token reaches the grammar (which would abort)."""
    from edgebox.runtimes.base import SamplingError

    sampler = build_sampler(model, SamplingParams(temperature=temperature, json_mode=True))
    try:
        assert sampler.tree is tree
        monkeypatch.setattr(
            TokenTree, "allowed", lambda self, grammar: np.zeros(model.n_vocab, bool)
        )
        with pytest.raises(SamplingError):
            sampler._draw_from(np.zeros(model.n_vocab, np.float32), masked=True)
    finally:
        sampler.free()
