"""``AbcConstraint``: byte-level RWKV ABC models write valid, bar-balanced ABC (issue 4).

Vocabulary of BlinkDL's ABC models (docs/formats.md B): 128 ids, id = byte value, pad 0, bos 2, eos 3;
decoding stops at eos and drops ids <= 3 (:func:`decode_abc`).  Each batch row runs its own
:class:`~rwkv_music.formats.abc.grammar.machine.AbcGrammar` state (strict subset by default): the
prompt bytes are fed at :meth:`AbcConstraint.reset`, every step masks the bytes whose step is
illegal, and eos is legal only where the tune may end.

**Speed.**  A state is a small hashable value; its 128 successors and legal mask are computed
once (about 0.5 ms) and cached per processor, so a step costs a dict lookup per row when the
state was seen before.

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

import dataclasses
import logging
from typing import Sequence

import numpy as np

from rwkv_music.errors import ConstraintError
from rwkv_music.formats.abc.grammar.machine import PHASE_NAMES, AbcGrammar
from rwkv_music.formats.abc.grammar.state import BODY, AbcGrammarConfig, AbcState
from rwkv_music.formats.abc.header import check_key, check_meter, check_unit
from rwkv_music.sampling.base import LogitsProcessor, SamplingValueError

log = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3
VOCAB = 128
SLACK = 64  # > the largest one-byte growth of the completion length (33, measured on random walks)
ZONE = 128  # completion lengths are only computed in the last ZONE tokens of a row (> SLACK + 2 + any completion)
_CACHE_LIMIT = 200_000  # cached states per processor before the cache is emptied


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


@dataclasses.dataclass(frozen=True)
class _Entry:
    successors: tuple[AbcState | None, ...]  # per byte 0..127 (None: illegal; eos is not a byte)
    legal: np.ndarray  # bool[128]: legal bytes, eos included when the tune may end here


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
        self.config = cfg
        self.grammar = AbcGrammar(cfg)
        self.max_new_tokens = max_new_tokens
        self.eos_id = eos_id
        self._entries: dict[AbcState, _Entry] = {}
        self._completions: dict[AbcState, str | None] = {}
        self._states: list[AbcState | None] = []  # None: the row has ended
        self._row_entries: list[_Entry | None] = []  # the entry of each row's state (saves hashing)
        self._counts: list[int] = []  # tokens sampled per row
        self._forced: list[str | None] = []  # the completion a row is being forced along
        self._zones: list[int] = []  # per row: completions are computed this many tokens before the cap
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
            need = self.grammar.completion(state) if state is not None else None
            if need is not None:
                return len(need) + 1
        return parts * bars * 2 + parts * bars // cfg.bars_per_line + 1  # at least "z|" a bar and the breaks

    # -- per-state tables ---------------------------------------------------------------------
    def _entry(self, state: AbcState) -> _Entry:
        entry = self._entries.get(state)
        if entry is None:
            if len(self._entries) >= _CACHE_LIMIT:
                self._entries.clear()
            g = self.grammar
            extend = g.extenders(state)
            if extend is None:
                out: list[AbcState | None] = [None] * VOCAB
                for char in g.candidates(state):
                    if ord(char) > EOS_ID:
                        out[ord(char)] = g.step(state, char)
                successors = tuple(out)
            else:  # bytes that end the token are read from the state after it (cached, shared)
                done = g.finish_token(state)
                after = self._entry(done).successors if done is not None else (None,) * VOCAB
                successors = tuple(
                    None if b <= EOS_ID else (g.step(state, chr(b)) if chr(b) in extend else after[b])
                    for b in range(VOCAB)
                )
            legal = np.array([s is not None for s in successors], dtype=bool)
            legal[self.eos_id] = self.grammar.is_final(state)
            entry = self._entries[state] = _Entry(successors, legal)
        return entry

    def _completion(self, state: AbcState) -> str | None:
        if state not in self._completions:
            if len(self._completions) >= _CACHE_LIMIT:
                self._completions.clear()
            self._completions[state] = self.grammar.completion(state)
        return self._completions[state]

    def _plan(self, row: int) -> tuple[np.ndarray, str | None]:
        """Legal ids of a row, and the completion it is forced along (None while free)."""
        state = self._states[row]
        if state is None:  # ended: only eos again
            only = np.zeros(VOCAB, dtype=bool)
            only[self.eos_id] = True
            return only, None
        entry = self._row_entries[row] or self._entry(state)
        path = self._forced[row]
        legal = entry.legal
        if path is None and self.max_new_tokens is not None:
            remaining = self.max_new_tokens - self._counts[row]
            if remaining <= self._zone(row, state):
                path = self._completion(state)
                if path is not None and remaining - 2 >= len(path) + SLACK:
                    path = None  # still free
                    if self.config.form and state.phase != BODY and state.mode == "value":
                        legal = self._fitting(entry, remaining)
        if path is None:
            return legal, None
        only = np.zeros(VOCAB, dtype=bool)
        only[ord(path[0]) if path else self.eos_id] = True
        return only, path

    def _zone(self, row: int, state: AbcState) -> int:
        """How many tokens before the cap this row's completions are watched (always, in the header)."""
        if state.phase != BODY:
            return self.max_new_tokens or 0
        zone = self._zones[row]
        if zone < 0:
            need = self._completion(state)
            zone = self._zones[row] = max(ZONE, (len(need) if need is not None else 0) + SLACK + 16)
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

    # -- the protocol -------------------------------------------------------------------------
    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        g = self.grammar
        self._states, self._counts, self._forced, self._row_entries, self._zones = [], [], [], [], []
        for row, prompt in enumerate(prompts):
            state = g.initial()
            for pos, t in enumerate(prompt):
                t = int(t)
                if t == self.eos_id:
                    raise ConstraintError(f"{self.rule}: prompt row {row} has eos at position {pos}")
                if t <= EOS_ID:
                    continue
                nxt = g.step(state, chr(t)) if t < VOCAB else None
                if nxt is None:
                    where = f"{PHASE_NAMES[state.phase]}/{state.mode}"
                    char = chr(t) if t < VOCAB else t
                    raise ConstraintError(
                        f"{self.rule}: prompt row {row}, position {pos}: byte {char!r} is not valid ABC here ({where})"
                    )
                state = nxt
            if self.max_new_tokens is not None:
                need = self._completion(state)
                if need is None or len(need) + 1 > self.max_new_tokens:
                    least = "?" if need is None else len(need) + 1
                    raise ConstraintError(
                        f"{self.rule}: prompt row {row} needs at least {least} more tokens to end, "
                        f"max_new_tokens is {self.max_new_tokens}"
                    )
            self._states.append(state)
            self._row_entries.append(self._entry(state))
            self._counts.append(0)
            self._forced.append(None)
            self._zones.append(-1)

    def process(self, step: int, scores: np.ndarray) -> np.ndarray:
        if scores.shape[0] != len(self._states):
            raise SamplingValueError(
                f"{self.rule}: scores have {scores.shape[0]} rows, reset() had {len(self._states)}"
            )
        width = min(scores.shape[1], VOCAB)
        keep = np.zeros(scores.shape, dtype=bool)
        active = np.isfinite(scores).any(axis=1)
        for row in np.flatnonzero(active):
            keep[row, :width] = self._plan(int(row))[0][:width]
        keep[~active] = True  # inactive rows stay as they are (all -inf)
        return np.where(keep, scores, np.float32(-np.inf)).astype(scores.dtype, copy=False)

    def update(self, tokens: Sequence[int]) -> None:
        if len(tokens) != len(self._states):
            raise SamplingValueError(f"{self.rule}: update got {len(tokens)} tokens for a batch of {len(self._states)}")
        for row, t in enumerate(tokens):
            t = int(t)
            state = self._states[row]
            if state is None or t == PAD_ID:  # finished rows get the loop's pad id
                continue
            legal, path = self._plan(row)
            step = self._counts[row]
            entry = self._row_entries[row]
            if not (0 <= t < VOCAB and legal[t]):
                where = f"{PHASE_NAMES[state.phase]}/{state.mode}"
                raise ConstraintError(f"{self.rule}: step {step}, row {row}: token {t} is not allowed here ({where})")
            self._counts[row] += 1
            if t == self.eos_id:
                self._states[row] = self._row_entries[row] = None
                continue
            nxt = (entry or self._entry(state)).successors[t]
            self._states[row] = nxt
            self._row_entries[row] = self._entry(nxt)  # type: ignore[arg-type]
            self._forced[row] = path[1:] if path is not None else None
            if path is None and self.max_new_tokens is not None:
                left = self.max_new_tokens - self._counts[row]
                if left <= self._zone(row, nxt):  # type: ignore[arg-type]
                    need = self._completion(nxt)  # type: ignore[arg-type]
                    if need is None or len(need) + 1 > left:  # SLACK was too small: cannot happen
                        log.warning("%s: row %d needs more than the %d tokens left to end", self.rule, row, left)

    # -- queries ------------------------------------------------------------------------------
    def min_bytes_to_end(self, row: int) -> int:
        """Fewest more tokens (eos included) that row ``row`` needs to reach a legal end (0 if ended).

        Computed from the shortest known completion, so it is an upper bound of the true minimum.
        """
        state = self._states[row]
        if state is None:
            return 0
        path = self._forced[row] if self._forced[row] is not None else self._completion(state)
        if path is None:
            raise ConstraintError(f"{self.rule}: row {row} has no known way to end")
        return len(path) + 1

    def state(self, row: int) -> AbcState | None:
        """The grammar state of a row (``None`` once it has ended)."""
        return self._states[row]


__all__ = ["AbcConstraint", "decode_abc", "EOS_ID", "BOS_ID", "PAD_ID"]
