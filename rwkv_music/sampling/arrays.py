"""A tiny array shim: the few operations the processors and the sampler need, on numpy or torch.

Every generic processor is written once against :func:`ops` (``xp = ops(scores)``), so the same
code runs vectorised on numpy arrays (onnx/ncnn backends, no torch needed) and as tensor ops on
the device that holds a torch tensor (no host copy).  torch is never imported here: a tensor
implies torch is already loaded (:func:`~rwkv_music.sampling.base.is_torch_tensor`).

>>> import numpy as np
>>> xp = ops(np.zeros((2, 3), dtype=np.float32))
>>> xp.name, xp.amax(np.array([[1.0, 3.0]]), keepdims=True).tolist()
('numpy', [[3.0]])
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import numpy as np

from rwkv_music.sampling.base import is_torch_tensor

NEG_INF = float("-inf")
_BLOCK = 64  # block width of the block-maxima top-k (NumpyOps.top_values)


class NumpyOps:
    """The numpy side (row axis 0, vocabulary axis 1)."""

    name = "numpy"

    def __init__(self, like: Any = None) -> None:
        self.device = "cpu"

    # creation
    def full(self, shape: Sequence[int], value: float, dtype: Any = np.float32) -> np.ndarray:
        return np.full(tuple(shape), value, dtype=self.dtype(dtype))

    def asarray(self, values: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(values, dtype=None if dtype is None else self.dtype(dtype))

    def arange(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64)

    @staticmethod
    def dtype(name: Any) -> Any:
        return {"float32": np.float32, "float64": np.float64, "int64": np.int64, "bool": np.bool_}.get(name, name)

    def cast(self, x: np.ndarray, name: str) -> np.ndarray:
        return x.astype(self.dtype(name), copy=False)

    def copy(self, x: np.ndarray) -> np.ndarray:
        return x.copy()

    # elementwise
    isfinite = staticmethod(np.isfinite)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)

    @staticmethod
    def where(cond: Any, a: Any, b: Any) -> np.ndarray:
        # a Python float beside a float32 array: as float32 (no float64 temporary)
        if isinstance(b, float) and isinstance(a, np.ndarray) and a.dtype.kind == "f":
            b = a.dtype.type(b)
        elif isinstance(a, float) and isinstance(b, np.ndarray) and b.dtype.kind == "f":
            a = b.dtype.type(a)
        out = np.where(cond, a, b)
        dt = a.dtype if isinstance(a, np.ndarray) else (b.dtype if isinstance(b, np.ndarray) else None)
        return out if dt is None or out.dtype == dt else out.astype(dt)

    @staticmethod
    def maximum(a: Any, b: Any) -> np.ndarray:
        return np.maximum(a, b)

    # reductions along the vocabulary (axis 1 unless told)
    @staticmethod
    def amax(x: np.ndarray, axis: int = 1, keepdims: bool = False) -> np.ndarray:
        return x.max(axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x: np.ndarray, axis: int = 1, keepdims: bool = False) -> np.ndarray:
        return x.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def any(x: np.ndarray, axis: int = 1) -> np.ndarray:
        return x.any(axis=axis)

    @staticmethod
    def cumsum(x: np.ndarray, axis: int = 1) -> np.ndarray:
        return np.cumsum(x, axis=axis)

    @staticmethod
    def count_true(x: np.ndarray, axis: int = 1) -> np.ndarray:
        """True entries per row as int64 (no int64 copy of a [B, V] mask).

        Row by row: ``count_nonzero`` of a whole contiguous row is several times faster than with ``axis``.
        """
        if axis == 1 and x.ndim == 2 and x.flags.c_contiguous:
            return np.fromiter((np.count_nonzero(row) for row in x), dtype=np.int64, count=x.shape[0])
        return np.count_nonzero(x, axis=axis).astype(np.int64, copy=False)

    @staticmethod
    def argmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
        return x.argmax(axis=axis)

    @staticmethod
    def take(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return np.take_along_axis(x, idx, axis=1)

    @staticmethod
    def top_values(x: np.ndarray, m: int) -> np.ndarray:
        """The ``m`` largest values of each row, sorted descending ([B, m], m <= V; no NaN)."""
        V = x.shape[1]
        if m >= V:
            return -np.sort(-x, axis=1)
        if m * _BLOCK * 4 <= V:
            return NumpyOps._top_values_blocks(x, m)
        part = np.partition(x, V - m, axis=1)[:, V - m :]
        return -np.sort(-part, axis=1)

    @staticmethod
    def top_pool(x: np.ndarray, m: int, unclean: list[bool] | None = None) -> Any:
        """:meth:`top_values` ``(x, m)`` and every finite entry of ``x`` at or above each row's ``m``-th
        largest value (ties included), as ``(rows, cols, values)`` in row-major order (no NaN in ``x``).

        Through the groups of :meth:`_top_values_blocks`: with ``h`` the ``m``-th largest group maximum of
        a row, its ``m`` largest values are all ``>= h`` (``m`` group maxima are), so they, and every entry
        tied with the ``m``-th, are among the entries ``>= h`` of the groups whose maximum is ``>= h`` (and
        of the tail).  Only those few entries are sorted.
        """
        B, V = x.shape
        n = V // _BLOCK
        if not 0 < m < V or m * _BLOCK * 4 > V or n <= m:
            if unclean is not None and x is not NumpyOps().clean(x):
                unclean[0] = True
                return None
            top = NumpyOps.top_values(x, min(m, V))
            rows, cols = np.nonzero((x >= top[:, -1:]) & (x > -np.inf))
            return top, (rows, cols, x[rows, cols])
        body = x[:, : n * _BLOCK].reshape(B, _BLOCK, n)  # group g: columns g + i * n
        heads = body.max(axis=1)  # [B, n]
        if unclean is not None:  # NaN and +inf reach the group maxima (or the tail): then clean first
            top_head = heads.max() if n * _BLOCK == V else max(heads.max(), x[:, n * _BLOCK :].max())
            if not top_head < np.inf:  # NaN or +inf
                unclean[0] = True
                return None
        h = np.partition(heads, n - m, axis=1)[:, n - m]  # [B]
        # (>= h and finite, as one comparison: h raised to the lowest finite value)
        h = np.maximum(h, np.finfo(x.dtype).min)
        if B == 1:  # one row: its entries >= h in one pass, already in column order (few array calls)
            cols = np.flatnonzero(x[0] >= h[0])
            vals = x[0, cols]
            top = np.sort(vals)[: -m - 1 : -1]
            if top.size < m:  # fewer than m finite entries: -inf after them, as in the grid below
                top = np.concatenate([top, np.full(m - top.size, -np.inf, dtype=x.dtype)])
            keep = vals >= top[m - 1]
            cols, vals = cols[keep], vals[keep]
            return top[None, :], (np.zeros(cols.size, dtype=np.intp), cols, vals)
        sel_r, sel_g = np.nonzero(heads >= h[:, None])
        grp = body[sel_r, :, sel_g]  # [s, _BLOCK]
        q = np.flatnonzero(grp >= h[sel_r, None])
        s, i = np.divmod(q, _BLOCK)
        rows, cols, vals = sel_r[s], sel_g[s] + i * n, grp.reshape(-1)[q]
        if n * _BLOCK < V:  # the tail that fills no group
            tail = x[:, n * _BLOCK :]
            tr, tc = np.nonzero(tail >= h[:, None])
            rows = np.concatenate([rows, tr])
            cols = np.concatenate([cols, tc + n * _BLOCK])
            vals = np.concatenate([vals, tail[tr, tc]])
        order = np.lexsort((cols, rows))  # row-major, each row's columns ascending (groups are strided)
        rows, cols, vals = rows[order], cols[order], vals[order]
        counts = np.bincount(rows, minlength=B)
        start = np.cumsum(counts) - counts
        grid = np.full((B, max(int(counts.max(initial=0)), m)), -np.inf, dtype=x.dtype)
        grid[rows, np.arange(rows.size) - start[rows]] = vals
        top = np.sort(grid, axis=1)[:, : -m - 1 : -1]
        keep = vals >= top[rows, m - 1]
        return top, (rows[keep], cols[keep], vals[keep])

    @staticmethod
    def _top_values_blocks(x: np.ndarray, m: int, heads: np.ndarray | None = None) -> np.ndarray:
        """:meth:`top_values` through group maxima, for ``m`` much smaller than the row.

        numpy's ``partition`` slows down ten times on rows full of equal values (the -inf of a
        constraint's mask: 45 ms for [32, 20096]).  The ``m`` largest values of a row lie in the ``m``
        groups with the largest maxima (a value outside them is topped by those ``m`` maxima), so
        one max-reduction, a gather of ``m`` groups and a sort of those give the same values.  A
        group is every ``n``-th column (strided), so the reduction is an elementwise maximum of
        contiguous rows.
        """
        B, V = x.shape
        n = V // _BLOCK  # groups: column j + i * n for i < _BLOCK
        body = x[:, : n * _BLOCK].reshape(B, _BLOCK, n)
        heads = body.max(axis=1) if heads is None else heads  # [B, n]
        if n > m:
            pick = np.argpartition(heads, n - m, axis=1)[:, n - m :]  # [B, m] groups
            cand = np.take_along_axis(body, pick[:, None, :], axis=2).reshape(B, -1)
        else:
            cand = body.reshape(B, -1)
        if n * _BLOCK < V:  # the tail that fills no group is always a candidate
            cand = np.concatenate([cand, x[:, n * _BLOCK :]], axis=1)
        return np.sort(cand, axis=1)[:, : -m - 1 : -1]  # (sorting a few thousand beats partition on ties)

    def clean(self, x: np.ndarray) -> np.ndarray:
        """``x`` with NaN and +inf as -inf (illegal); ``x`` itself when it has none (the usual case)."""
        top = x.max(axis=1)  # NaN or +inf show up in the row maxima
        if np.isnan(top).any() or np.isposinf(top).any():
            return self.where(np.isfinite(x), x, NEG_INF)
        return x

    @staticmethod
    def finite_flat(fin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of every True entry of ``fin``, in row-major order."""
        flat = np.flatnonzero(fin)
        rows = flat // fin.shape[1]
        return rows, flat - rows * fin.shape[1]

    @staticmethod
    def sort_desc(x: np.ndarray) -> np.ndarray:
        return -np.sort(-x, axis=1)

    def to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)


