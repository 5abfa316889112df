"""The residency policy: what to evict for a load, and keep-alive durations (pure)."""

from __future__ import annotations

import math

import pytest

from edgebox.node.residency import (
    Resident,
    expired,
    make_room,
    parse_keep_alive,
    start_loads,
)

MB = 10**6


def test_a_model_that_fits_evicts_nothing() -> None:
    room = make_room(100 * MB, 500 * MB, [Resident("a", 200 * MB, 1.0, busy=False)])
    assert room.fits and room.evict == () and room.used == 200 * MB


def test_least_recently_used_idle_models_go_first_and_only_as_many_as_needed() -> None:
    residents = [
        Resident("old", 100 * MB, 1.0, busy=False),
        Resident("older", 100 * MB, 0.5, busy=False),
        Resident("new", 100 * MB, 9.0, busy=False),
    ]
    room = make_room(150 * MB, 300 * MB, residents)
    assert room.evict == ("older", "old")
    assert make_room(150 * MB, 400 * MB, residents).evict == ("older",)


def test_a_busy_model_is_never_evicted_the_load_waits() -> None:
    residents = [Resident("busy", 300 * MB, 0.0, busy=True), Resident("idle", 50 * MB, 5.0, False)]
    room = make_room(200 * MB, 400 * MB, residents)
    assert room.wait and not room.fits and room.evict == ()


def test_a_model_bigger_than_the_budget_never_fits() -> None:
    room = make_room(600 * MB, 500 * MB, [])
    assert room.too_big and not room.fits


def test_loads_under_way_count_against_the_budget() -> None:
    room = make_room(200 * MB, 400 * MB, [], reserved=300 * MB)
    assert room.wait


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (0, 0.0),
        ("0", 0.0),
        ("5m", 300.0),
        ("30s", 30.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        (12, 12.0),
        (-1, math.inf),
        ("-1m", math.inf),
    ],
)
def test_keep_alive_takes_ollama_durations(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", True, [1], "nan", float("nan")])
def test_a_bad_keep_alive_names_the_forms(value: object) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def test_expiry_needs_an_idle_model_past_its_keep_alive() -> None:
    assert expired(last_used=10.0, keep_alive=5.0, busy=False, now=15.0)
    assert not expired(last_used=10.0, keep_alive=5.0, busy=False, now=14.9)
    assert not expired(last_used=10.0, keep_alive=0.0, busy=True, now=99.0)


def test_models_named_at_start_load_in_order_while_they_fit_and_the_rest_stay_on_disk() -> None:
    plan = start_loads([("a", 100 * MB), ("b", 300 * MB), ("c", 50 * MB)], 350 * MB)
    assert plan.load == ("a", "c") and plan.on_disk == ("b",) and plan.too_big == ()
    assert start_loads([("a", 100 * MB)], 200 * MB).on_disk == ()


def test_a_model_named_at_start_bigger_than_the_whole_budget_is_too_big() -> None:
    plan = start_loads([("a", 100 * MB), ("huge", 900 * MB)], 500 * MB)
    assert plan.too_big == ("huge",)
