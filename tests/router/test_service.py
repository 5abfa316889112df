"""The router end to end: two real nodes, a third real node playing a keyed cloud upstream,
`edgebox router` as a separate process, and the `openai` SDK as the client."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from edgebox.router.tokens import Tokenizers
from tests.conftest import NodeProcess, start_node
from tests.router.conftest import running_on, start_router

MODEL = "smollm2-135m"
CLOUD_KEY = "sk-test-cloud-7f3a9c"  # reaches only the cloud node, never a log
SYSTEM = "You are a patient maths tutor who explains each step. " * 8


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    tmp = tmp_path_factory.mktemp("fleet")
    specs = {
        "a": ((), None),
        "b": ((), None),
        "cloud": (("--ctx", "2048"), {"EDGEBOX_API_KEY": CLOUD_KEY}),
    }
    started: dict[str, NodeProcess] = {}
    with ThreadPoolExecutor(3) as pool:
        futures = {
            name: pool.submit(
                start_node,
                tmp,
                "--parallel",
                "2",
                "--ctx",
                "1024",
                "--threads",
                "1",
                *args,
                env=env,
            )
            for name, (args, env) in specs.items()
        }
        for name, future in futures.items():
            started[name] = future.result()
    config = tmp / "router.toml"
    config.write_text(
        f"""
poll_interval_s = 60  # the tests control what the router learns between polls
max_usd_per_day = 5.0

[[cloud]]
name = "testcloud"
base_url = "{started["cloud"].base_url}"
api_key_env = "TEST_CLOUD_KEY"
when = "fallback"
models = {{ "cloud-smol" = "{MODEL}" }}
prices = {{ "{MODEL}" = {{ input = 1.0, output = 2.0 }} }}
"""
    )
    env = {"TEST_CLOUD_KEY": CLOUD_KEY}
    try:
        started["router"] = start_router(
            tmp,
            "--node",
            started["a"].url,
            "--node",
            started["b"].url,
            "--config",
            str(config),
            env=env,
            ready_models=2,
        )
        capped = tmp / "capped.toml"
        capped.write_text(
            config.read_text()
            .replace("max_usd_per_day = 5.0", "max_usd_per_day = 0.00001")
            .replace("input = 1.0", "input = 100.0")
        )
        started["capped"] = start_router(
            tmp, "--node", started["a"].url, "--config", str(capped), env=env, ready_models=2
        )
        # A node with another per-sequence context has an incompatible KV layout.
        mismatch = tmp / "mismatch.toml"
        mismatch.write_text('node_api_key_env = "TEST_CLOUD_KEY"\n')
        started["mismatch"] = start_router(
            tmp,
            "--node",
            started["a"].url,
            "--node",
            started["cloud"].url,
            "--config",
            str(mismatch),
            "--disagg",
            "always",
            env=env,
        )
        started["split"] = start_router(
            tmp,
            "--node",
            started["a"].url,
            "--node",
            started["b"].url,
            "--disagg",
            "always",
        )
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def client(router: NodeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url, api_key="unused", max_retries=0)


def route_of(headers: httpx.Headers) -> tuple[str, str]:
    node, _, rest = headers["x-edgebox-route"].partition(";")
    return node, rest


def node_name(node: NodeProcess) -> str:
    return node.url.removeprefix("http://")


def messages(user: str) -> list[ChatCompletionMessageParam]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def direct_reply(node: NodeProcess, user: str, api_key: str = "x") -> str | None:
    """The node's own greedy answer, bypassing the router."""
    direct = openai.OpenAI(base_url=node.base_url, api_key=api_key, max_retries=0)
    reply = direct.chat.completions.create(
        model=MODEL,
        messages=messages(user),
        max_tokens=12,
        temperature=0,
    )
    return reply.choices[0].message.content


def chat(router: NodeProcess, user: str, **extra: object) -> tuple[str, str, str]:
    raw = client(router).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages(user),
        max_tokens=12,
        temperature=0,
        **extra,  # type: ignore[arg-type]
    )
    node, rest = route_of(raw.headers)  # type: ignore[arg-type]
    return node, rest, raw.parse().choices[0].message.content or ""


def test_models_are_the_union_of_nodes_and_cloud(fleet: dict[str, NodeProcess]) -> None:
    models = {m.id: m for m in client(fleet["router"]).models.list()}
    assert {MODEL, "cloud-smol"} <= set(models)
    meta = models[MODEL].model_extra["meta"]  # type: ignore[index]
    assert sorted(meta["nodes"]) == sorted(node_name(fleet[n]) for n in ("a", "b"))


