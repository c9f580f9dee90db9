"""Item ids as dense int32 codes: the interning table under every columnar structure.

Every column of the item model (features, neighbours, popularity, co-occurrence rows) is an
array indexed by an item *code*. :class:`ItemTable` hands out codes, keeps each code's id and a
stable 64-bit hash of it (what state stores: codes are process-local and never persisted), and is
bounded: beyond ``max_items`` the items touched longest ago are evicted in one batch and their
codes reused, after the owner has cleared every array slot that referred to them
(``on_evict``). An evicted item comes back with a new code at its next update.

Tie-breaking between items with equal scores uses :attr:`ItemTable.hashes` (stable across
processes and restarts), never the code (which depends on arrival order).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from state_schemas.ids import id_hash as item_hash

NO_CODE = -1


class ItemTable:
    """Bounded interning table: id <-> code, with hashes and a touch clock for eviction.

    Not thread-safe: one table per operator instance (never module-level), so two subtasks
    sharing an interpreter in thread mode never share one.
    """

    def __init__(self, max_items: int, *, initial_capacity: int = 1024,
                 on_evict: Callable[[np.ndarray], None] | None = None) -> None:
        if max_items < 16:
            raise ValueError("max_items must be >= 16")
        self.max_items = int(max_items)
        self.on_evict = on_evict
        cap = max(16, min(initial_capacity, self.max_items))
        self._code: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.hashes = np.zeros(cap, dtype=np.uint64)
        self.touched = np.zeros(cap, dtype=np.int64)
        self._free: list[int] = []
        self._clock = 0
        self.epoch = 0  # bumped by every eviction: codes handed out before may name other items
        # Hash -> code index: sorted arrays, plus the items interned since they were built (a
        # dict), rebuilt once those exceed an eighth of the table. Rebuilding after every new
        # item made a flood of new ids cost a sort per similarity row loaded.
        self._by_hash: tuple[np.ndarray, np.ndarray] | None = None  # sorted hashes, their codes
        self._by_hash_since: dict[int, int] = {}

    # ---------------------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self._code)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._code

    @property
    def capacity(self) -> int:
        """Size of every per-code array (codes are < capacity)."""
        return len(self.hashes)

    @property
    def high_water(self) -> int:
        """One past the highest code ever handed out."""
        return len(self.ids)

    def get(self, item_id: str) -> int:
        """The code of ``item_id``, or :data:`NO_CODE`."""
        return self._code.get(item_id, NO_CODE)

    def id_of(self, code: int) -> str:
        item = self.ids[code]
        assert item is not None, f"code {code} is free"
        return item

    def tick(self) -> int:
        """Advance the touch clock (call once per batch); returns the new time."""
        self._clock += 1
        return self._clock

    def touch(self, codes: np.ndarray | int) -> None:
        self.touched[codes] = self._clock

    # ---------------------------------------------------------------------------- interning
    def code(self, item_id: str) -> int:
        """The code of ``item_id``, interning it (and touching it)."""
        c = self._code.get(item_id)
        if c is None:
            c = self._new(item_id)
        self.touched[c] = self._clock
        return c

    def codes(self, ids: Sequence[str]) -> np.ndarray:
        """int32 codes of ``ids``, interning unknown ones."""
        get = self._code.get
        out = np.empty(len(ids), dtype=np.int32)
        touched, clock = self.touched, self._clock
        for n, item in enumerate(ids):
            c = get(item)
            if c is None:
                c = self._new(item)
                touched = self.touched  # may have grown
            else:
                touched[c] = clock  # now, so that interning the next id cannot evict it
            out[n] = c
        return out

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """int32 codes of ``ids`` without interning (:data:`NO_CODE` for unknown ones)."""
        get = self._code.get
        return np.array([get(i, NO_CODE) for i in ids], dtype=np.int32)

    def codes_of_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """Codes of items by hash (:data:`NO_CODE` where no current item has it)."""
        if self._by_hash is None:
            self._by_hash_since = {}
            n = self.high_water
            live = np.array([i is not None for i in self.ids], dtype=bool) if n else \
                np.zeros(0, dtype=bool)
            codes = np.flatnonzero(live).astype(np.int32)
            order = np.argsort(self.hashes[codes], kind="stable")
            self._by_hash = (self.hashes[codes][order], codes[order])
        keys, codes = self._by_hash
        hashes = np.asarray(hashes, dtype=np.uint64)
        if not len(keys):
            return np.full(len(hashes), NO_CODE, dtype=np.int32)
        at = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
        out = np.where(keys[at] == hashes, codes[at], NO_CODE).astype(np.int32)
        since = self._by_hash_since
        if since:
            for i in np.flatnonzero(out == NO_CODE).tolist():
                out[i] = since.get(int(hashes[i]), NO_CODE)
        return out

    def _new(self, item_id: str) -> int:
        if not self._free and len(self._code) >= self.max_items:
            self._evict(max(1, self.max_items // 8))
        if self._free:
            c = self._free.pop()
            self.ids[c] = item_id
        else:
            c = len(self.ids)
            if c >= self.capacity:
                self._grow(c + 1)
            self.ids.append(item_id)
        self._code[item_id] = c
        h = self.hashes[c] = item_hash(item_id)
        self.touched[c] = self._clock
        if self._by_hash is not None:
            self._by_hash_since[int(h)] = c
            if len(self._by_hash_since) > max(64, len(self._code) // 8):
                self._by_hash = None
        return c

    def _grow(self, need: int) -> None:
        cap = self.capacity
        while cap < need:
            cap *= 2
        cap = min(cap, max(need, self.max_items))
        for name in ("hashes", "touched"):
            old = getattr(self, name)
            new = np.zeros(cap, dtype=old.dtype)
            new[:len(old)] = old
            setattr(self, name, new)

    def _evict(self, n: int) -> None:
        """Free (up to) the ``n`` codes touched longest ago (ties: lower code first); codes
        touched in the current tick are never evicted (their callers still hold them)."""
        live = np.array([i is not None for i in self.ids], dtype=bool)
        candidates = np.flatnonzero(live)
        candidates = candidates[self.touched[candidates] < self._clock]
        n = min(n, len(candidates))
        if n == 0:  # everything is in use this tick: exceed the bound rather than corrupt
            return
        order = np.lexsort((candidates, self.touched[candidates]))
        victims = candidates[order[:n]].astype(np.int32)
        self.epoch += 1
        if self.on_evict is not None:
            self.on_evict(victims)
        for c in victims.tolist():
            del self._code[self.ids[c]]
            self.ids[c] = None
            self.hashes[c] = 0
        self._free.extend(sorted(victims.tolist(), reverse=True))
        self._by_hash = None

    def live_codes(self) -> np.ndarray:
        """Codes currently in use, ascending."""
        return np.array([c for c, i in enumerate(self.ids) if i is not None], dtype=np.int32)


class FeatureTable:
    """Interest features (``category:<c>``, ``tag:<t>``) as dense codes; never evicted (the
    vocabulary of a catalogue is small next to its items)."""

    def __init__(self) -> None:
        self._code: dict[str, int] = {}
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def code(self, feature: str) -> int:
        c = self._code.get(feature)
        if c is None:
            c = self._code[feature] = len(self.names)
            self.names.append(feature)
        return c

    def get(self, feature: str) -> int:
        return self._code.get(feature, NO_CODE)
