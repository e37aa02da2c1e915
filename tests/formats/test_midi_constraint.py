"""MidiConstraint: layout against the reference vocabulary, each rule, and 200 constrained pieces
checked by an independent stream walker (tests/sampling/test_sampling_fakes.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_sampling_fakes import DATA, PREFIX_TO_BIN, FakeBackend, check_stream, id_to_word, pool_call_sizes

from rwkv_music.formats.midi import fast_mask
from rwkv_music.formats.midi.constraint import BIN_NAMES, VOCAB_SIZE, note_token, wait_token
from rwkv_music.sampling import LogitsProcessorList, MidiConstraint, SamplingValueError, generate, get_preset

if TYPE_CHECKING:
    from test_sampling_fakes import StreamReport

    from rwkv_music.sampling.generate import GenerationResult

WORDS = id_to_word()
BIN_PREFIX = {name: prefix for prefix, name in PREFIX_TO_BIN.items()}
ID = {w: i for i, w in enumerate(WORDS)}


def legal(c: MidiConstraint, row: int = 0) -> set[str]:
    return {WORDS[i] for i in np.flatnonzero(c.allowed()[row])}


def constraint_for(prompt_words: list[str], **kw) -> MidiConstraint:
    c = MidiConstraint(**kw)
    c.reset([[0] + [ID[w] for w in prompt_words]])
    return c


def test_layout_matches_reference_vocabulary_for_every_id() -> None:
    assert VOCAB_SIZE == len(WORDS) == 20096
    bins = json.loads((DATA / "vocab_config.json").read_text())["bin_instrument_names"]
    assert list(BIN_NAMES) == bins
    assert [WORDS[wait_token(n)] for n in range(1, 126)] == [f"t{n}" for n in range(1, 126)]
    for b, name in enumerate(BIN_NAMES):
        for pitch in range(128):
            for vel in range(12):
                assert WORDS[note_token(b, pitch, vel)] == f"{BIN_PREFIX[name]}:{pitch:x}:{vel:x}"


def test_note_off_only_for_sounding_notes_and_no_retrigger() -> None:
    c = constraint_for(["pi:3c:a", "t10"], instruments=["piano"])
    words = legal(c)
    assert "pi:3c:0" in words and "pi:3e:0" not in words  # no orphan note-off
    assert "pi:3c:5" not in words and "pi:3e:5" in words  # no re-trigger of a sounding note
    assert "<start>" not in words and "<pad>" not in words and "<end>" not in words  # a note still sounds


def test_polyphony_limit_blocks_note_ons() -> None:
    c = constraint_for(["pi:3c:a", "pi:40:a"], max_polyphony=2)
    words = legal(c)
    assert not any(w.endswith(("a", "1")) and ":" in w for w in words)
    assert {"pi:3c:0", "pi:40:0", "t1", "t125"} <= words


def test_max_note_length_caps_waits_and_forces_release() -> None:
    c = constraint_for(["pi:3c:a", "t100"], max_note_seconds=1.0)  # 125 ticks; 100 used
    words = legal(c)
    assert "t25" in words and "t26" not in words
    c = constraint_for(["pi:3c:a", "t100", "pi:40:a", "t25"], max_note_seconds=1.0)
    assert legal(c) == {"pi:3c:0"}  # overdue: only its release
    c.update([ID["pi:3c:0"]])
    assert {"t100", "pi:40:0"} <= legal(c) and "t101" not in legal(c)


def test_instruments_drums_and_pitch_range() -> None:
    c = constraint_for([], instruments=["violin", "flute"], drums=True, pitch_range=(60, 72))
    ons = {w.split(":")[0] for w in legal(c) if ":" in w}
    assert ons == {"v", "f", "p", "d"}
    assert "v:3c:5" in legal(c) and "v:3b:5" not in legal(c) and "v:49:5" not in legal(c)
    assert "p:23:5" in legal(c)  # percussion keys are exempt from the pitch range
    piano = MidiConstraint.piano_only()
    piano.reset([[0]])
    assert {w.split(":")[0] for w in legal(piano) if ":" in w} == {"pi"}
    with pytest.raises(SamplingValueError, match="drums=False"):
        MidiConstraint(["percussion"], drums=False)
    with pytest.raises(SamplingValueError, match="unknown instrument 'kazoo'"):
        MidiConstraint(["kazoo"])
    with pytest.raises(SamplingValueError, match="bin index 40 is not one of 0-12"):
        MidiConstraint([40])  # an int is this constraint's bin index, not a GM program
    cello = MidiConstraint(["Cello"])  # General MIDI names reach their bin (cello: bass)
    cello.reset([[0]])
    assert {w.split(":")[0] for w in legal(cello) if ":" in w} == {"b"}


def test_target_length_gates_end_waits_and_note_ons() -> None:
    kw = dict(target_seconds=2.0, length_tolerance=0.05)  # ticks: min 238, target 250, max 262
    early = constraint_for(["t125", "t100"], **kw)  # 225 ticks
    assert "<pad>" not in legal(early) and "pi:3c:5" in legal(early)
    late = constraint_for(["t125", "t120"], **kw)  # 245 ticks: may end, 17 ticks of room
    assert {"<pad>", "<end>", "t17", "pi:3c:5"} <= legal(late) and "t18" not in legal(late)
    closing = constraint_for(["pi:3c:a", "t125", "t125", "t5"], **kw)  # 255: past target, note sounds
    assert not any(w.endswith(":5") for w in legal(closing)) and "<pad>" not in legal(closing)
    full = constraint_for(["pi:3c:a", "t125", "t125", "t12"], **kw)  # 262 = max: must release, then end
    assert legal(full) == {"pi:3c:0"}
    full.update([ID["pi:3c:0"]])
    assert legal(full) == {"<pad>", "<end>"}
    bias_early, bias_max = late.end_bias_now()[0], full.end_bias_now()[0]
    assert 0 < bias_early < bias_max == 4.0


def test_end_token_starts_a_fresh_piece_and_prompt_resets_at_separator() -> None:
    c = constraint_for(["pi:3c:a", "t10", "pi:3c:0", "<end>", "pi:40:a"], max_polyphony=1)
    assert "pi:40:0" in legal(c) and "pi:3c:0" not in legal(c)
    c.update([ID["pi:40:0"]])
    c.update([0])
    assert "pi:40:0" not in legal(c) and "pi:40:5" in legal(c)


def test_wrong_vocabulary_size_is_an_error() -> None:
    c = MidiConstraint()
    c.reset([[0]])
    with pytest.raises(SamplingValueError, match="20096"):
        c(0, np.zeros((1, 128), np.float32))


CONFIGS = [
    dict(instruments=["piano"], max_polyphony=3, max_note_seconds=1.0, target_seconds=4.0, pitch_range=(48, 84)),
    dict(instruments=["violin", "flute", "bass"], drums=True, max_polyphony=6, max_note_seconds=0.5,
         target_seconds=3.0),
    dict(instruments=None, drums=False, max_polyphony=2, max_note_seconds=2.0, target_seconds=6.0,
         pitch_range=(30, 100)),
    dict(instruments=["guitar"], max_polyphony=1, target_seconds=2.0),
]


def allowed_names(kw: dict[str, Any]) -> set[str]:
    names = set(BIN_NAMES) if kw.get("instruments") is None else set(kw["instruments"])
    if kw.get("drums") is True:
        names |= {"percussion", "drum"}
    if kw.get("drums") is False:
        names -= {"percussion", "drum"}
    return names


def check_generation(res: GenerationResult, prompts: list[list[int]], kw: dict[str, Any]) -> list[StreamReport]:
    reports = []
    for toks, reason, hit, prompt in zip(res.tokens, res.finish_reasons, res.stop_tokens, prompts):
        assert reason == "stop" and hit in (0, 2)
        max_note_ms = (kw.get("max_note_seconds") or 1e9) * 1000
        rep = check_stream([WORDS[t] for t in toks] + [WORDS[hit]], max_note_ms=max_note_ms,
                           allowed=allowed_names(kw), pitch_range=kw.get("pitch_range", (0, 127)),
                           prompt_words=[WORDS[t] for t in prompt])
        assert (rep.orphan_offs, rep.overlong_notes, rep.bad_instruments, rep.bad_pitches) == (0, 0, 0, 0)
        assert (rep.retriggers, rep.start_tokens, rep.unreleased_at_end) == (0, 0, 0)
        assert rep.max_polyphony <= kw["max_polyphony"]
        assert abs(rep.seconds - kw["target_seconds"]) <= 0.1 * kw["target_seconds"]
        reports.append(rep)
    return reports


@pytest.mark.parametrize("kw", CONFIGS, ids=["piano", "trio+drums", "all-no-drums", "guitar-mono"])
def test_fifty_random_logit_pieces_per_config_are_well_formed(kw: dict[str, Any]) -> None:
    backend = FakeBackend(vocab_size=VOCAB_SIZE, table_rows=61, scale=2.0, seed=7)
    prompts = [[0] for _ in range(50)]
    procs = LogitsProcessorList([MidiConstraint(**kw)])
    res = generate(backend, prompts, processors=procs, max_new_tokens=800, seeds=list(range(50)), stop_tokens=(0, 2),
                   return_state=False)
    reports = check_generation(res, prompts, kw)
    assert sum(len(r.instruments) > 0 for r in reports) == 50  # every piece plays something


def test_constraint_composes_with_chatrwkv_recipe_and_a_prompt() -> None:
    backend = FakeBackend(vocab_size=VOCAB_SIZE, table_rows=61, seed=3)
    kw = dict(instruments=["piano"], max_polyphony=4, max_note_seconds=2.0, target_seconds=5.0)
    prompts = [[0, ID["pi:3c:a"], ID["pi:40:8"], ID["t60"]]] * 8
    procs = get_preset("default-midi").build_processors([MidiConstraint(**kw)])
    res = generate(backend, prompts, processors=procs, max_new_tokens=1500, seeds=list(range(8)), stop_tokens=(0, 2),
                   return_state=False)
    check_generation(res, prompts, kw)


def test_random_weights_midi_model_respects_the_constraint(checkpoint_path: Callable[..., Path]) -> None:
    import rwkv_music

    model = rwkv_music.load_model(checkpoint_path("4", vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, seed=2))
    kw = dict(instruments=["piano", "bass"], drums=True, max_polyphony=4, max_note_seconds=1.5, target_seconds=3.0)
    prompts = [[0]] * 6
    res = generate(model, prompts, processors=[MidiConstraint(**kw)], max_new_tokens=1500, seeds=list(range(6)),
                   stop_tokens=(0, 2), return_state=False)
    check_generation(res, prompts, kw)


# -- there is always a legal token ----------------------------------------------------------
INTERESTING = [0, 1, 2, 3, 4, 60, 127]
INTERESTING += [note_token(b, p, v) for b in (0, 1, 8, 12) for p in (0, 60, 127) for v in (0, 1, 11)]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    instruments=st.sampled_from([None, ["piano"], ["violin", "pad"], ["percussion"], [0, 12]]),
    drums=st.sampled_from([None, True]),
    poly=st.sampled_from([None, 1, 2, 5]),
    max_note=st.sampled_from([None, 0.008, 0.1, 1.0, 5.0]),
    target=st.sampled_from([None, 0.05, 0.5, 2.0]),
    tol=st.sampled_from([0.0, 0.05, 0.2]),
    prompts=st.lists(st.lists(st.sampled_from(INTERESTING), max_size=12), min_size=1, max_size=6),
    musical=st.sampled_from([{}, {"ranges": True}, {"key": "auto", "key_notes": 2}, {"key": "Bb", "ranges": True}]),
)
def test_every_state_has_a_legal_token(
    seed: int,
    instruments: list[str | int] | None,
    drums: bool | None,
    poly: int | None,
    max_note: float | None,
    target: float | None,
    tol: float,
    prompts: list[list[int]],
    musical: dict[str, Any],
) -> None:
    try:
        c = MidiConstraint(instruments, drums=drums, max_polyphony=poly, max_note_seconds=max_note,
                           target_seconds=target, length_tolerance=tol, **musical)
    except SamplingValueError:
        return  # e.g. a target too short for the tolerance: rejected up front
    c.reset(prompts)
    rng = np.random.default_rng(seed)
    for _ in range(60):
        mask = c.allowed()
        assert mask.any(axis=1).all()
        # mostly legal moves, sometimes an arbitrary token (a caller that ignores the mask)
        tokens = [int(rng.choice(np.flatnonzero(m))) if rng.random() < 0.85 else int(rng.integers(VOCAB_SIZE))
                  for m in mask]
        c.update(tokens)


# -- musicality: instrument ranges and keys (issue 15) ---------------------------------------------
def note_ons(c: MidiConstraint, name: str, row: int = 0) -> set[int]:
    """Pitches whose note-on (velocity bin 9) of instrument ``name`` is legal now."""
    allowed = c.allowed()[row]
    b = BIN_NAMES.index(name)
    return {p for p in range(128) if allowed[note_token(b, p, 9)]}


def test_instrument_ranges_from_the_table() -> None:
    from rwkv_music.formats.midi.musicality import INSTRUMENT_RANGES

    c = constraint_for([], ranges=True)
    for name in ("violin", "flute", "tuba", "bass"):
        lo, hi = INSTRUMENT_RANGES[name]
        assert note_ons(c, name) == set(range(lo, hi + 1)), name
    assert note_ons(c, "percussion") == set(range(128))  # drum-kit keys are not pitches
    assert note_ons(constraint_for([]), "violin") == set(range(128))  # off unless asked
    narrow = constraint_for([], ranges=True, pitch_range=(60, 70))
    assert note_ons(narrow, "violin") == set(range(60, 71))
    with pytest.raises(SamplingValueError):
        MidiConstraint(["flute"], ranges=True, pitch_range=(20, 40))  # nothing left to play


def test_a_fixed_key_masks_out_of_scale_note_ons_but_not_their_release() -> None:
    d_major = {2, 4, 6, 7, 9, 11, 1}
    c = constraint_for(["pi:41:8"], key="D")  # a sounding F natural (out of D major) from the prompt
    assert {p % 12 for p in note_ons(c, "piano")} == d_major
    assert "pi:41:0" in legal(c)  # it can still be released
    assert note_ons(c, "percussion") == set(range(128))
    with pytest.raises(SamplingValueError):
        MidiConstraint(key="H")


def test_auto_key_settles_on_the_scale_of_the_first_notes() -> None:
    c_major = [f"pi:{p:x}:8" for p in (60, 62, 64, 65, 67, 69, 71, 72)]
    c = constraint_for(c_major[:7], key="auto")  # seven notes: not settled yet
    assert len({p % 12 for p in note_ons(c, "violin")}) == 12
    c.update([ID[c_major[7]]])
    assert {p % 12 for p in note_ons(c, "violin")} == {0, 2, 4, 5, 7, 9, 11}
    rows = MidiConstraint(key="auto", key_notes=3)
    rows.reset([[0, ID["pi:3e:8"], ID["pi:42:8"], ID["pi:45:8"]], [0]])  # row 0: D, F#, A (D or G or A major)
    assert 5 not in {p % 12 for p in note_ons(rows, "piano", 0)}  # F natural is out for row 0
    assert len({p % 12 for p in note_ons(rows, "piano", 1)}) == 12  # row 1 has heard nothing yet


def test_a_finite_scale_penalty_lowers_out_of_key_note_ons() -> None:
    c = constraint_for([], key="C", scale_penalty=3.0)
    out = c(0, np.zeros((1, VOCAB_SIZE), dtype=np.float32))
    assert out[0, ID["pi:3c:8"]] == 0.0 and out[0, ID["pi:3d:8"]] == -3.0
    assert out[0, ID["pi:3d:0"]] == -np.inf  # not sounding: its note-off stays illegal


def test_composed_pieces_keep_key_range_polyphony_and_release_notes_themselves(
    checkpoint_path: Callable[..., Path]
) -> None:
    """The compose defaults (MidiOptions) on a random-weights model: the musicality rules hold."""
    from rwkv_music import Composer
    from rwkv_music.formats.midi.musicality import INSTRUMENT_RANGES, best_diatonic_scale, note_events

    path = checkpoint_path("4", vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, seed=4)
    composer = Composer.load(path, mode="midi")
    pieces = composer.compose_midi(n=6, seconds=6, instruments=["violin", "flute", "bass"], seed=1)
    for piece in pieces:
        events = note_events(piece.tokens)
        assert events, "a piece with no notes"
        pitched = [e for e in events if e.instrument not in ("percussion", "drum")]
        later = [e.pitch for e in pitched[8:]]  # after the key settled (auto, 8 notes)
        assert best_diatonic_scale(later)[0] == 1.0
        for e in events:
            lo, hi = INSTRUMENT_RANGES[e.instrument]
            assert lo <= e.pitch <= hi
            assert not e.forced  # the constraint released every note before the decoder's 5 s
            assert e.end - e.start <= 4.0 + 1e-9


@pytest.mark.parametrize("kw", [
    {},
    {"max_polyphony": 2, "max_note_seconds": 0.2, "target_seconds": 2.0},
    {"key": "auto", "key_notes": 3, "ranges": True, "max_polyphony": 3},
    {"key": "D", "scale_penalty": 2.0, "max_note_seconds": 0.1},
    {"instruments": ["piano"], "drums": True, "pitch_range": (40, 80), "end_tokens": (0,)},
])
@pytest.mark.parametrize("path", ["numpy", "c", "alternating", "device", "device-alternating"])
def test_the_cached_mask_equals_the_mask_rebuilt_from_scratch(kw: dict[str, Any], path: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """process() keeps its mask between steps (issue 16), or writes it in C (fast_mask.c); allowed() rebuilds
    it: the same scores, NaN and +inf logits included, over streams with legal, illegal and end tokens (a row
    that starts again).  "alternating" switches between the two paths, so the numpy cache must notice what
    it missed.  "device": apply_device on a torch tensor (what a GPU's logits get: the kernel's flags, the
    mask, penalty and bias built with torch), alone and alternating with the numpy path."""
    if path != "numpy" and fast_mask.kernel() is None:
        pytest.skip(f"the C mask does not build here ({fast_mask.LIBRARY.error})")
    rng = np.random.default_rng(len(kw))
    forced_seen = 0
    calls = []
    real = fast_mask.mask_into
    monkeypatch.setattr(fast_mask, "mask_into", lambda *a: calls.append(1) or real(*a))
    for rows in (1, int(rng.integers(2, 6)), int(rng.integers(1, 6))):  # (one row: the scalar rules)
        c = MidiConstraint(**kw)
        c.reset([[0, note_token(8, 60, 9), wait_token(50)] if r % 2 else [0] for r in range(rows)])
        for step in range(120):
            c.native = path in ("c", "device") or (path.endswith("alternating") and step % 3 != 0)
            on_device = path == "device" or (path == "device-alternating" and c.native)
            scores = (rng.standard_normal((rows, VOCAB_SIZE)) * 3).astype(np.float32)
            if step % 17 == 0:
                scores[0, rng.integers(0, VOCAB_SIZE, 50)] = np.nan
                scores[-1, rng.integers(0, VOCAB_SIZE, 50)] = np.inf
            want = np.where(c.allowed(), scores, np.float32(-np.inf))
            if "scale_penalty" in kw:
                notes = want[:, 128:].reshape(rows, -1, 12)
                notes[:, :, 1:] -= (~c._in_scale() * c.scale_penalty).astype(np.float32)[:, :, None]
            for t in c.end_tokens:
                want[:, t] += c.end_bias_now().astype(np.float32)
            if on_device:
                tensor = torch.from_numpy(scores.copy())
                got = c.apply_device(step, tensor).numpy()
                assert np.array_equal(tensor.numpy(), scores, equal_nan=True)  # (a new tensor: input unchanged)
            else:
                got = c(step, scores)
            assert np.array_equal(got, want, equal_nan=True)
            rules = c._rules()
            forced_seen += int(rules[2].any())
            for kept, rebuilt in zip(c._row_rules(), rules[2:]):  # the counters _advance keeps, from scratch
                np.testing.assert_array_equal(kept, rebuilt)
                assert kept.dtype == rebuilt.dtype and kept.shape == (rows,)
            if c.target_ticks is not None:  # the end bias, from its formula on the arrays
                span = max(c.max_end - c.min_end, 1)
                bias = c.end_bias * np.clip((c._time - c.min_end) / span, 0.0, 1.0)
                np.testing.assert_array_equal(c.end_bias_now(), bias)
            legal_ids = [np.flatnonzero(np.isfinite(got[r])) for r in range(rows)]
            draw = rng.random(rows)
            c.update([int(rng.choice(ids)) if d > 0.04 else (0 if d < 0.01 else int(rng.integers(3, VOCAB_SIZE)))
                      for ids, d in zip(legal_ids, draw)])
    if "max_note_seconds" in kw:
        assert forced_seen  # the forced-release path was exercised
    assert bool(calls) == (path in ("c", "alternating"))


def test_a_pool_of_one_row_constraints_in_one_kernel_call_equals_each_alone() -> None:
    """apply_rows (a render's pool: every piece its own constraint, all masked by one call of
    rwkv_midi_mask_pieces) leaves row r as procs[r].apply_inplace leaves it alone, and apply_rows_device
    (a GPU's pool) gives the same scores; update_rows leaves every piece in the state its own update
    does: pieces with different settings (instruments, key penalty or mask, auto key, target length,
    polyphony, note length), each advanced on its own stream (end tokens and stray ids among them),
    NaN and +inf scores included, across a reset."""
    if fast_mask.kernel() is None:
        pytest.skip(f"the C mask does not build here ({fast_mask.LIBRARY.error})")
    settings = [
        {},
        {"max_polyphony": 2, "max_note_seconds": 0.2, "target_seconds": 2.0},
        {"key": "auto", "key_notes": 3, "ranges": True, "max_polyphony": 3},
        {"key": "D", "scale_penalty": 2.0, "max_note_seconds": 0.1, "target_seconds": 1.0},
        {"instruments": ["piano"], "drums": True, "pitch_range": (40, 80), "end_tokens": (0,)},
    ]
    rng = np.random.default_rng(7)
    procs = [MidiConstraint(**kw) for kw in settings * 2]
    alone = [MidiConstraint(**kw) for kw in settings * 2]
    for p in (*procs, *alone):
        p.reset([[0]])
    P = len(procs)
    settled = 0
    for step in range(150):
        if step == 75:  # a reset replaces the state arrays: the pooled arguments must follow
            for p, q in zip(procs, alone):
                p.reset([[0, note_token(8, 60, 9)]])
                q.reset([[0, note_token(8, 60, 9)]])
        scores = (rng.standard_normal((P, VOCAB_SIZE)) * 3).astype(np.float32)
        if step % 13 == 0:
            scores[1, rng.integers(0, VOCAB_SIZE, 50)] = np.nan
            scores[-1, rng.integers(0, VOCAB_SIZE, 50)] = np.inf
        want = np.concatenate([q.apply_inplace(step, scores[r : r + 1].copy()) for r, q in enumerate(alone)])
        on_device = MidiConstraint.apply_rows_device(procs, torch.from_numpy(scores.copy()))  # (a GPU's pool)
        assert on_device is not None and np.array_equal(on_device.numpy(), want, equal_nan=True), step
        got = scores.copy()
        assert MidiConstraint.apply_rows(procs, got)  # True: the one kernel call ran
        assert np.array_equal(got, want, equal_nan=True), step
        tokens = []
        for r in range(P):
            legal = np.flatnonzero(np.isfinite(want[r]))
            draw = rng.random()  # now and then an end token (a new piece) or any id (an orphan note-off, ...)
            tokens.append(0 if draw < 0.02 else int(rng.integers(3, VOCAB_SIZE)) if draw < 0.06
                          else int(rng.choice(legal)))
        MidiConstraint.update_rows(procs, tokens)  # (waits and notes in one kernel call; the rest piece by piece)
        for q, t in zip(alone, tokens):
            q.update([t])
        for p, q in zip(procs, alone):
            for name in ("_start", "_time", "_n_sounding", "_earliest", "_pc_counts", "_scale"):
                np.testing.assert_array_equal(getattr(p, name), getattr(q, name), err_msg=f"{step} {name}")
            assert p._settled == q._settled
        settled += sum(bool(p._settled) for p in procs if p._auto_key)
    assert settled  # auto keys settled inside the pool (by the Python path, between kernel updates)
    procs[0].native = False  # one piece on the numpy path: the pool declines, nothing written
    scores = np.ones((P, VOCAB_SIZE), dtype=np.float32)
    assert not MidiConstraint.apply_rows(procs, scores) and (scores == 1).all()
    assert MidiConstraint.apply_rows_device(procs, torch.from_numpy(scores)) is None
    wide = MidiConstraint()
    wide.reset([[0], [0]])  # a two-row constraint is not a piece of a pool
    assert not MidiConstraint.apply_rows([wide], np.ones((1, VOCAB_SIZE), dtype=np.float32))


def test_continuous_batching_pools_the_pieces_constraints_into_the_same_pieces(monkeypatch: pytest.MonkeyPatch
                                                                              ) -> None:
    """Render's pool with each piece's own constraint (one kernel call a step, apply_rows) gives the pieces
    that one list per row gives (POOLING off: each constraint on its own row)."""
    import importlib

    from rwkv_music.sampling import SamplingConfig
    from rwkv_music.sampling.continuous import WorkItem, generate_continuous

    decode_mod = importlib.import_module("rwkv_music.sampling.decode")
    backend = FakeBackend(vocab_size=VOCAB_SIZE, scale=3.0)
    cfg = SamplingConfig(top_k=40, temperature=1.1)
    calls = pool_call_sizes(monkeypatch, MidiConstraint)

    def run() -> list:
        items = [WorkItem(prompt=[0], seed=s, max_new_tokens=30 + 5 * (s % 3), stop_tokens=(0, 2),
                          processors=cfg.build_processors([MidiConstraint(max_polyphony=3, max_note_seconds=0.3)]))
                 for s in range(9)]
        return [(r.index, r.tokens, r.finish_reason) for r in generate_continuous(backend, items, batch_size=4)]

    pooled = run()
    assert calls and max(calls) == 4  # the pool's rows went through one call
    monkeypatch.setattr(decode_mod, "POOLING", False)
    assert run() == pooled


def test_constraints_with_equal_settings_share_their_read_only_tables_and_others_get_their_own() -> None:
    """A render builds a constraint per piece; the tables that depend on the settings alone are made once per
    settings: equal settings share them (read-only), other settings get tables of their own, and those follow
    the settings (a note-on outside the pitch range or the instrument bins is never allowed; the end ids)."""
    wide, also_wide = MidiConstraint(), MidiConstraint()
    narrow = MidiConstraint(["piano"], drums=False, pitch_range=(50, 70), end_tokens=(0,))
    assert wide._can_start is also_wide._can_start and wide._heads is also_wide._heads
    assert narrow._can_start is not wide._can_start and narrow._heads is not wide._heads
    for table in (wide._can_start, wide._pitched, wide._key_pc, wide._heads):
        assert not table.flags.writeable
        with pytest.raises(ValueError):
            table[0] = table[1]
    n_pitch = 128
    piano = BIN_NAMES.index("piano")
    want = np.zeros(len(BIN_NAMES) * n_pitch, dtype=bool)
    want[piano * n_pitch + 50 : piano * n_pitch + 71] = True
    np.testing.assert_array_equal(narrow._can_start, want)
    assert wide._can_start.all()
    end_ok_rows = narrow._heads[narrow._heads.shape[0] // 2 :]  # (rows with end_ok: the end ids legal there)
    assert np.isnan(end_ok_rows[:, 0]).all() and np.isneginf(end_ok_rows[:, 2]).all()
    assert np.isnan(wide._heads[wide._heads.shape[0] // 2 :, [0, 2]]).all()
