"""Which RWKV generation a checkpoint is, its sizes, and the exact key layout it must have.

Everything here is a pure function of the checkpoint's key names and tensor shapes (no file
access, no environment variables), so it serves every backend and exporter alike:

* :func:`detect_version` — the two-pass rule of docs/formats.md A4.
* :func:`config_from_state_dict` — sizes per docs/formats.md A5 as an :class:`RWKVConfig`.
* :func:`expected_shapes` — every key a checkpoint of that config must (or may) hold, with its
  shape as stored (docs/formats.md A2/A3); :mod:`rwkv_music.model.checkpoint` compares against it.

Decisions where the sources leave room (documented here once):

* v5.0/v5.1 carry ``time_first`` *or* ``time_faaaa``; block 0 decides and every block must use
  the same name.  v5.2/v6 accept only ``time_faaaa``.
* v6 ``time_state`` (state tuning, ``[H, N, N]`` in ``S[value, key]`` order) is optional; when
  present in every block it becomes the model's initial state (as the rwkv package does).
* v7 ``v0``/``v1``/``v2`` of block 0 are unused by the math (docs/formats.md A3/A6); they are accepted
  when present and not required, since the trainer writes them but converters may drop them.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

from rwkv_music.errors import CheckpointError
from rwkv_music.model.config import ModelVersion, RWKVConfig

Shapes = Mapping[str, tuple[int, ...]]

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")

# Sanity limits on sizes read from a file, checked before anything of that size is built (the
# largest released RWKV models have 61 layers, width 7168, vocabulary 65536; room is left above).
LIMITS = {"n_layer": 512, "n_embd": 32768, "dim_att": 32768, "dim_ffn": 4 * 32768, "vocab_size": 1 << 20,
          "head_size": 4096, "lora": 32768}
_V7_MARKERS = ("att.r_k", "att.x_r", "att.w0", "att.k_k", "ffn.x_k")


def shapes_of(sd: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key → shape tuple for a state dict of tensors (or anything with ``.shape``)."""
    return {k: tuple(int(d) for d in getattr(v, "shape", ())) for k, v in sd.items()}


def detect_version(shapes: Shapes, source: str = "checkpoint") -> ModelVersion:
    """The RWKV version of a checkpoint from its key names and shapes alone (docs/formats.md A4).

    The full key set is collected first and then tested in a fixed order, so (unlike the rwkv
    package's single in-order scan) the answer does not depend on key order or layer count.

    >>> detect_version({"blocks.0.att.time_decay": (8, 32), "blocks.0.att.ln_x.weight": (256,)})
    ModelVersion('5.2')
    """
    keys = set(shapes)
    if "_strategy" in keys:
        raise CheckpointError(
            f"{source}: this file was pre-converted by the rwkv package (has '_strategy'); "
            "load the original trainer .pth instead"
        )
    qkv = sorted(k for k in keys if ".qkv." in k)
    if qkv:
        raise CheckpointError(f"{source}: RWKV-7 'b' (DEA attention, key {qkv[0]!r}) is not supported")
    if any(k.endswith(m) for k in keys for m in _V7_MARKERS):
        if any(k.endswith("ffn.s_emb.weight") for k in keys):
            return ModelVersion("7a")
        return ModelVersion("7")
    if any("time_maa" in k for k in keys):
        return ModelVersion("6")
    if any("ln_x" in k for k in keys):
        decay_keys = sorted((k for k in keys if k.endswith("att.time_decay")), key=_block_index)
        if decay_keys:
            shape = shapes[decay_keys[0]]
            if len(shape) >= 2 and shape[1] > 1:
                return ModelVersion("5.2")
        if any(k.endswith("gate.weight") for k in keys):
            return ModelVersion("5.1")
        return ModelVersion("5.0")
    return ModelVersion("4")


def _block_index(key: str) -> int:
    m = _BLOCK_RE.match(key)
    return int(m.group(1)) if m else -1


def _need(shapes: Shapes, key: str, source: str, ndim: int | None = None) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"{source}: missing key {key!r} (needed to size the model)")
    shape = shapes[key]
    if ndim is not None and len(shape) != ndim:  # [1, 1, C] stores a vector; [1, N] is one head, kept 2-D
        shape = _squeeze(shape)
        if len(shape) != ndim:
            raise CheckpointError(f"{source}: tensor {key!r} has shape {list(shapes[key])}, expected a {ndim}-D tensor")
    return shape


