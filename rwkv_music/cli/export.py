"""``export-onnx`` and ``export-ncnn``: write a checkpoint as a graph for ``--backend onnx`` / ``ncnn``.

Thin by design: parse the options, call the exporter
(:func:`rwkv_music.backends.onnx_export.export`, :func:`rwkv_music.backends.ncnn_export.export`),
echo what was written.  ``rwkv-music --help`` lists these commands without importing this module.
"""

from __future__ import annotations

from pathlib import Path

import click

from rwkv_music.assets import missing_model_message, resolve_model
from rwkv_music.backends import ncnn_export, onnx_export
from rwkv_music.backends.onnx_graph_common import MIN_OPSET
from rwkv_music.backends.sidecar import NCNN_STORAGES, ncnn_paths, onnx_sampler_path, onnx_sidecar_path
from rwkv_music.cli.common import CONTEXT, boundary
from rwkv_music.errors import RwkvMusicError
from rwkv_music.io_utils import check_writable


def _checkpoint(spec: str) -> Path:
    """The checkpoint file CHECKPOINT names: a file, or a shipped model's name (abc-default, midi-default)."""
    path = resolve_model(spec)
    if not path.is_file():
        raise RwkvMusicError(missing_model_message(spec))
    return path


@click.command("export-onnx", context_settings=CONTEXT, epilog="""\b
Examples:
  rwkv-music export-onnx RWKV-5-ABC-82M.pth abc.onnx
  rwkv-music export-onnx abc-default abc.onnx           # a shipped model, by name
  rwkv-music export-onnx model.pth model-fp16.onnx --dtype fp16
  rwkv-music export-onnx model.pth model-int8.onnx --dtype int8
  rwkv-music export-onnx model.pth model-int4.onnx --dtype int4
  rwkv-music export-onnx midi-default midi.onnx --with-sampler   # + midi.sampler.onnx
  rwkv-music generate-abc --model abc.onnx --backend onnx
""")
@click.argument("checkpoint")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(onnx_export.EXPORT_DTYPES), default="fp32", show_default=True,
              help="fp32 or fp16 graph (the WKV state stays fp32); or the large matrices' storage in an fp32 "
                   "graph: int8 (per-channel scales), int4 (MatMulNBits, 32 per group), bf16 (cast to fp32 "
                   "in the graph: onnxruntime's CPU has no bf16 MatMul).")
@click.option("--int8", is_flag=True, help="The same as --dtype int8 (kept for existing scripts).")
@click.option("--int8-activations", is_flag=True,
              help="With --dtype int8: also round activations to int8 (MatMulNBits; faster decode, up to "
                   "~2x the logit error of the default weight-only int8).")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=onnx_export.DEFAULT_OPSET, show_default=True,
              help="ONNX opset version.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in OUT.data (default: when above ~100 MB).")
@click.option("--with-sampler", is_flag=True,
              help="Also write the sampler graph OUT.sampler.onnx (penalties, top-p, top-k, temperature and the "
                   "draw from a caller's uniform, all settings as inputs) and record it in the sidecar.")
@click.option("--force", is_flag=True, help="Overwrite OUT and its sidecar.")
@boundary
def export_onnx(checkpoint: str, out: str, dtype: str, int8: bool, opset: int, external_data: bool | None,
                force: bool, with_sampler: bool = False, int8_activations: bool = False) -> None:
    """Export CHECKPOINT to the ONNX graph OUT plus its sidecar OUT.json (for --backend onnx).

    CHECKPOINT is a file or a shipped model's name (abc-default, midi-default).  --backend onnx
    with a checkpoint exports it by itself on first use (into the cache); this command is for
    choosing where and how.
    """
    if int8 and dtype not in ("fp32", "int8"):
        raise click.BadParameter("--int8 needs --dtype fp32", param_hint="--int8")
    if int8_activations and not (int8 or dtype == "int8"):
        raise click.BadParameter(f"--int8-activations needs --dtype int8, got --dtype {dtype}",
                                 param_hint="--int8-activations")
    if dtype == "int8":  # one vocabulary with export-ncnn: int8 weights over an fp32 graph
        dtype, int8 = "fp32", True
    if with_sampler:  # refused before anything is written
        check_writable(onnx_sampler_path(out), force)
    path = onnx_export.export(
        _checkpoint(checkpoint), out, dtype, opset, int8=int8, int8_mode="dynamic" if int8_activations else "weight",
        external_data=external_data, force=force,
    )
    click.echo(f"wrote {path} and {onnx_sidecar_path(path)}")
    if with_sampler:
        from rwkv_music.backends.onnx_sampler import export_beside

        click.echo(f"wrote {export_beside(path, opset, force=force)}")


@click.command("export-ncnn", context_settings=CONTEXT, epilog="""\b
Examples:
  rwkv-music export-ncnn model.pth model
  rwkv-music export-ncnn midi-default midi              # a shipped model, by name
  rwkv-music export-ncnn model.pth model-int8 --dtype int8
  rwkv-music generate-midi --model model.param --backend ncnn
""")
@click.argument("checkpoint")
@click.argument("out_prefix", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(NCNN_STORAGES), default="fp32", show_default=True,
              help="Weight storage: fp32, fp16, or int8 (per-row int8 weights like the torch backend's, "
                   "activations in float; expanded at load).")
@click.option("--int8-scheme", type=click.Choice(["rows", "codebook"]), default="rows", show_default=True,
              help="With --dtype int8: per-row int8 (rows) or the older fitted 256-level table per matrix (codebook).")
@click.option("--prefill-chunk", type=click.IntRange(0, ncnn_export.MAX_PREFILL_CHUNK),
              default=ncnn_export.PREFILL_CHUNK, show_default=True,
              help="Tokens per call of the prefill graph OUT_PREFIX.seq.param (0: none; prompts go token by token).")
@click.option("--force", is_flag=True, help="Overwrite OUT_PREFIX.param/.bin/.json.")
@boundary
def export_ncnn(checkpoint: str, out_prefix: str, dtype: str, int8_scheme: str, prefill_chunk: int,
                force: bool) -> None:
    """Export CHECKPOINT to OUT_PREFIX.param/.bin/.json for `--backend ncnn --model OUT_PREFIX.param`.

    CHECKPOINT is a file or a shipped model's name (abc-default, midi-default).
    """
    if int8_scheme != "rows" and dtype != "int8":
        raise click.UsageError("--int8-scheme applies to --dtype int8 only")
    paths = ncnn_paths(ncnn_export.export(_checkpoint(checkpoint), out_prefix, dtype, force=force,
                                          int8_scheme=int8_scheme, prefill_chunk=prefill_chunk))
    click.echo(f"wrote {paths['param']}, {paths['bin']} and {paths['sidecar']}")
