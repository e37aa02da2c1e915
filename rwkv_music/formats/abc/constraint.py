"""``AbcConstraint``: byte-level RWKV ABC models write valid, bar-balanced ABC (issue 4).

Vocabulary of BlinkDL's ABC models (docs/formats.md B): 128 ids, id = byte value, pad 0, bos 2, eos 3;
decoding stops at eos and drops ids <= 3 (:func:`decode_abc`).  Each batch row runs its own
:class:`~rwkv_music.formats.abc.grammar.machine.AbcGrammar` state (strict subset by default): the
prompt bytes are fed at :meth:`AbcConstraint.reset`, every step masks the bytes whose step is
illegal, and eos is legal only where the tune may end.

**Speed.**  A state is a small hashable value; its 128 successors and legal mask are computed
once (about 0.5 ms) into a table shared by every constraint of the same configuration
(:class:`_Table`, a memoised DFA over the states reached so far): a state gets an index, its
legal bytes are one row of a bool array and its transitions one row of an int array filled on
first use.  A step gathers the masks of all free rows at once (``legal[ids]``) and looks their
next states up in the transition array; only rows near their length cap, in the header or forced
along an ending run the per-row plan.  :class:`PerRowAbcConstraint` is the per-row reference.

**Length.**  With ``max_new_tokens`` the row is steered to a legal end in time.  The shortest
known completion ``c`` of the state (:meth:`AbcGrammar.completion`, checked text) tells how many
bytes the end needs.  While ``remaining - 2 >= len(c) + SLACK`` any legal byte may follow
(``SLACK`` bounds how much one byte can lengthen the completion: the largest jump measured is
33, opening a ``(9`` tuplet); after that the row is forced along ``c`` and then eos, which always
fits because the same inequality held one step earlier.  :meth:`AbcConstraint.min_bytes_to_end`
answers "how many more tokens, eos included, does this row need at least".

**Form** (issue 15, on by default): the rows write ``parts`` parts of ``bars_per_part`` bars
with strict bars, section bar lines only at part ends, a line break every ``bars_per_line``
bars, at most ``max_spaces`` spaces in a row, and end on the tonic (``cadence``) right after
the last part (:class:`~rwkv_music.formats.abc.grammar.state.AbcGrammarConfig`).  The ending
then needs the remaining bars, so a row's completion is long: completions are computed from
``len(first body completion) + SLACK + 16`` tokens before the cap (at least ``ZONE``), and in
the header every byte of an ``S:``/``B:``/``M:``/``L:`` value is only allowed when the form it
implies still fits what is left (one such byte can lengthen the ending by far more than
``SLACK``).  A ``max_new_tokens`` that cannot hold the form is refused at construction.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import gc
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import rwkv_music.native_build as native_build
from rwkv_music.errors import ConstraintError
from rwkv_music.formats.abc import fast_table, table_disk
from rwkv_music.formats.abc.grammar.machine import PHASE_NAMES, AbcGrammar
from rwkv_music.formats.abc.grammar.state import BODY, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.header import check_key, check_meter, check_unit
from rwkv_music.formats.abc.variety import BarRun, RhythmRun
from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError

log = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3
VOCAB = 128
SLACK = 64  # > the largest one-byte growth of the completion length (33, measured on random walks)
ZONE = 128  # completion lengths are only computed in the last ZONE tokens of a row (> SLACK + 2 + any completion)
_CACHE_LIMIT = 200_000  # states in the shared tables (all together) before the oldest is dropped
_PROMPT_CACHE = 256  # prompts whose end state a table remembers (strictly read ones only) ...
_PROMPT_CACHE_LENGTH = 512  # ... of at most this many ids (a header; a long prompt's prefill dwarfs its reading)


def decode_abc(ids: Sequence[int]) -> str:
    """Model output to text: stop at eos (3), drop ids <= 3.

    >>> decode_abc([2, 76, 58, 49, 3, 65])
    'L:1'
    """
    out = []
    for t in ids:
        t = int(t)
        if t == EOS_ID:
            break
        if t > EOS_ID:
            out.append(chr(t))
    return "".join(out)


class _Entry:
    """A state's row of its table: ``index``, ``legal`` (bool[128], eos included when the tune may end
    here) and ``successors`` (per byte 0..127, None where illegal; eos is not a byte), which a state
    read from disk computes on first use."""

    __slots__ = ("index", "legal", "_successors", "_make")

    def __init__(self, index: int, legal: np.ndarray, successors: tuple[AbcState | None, ...] | None,
                 make: Callable[[], tuple[AbcState | None, ...]] | None = None) -> None:
        self.index, self.legal, self._successors, self._make = index, legal, successors, make

    @property
    def computed(self) -> bool:
        """Whether :attr:`successors` is known (a state read from disk: not until first asked)."""
        return self._successors is not None

    @property
    def successors(self) -> tuple[AbcState | None, ...]:
        found = self._successors
        if found is None:
            assert self._make is not None
            found = self._successors = self._make()
            self._make = None
        return found


_UNKNOWN = -2  # a transition not computed yet (-1: illegal byte)
_NOT_FOUND = object()


class _Table:
    """The grammar of one configuration as data, filled lazily: state index, legal masks, transitions.

    ``legal[i]`` is the bool[128] mask of state ``i`` (eos included where the tune may end),
    ``trans[i, b]`` the index of its successor after byte ``b`` (-1 illegal, ``_UNKNOWN`` not
    computed yet), ``body[i]`` whether it is in the tune body.  Shared by the constraints of one
    configuration (:func:`_table_for`), so later pieces find the states earlier ones reached.
    """

    def __init__(self, config: AbcGrammarConfig, eos_id: int) -> None:
        self.grammar = AbcGrammar(config)
        self.eos_id = eos_id
        self.entries: dict[AbcState, _Entry] = {}
        self.states: list[AbcState] = []
        self.completions: dict[AbcState, str | None] = {}
        # the same by state index: a state's hash hashes its Fractions, which cost ~15 % of a
        # constrained compose when every watched row asked every step
        self.by_index: list[_Entry] = []
        self._completion_at: dict[int, str | None] = {}
        # prompts read before (the same header for every piece of a compose): reading one byte by byte
        # through the grammar takes ~0.25 ms, as long as a piece's whole sampling at B=1 for 2 steps
        self.prompt_states: dict[tuple[int, ...], AbcState] = {}
        self.legal = np.zeros((256, VOCAB), dtype=bool)
        self.trans = np.full((256, VOCAB), _UNKNOWN, dtype=np.int32)
        self.body = np.zeros(256, dtype=bool)
        self.hits = self.misses = 0  # transitions found in the table / computed
        self.saved = 0  # states in the file this table was read from or last written to
        self.columns = table_disk.Columns()  # the states' encoding for that file, extended by each save

    def __len__(self) -> int:
        return len(self.states)

    def entry(self, state: AbcState) -> _Entry:
        entry = self.entries.get(state)
        if entry is None:
            successors = self._successors(state)
            legal = np.fromiter((s is not None for s in successors), dtype=bool, count=VOCAB)
            legal[self.eos_id] = self.grammar.is_final(state)
            i = len(self.states)
            self._room(i + 1)
            self.legal[i] = legal
            row = self.trans[i]  # successors found on first use (step); -1 for illegal bytes
            row[:] = _UNKNOWN
            row[~legal] = -1
            row[self.eos_id] = -1  # eos ends the row: no successor
            self.body[i] = state.phase == BODY
            self.states.append(state)
            entry = self.entries[state] = _Entry(i, legal, successors)
            self.by_index.append(entry)
        return entry

    def _successors(self, state: AbcState) -> tuple[AbcState | None, ...]:
        """The state after each byte (None: illegal), from the grammar (about 0.6 ms a new state)."""
        g = self.grammar
        extend = g.extenders(state)
        if extend is None:
            out: list[AbcState | None] = [None] * VOCAB
            for char in g.candidates(state):
                if ord(char) > EOS_ID:
                    out[ord(char)] = g.step(state, char)
            return tuple(out)
        # bytes that end the token are read from the state after it (cached, shared)
        done = g.finish_token(state)
        after = self.entry(done).successors if done is not None else (None,) * VOCAB
        return tuple(
            None if b <= EOS_ID else (g.step(state, chr(b)) if chr(b) in extend else after[b]) for b in range(VOCAB)
        )

    def _successor(self, state: AbcState, byte: int) -> AbcState | None:
        """``_successors(state)[byte]``, computing only that byte's successor (the same rules byte by byte;
        ``_successors`` is not built from this, which would end the token once per byte instead of once)."""
        if byte <= EOS_ID:
            return None
        g, char = self.grammar, chr(byte)
        extend = g.extenders(state)
        if extend is None:
            return g.step(state, char) if char in g.candidates(state) else None
        if char in extend:
            return g.step(state, char)
        done = g.finish_token(state)
        if done is None:
            return None
        after = self.entry(done)
        return after.successors[byte] if after.computed else self._successor(done, byte)

    def _room(self, n: int) -> None:
        """Arrays for at least ``n`` states (grown by doubling)."""
        size = len(self.legal)
        if n <= size:
            return
        while size < n:
            size *= 2
        grow = size - len(self.legal)
        self.legal = np.concatenate([self.legal, np.zeros((grow, VOCAB), dtype=bool)])
        self.trans = np.concatenate([self.trans, np.full((grow, VOCAB), _UNKNOWN, dtype=np.int32)])
        self.body = np.concatenate([self.body, np.zeros(grow, dtype=bool)])

    # -- on disk (table_disk) -------------------------------------------------------------------
    def load(self, path: Path) -> bool:
        """Start from the table saved at ``path`` (an empty table only); False where there is none to read."""
        if self.states:
            raise RuntimeError("only an empty table loads a saved one")
        paused = gc.isenabled()  # (tens of thousands of new objects at once: no collection in between)
        gc.disable()
        try:
            found = table_disk.load(path)
            if found is None:
                return False
            states, legal, trans, body, columns = found
            n = len(states)
            self._room(n)
            self.legal[:n], self.trans[:n], self.body[:n] = legal, trans, body
            make, rows = self._successors, list(legal)  # (rows: views of the file's array, which never grows)
            loaded = [_Entry(i, rows[i], None, functools.partial(make, state)) for i, state in enumerate(states)]
            self.entries.update(zip(states, loaded))
            self.by_index.extend(loaded)
        finally:
            if paused:
                gc.enable()
        if len(self.entries) != n:  # (a file with a state twice: start empty)
            self.entries.clear()
            self.by_index.clear()
            self.legal[:n], self.trans[:n], self.body[:n] = False, _UNKNOWN, False
            return False
        self.states = list(states)
        self.saved, self.columns = n, columns
        return True

    def save(self, path: Path) -> bool:
        """Write this table to ``path`` (:func:`table_disk.save`)."""
        n = len(self.states)
        if table_disk.save(path, self.states, self.legal[:n], self.trans[:n], self.body[:n], self.columns):
            self.saved = n
            return True
        return False

    def step(self, i: int, byte: int) -> int:
        """The index of state ``i``'s successor after a legal ``byte`` (filled on first use)."""
        nxt = int(self.trans[i, byte])
        if nxt == _UNKNOWN:
            self.misses += 1
            entry = self.by_index[i]
            # (a state read from disk: this byte's successor alone, not all 128)
            succ = entry.successors[byte] if entry.computed else self._successor(self.states[i], byte)
            nxt = self.entry(succ).index if succ is not None else -1
            self.trans[i, byte] = nxt
        else:
            self.hits += 1
        return nxt

    def completion_at(self, i: int) -> str | None:
        """:meth:`completion` of state index ``i``."""
        found = self._completion_at.get(i, _NOT_FOUND)
        if found is _NOT_FOUND:
            found = self._completion_at[i] = self.completion(self.states[i])
        return found  # type: ignore[return-value]

    def completion(self, state: AbcState) -> str | None:
        if state not in self.completions:
            if len(self.completions) >= _CACHE_LIMIT:
                self.completions.clear()
            self.completions[state] = self.grammar.completion(state)
        return self.completions[state]


