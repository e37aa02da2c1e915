"""Test doubles shared by the sampling tests: a fake backend and an independent MIDI checker.

The fake backend keeps a running hash of every token a row has seen in a real
:class:`rwkv_music.model.state.State` and returns logits looked up from a fixed random table,
so it is deterministic, batch independent and exactly "sequence mode == token mode".

The checker reads token *strings* from the reference vocabulary (tests/data/tokenizer-midi.json)
and the prefix table of docs/formats.md C1, not the layout arithmetic of ``midi_constraint``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from rwkv_music.model.state import State

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).resolve().parents[1] / "data"
MOD = 2**31 - 1


class FakeBackend:
    """Backend-protocol double: logits = table[hash(history) % rows], numpy or torch."""

    name = "fake"
    device = "cpu"

    def __init__(self, vocab_size: int = 64, table_rows: int = 257, scale: float = 2.0, seed: int = 0,
                 torch_logits: bool = False):
        self.vocab_size = vocab_size
        self.table = (np.random.default_rng(seed).standard_normal((table_rows, vocab_size)) * scale).astype(np.float32)
        self.torch_logits = torch_logits
        self.calls: list[tuple[int, int]] = []  # (batch, time) of every forward

    def new_state(self, batch_size: int = 1) -> State:
        return State("7", {"att_x": np.zeros((1, batch_size, 1), dtype=np.float64)})

    def forward(
        self, tokens: Any, state: State | None = None, *, all_logits: bool = False
    ) -> tuple[np.ndarray | torch.Tensor, State]:
        toks = np.asarray(tokens, dtype=np.int64)
        assert toks.ndim == 2 and toks.min() >= 0 and toks.max() < self.vocab_size
        self.calls.append(toks.shape)
        if state is None:
            state = self.new_state(toks.shape[0])
        assert state.batch_size == toks.shape[0]
        h = state.tensors["att_x"][0, :, 0].astype(np.int64).copy()  # never mutate the input state
        for t in range(toks.shape[1]):
            h = (h * 1000003 + toks[:, t] + 1) % MOD
        logits = self.table[h % self.table.shape[0]].copy()
        new = State("7", {"att_x": h.astype(np.float64)[None, :, None]})
        if self.torch_logits:
            import torch

            return torch.from_numpy(logits), new
        return logits, new


def pool_call_sizes(monkeypatch: Any, cls: type) -> list[int]:
    """Record the pool size of every ``cls.apply_rows`` call (still running it): the list it appends to."""
    sizes: list[int] = []
    real = cls.apply_rows.__func__
    monkeypatch.setattr(cls, "apply_rows", classmethod(lambda c, procs, scores: sizes.append(len(procs))
                                                       or real(c, procs, scores)))
    return sizes


def history_hash(tokens: Iterable[int]) -> int:
    h = 0
    for t in tokens:
        h = (h * 1000003 + int(t) + 1) % MOD
    return h


# -- independent MIDI stream checker -----------------------------------------------------
PREFIX_TO_BIN = {  # docs/formats.md C1 table
    "p": "percussion", "d": "drum", "t": "tuba", "m": "marimba", "b": "bass", "g": "guitar", "v": "violin",
    "tr": "trumpet", "pi": "piano", "s": "sax", "f": "flute", "l": "lead", "pa": "pad",
}  # fmt: skip


def id_to_word() -> list[str]:
    vocab = json.loads((DATA / "tokenizer-midi.json").read_text())["model"]["vocab"]
    words = [""] * len(vocab)
    for w, i in vocab.items():
        words[i] = w
    return words


@dataclass
class StreamReport:
    orphan_offs: int = 0
    overlong_notes: int = 0  # notes held longer than the limit at any point
    max_polyphony: int = 0
    bad_instruments: int = 0
    bad_pitches: int = 0
    retriggers: int = 0
    start_tokens: int = 0
    unreleased_at_end: int = 0
    seconds: float = 0.0
    instruments: set = field(default_factory=set)


def check_stream(words: list[str], *, max_note_ms: float | None = None, allowed: set | None = None,
                 pitch_range: tuple[int, int] = (0, 127), prompt_words: list[str] = (),
                 end_words: tuple[str, ...] = ("<pad>", "<end>")) -> StreamReport:
    """Walk prompt + generated words; the generated part should end with an end word (or not)."""
    rep = StreamReport()
    sounding: dict[tuple[str, int], float] = {}
    now = 0.0
    n_prompt = len(prompt_words)
    for i, w in enumerate(list(prompt_words) + list(words)):
        generated = i >= n_prompt
        if w in end_words:
            if generated:
                rep.unreleased_at_end += len(sounding)
                break
            sounding, now = {}, 0.0
        elif w == "<start>":
            rep.start_tokens += generated
            sounding, now = {}, 0.0
        elif w[0] == "t" and w[1:].isdigit():
            now += 8 * int(w[1:])
            if max_note_ms is not None and generated:
                rep.overlong_notes += sum(now - s > max_note_ms for s in sounding.values())
        else:
            prefix, pitch_hex, vel_hex = w.split(":")
            inst, pitch, vel = PREFIX_TO_BIN[prefix], int(pitch_hex, 16), int(vel_hex, 16)
            key = (inst, pitch)
            if vel == 0:
                if key in sounding:
                    del sounding[key]
                elif generated:
                    rep.orphan_offs += 1
            else:
                if generated:
                    rep.instruments.add(inst)
                    rep.bad_instruments += allowed is not None and inst not in allowed
                    rep.bad_pitches += inst != "percussion" and not pitch_range[0] <= pitch <= pitch_range[1]
                    rep.retriggers += key in sounding
                sounding[key] = now
                if generated:
                    rep.max_polyphony = max(rep.max_polyphony, len(sounding))
    rep.seconds = now / 1000.0
    return rep


def test_fake_backend_sequence_mode_equals_token_mode() -> None:
    be = FakeBackend(vocab_size=16)
    seq_logits, seq_state = be.forward([[1, 2, 3], [4, 5, 6]])
    st = None
    for t in range(3):
        tok_logits, st = be.forward([[1 + t], [4 + t]], st)
    np.testing.assert_array_equal(seq_logits, tok_logits)
    np.testing.assert_array_equal(seq_state.tensors["att_x"], st.tensors["att_x"])
    assert int(st.tensors["att_x"][0, 1, 0]) == history_hash([4, 5, 6])


def test_stream_checker_flags_orphans_overlong_and_polyphony() -> None:
    words = ["pi:3c:a", "pi:40:a", "t100", "pi:3c:0", "pi:3c:0", "t125", "t125", "d:24:5", "<pad>"]
    rep = check_stream(words, max_note_ms=1000, allowed={"piano"})
    assert rep.orphan_offs == 1 and rep.max_polyphony == 2 and rep.bad_instruments == 1
    assert rep.overlong_notes >= 1 and rep.unreleased_at_end == 2
    assert rep.seconds == (100 + 250) * 8 / 1000