class TorchOps:
    """The torch side: every result stays on the input's device."""

    name = "torch"

    def __init__(self, like: Any) -> None:
        self.torch = sys.modules["torch"]
        self.device = like.device

    def dtype(self, name: Any) -> Any:
        t = self.torch
        return {"float32": t.float32, "float64": t.float64, "int64": t.int64, "bool": t.bool}.get(name, name)

    def full(self, shape: Sequence[int], value: float, dtype: Any = "float32") -> Any:
        return self.torch.full(tuple(shape), value, dtype=self.dtype(dtype), device=self.device)

    def asarray(self, values: Any, dtype: Any = None) -> Any:
        dt = None if dtype is None else self.dtype(dtype)
        if is_torch_tensor(values):
            return values.to(device=self.device, dtype=dt)
        # non_blocking: a host-to-GPU copy from pageable memory is staged at once and does not wait
        # for the GPU (a blocking one would stall the launch queue every step)
        host = self.torch.from_numpy(np.ascontiguousarray(np.asarray(values)))
        return host.to(device=self.device, dtype=dt, non_blocking=True)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.device)

    def cast(self, x: Any, name: str) -> Any:
        return x.to(self.dtype(name))

    @staticmethod
    def copy(x: Any) -> Any:
        return x.clone()

    def isfinite(self, x: Any) -> Any:
        return self.torch.isfinite(x)

    def exp(self, x: Any) -> Any:
        return self.torch.exp(x)

    def log(self, x: Any) -> Any:
        return self.torch.log(x)

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.torch.where(cond, a, b)  # Python scalars stay scalars (no tiny host-to-GPU copies)

    def maximum(self, a: Any, b: Any) -> Any:
        return self.torch.maximum(a, b)

    @staticmethod
    def amax(x: Any, axis: int = 1, keepdims: bool = False) -> Any:
        return x.amax(dim=axis, keepdim=keepdims)

    @staticmethod
    def sum(x: Any, axis: int = 1, keepdims: bool = False) -> Any:
        return x.sum(dim=axis, keepdim=keepdims)

    @staticmethod
    def any(x: Any, axis: int = 1) -> Any:
        return x.any(dim=axis)

    def cumsum(self, x: Any, axis: int = 1) -> Any:
        return self.torch.cumsum(x, dim=axis)

    @staticmethod
    def count_true(x: Any, axis: int = 1) -> Any:
        return x.sum(dim=axis)  # a bool sum is int64

    @staticmethod
    def argmax(x: Any, axis: int = 1) -> Any:
        return x.argmax(dim=axis)

    def take(self, x: Any, idx: Any) -> Any:
        return self.torch.gather(x, 1, idx)

    def top_values(self, x: Any, m: int) -> Any:
        if m >= x.shape[1]:
            return self.sort_desc(x)
        return self.torch.topk(x, m, dim=1, largest=True, sorted=True).values

    def clean(self, x: Any) -> Any:
        """As :meth:`NumpyOps.clean`; on a GPU always the masked copy (checking would cost a host sync)."""
        if not on_accelerator(x):
            top = x.amax(dim=1)
            if not (bool(self.torch.isnan(top).any()) or bool(self.torch.isposinf(top).any())):
                return x
        return self.torch.where(self.torch.isfinite(x), x, NEG_INF)

    def sort_desc(self, x: Any) -> Any:
        if not on_accelerator(x):  # numpy's sort is several times faster than torch's on a CPU
            return self.torch.from_numpy(-np.sort(-x.detach().numpy(), axis=1))
        return self.torch.sort(x, dim=1, descending=True).values

    @staticmethod
    def to_host(x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()


def ops(x: Any) -> NumpyOps | TorchOps:
    """The shim for ``x``'s kind: :class:`TorchOps` for a torch tensor, :class:`NumpyOps` otherwise."""
    return TorchOps(x) if is_torch_tensor(x) else NumpyOps()


HOST_DEVICE_TYPES = {"cpu"}  # torch device types whose memory is the host's (tests empty it to run the GPU branches)


def on_accelerator(x: Any) -> bool:
    """True for a tensor on a GPU: there the code avoids data-dependent branches (each would be a host sync)."""
    return is_torch_tensor(x) and x.device.type not in HOST_DEVICE_TYPES


__all__ = ["HOST_DEVICE_TYPES", "NEG_INF", "NumpyOps", "TorchOps", "on_accelerator", "ops"]