_TABLES: dict[tuple[AbcGrammarConfig, int], _Table] = {}
_TABLE_CONFIGS = 8  # configurations whose tables are kept (oldest dropped first)


_SAVE_GROWTH = 64  # new states that make a table worth writing again when the process ends


def _table_for(config: AbcGrammarConfig, eos_id: int) -> _Table:
    """The shared table of a configuration; a fresh one once it holds ``_CACHE_LIMIT`` states.  A new
    table starts from the one saved on disk (:mod:`~rwkv_music.formats.abc.table_disk`)."""
    key = (config, eos_id)
    table = _TABLES.pop(key, None)
    if table is None or len(table) >= _CACHE_LIMIT:
        table = _Table(config, eos_id)
        if table_disk.enabled():
            table.load(table_disk.table_path(config, eos_id))
            _save_at_exit()
    _TABLES[key] = table  # (re)inserted last: the most recently used
    # at most _TABLE_CONFIGS tables and _CACHE_LIMIT states in all (as one processor's cache before)
    while len(_TABLES) > 1 and (len(_TABLES) > _TABLE_CONFIGS or sum(map(len, _TABLES.values())) > _CACHE_LIMIT):
        del _TABLES[next(iter(_TABLES))]
    return table


@functools.lru_cache(maxsize=1)
def _save_at_exit() -> None:
    atexit.register(_save_tables_quietly)


