"""Which models stay in memory: pure decisions over plain data (the I/O is in `ondemand.py`).

Room for a model that needs `need` bytes under a budget of `budget` bytes:

    used = Σ need of the loaded models + Σ need of loads under way
    fits when used - Σ need(evicted) + need ≤ budget

Victims are the idle loaded models (no running, queued or admitted request), least recently
used first, and only as many as make it fit. A model bigger than the whole budget never fits;
one that would fit once busy models finish waits for them.

Models named at start (`serve -m A -m B`) are held to the same budget, in the order given:
each loads while the total fits; one that fits alone but not after those before it stays on
disk (a request loads it, evicting idle models, as Ollama does); one bigger than the whole
budget stops the start, as llama-server's failed load does.

Keep-alive, as Ollama has it: a duration after the model's last request ("5m", "30s", "1h",
a number of seconds); 0 unloads once the request is done; a negative one keeps it loaded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default
MAX_KEEP_ALIVE_S = 365 * 24 * 3600.0
_DURATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class Resident:
    """A loaded model as the policy sees it."""

    name: str
    need: int  # bytes it was admitted for
    last_used: float  # when its last request ended (or it loaded)
    busy: bool  # running, queued or admitted requests


@dataclass(frozen=True)
class Room:
    """The answer for one load: fits (after evicting `evict`), must wait, or never fits."""

    evict: tuple[str, ...] = ()
    wait: bool = False  # fits once busy models finish
    too_big: bool = False  # bigger than the whole budget
    used: int = 0  # bytes held now, loads under way included

    @property
    def fits(self) -> bool:
        return not self.wait and not self.too_big


def make_room(need: int, budget: int, residents: Sequence[Resident], reserved: int = 0) -> Room:
    """What to evict so that `need` more bytes fit in `budget` (see the module's formula)."""
    used = sum(r.need for r in residents) + reserved
    if need > budget:
        return Room(too_big=True, used=used)
    over = used + need - budget
    if over <= 0:
        return Room(used=used)
    evict: list[str] = []
    for resident in sorted((r for r in residents if not r.busy), key=lambda r: r.last_used):
        evict.append(resident.name)
        over -= resident.need
        if over <= 0:
            return Room(evict=tuple(evict), used=used)
    return Room(wait=True, used=used)


@dataclass(frozen=True)
class StartPlan:
    """The models named at start: loaded now, left on disk, or over the whole budget."""

    load: tuple[str, ...] = ()
    on_disk: tuple[str, ...] = ()
    too_big: tuple[str, ...] = ()


def start_loads(needs: Sequence[tuple[str, int]], budget: int) -> StartPlan:
    """Which of the (name, need) pairs load at start, in order, under `budget`."""
    load: list[str] = []
    on_disk: list[str] = []
    too_big: list[str] = []
    used = 0
    for name, need in needs:
        if need > budget:
            too_big.append(name)
        elif used + need <= budget:
            load.append(name)
            used += need
        else:
            on_disk.append(name)
    return StartPlan(tuple(load), tuple(on_disk), tuple(too_big))


def parse_keep_alive(value: object) -> float | None:
    """Seconds to keep a model loaded after a request; `math.inf` for "forever"; None when
    `value` is None (the node's default applies). ValueError names the accepted forms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError('keep_alive must be a duration such as "5m", "30s" or seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        raise ValueError('keep_alive must be a duration such as "5m", "30s" or seconds')
    if math.isnan(seconds):
        raise ValueError("keep_alive must be a number of seconds")
    if seconds < 0 or seconds > MAX_KEEP_ALIVE_S:
        return math.inf
    return seconds


def expired(last_used: float, keep_alive: float, busy: bool, now: float) -> bool:
    """Whether an idle model's keep-alive ran out."""
    return not busy and now - last_used >= keep_alive
