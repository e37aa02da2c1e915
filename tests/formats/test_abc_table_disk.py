"""The ABC constraint's grammar table saved to disk and read back (issue 16).

A table read from a file must be the table that was saved (states in order, masks, transitions), every
state in it must give what the grammar gives (legal bytes, and the successor of each byte, computed
alone or all at once), tunes sampled through it must be the tunes of an empty table, and a file that
is damaged, foreign or of another grammar must be ignored.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from rwkv_music.formats.abc import constraint, table_disk
from rwkv_music.formats.abc.constraint import AbcConstraint, _Table
from rwkv_music.formats.abc.grammar.state import AbcGrammarConfig

CONFIG = AbcGrammarConfig(form=True)
HEADS = ["S:2\nL:1/8\nM:4/4\nK:D\n", "S:2\nL:1/16\nM:2/4\nK:Em\n", "L:1/8\nM:6/8\nK:F#m\n", "L:1/8\nM:3/4\nK:G\n"]


def ids(text: str) -> list[int]:
    return [2] + [ord(c) for c in text]


def sample(table: _Table, seed: int, steps: int = 160) -> list[list[int]]:
    """Tunes drawn from random logits through an AbcConstraint on ``table``."""
    c = AbcConstraint(CONFIG)
    c._table = table
    c.reset([ids(h) for h in HEADS])
    rng = np.random.default_rng(seed)
    prior = np.full(128, -2.0, dtype=np.float32)
    prior[[ord(ch) for ch in "ABCDEFGabcdefgz|2 /\n3>(:"]] = 1.0
    out: list[list[int]] = [[] for _ in HEADS]
    done = [False] * len(HEADS)
    for step in range(steps):
        scores = c(step, (prior + rng.normal(size=(len(HEADS), 128)) * 1.5).astype(np.float32))
        chosen = []
        for r in range(len(HEADS)):
            if done[r]:
                chosen.append(0)
                continue
            t = int(np.argmax(scores[r]))
            out[r].append(t)
            done[r] = t == 3
            chosen.append(t)
        c.update(chosen)
        if all(done):
            break
    return out


def filled(seeds: range = range(3)) -> _Table:
    table = _Table(CONFIG, 3)
    for seed in seeds:
        sample(table, seed)
    return table


def test_a_saved_table_reads_back_as_it_was(tmp_path: Path) -> None:
    table = filled()
    path = tmp_path / "t.npz"
    assert table.save(path) and table.saved == len(table) > 200
    back = _Table(CONFIG, 3)
    assert back.load(path) and back.saved == len(table)
    n = len(table)
    assert back.states == table.states
    np.testing.assert_array_equal(back.legal[:n], table.legal[:n])
    np.testing.assert_array_equal(back.trans[:n], table.trans[:n])
    np.testing.assert_array_equal(back.body[:n], table.body[:n])
    assert all(e.index == i and not e.computed for i, e in enumerate(back.by_index))
    kinds = [(Fraction if isinstance(v, Fraction) else type(v)) for v in back.states[-1]]
    assert kinds == [type(v) for v in table.states[-1]] and Fraction in kinds  # Fractions stay Fractions
    assert all(hash(a) == hash(b) for a, b in zip(back.states, table.states))


def test_every_read_state_gives_what_the_grammar_gives(tmp_path: Path) -> None:
    table = filled()
    table.save(tmp_path / "t.npz")
    back = _Table(CONFIG, 3)
    back.load(tmp_path / "t.npz")
    fresh = _Table(CONFIG, 3)
    n = len(back)
    known = 0
    for i, state in enumerate(back.states[:n]):
        entry = fresh.entry(state)
        np.testing.assert_array_equal(back.by_index[i].legal, entry.legal, err_msg=str(state))
        for b in range(128):
            one = back._successor(state, b)  # the one-byte path of a read state
            assert one == entry.successors[b], (state, b)
            j = int(back.trans[i, b])
            if j >= 0:
                known += 1
                assert back.states[j] == entry.successors[b]
        assert back.by_index[i].successors == entry.successors  # all at once, on first use
    assert known > 1000  # (the file had transitions to check)


def test_saving_again_encodes_only_the_new_states_and_reads_back_the_same(tmp_path: Path) -> None:
    table = filled(range(1))
    table.save(tmp_path / "a.npz")
    back = _Table(CONFIG, 3)
    back.load(tmp_path / "a.npz")
    before = len(back)
    for seed in (1, 2):
        sample(back, seed)  # grows past the file
    assert len(back) > before and len(back.columns.index) == before
    back.save(tmp_path / "b.npz")
    assert len(back.columns.index) == len(back)
    again = _Table(CONFIG, 3)
    again.load(tmp_path / "b.npz")
    assert again.states == back.states
    fresh = table_disk.Columns()
    fresh.extend(back.states)  # the same states encoded in one go
    assert np.array_equal(fresh.index, back.columns.index) and fresh.values() == back.columns.values()


def test_tunes_through_a_read_table_are_the_tunes_of_an_empty_one(tmp_path: Path) -> None:
    filled(range(3)).save(tmp_path / "t.npz")
    back = _Table(CONFIG, 3)
    back.load(tmp_path / "t.npz")
    for seed in (3, 4, 5):
        assert sample(back, seed) == sample(_Table(CONFIG, 3), seed)
    assert back.hits > 0 and len(back) > back.saved  # it used the file's transitions and found new states


def _damage(path: Path, how: str) -> None:
    data = dict(np.load(path, allow_pickle=False))
    if how == "transition":
        data["trans"][0, 65] = len(data["body"]) + 5  # out of the table, checksum recomputed
        data["check"] = np.array(table_disk._checksum(str(data["values"][()]).encode(), data["index"],
                                                      data["legal"], data["trans"], data["body"]))
    elif how == "checksum":
        data["legal"][1, 70] = ~data["legal"][1, 70]
    elif how == "fields":
        data["values"] = np.array(str(data["values"][()]).replace('"fields":["phase"', '"fields":["stage"'))
        data["check"] = np.array(table_disk._checksum(str(data["values"][()]).encode(), data["index"],
                                                      data["legal"], data["trans"], data["body"]))
    elif how == "value twice":
        found = json.loads(str(data["values"][()]))
        found["values"][0].append(found["values"][0][0])  # the first field's first value again, at its end
        data["values"] = np.array(json.dumps(found))
        data["check"] = np.array(table_disk._checksum(str(data["values"][()]).encode(), data["index"],
                                                      data["legal"], data["trans"], data["body"]))
    elif how == "index":
        data["index"][0, 0] = 60000
        data["check"] = np.array(table_disk._checksum(str(data["values"][()]).encode(), data["index"],
                                                      data["legal"], data["trans"], data["body"]))
    np.savez(path, **data)
    if how == "truncated":
        path.write_bytes(path.read_bytes()[:500])


@pytest.mark.parametrize("how", ["transition", "checksum", "fields", "index", "value twice", "truncated"])
def test_a_damaged_or_foreign_file_is_ignored(tmp_path: Path, how: str) -> None:
    path = tmp_path / "t.npz"
    filled(range(1)).save(path)
    _damage(path, how)
    assert table_disk.load(path) is None
    table = _Table(CONFIG, 3)
    assert not table.load(path) and len(table) == 0
    assert sample(table, 7) == sample(_Table(CONFIG, 3), 7)


def test_the_file_name_is_of_the_configuration_and_the_grammar_code(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    a = table_disk.table_path(CONFIG, 3, tmp_path)
    assert a == table_disk.table_path(AbcGrammarConfig(form=True), 3, tmp_path)
    assert a != table_disk.table_path(AbcGrammarConfig(form=True, meter="6/8"), 3, tmp_path)
    assert a != table_disk.table_path(CONFIG, 0, tmp_path)
    monkeypatch.setattr(table_disk, "_SOURCE", "another grammar")
    assert a != table_disk.table_path(CONFIG, 3, tmp_path)


def test_a_process_saves_its_grown_tables_and_the_next_one_starts_from_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RWKV_MUSIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(table_disk.ENV, "1")
    monkeypatch.setattr(constraint, "_TABLES", {})
    sample(constraint._table_for(CONFIG, 3), 0)
    assert constraint.save_tables() == 1
    path = table_disk.table_path(CONFIG, 3)
    assert path.parent == tmp_path / "abc_tables" and table_disk.saved_count(path) > 0
    assert constraint.save_tables() == 0  # not grown since
    monkeypatch.setattr(constraint, "_TABLES", {})  # a new process
    table = constraint._table_for(CONFIG, 3)
    assert table.saved == len(table) == table_disk.saved_count(path)
    monkeypatch.setenv(table_disk.ENV, "0")
    monkeypatch.setattr(constraint, "_TABLES", {})
    assert len(constraint._table_for(CONFIG, 3)) == 0  # switched off: not read ...
    sample(constraint._table_for(CONFIG, 3), 1)
    before = path.stat().st_mtime_ns
    assert constraint.save_tables() == 0 and path.stat().st_mtime_ns == before  # ... nor written
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_a_smaller_table_does_not_replace_a_bigger_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RWKV_MUSIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(table_disk.ENV, "1")
    path = table_disk.table_path(CONFIG, 3)
    big = filled(range(4))
    big.save(path)
    monkeypatch.setattr(constraint, "_TABLES", {(CONFIG, 3): filled(range(1))})  # another process's, smaller
    assert constraint.save_tables() == 0 and table_disk.saved_count(path) == len(big)


def test_a_folder_that_cannot_be_written_costs_nothing_but_the_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "abc_tables").write_text("a file where the folder would go")
    monkeypatch.setenv("RWKV_MUSIC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(table_disk.ENV, "1")
    monkeypatch.setattr(constraint, "_TABLES", {(CONFIG, 3): filled(range(1))})
    assert constraint.save_tables() == 0
    constraint._save_tables_quietly()  # what runs at exit: no error either
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abc_tables"]


@pytest.mark.parametrize("value", ["0", "false", "Off", " no "])
def test_the_switch_reads_like_the_native_kernels_one(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(table_disk.ENV, value)
    assert not table_disk.enabled()
    monkeypatch.setenv(table_disk.ENV, "1")
    assert table_disk.enabled()


def test_the_switch_may_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RWKV_MUSIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(table_disk.ENV, "on")
    assert table_disk.default_folder() == tmp_path / "cache" / "abc_tables"
    monkeypatch.setenv(table_disk.ENV, str(tmp_path / "tables"))
    assert table_disk.enabled() and table_disk.table_path(CONFIG, 3).parent == tmp_path / "tables"
    monkeypatch.setattr(constraint, "_TABLES", {(CONFIG, 3): filled(range(1))})
    assert constraint.save_tables() == 1 and len(list((tmp_path / "tables").glob("abc-table-*.npz"))) == 1