def _save_tables_quietly() -> None:
    try:
        save_tables()
    except Exception as exc:  # (an exit never fails over a cache)
        log.debug("the ABC grammar tables were not saved: %s: %s", type(exc).__name__, exc)


def save_tables() -> int:
    """Write every table of this process that grew by :data:`_SAVE_GROWTH` states since it was read or
    written, unless its file already holds as many states (another process's); how many were written."""
    written = 0
    if not table_disk.enabled():
        return written
    for (config, eos_id), table in list(_TABLES.items()):
        if len(table) - table.saved < _SAVE_GROWTH:
            continue
        path = table_disk.table_path(config, eos_id)
        if table_disk.saved_count(path) >= min(len(table), table_disk.MAX_SAVED):
            continue
        written += table.save(path)
    return written


@functools.lru_cache(maxsize=8)
def _tolerant_grammar(config: AbcGrammarConfig) -> AbcGrammar:
    """The grammar of ``config`` with the section rule for short bars and empty bars allowed (reading
    callers' prompts only: ``:| |:`` is common in human tunes)."""
    return AbcGrammar(dataclasses.replace(config, short_bars="sections", empty_bars=True))


class AbcConstraint(LogitsProcessor):
    """Only bytes that keep every row valid, bar-balanced ABC (a grammar state per row).

    Args:
        config: the ABC subset (default: strict :class:`AbcGrammarConfig`).
        meter, unit, key: the only ``M:`` / ``L:`` / ``K:`` value the header may state
            (e.g. ``"6/8"``, ``"1/8"``, ``"Dmix"``); ``None`` = any valid value.  Checked by the
            one header validator (:mod:`rwkv_music.formats.abc.header`, raising
            :class:`~rwkv_music.errors.AbcFormatError`); the header must then state the value as
            given (stripped), so a prompt's own spelling can be forced.
        max_new_tokens: steer each row to a legal end within this many sampled tokens (eos
            included); ``None`` = no length steering.
        eos_id: the end-of-tune id (3 for BlinkDL's ABC models).
        form: impose the tune form (default ``True`` without ``config``; with a ``config``,
            ``None`` keeps ``config.form``).  The form keywords below override the config's
            fields when not ``None``:
        parts: parts of the tune (default: the prompt's ``S:n``, else 2).
        bars_per_part: bars per part (default: the prompt's ``B:m``, else 8).
        cadence: end on the tonic of ``K:`` (default ``True``).
        max_spaces: most spaces in a row (default 1).
        bars_per_line: bars per line of music (default 4).
        max_bar_repeats: most times one bar may be written in a row (spaces aside): the byte that
            would go on copying it once more is banned, unless it is the only legal one
            (:mod:`rwkv_music.formats.abc.variety`).  Default 2 under the form, else no limit; 0 = no limit.
        vary_rhythm: after three bars whose notes all have one written length, the next note takes
            another (its length bytes banned, unless nothing else is legal; :mod:`rwkv_music.formats.abc.variety`).
            Default: on under the form.

    Prompts (``reset``) are fed to the grammar after dropping ids <= 3 (bos); a prompt byte the
    grammar does not allow raises :class:`ConstraintError` naming the row and position.  A
    sampled token that is not allowed (``update``) raises too.  Rows that finished get the
    loop's pad id, which is ignored.

    >>> c = AbcConstraint()
    >>> c.reset([[2] + [ord(ch) for ch in "L:1/8\\nM:2/4\\nK:G\\nG2 A2|B3"]])
    >>> allowed = np.isfinite(c(0, np.zeros((1, 128), dtype=np.float32)))[0]
    >>> [chr(i) for i in np.flatnonzero(allowed) if chr(i) in "|c2/"]  # a short bar: no bar line of any kind
    ['/', 'c']
    """

    rule = "abc_grammar"

    def __init__(
        self,
        config: AbcGrammarConfig | None = None,
        *,
        meter: str | None = None,
        unit: str | None = None,
        key: str | None = None,
        max_new_tokens: int | None = None,
        eos_id: int = EOS_ID,
        form: bool | None = None,
        parts: int | None = None,
        bars_per_part: int | None = None,
        cadence: bool | None = None,
        max_spaces: int | None = None,
        bars_per_line: int | None = None,
        max_bar_repeats: int | None = None,
        vary_rhythm: bool | None = None,
    ) -> None:
        cfg = config if config is not None else AbcGrammarConfig(form=True)
        shape = {"form": form, "parts": parts, "bars_per_part": bars_per_part, "cadence": cadence,
                 "max_spaces": max_spaces, "bars_per_line": bars_per_line}  # fmt: skip
        shape = {k: v for k, v in shape.items() if v is not None}
        if shape:
            cfg = dataclasses.replace(cfg, **shape)
        forced = {}
        for name, value, check in (("meter", meter, check_meter), ("unit", unit, check_unit), ("key", key, check_key)):
            if value is not None:
                check(value)
                forced[name] = str(value).strip()
        if forced:
            cfg = dataclasses.replace(cfg, **forced)
        if cfg.form and cfg.meter is not None and cfg.meter.strip().lower() == "none":
            cfg = dataclasses.replace(cfg, form=False)  # a free metre has no bars to shape
        if max_new_tokens is not None and (
            isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1
        ):
            raise SamplingValueError(f"max_new_tokens must be an integer >= 1 or None, got {max_new_tokens!r}")
        if not (isinstance(eos_id, int) and 0 <= eos_id <= 3):
            raise SamplingValueError(f"eos_id must be one of the special ids 0..3, got {eos_id!r}")
        if max_bar_repeats is not None and (
            isinstance(max_bar_repeats, bool) or not isinstance(max_bar_repeats, int) or max_bar_repeats < 0
        ):
            raise SamplingValueError(f"max_bar_repeats must be an integer >= 0 (0 = no limit), got {max_bar_repeats!r}")
        self.config = cfg
        self.max_bar_repeats = (2 if cfg.form else 0) if max_bar_repeats is None else max_bar_repeats
        self.vary_rhythm = bool(cfg.form) if vary_rhythm is None else bool(vary_rhythm)
        self._runs: list[BarRun] = []  # per row: the bars it wrote (max_bar_repeats)
        self._rhythms: list[RhythmRun] = []  # per row: the note lengths it wrote (vary_rhythm)
        self._copy: list[int] = []  # per row: the byte that would copy a bar once too often, or -1
        self._plain: list[tuple[str, str] | None] = []  # per row: RhythmRun.banned(), the rule's bytes now
        self._banning: set[int] = set()  # rows whose _copy or _plain bans a byte now
        self._table = _table_for(cfg, eos_id)
        self.grammar = self._table.grammar
        self.max_new_tokens = max_new_tokens
        self.eos_id = eos_id
        self._ids = np.zeros(0, dtype=np.int64)  # per row: its state's index in the table (-1: ended)
        self._counts = np.zeros(0, dtype=np.int64)  # tokens sampled per row
        self._forced: list[str | None] = []  # the completion a row is being forced along
        self._is_forced = np.zeros(0, dtype=bool)
        self._zones = np.zeros(0, dtype=np.int64)  # per row: completions watched this many tokens before the cap
        self._planned_now: np.ndarray | None = None  # _planned() until a row's state changes
        self.native = True  # the batch step's table work in C (fast_table.c) where it builds; False: numpy
        self._flags = tuple(np.zeros(0, dtype=bool) for _ in range(4))  # C step outputs: planned, active, slow, near
        if max_new_tokens is not None and cfg.form:
            least = self._least_for_form()
            if max_new_tokens < least:
                raise SamplingValueError(
                    f"max_new_tokens {max_new_tokens} is too small for the form: it needs at least {least} "
                    f"(ask for fewer parts or bars, --parts/--bars-per-part, or drop the form, --free-form)"
                )

    def _least_for_form(self) -> int:
        """Fewest tokens a tune body of the configured form takes (exact when meter and unit are forced)."""
        cfg = self.config
        parts, bars = cfg.parts or 2, cfg.bars_per_part or 8
        if cfg.meter is not None and cfg.unit is not None:
            head = f"M:{cfg.meter}\nL:{cfg.unit}\nK:{cfg.key or 'C'}\n"
            state = self.grammar.feed(self.grammar.initial(), head)
            # the shared table's cache: the search took 2-4 ms for every compose call
            need = self._table.completion(state) if state is not None else None
            if need is not None:
                return len(need) + 1
        return parts * bars * 2 + parts * bars // cfg.bars_per_line + 1  # at least "z|" a bar and the breaks

    # -- per-state tables ---------------------------------------------------------------------
    def _entry(self, state: AbcState) -> _Entry:
        return self._table.entry(state)

    def _completion(self, state: AbcState) -> str | None:
        return self._table.completion(state)

    def _state_of(self, row: int) -> AbcState | None:
        i = int(self._ids[row])
        return self._table.states[i] if i >= 0 else None

    def _plan(self, row: int) -> tuple[np.ndarray, str | None]:
        """Legal ids of a row, and the completion it is forced along (None while free)."""
        i = int(self._ids[row])
        if i < 0:  # ended: only eos again
            only = np.zeros(VOCAB, dtype=bool)
            only[self.eos_id] = True
            return only, None
        table = self._table
        state, entry = table.states[i], table.by_index[i]
        path = self._forced[row]
        legal = entry.legal
        if path is None and self.max_new_tokens is not None:
            remaining = self.max_new_tokens - int(self._counts[row])
            if remaining <= self._zone(row, i):
                path = table.completion_at(i)
                if path is not None and remaining - 2 >= len(path) + SLACK:
                    path = None  # still free
                    if self.config.form and state.phase != BODY and state.mode == "value":
                        legal = self._fitting(entry, remaining)
        if path is None:
            return legal, None
        only = np.zeros(VOCAB, dtype=bool)
        only[ord(path[0]) if path else self.eos_id] = True
        return only, path

    def _zone(self, row: int, i: int) -> int:
        """How many tokens before the cap this row's completions are watched (always, in the header);
        ``i``: the row's state index."""
        if not self._table.body[i]:
            return self.max_new_tokens or 0
        zone = int(self._zones[row])
        if zone < 0:
            need = self._table.completion_at(i)
            zone = max(ZONE, (len(need) if need is not None else 0) + SLACK + 16)
            self._zones[row] = zone
            self._planned_now = None
        return zone

    def _fitting(self, entry: _Entry, remaining: int) -> np.ndarray:
        """The legal bytes after which the (form's) shortest ending still fits ``remaining - 1`` tokens."""
        legal = entry.legal.copy()
        for b in np.flatnonzero(legal):
            nxt = entry.successors[b] if b != self.eos_id else None
            if nxt is not None:
                need = self._completion(nxt)
                legal[b] = need is not None and len(need) + 1 <= remaining - 1
        return legal

    def _planned_row(self, row: int) -> bool:
        """:meth:`_planned` of one row, in Python scalars (the one-row step: numpy's per-call cost
        made the vectorized path 2-4x slower than this at B = 1)."""
        i = int(self._ids[row])
        if i < 0 or self._is_forced[row]:
            return True
        if self.max_new_tokens is None:
            return False
        zone = int(self._zones[row])
        return not self._table.body[i] or zone < 0 or self.max_new_tokens - int(self._counts[row]) <= zone

    def _planned(self) -> np.ndarray:
        """Rows whose mask is not their state's table row: ended, forced, or watched near the cap.

        Free rows (the rest) take ``legal[ids]`` as they are: :meth:`_plan` returns exactly that
        for them (no forcing, and the completion is only looked at inside the zone; the header is
        always inside it).
        """
        out = self._planned_now
        if out is None:  # (kept from process() to update(): the rows' states only change in between)
            out = (self._ids < 0) | self._is_forced
            if self.max_new_tokens is not None:
                body = self._table.body[np.maximum(self._ids, 0)]
                out |= ~body | (self._zones < 0) | (self.max_new_tokens - self._counts <= self._zones)
            self._planned_now = out
        return out

    # -- the protocol -------------------------------------------------------------------------
    def _read_prompt(self, grammar: AbcGrammar, row: int, prompt: Sequence[int]) -> AbcState:
        """The grammar state after ``prompt`` (ConstraintError naming the row, position and byte)."""
        state = grammar.initial()
        for pos, t in enumerate(prompt):
            t = int(t)
            if t == self.eos_id:
                raise ConstraintError(f"{self.rule}: prompt row {row} has eos at position {pos}")
            if t <= EOS_ID:
                continue
            nxt = grammar.step(state, chr(t)) if t < VOCAB else None
            if nxt is None:
                where = f"{PHASE_NAMES[state.phase]}/{state.mode}"
                char = chr(t) if t < VOCAB else t
                raise ConstraintError(
                    f"{self.rule}: prompt row {row}, position {pos}: byte {char!r} is not valid ABC here ({where})"
                )
            state = nxt
        return state

    def _prompt_state(self, row: int, prompt: Sequence[int]) -> AbcState:
        """Read a prompt strictly; a human tune the strict metre rejects (a pickup no last bar completes,
        a short bar before ``||``) is read with the old section rule instead, and the new music after it
        is held to the strict rule again: the prompt is the caller's music, not ours to judge."""
        key = tuple(int(t) for t in prompt) if len(prompt) <= _PROMPT_CACHE_LENGTH else None
        known = self._table.prompt_states.get(key) if key is not None else None
        if known is not None:
            return known
        try:
            state = self._read_prompt(self.grammar, row, prompt)
        except ConstraintError as strict:
            cfg = self.config
            if cfg.short_bars != "paired" or cfg.lenient or cfg.form:
                raise
            tolerant = _tolerant_grammar(cfg)
            try:
                return self._read_prompt(tolerant, row, prompt)
            except ConstraintError:
                raise strict from None
        if key is not None:
            if len(self._table.prompt_states) >= _PROMPT_CACHE:
                self._table.prompt_states.clear()
            self._table.prompt_states[key] = state
        return state

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        ids: list[int] = []
        for row, prompt in enumerate(prompts):
            state = self._prompt_state(row, prompt)
            if self.max_new_tokens is not None:
                need = self._completion(state)
                if need is None or len(need) + 1 > self.max_new_tokens:
                    least = "?" if need is None else len(need) + 1
                    raise ConstraintError(
                        f"{self.rule}: prompt row {row} needs at least {least} more tokens to end, "
                        f"max_new_tokens is {self.max_new_tokens}"
                    )
            ids.append(self._entry(state).index)
        n = len(ids)
        self._runs = [BarRun() for _ in range(n)]
        self._rhythms = [RhythmRun() for _ in range(n)]
        self._copy = [-1] * n
        self._plain = [None] * n
        self._banning = set()
        for row, prompt in enumerate(prompts):
            self._note_bytes(row, [int(t) for t in prompt if EOS_ID < int(t) < VOCAB])
        self._ids = np.array(ids, dtype=np.int64)
        self._counts = np.zeros(n, dtype=np.int64)
        self._forced = [None] * n
        self._is_forced = np.zeros(n, dtype=bool)
        self._zones = np.full(n, -1, dtype=np.int64)
        self._planned_now = None
        self._flags = tuple(np.zeros(n, dtype=bool) for _ in range(4))

    def _check_rows(self, n: int, what: str) -> None:
        if n != len(self._ids):
            raise SamplingValueError(f"{self.rule}: {what} {n} rows; reset() had {len(self._ids)}")

    def _masks(self, active: np.ndarray) -> np.ndarray:
        """bool [B, 128]: every active row's legal ids (one gather for the free rows)."""
        keep = self._table.legal[np.maximum(self._ids, 0)]
        for row in np.flatnonzero(active & self._planned()):
            keep[row] = self._plan(int(row))[0]
        return keep

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        return self.apply_inplace(step, np.array(scores))

    def apply_inplace(self, step: int, scores: np.ndarray) -> np.ndarray:
        """:meth:`process` written into ``scores`` (a numpy array the caller owns); returns it.

        Active rows (any finite score) keep their legal ids' scores, the rest become -inf (ids past the
        128 bytes too); inactive rows stay as they are.  (The decode loop's host path runs this on its
        work buffer: no [B, V] temporaries.)
        """
        if scores.shape[0] != len(self._ids):
            raise SamplingValueError(
                f"{self.rule}: scores have {scores.shape[0]} rows, reset() had {len(self._ids)}"
            )
        width = min(scores.shape[1], VOCAB)
        if scores.shape[0] == 1:
            return self._apply_one(scores, width)
        lib = self._kernels(scores)
        if lib is not None:  # the free rows in C; the planned ones below, as _masks does them
            table, at = self._table, native_build.address
            planned, active = self._flags[0], self._flags[1]
            lib.rwkv_abc_mask(at(scores), scores.shape[0], scores.shape[1], at(self._ids), at(self._is_forced),
                              at(self._zones), at(self._counts), self._cap(), at(table.body), at(table.legal),
                              at(planned), at(active))
            self._planned_now = planned
            for row in np.flatnonzero(active & planned):
                line = scores[row]
                np.copyto(line[:width], line.dtype.type(-np.inf), where=~self._plan(int(row))[0][:width])
                line[VOCAB:] = -np.inf
            return self._apply_variety(scores)
        active = np.isfinite(scores).any(axis=1)
        drop = ~self._masks(active)[:, :width]
        drop[~active] = False
        np.copyto(scores[:, :width], scores.dtype.type(-np.inf), where=drop)
        if scores.shape[1] > VOCAB:
            scores[active, VOCAB:] = -np.inf
        return self._apply_variety(scores)

    @classmethod
    def apply_rows(cls, procs: Sequence["AbcConstraint"], scores: np.ndarray) -> bool:
        """Row r of ``scores`` (``[P, V]``, the caller's to write) processed by ``procs[r]``, each a
        one-row constraint of its own (the pieces of a render's pool), the free rows' masks in one
        gather; False (nothing written) where that cannot run, and the caller processes the rows one
        by one.

        Row r ends as ``procs[r].apply_inplace(step, scores[r : r + 1])`` leaves it (tested).  The
        pool's rows went one by one before, 20-25 us each: 0.72 ms of a 32-piece render step.
        """
        table = cls._pool_table(procs)
        if table is None:
            return False
        width = min(scores.shape[1], VOCAB)
        free = np.isfinite(scores).any(axis=1)  # active rows; inactive ones stay as they are
        own = []  # rows whose mask is not their state's table row (see _planned): each alone
        for r, proc in enumerate(procs):
            if free[r] and proc._planned_row(0):
                own.append(r)
                free[r] = False
        ids = np.fromiter((proc._ids[0] for proc in procs), dtype=np.int64, count=len(procs))
        drop = ~table.legal[np.maximum(ids, 0), :width]
        drop[~free] = False
        np.copyto(scores[:, :width], scores.dtype.type(-np.inf), where=drop)
        if scores.shape[1] > VOCAB:
            scores[free, VOCAB:] = -np.inf
        for r in own:
            procs[r]._apply_one(scores[r : r + 1], width)
        for r in np.flatnonzero(free):  # the variety rules, where a free row has a byte to ban
            if procs[r]._banning:
                procs[r]._apply_variety(scores[r : r + 1])
        return True

    @staticmethod
    def _pool_table(procs: Sequence["AbcConstraint"]) -> _Table | None:
        """The one table of a pool's constraints, or None where they cannot be masked together: none, the
        per-row reference class, another table, or a constraint of more than one row."""
        if not procs:
            return None
        table = procs[0]._table
        for proc in procs:
            if type(proc) is not AbcConstraint or proc._table is not table or len(proc._ids) != 1:
                return None
        return table

    # -- on the scores' device (a GPU's logits) ------------------------------------------------
    def apply_device(self, step: int, scores: Any) -> Any:
        """:meth:`process` of a torch tensor where it is (a GPU's logits), as a new tensor; None (declined)
        for the per-row reference class.

        The masks come from the rows' grammar states alone, so they are made here and cross to the device
        as a ``[B, 128]`` bool; what the rules need of the scores (which rows are active, whether a banned
        byte leaves another legal one) is read there.  Nothing crosses back: the scores never come to the
        host (before, each row's 128 scores went to the host and back mid-step)."""
        if type(self) is not AbcConstraint:
            return None
        self._check_rows(scores.shape[0], "scores have")
        keep = self._masks(np.ones(len(self._ids), dtype=bool))
        return _mask_on_device(scores, keep, [(row, self._copy[row], self._plain[row]) for row in self._banning])

    @classmethod
    def apply_rows_device(cls, procs: Sequence["AbcConstraint"], scores: Any) -> Any:
        """:meth:`apply_rows` of a torch tensor on its device (row r by ``procs[r]``, one-row constraints of
        one table), as :meth:`apply_device` does it: the result (a new tensor), or None (nothing done)."""
        table = cls._pool_table(procs)
        if table is None:
            return None
        ids = np.fromiter((proc._ids[0] for proc in procs), dtype=np.int64, count=len(procs))
        keep = table.legal[np.maximum(ids, 0)]
        for r, proc in enumerate(procs):
            if proc._planned_row(0):
                keep[r] = proc._plan(0)[0]
        bans = [(r, proc._copy[0], proc._plain[0]) for r, proc in enumerate(procs) if proc._banning]
        return _mask_on_device(scores, keep, bans)

    def _kernels(self, scores: np.ndarray | None = None) -> object | None:
        """fast_table.c's library where the batch step may run there (scores, when given, float32 in C order)."""
        if not self.native or (scores is not None and not native_build.plain(scores, np.float32)):
            return None
        return fast_table.kernels()

    def _cap(self) -> int:
        return -1 if self.max_new_tokens is None else int(self.max_new_tokens)

    def _apply_one(self, scores: np.ndarray, width: int) -> np.ndarray:
        """:meth:`apply_inplace` of a one-row batch (the same mask; no [B, 128] temporaries)."""
        row = scores[0]
        if not np.isfinite(row).any():
            return scores  # inactive: left as it is
        keep = self._plan(0)[0] if self._planned_row(0) else self._table.legal[self._ids[0]]
        np.copyto(row[:width], row.dtype.type(-np.inf), where=~keep[:width])
        if row.shape[0] > VOCAB:
            row[VOCAB:] = -np.inf
        return self._apply_variety(scores) if self._copy[0] >= 0 or self._plain[0] is not None else scores

    # -- the variety rules (max_bar_repeats, vary_rhythm) ---------------------------------------
    def _note_bytes(self, row: int, tokens: Sequence[int]) -> None:
        """Feed a row's new bytes (no special ids) to its variety rules; refresh what they ban."""
        for t in tokens:
            self._note_byte(row, chr(t))

    def _note_byte(self, row: int, ch: str) -> None:
        if self.max_bar_repeats:
            run = self._runs[row]
            run.feed(ch)
            self._copy[row] = run.copy_byte(self.max_bar_repeats)
        if self.vary_rhythm:
            rhythm = self._rhythms[row]
            if not rhythm.varied:
                rhythm.feed(ch)
                self._plain[row] = rhythm.banned()
        if self._copy[row] >= 0 or self._plain[row] is not None:
            self._banning.add(row)
        else:
            self._banning.discard(row)

    def _apply_variety(self, scores: np.ndarray) -> np.ndarray:
        """The variety rules on each active row (masks already applied): its copy byte, then its one-length
        bytes, each banned only where another legal byte is left."""
        for row in self._banning:  # (the rows with a byte to ban now: few, and none most steps)
            t, plain = self._copy[row], self._plain[row]
            line = scores[row]
            legal = np.isfinite(line)
            if t >= 0 and t < line.shape[0] and legal[t] and np.count_nonzero(legal) > 1:
                line[t] = -np.inf
                legal[t] = False
            if plain is not None:
                drop = _one_length_drop(plain, line.shape[0])
                if np.count_nonzero(legal & ~drop):
                    line[drop] = -np.inf
        return scores

    def _note_sampled(self, tokens: Sequence[int]) -> None:
        """After a step: the rows' sampled bytes (not the pad id or the end) to their variety rules."""
        if not (self.max_bar_repeats or self.vary_rhythm):
            return
        for row, t in enumerate(tokens):
            if EOS_ID < t < VOCAB:  # (one row at a time: ~1 us a row, 2-3 % of an ABC step at B=32)
                self._note_byte(row, chr(t))

    def _reject(self, row: int, t: int) -> None:
        state = self._state_of(row)
        where = f"{PHASE_NAMES[state.phase]}/{state.mode}" if state is not None else "ended"
        step = int(self._counts[row])
        raise ConstraintError(f"{self.rule}: step {step}, row {row}: token {t} is not allowed here ({where})")

    def update(self, tokens: Sequence[int]) -> None:
        if len(tokens) != len(self._ids):
            raise SamplingValueError(f"{self.rule}: update got {len(tokens)} tokens for a batch of {len(self._ids)}")
        self._move(tokens)
        self._note_sampled(tokens)

    def _move(self, tokens: Sequence[int]) -> None:
        """Check and step every row's grammar state by its token."""
        if len(tokens) == 1:
            self._update_one(0, int(tokens[0]))
            return
        toks = np.array([int(t) for t in tokens], dtype=np.int64)
        planned = self._planned()
        self._planned_now = None  # every row below may move
        table = self._table
        lib = self._kernels()
        if lib is not None:  # the free rows' check and move in C; the rows it hands back as below
            at = native_build.address
            slow, near = self._flags[2], self._flags[3]
            hits = lib.rwkv_abc_move(len(toks), toks.ctypes.data, at(self._ids), at(self._counts), at(planned),
                                     at(table.trans), at(table.legal), at(table.body), at(self._zones), self._cap(),
                                     self.eos_id, PAD_ID, at(slow), at(near))
            if hits < 0:
                self._reject(-hits - 1, int(toks[-hits - 1]))
            table.hits += hits
            for row in np.flatnonzero(near):
                self._check_room(int(row))
            self._move_slow(np.flatnonzero(slow), toks, planned)
            return
        live = (self._ids >= 0) & (toks != PAD_ID)  # finished rows get the loop's pad id
        free = live & ~planned
        if free.any():  # one gather checks every free row
            rows = np.flatnonzero(free)
            t = toks[rows]
            ok = (t >= 0) & (t < VOCAB)
            ok[ok] = table.legal[self._ids[rows[ok]], t[ok]]
            if not ok.all():
                bad = int(rows[np.flatnonzero(~ok)[0]])
                self._reject(bad, int(toks[bad]))
        slow = live & planned
        if free.any():  # free rows whose successor the table already knows: one gather, no Python per row
            rows = np.flatnonzero(free)
            t = toks[rows]
            ends = t == self.eos_id
            nxt = table.trans[self._ids[rows], t]
            known = ends | (nxt != _UNKNOWN)
            rows, t, ends, nxt = rows[known], t[known], ends[known], nxt[known]
            table.hits += int((~ends).sum())
            self._counts[rows] += 1
            self._ids[rows] = np.where(ends, -1, nxt)  # (free rows are not forced: _forced stays None)
            slow |= free
            slow[rows] = False
            if self.max_new_tokens is not None:  # near the cap: the same check as _advance
                left = self.max_new_tokens - self._counts[rows]
                near = rows[~ends & ((left <= self._zones[rows]) | ~table.body[np.maximum(nxt, 0)])]
                for row in near:
                    self._check_room(int(row))
        self._move_slow(np.flatnonzero(slow), toks, planned)

    def _move_slow(self, rows: np.ndarray, toks: np.ndarray, planned: np.ndarray) -> None:
        """The rows :meth:`_move` steps one at a time: planned rows, and free rows meeting a transition first."""
        for row in rows:
            row = int(row)
            t = int(toks[row])
            path = None
            if planned[row]:
                legal, path = self._plan(row)
                if not (0 <= t < VOCAB and legal[t]):
                    self._reject(row, t)
            self._advance(row, None if t == self.eos_id else self._table.step(int(self._ids[row]), t), path)

    def _update_one(self, row: int, t: int) -> None:
        """:meth:`update` of one row in Python scalars: the same checks and moves as the batch path."""
        i = int(self._ids[row])
        if i < 0 or t == PAD_ID:  # ended, or the loop's pad id
            return
        planned = self._planned_row(row)
        self._planned_now = None
        table = self._table
        if planned:
            legal, path = self._plan(row)
            if not (0 <= t < VOCAB and legal[t]):
                self._reject(row, t)
            self._advance(row, None if t == self.eos_id else table.step(i, t), path)
            return
        if not (0 <= t < VOCAB and table.legal[i, t]):
            self._reject(row, t)
        nxt = -1 if t == self.eos_id else int(table.trans[i, t])
        if nxt == _UNKNOWN:  # a transition met for the first time
            self._advance(row, table.step(i, t), None)
            return
        self._counts[row] += 1
        self._ids[row] = nxt
        if nxt >= 0:
            table.hits += 1
            if self.max_new_tokens is not None:
                left = self.max_new_tokens - int(self._counts[row])
                if left <= self._zones[row] or not table.body[nxt]:
                    self._check_room(row)

    def _advance(self, row: int, nxt: int | None, path: str | None) -> None:
        """Book a legal token of ``row``: count it, move to state index ``nxt`` (``None``: eos, the row
        ends), remember the completion it is forced along, and warn if the cap no longer leaves room."""
        self._planned_now = None
        self._counts[row] += 1
        if nxt is None:
            self._ids[row] = -1
            return
        self._ids[row] = nxt
        self._forced[row] = path[1:] if path is not None else None
        self._is_forced[row] = path is not None
        if path is None and self.max_new_tokens is not None:
            left = self.max_new_tokens - int(self._counts[row])
            if left <= self._zone(row, nxt):
                self._check_room(row)

    def _check_room(self, row: int) -> None:
        """Warn if a free row's shortest ending no longer fits the tokens left (SLACK keeps it from happening)."""
        left = self.max_new_tokens - int(self._counts[row])
        need = self._table.completion_at(int(self._ids[row]))
        if need is None or len(need) + 1 > left:
            log.warning("%s: row %d needs more than the %d tokens left to end", self.rule, row, left)

    # -- queries ------------------------------------------------------------------------------
    def min_bytes_to_end(self, row: int) -> int:
        """Fewest more tokens (eos included) that row ``row`` needs to reach a legal end (0 if ended).

        Computed from the shortest known completion, so it is an upper bound of the true minimum.
        """
        state = self._state_of(row)
        if state is None:
            return 0
        path = self._forced[row] if self._forced[row] is not None else self._completion(state)
        if path is None:
            raise ConstraintError(f"{self.rule}: row {row} has no known way to end")
        return len(path) + 1

    def state(self, row: int) -> AbcState | None:
        """The grammar state of a row (``None`` once it has ended)."""
        return self._state_of(row)

    def table_stats(self) -> dict[str, int]:
        """The shared table's size and its transition hits and misses so far (its hit rate)."""
        return {"states": len(self._table), "hits": self._table.hits, "misses": self._table.misses}



