"""``export-onnx`` and ``export-ncnn``: write a checkpoint as a graph for ``--backend onnx`` / ``ncnn``.

Thin by design: parse the options, call the exporter
(:func:`rwkv_music.backends.onnx_export.export`, :func:`rwkv_music.backends.ncnn_export.export`),
echo what was written.  ``rwkv-music --help`` lists these commands without importing this module.
"""

from __future__ import annotations

import click

from rwkv_music.backends import ncnn_export, onnx_export
from rwkv_music.backends.onnx_graph_common import MIN_OPSET
from rwkv_music.backends.sidecar import NCNN_STORAGES, ncnn_paths, onnx_sidecar_path
from rwkv_music.cli.common import CONTEXT, boundary


@click.command("export-onnx", context_settings=CONTEXT, epilog="""\b
Examples:
  rwkv-music export-onnx RWKV-5-ABC-82M.pth abc.onnx
  rwkv-music export-onnx model.pth model-fp16.onnx --dtype fp16
  rwkv-music export-onnx model.pth model-int8.onnx --int8
  rwkv-music generate-abc --model abc.onnx --backend onnx
""")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(sorted(onnx_export.DTYPES)), default="fp32", show_default=True,
              help="Activation dtype of the graph (the WKV state stays fp32).")
@click.option("--int8", is_flag=True, help="Int8 weights for the large matrices (MatMulNBits; fp32 graphs only).")
@click.option("--opset", type=click.IntRange(min=MIN_OPSET), default=onnx_export.DEFAULT_OPSET, show_default=True,
              help="ONNX opset version.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store weights in OUT.data (default: when above ~100 MB).")
@click.option("--force", is_flag=True, help="Overwrite OUT and its sidecar.")
@boundary
def export_onnx(checkpoint: str, out: str, dtype: str, int8: bool, opset: int, external_data: bool | None,
                force: bool) -> None:
    """Export CHECKPOINT to the ONNX graph OUT plus its sidecar OUT.json (for --backend onnx)."""
    if int8 and dtype != "fp32":
        raise click.BadParameter("--int8 needs --dtype fp32", param_hint="--int8")
    path = onnx_export.export(checkpoint, out, dtype, opset, int8=int8, external_data=external_data, force=force)
    click.echo(f"wrote {path} and {onnx_sidecar_path(path)}")


@click.command("export-ncnn", context_settings=CONTEXT, epilog="""\b
Examples:
  rwkv-music export-ncnn model.pth model
  rwkv-music export-ncnn model.pth model-int8 --dtype int8
  rwkv-music generate-midi --model model.param --backend ncnn
""")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.argument("out_prefix", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(NCNN_STORAGES), default="fp32", show_default=True,
              help="Weight storage: fp32, fp16, or int8 (8-bit codebook per matrix, expanded at load).")
@click.option("--force", is_flag=True, help="Overwrite OUT_PREFIX.param/.bin/.json.")
@boundary
def export_ncnn(checkpoint: str, out_prefix: str, dtype: str, force: bool) -> None:
    """Export CHECKPOINT to OUT_PREFIX.param/.bin/.json for `--backend ncnn --model OUT_PREFIX.param`."""
    paths = ncnn_paths(ncnn_export.export(checkpoint, out_prefix, dtype, force=force))
    click.echo(f"wrote {paths['param']}, {paths['bin']} and {paths['sidecar']}")