def test_streamed_and_plain_answers_match_the_node_and_say_where_they_ran(
    fleet: dict[str, NodeProcess],
) -> None:
    node, reason, text = chat(fleet["router"], "What is 2 + 2?")
    assert node in (node_name(fleet["a"]), node_name(fleet["b"])) and "reason=" in reason
    assert text == direct_reply(fleet["a"], "What is 2 + 2?")
    with client(fleet["router"]).chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=messages("What is 2 + 2?"),
        max_tokens=12,
        temperature=0,
        stream=True,
    ) as response:
        assert route_of(response.headers)[0] == node  # the same prefix, the same node
        streamed = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert streamed == text


def test_a_client_leaving_a_stream_stops_the_node_generating(
    fleet: dict[str, NodeProcess],
) -> None:
    """The router drops its upstream connection when the client goes, so the node cancels the
    sequence instead of decoding the rest of max_tokens for nobody."""
    body = {
        "model": MODEL,
        "messages": messages("Count from one to five hundred in words."),
        "max_tokens": 900,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", fleet["router"].base_url + "/chat/completions", json=body) as r:
        name, _ = route_of(r.headers)
        events = (line for line in r.iter_lines() if line.startswith("data: "))
        assert [next(events) for _ in range(3)]  # a few tokens, then the client leaves
    node = next(fleet[n] for n in ("a", "b") if node_name(fleet[n]) == name)
    deadline = time.monotonic() + 5.0  # 900 tokens on one thread take far longer than this
    while (running := running_on(node)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running == 0


def test_one_conversation_prefix_sticks_to_one_node(fleet: dict[str, NodeProcess]) -> None:
    first, _, _ = chat(fleet["router"], "Explain fractions.")
    for question in ("Explain decimals.", "Explain percentages.", "Explain ratios."):
        node, reason, _ = chat(fleet["router"], question)
        assert node == first and "affinity" in reason


def test_concurrent_requests_spread_over_both_nodes(fleet: dict[str, NodeProcess]) -> None:
    def one(i: int) -> str:
        raw = httpx.post(
            fleet["router"].base_url + "/completions",
            json={"model": MODEL, "prompt": f"Story {i}: once upon a time", "max_tokens": 16},
            timeout=300,
        )
        assert raw.status_code == 200, raw.text
        return route_of(raw.headers)[0]

    with ThreadPoolExecutor(4) as pool:
        used = set(pool.map(one, range(4)))
    assert used == {node_name(fleet["a"]), node_name(fleet["b"])}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
        ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": 7, "messages": []}, 400, "model"),
        (
            {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]},
            400,
            "messages[0].role",
        ),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1},
            400,
            "max_tokens",
        ),
    ],
)
def test_bad_input_gets_openai_shaped_errors_naming_the_field(
    fleet: dict[str, NodeProcess], body: dict[str, object], status: int, param: str
) -> None:
    response = httpx.post(fleet["router"].base_url + "/chat/completions", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    if "model" not in body:
        return  # the SDK itself refuses to send that
    with pytest.raises(openai.APIStatusError) as caught:
        client(fleet["router"]).chat.completions.create(**body)  # type: ignore[arg-type]
    assert caught.value.status_code == status


def test_embeddings_pass_through(fleet: dict[str, NodeProcess]) -> None:
    listed = client(fleet["a"]).models.list()
    models = {m.id for m in listed if m.model_extra["status"] == "loaded"} - {MODEL}  # type: ignore[index]
    assert models, "the node serves an embeddings model by default"
    raw = client(fleet["router"]).embeddings.with_raw_response.create(
        model=sorted(models)[0], input=["hello", "world"]
    )
    assert route_of(raw.headers)[0] in (node_name(fleet["a"]), node_name(fleet["b"]))  # type: ignore[arg-type]
    data = raw.parse().data
    assert len(data) == 2 and len(data[0].embedding) > 100


def test_not_json_is_a_400(fleet: dict[str, NodeProcess]) -> None:
    response = httpx.post(fleet["router"].base_url + "/completions", content=b"{nope")
    assert (
        response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    )


def test_cloud_only_model_goes_to_the_cloud_with_its_key_and_is_counted(
    fleet: dict[str, NodeProcess], tmp_path: Path
) -> None:
    raw = client(fleet["router"]).chat.completions.with_raw_response.create(
        model="cloud-smol", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    node, reason = route_of(raw.headers)  # type: ignore[arg-type]
    assert node == "cloud:testcloud" and "no-local-node" in reason
    usage = raw.parse().usage
    assert usage is not None and usage.total_tokens > 0  # the keyed cloud node answered
    stream = client(fleet["router"]).chat.completions.create(
        model="cloud-smol",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=5,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    spend = json.loads((fleet["router"].log.parent / "home" / "router_spend.json").read_text())
    assert spend["usd"] > 0 and spend["by_model"][MODEL] == spend["usd"]
    metrics = httpx.get(fleet["router"].url + "/metrics").text
    assert 'edgebox_router_requests_total{status="200",target="cloud:testcloud"} 2.0' in metrics


def test_local_only_requests_never_reach_the_cloud(fleet: dict[str, NodeProcess]) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client(fleet["router"]).chat.completions.create(
            model="cloud-smol",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=5,
            extra_headers={"x-edgebox-local-only": "1"},
        )
    assert caught.value.status_code == 503 and "local-only" in caught.value.message


def test_the_cloud_key_never_reaches_logs_or_errors(fleet: dict[str, NodeProcess]) -> None:
    for proc in (fleet["router"], fleet["capped"], fleet["mismatch"]):
        assert CLOUD_KEY not in proc.log.read_text()
    bad = httpx.post(fleet["router"].base_url + "/chat/completions", json={"model": "x"})
    assert CLOUD_KEY not in bad.text


def test_split_prefill_gives_the_same_greedy_text(fleet: dict[str, NodeProcess]) -> None:
    decode, reason, text = chat(fleet["split"], "What is seven times six?")
    assert "split=split-always,prefill@" in reason, reason
    prefill = reason.split("prefill@")[1].split(";")[0]
    assert prefill != decode
    # The decode node goes on exactly as the prefill node does with the same prompt (which it
    # holds, with the logits after it, since the export).
    prefill_node = next(fleet[n] for n in ("a", "b") if node_name(fleet[n]) == prefill)
    assert text == direct_reply(prefill_node, "What is seven times six?")
    learnt = httpx.get(fleet["split"].url + "/health", timeout=5).json()["split"]
    # SmolLM2-135M: 30 layers x (K + V) x 3 KV heads x 64 dims x 2 bytes (f16) per token.
    assert learnt["kv_bytes_per_token"][MODEL] == pytest.approx(30 * 2 * 3 * 64 * 2, rel=0.05)
    assert learnt["logits_bytes"][MODEL] == 4 * 49152  # float32 after the prompt, SmolLM2
    assert learnt["link_bytes_per_s"][f"{prefill}>{decode}"] > 0
    assert learnt["prefill_tokens_per_s"][prefill] > 0


def test_the_spend_cap_stops_bursting(fleet: dict[str, NodeProcess]) -> None:
    capped = client(fleet["capped"])
    first = capped.chat.completions.with_raw_response.create(
        model="cloud-smol", messages=[{"role": "user", "content": "Hello"}], max_tokens=3
    )
    assert route_of(first.headers)[0] == "cloud:testcloud"  # type: ignore[arg-type]
    # that request cost more than the cap: no more bursting today, even after a restart
    with pytest.raises(openai.RateLimitError) as caught:
        capped.chat.completions.create(
            model="cloud-smol", messages=[{"role": "user", "content": "Hello"}], max_tokens=3
        )
    error = caught.value.body
    assert isinstance(error, dict) and error["code"] == "spend_cap_reached"
    assert "max_usd_per_day" in caught.value.message and CLOUD_KEY not in caught.value.message
    # local models are still served
    assert capped.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices


def test_an_incompatible_kv_split_falls_back_to_one_node(fleet: dict[str, NodeProcess]) -> None:
    served, reason, text = chat(fleet["mismatch"], "What is seven times six?")
    assert "failed-import-409-kv_incompatible" in reason, reason
    # the same text as that node gives unsplit (the two nodes' n_ctx differ, and with it
    # llama.cpp's float rounding, so compare with the node that answered)
    node = next(fleet[n] for n in ("a", "cloud") if node_name(fleet[n]) == served)
    assert text == direct_reply(node, "What is seven times six?", CLOUD_KEY)


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    loaded = Tokenizers()
    loaded.load([MODEL, "not-a-local-model"])
    return loaded


def contract(topic: str, user: str) -> dict[str, object]:
    system = f"You review {topic} contracts; quote the clause you rely on, then explain. " * 10
    return {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_tokens": 4,
        "temperature": 0,
    }


def test_a_node_reports_the_block_hashes_the_router_computes(
    fleet: dict[str, NodeProcess], tokenizers: Tokenizers
) -> None:
    body = contract("bakery", "May we sell bread on Sundays?")
    reply = httpx.post(fleet["b"].base_url + "/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    models = httpx.get(fleet["b"].url + "/health", timeout=5).json()["models"]
    health = models[MODEL]
    embedders = [m for m in models if m != MODEL]
    assert embedders and all("prefix_blocks" not in models[m] for m in embedders)  # no cache
    ours = tokenizers.encode(body)
    assert ours is not None and len(ours.blocks) >= 4
    assert ours.tokens == reply.json()["usage"]["prompt_tokens"]  # the node's own count
    assert health["block_tokens"] == 32 and health["model_sha256"] == tokenizers.sha256(MODEL)
    assert set(ours.blocks) <= set(health["prefix_blocks"])
    assert tokenizers.encode({**body, "model": "not-a-local-model"}) is None


def test_a_cached_system_prompt_sticks_to_its_node_for_a_router_that_never_placed_it(
    fleet: dict[str, NodeProcess], tmp_path: Path
) -> None:
    """Each node is warmed directly; a router started afterwards has placed nothing, so only
    the blocks the nodes report in /health can send each prompt back to its node."""
    warm = {"a": contract("orchard", "Hello."), "b": contract("ferry", "Hello.")}
    for name, body in warm.items():
        assert httpx.post(fleet[name].base_url + "/chat/completions", json=body, timeout=120)
    router = start_router(tmp_path, "--node", fleet["a"].url, "--node", fleet["b"].url)
    try:
        for name, body in [*warm.items(), *reversed(warm.items())]:
            asked = {**body, "messages": [body["messages"][0], {"role": "user", "content": "Why?"}]}  # type: ignore[index]
            raw = httpx.post(router.base_url + "/chat/completions", json=asked, timeout=120)
            assert raw.status_code == 200, raw.text
            node, reason = route_of(raw.headers)
            assert node == node_name(fleet[name]) and "affinity" in reason, reason
            matched, total = reason.rpartition("prefix=blocks:")[2].split("/")
            assert int(matched) >= int(total) - 1  # all but the block holding the question
    finally:
        router.stop()


def test_a_model_the_router_cannot_tokenize_falls_back_to_message_keys(
    fleet: dict[str, NodeProcess], tmp_path: Path
) -> None:
    config = tmp_path / "no-tokenizer.toml"
    config.write_text(f'[tokenizers]\n"{MODEL}" = "{tmp_path / "missing.gguf"}"\n')
    router = start_router(
        tmp_path, "--node", fleet["a"].url, "--node", fleet["b"].url, "--config", str(config)
    )
    try:
        body = contract("garden", "Hello.")
        routes = []
        for _ in range(3):
            raw = httpx.post(router.base_url + "/chat/completions", json=body, timeout=120)
            assert raw.status_code == 200, raw.text
            routes.append(route_of(raw.headers))
        assert all("prefix=messages" in reason for _, reason in routes), routes
        assert {node for node, _ in routes} == {routes[0][0]}  # message keys keep it there
        assert all("affinity" in reason for _, reason in routes[1:]), routes
    finally:
        router.stop()


def test_a_node_dying_mid_stream_ends_it_with_an_error_then_requests_fail_over(
    fleet: dict[str, NodeProcess],
) -> None:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Count to 500."}]
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 400,
        "stream": True,
        "temperature": 0,
    }
    url = fleet["router"].base_url + "/chat/completions"
    with httpx.stream("POST", url, json=body, timeout=120) as stream:
        victim_name = route_of(stream.headers)[0]
        victim = next(fleet[n] for n in ("a", "b") if node_name(fleet[n]) == victim_name)
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))
        victim.proc.send_signal(signal.SIGKILL)
        rest = [line for line in lines if line.startswith("data: ")]
    errors = [json.loads(line[6:]) for line in rest if '"error"' in line]
    assert errors and errors[-1]["error"]["code"] == "upstream_failed", rest[-3:]
    assert rest[-1] == "data: [DONE]"
    # The router still thinks the dead node is up (no poll yet) and its affinity points there:
    # the next turn of that conversation connects, fails before any byte, and goes elsewhere.
    survivor = next(node_name(fleet[n]) for n in ("a", "b") if fleet[n] is not victim)
    raw = httpx.post(
        fleet["router"].base_url + "/chat/completions",
        json={**body, "stream": False, "max_tokens": 4},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    node, reason = route_of(raw.headers)
    assert node == survivor and f"failover={victim_name}:connect-error" in reason
    for _ in range(3):  # and every later request succeeds on the survivor
        assert chat(fleet["router"], "And then?")[0] == survivor