def _one_length_drop(plain: tuple[str, str], width: int) -> np.ndarray:
    """The ids the one-length rule drops, bool [width]: ``plain`` is ``("ban", chars)`` (those bytes) or
    ``("keep", chars)`` (all but those), as :meth:`RhythmRun.banned` gives it."""
    how, chars = plain
    listed = np.zeros(width, dtype=bool)
    listed[[ord(c) for c in chars]] = True
    return listed if how == "ban" else ~listed


def _mask_on_device(scores: Any, keep: np.ndarray, bans: list[tuple[int, int, tuple[str, str] | None]]) -> Any:
    """``scores`` (torch ``[B, V]``) as :meth:`AbcConstraint.apply_inplace` leaves them, on their device: active
    rows (any finite score) keep their legal ids (``keep``, bool ``[B, 128]``) and lose every id past the
    128 bytes; inactive rows stay as they are.  Then the variety rules of ``bans`` (row, copy byte or -1,
    one-length rule or None), each banning only where another legal byte is left, as ``_apply_variety``."""
    import torch

    dev, (n, v) = scores.device, scores.shape
    width = min(v, VOCAB)
    legal = torch.zeros((n, v), dtype=torch.bool, device=dev)
    legal[:, :width] = torch.from_numpy(np.ascontiguousarray(keep[:, :width])).to(dev, non_blocking=True)
    active = torch.isfinite(scores).any(dim=1, keepdim=True)
    neg = torch.tensor(float("-inf"), dtype=scores.dtype, device=dev)
    out = torch.where(legal | ~active, scores, neg)
    copies = [(r, t) for r, t, _ in bans if 0 <= t < v]
    if copies:  # the copy byte, where the row keeps another legal byte
        rows = torch.tensor([r for r, _ in copies], device=dev)
        ids = torch.tensor([t for _, t in copies], device=dev)
        ok = torch.isfinite(out[rows])
        hit = ok[torch.arange(len(copies), device=dev), ids] & (ok.sum(dim=1) > 1)
        out[rows, ids] = torch.where(hit, neg, out[rows, ids])
    plains = [(r, plain) for r, _, plain in bans if plain is not None]
    if plains:  # the one-length rule: its bytes (or all but them), where a legal byte is left outside
        drop = np.stack([_one_length_drop(plain, v) for _, plain in plains])
        rows = torch.tensor([r for r, _ in plains], device=dev)
        drop_t = torch.from_numpy(drop).to(dev, non_blocking=True)
        sub = out[rows]
        left = (torch.isfinite(sub) & ~drop_t).any(dim=1, keepdim=True)
        out[rows] = torch.where(drop_t & left, neg, sub)
    return out


