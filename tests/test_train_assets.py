"""The shipped default models: present, small, loadable, right vocabulary."""

from __future__ import annotations

import pytest

from rwkv_music.assets import default_model_path
from rwkv_music.errors import RwkvMusicError
from rwkv_music.train.checkpoint import model_from_checkpoint

MAX_BYTES = 16 * 1024 * 1024


@pytest.mark.parametrize("mode, vocab", [("abc", 128), ("midi", 20096)])
def test_default_model_is_small_v7_with_mode_vocabulary(mode, vocab):
    try:
        path = default_model_path(mode)
    except RwkvMusicError:
        pytest.skip(f"default {mode} model not built in this checkout")
    assert path.stat().st_size <= MAX_BYTES
    assert (path.parent / "MODEL_CARD.md").is_file()
    model = model_from_checkpoint(path)
    assert model.config.vocab_size == vocab


def test_unknown_mode_raises_project_error():
    with pytest.raises(RwkvMusicError, match="no default model for mode 'xyz'"):
        default_model_path("xyz")
