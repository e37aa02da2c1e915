"""CUDA graphs in the product path (issue 16 item 3): compose and render decode through ``GraphSteps``.

On a CPU the same static-buffer path runs with the graph replaced by eager execution
(``TorchModel._graph_eager``, ``GraphDecoder(use_graph=False)``); those tests run everywhere.  The
option reaches the model from the API (``Composer.load(cuda_graph=False)``) and the CLI
(``--no-cuda-graph`` into ``LoadSpec``).  CUDA tests skip without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from rwkv_music.compose.composer import Composer
from rwkv_music.compose.options import MidiOptions, SamplingOptions
from rwkv_music.model.factory import save_random_checkpoint
from rwkv_music.sampling.continuous import generate_continuous

SEEDS = [5, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def midi_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(tmp_path_factory.mktemp("cg") / "m.pth", "4", n_layer=1, n_embd=32,
                                  vocab_size=20096, seed=3)


def _pieces(composer: Composer) -> list[list[int]]:
    return [p.tokens for p in composer.compose_rows([None] * len(SEEDS), MidiOptions(max_tokens=30), seeds=SEEDS)]


def test_compose_through_the_static_buffer_steps_equals_plain_decoding(midi_path: Path) -> None:
    plain, graphed = Composer.load(midi_path), Composer.load(midi_path)
    graphed.backend._graph_eager = True  # the CUDA path with its graph replaced by eager steps
    want = _pieces(plain)
    got = _pieces(graphed)
    assert got == want
    steps = graphed.backend._graph_steps
    assert steps is not None and steps.failed is None and steps.decoders  # the decode loop went through it
    assert all(not d._graph for d in steps.decoders.values())  # eager fallback: nothing captured on a CPU
    assert plain.backend._graph_steps is None  # a CPU model decodes as before


def test_render_style_refills_through_the_static_buffer_steps(midi_path: Path) -> None:
    """Continuous batching (rows finish and are refilled) on the buffers gives the pieces of plain decoding."""
    plain, graphed = Composer.load(midi_path), Composer.load(midi_path)
    graphed.backend._graph_eager = True
    options = MidiOptions(max_tokens=24)
    recipe = plain.recipe(None, options, SamplingOptions())

    def run(composer: Composer) -> dict[int, list[int]]:
        items = [recipe.work_item(s) for s in range(7)]
        items[2].max_new_tokens = 3  # an early finish: its row is refilled
        return {r.index: r.tokens for r in generate_continuous(composer.backend, items, batch_size=3)}

    want, got = run(plain), run(graphed)
    assert got == want and len(want[2]) <= 3
    assert set(graphed.backend._graph_steps.decoders) <= {1, 2, 4}


def test_the_option_reaches_the_model_from_the_api(midi_path: Path) -> None:
    assert Composer.load(midi_path).backend.cuda_graph is True  # on by default (used only on CUDA)
    off = Composer.load(midi_path, cuda_graph=False).backend
    assert off.cuda_graph is False
    off._graph_eager = False
    assert off._graphs() is None


def test_the_cli_flag_reaches_load_spec() -> None:
    from rwkv_music.cli.common import LoadSpec, model_options

    seen: list[LoadSpec] = []

    @click.command()
    @model_options
    def cmd(load: LoadSpec) -> None:
        seen.append(load)

    runner = CliRunner()
    assert runner.invoke(cmd, []).exit_code == 0
    assert runner.invoke(cmd, ["--no-cuda-graph"]).exit_code == 0
    assert [s.cuda_graph for s in seen] == [True, False]
    assert LoadSpec().cuda_graph is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compose_decodes_through_captured_graphs_and_the_flag_turns_them_off(midi_path: Path) -> None:
    graphed = Composer.load(midi_path, device="cuda")
    eager = Composer.load(midi_path, device="cuda", cuda_graph=False)
    a, b = _pieces(graphed), _pieces(eager)
    steps = graphed.backend._graph_steps
    assert steps is not None and steps.failed is None and steps.decoders
    assert all(d._graph is not None for d in steps.decoders.values())
    assert eager.backend._graph_steps is None
    assert sum(x == y for x, y in zip(a, b)) >= len(SEEDS) - 1  # replay equals eager up to rounding
