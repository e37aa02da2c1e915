"""The shipped default models: present, small, loadable, right vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from rwkv_music.assets import default_model_path
from rwkv_music.errors import RwkvMusicError
from rwkv_music.train.checkpoint import model_from_checkpoint

MAX_BYTES = 16 * 1024 * 1024


@pytest.mark.parametrize("mode, vocab", [("abc", 128), ("midi", 20096)])
def test_default_model_is_small_v7_with_mode_vocabulary(mode: str, vocab: int) -> None:
    path = default_model_path(mode)  # shipped in the package: missing is a failure, not a skip
    assert path.stat().st_size <= MAX_BYTES
    assert (path.parent / "MODEL_CARD.md").is_file()
    model = model_from_checkpoint(path)
    assert model.config.vocab_size == vocab


def test_unknown_mode_raises_project_error() -> None:
    with pytest.raises(RwkvMusicError, match="no default model for mode 'xyz'"):
        default_model_path("xyz")


def test_generate_midi_with_no_model_writes_a_midi_from_the_shipped_model(tmp_path: Path) -> None:
    """The README's main job: `generate-midi` with the shipped default model."""
    import mido
    from click.testing import CliRunner

    from rwkv_music.cli.main import generate_midi

    result = CliRunner().invoke(
        generate_midi, ["--out", str(tmp_path), "--max-tokens", "160", "--seed", "7", "-q"]
    )
    assert result.exit_code == 0, result.output
    written = sorted(tmp_path.glob("*.mid"))
    assert len(written) == 1 and str(written[0]) in result.output
    notes = [m for m in mido.MidiFile(written[0]) if m.type == "note_on" and m.velocity > 0]
    assert notes, "the shipped model wrote a MIDI file without notes"


def test_shipped_abc_model_writes_bar_balanced_tunes_without_constraints() -> None:
    """Issue 8's quality bar, small: unconstrained tunes from bos alone, music21's measure check."""
    import rwkv_music
    from rwkv_music.formats.abc import check as abc_check
    from rwkv_music.sampling import SamplingConfig, generate

    backend = rwkv_music.load_model(default_model_path("abc"))
    cfg = SamplingConfig(top_k=8, top_p=0.8)  # docs/formats.md D4's ABC sampler
    result = generate(backend, [[2]] * 12, processors=cfg.build_processors(), max_new_tokens=1024,
                      seeds=range(100, 112), stop_tokens=[3], return_state=False)
    texts = ["".join(chr(t) for t in row if t > 3) for row in result.tokens]
    tunes = ["X:1\n" + "\n".join(ln for ln in t.splitlines() if ln[:2] not in ("S:", "B:", "E:")) for t in texts]
    balanced = sum(bool(abc_check.bar_balance(t).all_balanced) for t in tunes)
    assert all(abc_check.parse_ok(t) for t in tunes)
    assert balanced >= 9, f"only {balanced}/12 tunes bar-balanced"