class PerRowAbcConstraint(AbcConstraint):
    """The per-row reference of :class:`AbcConstraint` (its behaviour before the table gathers).

    Every row's mask comes from :meth:`AbcConstraint._plan` and every token is checked and
    stepped one row at a time through the grammar's successor tuples; tests drive both classes
    with the same logits and require the same masks and tokens.
    """

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        self._check_rows(scores.shape[0], "scores have")
        width = min(scores.shape[1], VOCAB)
        keep = np.zeros(scores.shape, dtype=bool)
        active = np.isfinite(scores).any(axis=1)
        for row in np.flatnonzero(active):
            keep[row, :width] = self._plan(int(row))[0][:width]
        keep[~active] = True
        return self._apply_variety(np.where(keep, scores, np.float32(-np.inf)).astype(scores.dtype, copy=False))

    def apply_inplace(self, step: int, scores: np.ndarray) -> np.ndarray:
        scores[...] = self.process(step, scores)  # (the reference in the decode loop's host path too)
        return scores

    def _move(self, tokens: Sequence[int]) -> None:
        """One row at a time through the grammar's successor tuples (:meth:`update` checks the batch size)."""
        for row, t in enumerate(tokens):
            t = int(t)
            state = self._state_of(row)
            if state is None or t == PAD_ID:
                continue
            legal, path = self._plan(row)
            if not (0 <= t < VOCAB and legal[t]):
                self._reject(row, t)
            nxt = None if t == self.eos_id else self._entry(self._entry(state).successors[t]).index  # type: ignore[arg-type]
            self._advance(row, nxt, path)


__all__ = ["AbcConstraint", "PerRowAbcConstraint", "decode_abc", "EOS_ID", "BOS_ID", "PAD_ID"]