def _squeeze(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape without size-1 axes: ``[1,1,C]`` vectors and ``[H,1]`` decays compare as stored."""
    return tuple(d for d in shape if d != 1)


def first_time_key(shapes: Shapes) -> str:
    """``"time_first"`` or ``"time_faaaa"``: the bonus key name block 0 uses (v5.0/v5.1)."""
    return "time_first" if "blocks.0.att.time_first" in shapes else "time_faaaa"


def config_from_state_dict(sd: Mapping[str, Any], version: Any = None, source: str = "checkpoint") -> RWKVConfig:
    """Sizes of the model in ``sd`` (docs/formats.md A5); ``sd`` maps names to tensors or shape tuples.

    ``n_params`` is the number of elements over all tensors of the checkpoint as stored.
    """
    shapes = {k: (tuple(v) if isinstance(v, tuple) else tuple(int(d) for d in v.shape)) for k, v in sd.items()}
    ver = ModelVersion(version) if version is not None else detect_version(shapes, source)
    blocks = [_block_index(k) for k in shapes]
    if max(blocks, default=-1) < 0:
        raise CheckpointError(f"{source}: not an RWKV checkpoint (no 'blocks.N.*' keys)")
    n_layer = max(blocks) + 1
    if n_layer > LIMITS["n_layer"]:  # before anything loops over the layers
        last = max(blocks)
        raise CheckpointError(f"{source}: key 'blocks.{last}.*' means {n_layer} layers, more than the "
                              f"{LIMITS['n_layer']} this loader accepts")
    V, C = _need(shapes, "emb.weight", source, 2)
    A = _need(shapes, "blocks.0.att.key.weight", source, 2)[0]
    F = _need(shapes, "blocks.0.ffn.key.weight", source, 2)[0]
    a = "blocks.0.att."
    lora: dict[str, int] = {}
    if ver.family == 4:
        H, N = 0, 0
    elif ver in ("5.0", "5.1"):
        H = math.prod(_need(shapes, a + "time_decay", source))
        N = A // H if H and A % H == 0 else 0
    elif ver == "5.2":
        H, N = _need(shapes, a + "time_decay", source, 2)
    elif ver == "6":
        H, N = _need(shapes, a + "time_faaaa", source, 2)
        lora["maa"] = _need(shapes, a + "time_maa_w1", source, 2)[1] // 5
        lora["decay"] = _need(shapes, a + "time_decay_w1", source, 2)[1]
    else:  # 7, 7a
        H, N = _need(shapes, a + "r_k", source, 2)  # [1, N] for a single head
        for name in ("w", "a", "g"):
            lora[name] = _need(shapes, f"{a}{name}1", source, 2)[1]
        v1 = [k for k in ("blocks.1.att.v1", "blocks.0.att.v1") if k in shapes]
        if v1:
            lora["v"] = shapes[v1[0]][1]
        if ver == "7a":
            lora["semb"] = _need(shapes, "blocks.0.ffn.s_emb.weight", source, 2)[1]
    if ver.family >= 5 and (H <= 0 or H * N != A):
        raise CheckpointError(f"{source}: {H} heads of size {N} do not make the attention width {A}")
    n_params = sum(math.prod(s) for s in shapes.values())
    sizes = {"n_embd": C, "dim_att": A, "dim_ffn": F, "vocab_size": V, "head_size": N,
             **{f"lora {k}": d for k, d in lora.items()}}
    for name, value in sizes.items():
        limit = LIMITS["lora" if name.startswith("lora") else name]
        if value > limit:
            raise CheckpointError(f"{source}: {name} {value} is above the limit of {limit} this loader accepts")
    try:
        return RWKVConfig(
            version=ver, n_layer=n_layer, n_embd=C, dim_att=A, dim_ffn=F, n_head=H, head_size=N,
            vocab_size=V, lora=lora, n_params=n_params,
        )
    except ValueError as exc:
        raise CheckpointError(f"{source}: inconsistent sizes ({exc})") from None


ShapeTable = dict[str, tuple[int, ...]]


def expected_shapes(config: RWKVConfig, time_key: str = "time_faaaa") -> tuple[ShapeTable, ShapeTable]:
    """``(required, optional)``: key → shape as stored, for a raw trainer checkpoint of ``config``.

    ``time_key`` is the bonus key name of v5.0/v5.1 files (see :func:`first_time_key`).
    Vectors are listed as ``(C,)``; stored ``[1, 1, C]`` forms compare equal after squeezing.
    """
    L, C, A, F, V = config.n_layer, config.n_embd, config.dim_att, config.dim_ffn, config.vocab_size
    H, N, ver = config.n_head, config.head_size, config.version
    req: ShapeTable = {"emb.weight": (V, C), "blocks.0.ln0.weight": (C,), "blocks.0.ln0.bias": (C,),
                       "ln_out.weight": (C,), "ln_out.bias": (C,), "head.weight": (V, C)}
    opt: ShapeTable = {}
    for i in range(L):
        p = f"blocks.{i}."
        for ln in ("ln1", "ln2"):
            req[f"{p}{ln}.weight"] = req[f"{p}{ln}.bias"] = (C,)
        att, o = _att_shapes(ver, C, A, H, N, config.lora, time_key, i)
        req.update({f"{p}att.{k}": s for k, s in att.items()})
        opt.update({f"{p}att.{k}": s for k, s in o.items()})
        req.update({f"{p}ffn.{k}": s for k, s in _ffn_shapes(ver, C, F, V, config.lora).items()})
    return req, opt


def _att_shapes(ver: ModelVersion, C: int, A: int, H: int, N: int, lora: Mapping[str, int], time_key: str,
                layer: int) -> tuple[ShapeTable, ShapeTable]:
    mats = {"key.weight": (A, C), "value.weight": (A, C), "receptance.weight": (A, C), "output.weight": (C, A)}
    if ver == "4":
        mix = {"time_mix_k": (C,), "time_mix_v": (C,), "time_mix_r": (C,)}
        return {**mix, "time_decay": (A,), "time_first": (A,), **mats}, {}
    if ver.family == 5:
        out = {"time_mix_k": (C,), "time_mix_v": (C,), "time_mix_r": (C,), **mats,
               "ln_x.weight": (A,), "ln_x.bias": (A,)}
        if ver == "5.2":
            out.update({"time_decay": (H, N), "time_faaaa": (H, N)})
        else:
            out.update({"time_decay": (H,), time_key: (H,)})
        if ver != "5.0":
            out.update({"time_mix_g": (C,), "gate.weight": (A, C)})
        return out, {}
    if ver == "6":
        Dm, Dd = lora.get("maa", 0), lora.get("decay", 0)
        out = {f"time_maa_{n}": (C,) for n in "xwkvrg"}
        out.update({"time_maa_w1": (C, 5 * Dm), "time_maa_w2": (5, Dm, C), "time_decay": (A,),
                    "time_decay_w1": (C, Dd), "time_decay_w2": (Dd, A), "time_faaaa": (H, N),
                    **mats, "gate.weight": (A, C), "ln_x.weight": (A,), "ln_x.bias": (A,)})
        return out, {"time_state": (H, N, N)}
    # v7 / v7a
    Dw, Da, Dv, Dg = (lora.get(n, 0) for n in "wavg")
    out = {f"x_{n}": (C,) for n in "rwkvag"}
    out.update({"w0": (A,), "w1": (C, Dw), "w2": (Dw, A), "a0": (A,), "a1": (C, Da), "a2": (Da, A),
                "g1": (C, Dg), "g2": (Dg, A), "k_k": (A,), "k_a": (A,), "r_k": (H, N),
                **mats, "ln_x.weight": (A,), "ln_x.bias": (A,)})
    vres = {"v0": (A,), "v1": (C, Dv), "v2": (Dv, A)}
    if layer == 0:  # the value residual starts at layer 1: block 0's v0/v1/v2 are unused
        return out, vres
    out.update(vres)
    return out, {}


def _ffn_shapes(ver: ModelVersion, C: int, F: int, V: int, lora: Mapping[str, int]) -> ShapeTable:
    if ver.family == 7:
        out = {"x_k": (C,), "key.weight": (F, C), "value.weight": (C, F)}
        if ver == "7a":
            D = lora.get("semb", 0)
            side = math.isqrt(D)
            out.update({"s_emb.weight": (V, D), "s_emb_x.weight": (D, C),
                        "s1": (C, side), "s2": (side, F), "s0": (F,)})
        return out
    mix = ("time_maa_k", "time_maa_r") if ver == "6" else ("time_mix_k", "time_mix_r")
    return {mix[0]: (C,), mix[1]: (C,), "key.weight": (F, C), "receptance.weight": (C, C), "value.weight": (C, F)}


def shapes_match(got: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal up to size-1 axes (``[1,1,C]`` ≡ ``[C]``, ``[H,1]`` ≡ ``[H]``)."""
    return _squeeze(tuple(got)) == _squeeze(tuple(expected))
