"""Streaming statistics and histograms: one read of each tensor, in chunks.

Every statistic comes from running sums that are merged chunk by chunk (min, max, sum, sum of
squares, zero, NaN and Inf counts), so a tensor never has to be in memory whole. Sums run in
float64 whatever the stored dtype (bfloat16 and float16 are widened a chunk at a time), so the
results agree with numpy on the whole tensor. ``std`` is the population standard deviation
(ddof=0); min, max, mean, std and l2 are taken over the finite values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .reader import Checkpoint

# Samples kept per tensor for the histogram of a tensor too large to hold whole.
HISTOGRAM_SAMPLE = 1 << 20


def _is_numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "int", "uint", "bool", "complex", "half"))


@dataclass
class Accumulator:
    """Running statistics over chunks of one tensor (finite values only for the moments)."""

    count: int = 0  # all elements seen
    finite: int = 0
    shift: float | None = None  # first finite value: sums of (x - shift) avoid cancellation
    shifted_sum: float = 0.0
    shifted_sumsq: float = 0.0
    min: float = math.inf
    max: float = -math.inf
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    sample: list = field(default_factory=list)
    sample_every: int = 0  # keep every k-th finite value for a histogram; 0 keeps none
    _seen_for_sample: int = 0

    def add(self, chunk: np.ndarray) -> None:
        """Fold one flat chunk of values into the running statistics."""
        n = chunk.size
        if n == 0:
            return
        if chunk.dtype.kind == "c":  # complex: statistics of the magnitude
            chunk = np.abs(chunk)
        x = chunk.astype(np.float64, copy=False) if chunk.dtype != np.float64 else chunk
        self.count += n
        self.zeros += n - int(np.count_nonzero(x))
        if self.shift is None:
            first = x[np.isfinite(x)][:1]
            self.shift = float(first[0]) if first.size else None
        shift = self.shift or 0.0
        d = x - shift
        shifted_sum = float(d.sum())
        if math.isfinite(shifted_sum):  # fast path: no NaN or Inf in this chunk
            finite_x = x
        else:
            nan_mask = np.isnan(x)
            inf_mask = np.isinf(x)
            self.nan += int(nan_mask.sum())
            self.inf += int(inf_mask.sum())
            keep = ~(nan_mask | inf_mask)
            finite_x = x[keep]
            d = d[keep]
            shifted_sum = float(d.sum())
        if finite_x.size:
            self.finite += finite_x.size
            self.shifted_sum += shifted_sum
            self.shifted_sumsq += float(np.dot(d, d))
            self.min = min(self.min, float(finite_x.min()))
            self.max = max(self.max, float(finite_x.max()))
            if self.sample_every:
                self._keep_sample(finite_x)

    def _keep_sample(self, x: np.ndarray) -> None:
        # A strided sample: every k-th finite value, k fixed up front from the tensor size so
        # the histogram of a huge tensor needs neither a second pass nor a sort.
        start = (-self._seen_for_sample) % self.sample_every
        picked = x[start::self.sample_every]
        self._seen_for_sample += x.size
        if picked.size:
            self.sample.append(picked.astype(np.float32))

    def result(self) -> dict:
        """The statistics as a record (None where a statistic does not apply)."""
        if self.finite:
            n, k = self.finite, self.shift or 0.0
            mean_d = self.shifted_sum / n
            var = max(self.shifted_sumsq / n - mean_d * mean_d, 0.0)
            sumsq = self.shifted_sumsq + 2 * k * self.shifted_sum + n * k * k
            stats = {"min": self.min, "max": self.max, "mean": k + mean_d,
                     "std": math.sqrt(var), "l2": math.sqrt(max(sumsq, 0.0))}
        else:
            stats = {"min": None, "max": None, "mean": None, "std": None, "l2": None}
        stats["zeros"] = (self.zeros / self.count) if self.count else None
        stats["nan"] = self.nan
        stats["inf"] = self.inf
        return stats

    def sampled(self) -> np.ndarray:
        return np.concatenate(self.sample) if self.sample else np.empty(0, np.float32)


def new_accumulator(numel: int, sample_size: int = HISTOGRAM_SAMPLE) -> Accumulator:
    """An accumulator that keeps about ``sample_size`` values of a ``numel``-element tensor."""
    return Accumulator(sample_every=max(1, -(-numel // sample_size)))


def tensor_stats(ckpt: Checkpoint, key: str, *, keep_sample: bool = False,
                 chunk_bytes: int | None = None, threshold_bytes: int | None = None) -> dict:
    """Statistics of one tensor per the ``stats`` contract (key, name-less fields).

    Returns the record fields ``key``, ``dtype``, ``numel``, ``min``, ``max``, ``mean``,
    ``std``, ``l2``, ``zeros``, ``nan``, ``inf``, and with ``keep_sample`` also ``sample``
    (the finite values, or a strided sample of them) and ``sampled_of`` (how many finite
    values there were). String tensors get None statistics.
    """
    entry = ckpt.entries[key]
    record = {"key": key, "dtype": entry.dtype, "numel": entry.numel}
    if not _is_numeric(entry.dtype):
        ckpt.read_raw(key)  # still check that it reads
        record.update({"min": None, "max": None, "mean": None, "std": None, "l2": None,
                       "zeros": None, "nan": 0, "inf": 0})
        return record
    acc = new_accumulator(entry.numel) if keep_sample else Accumulator()
    for chunk in ckpt.chunks(key, chunk_bytes=chunk_bytes, threshold_bytes=threshold_bytes):
        acc.add(chunk)
    record.update(acc.result())
    if keep_sample:
        record["sample"] = acc.sampled()
        record["sampled_of"] = acc.finite
    return record


def histogram(values: np.ndarray, bins: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Counts and bin edges of the finite ``values`` (an empty histogram when none)."""
    values = values[np.isfinite(values)] if values.size else values
    if values.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    return np.histogram(values, bins=bins)


def downsample_2d(array: np.ndarray, max_side: int = 256) -> tuple[np.ndarray, int, int]:
    """A 2-D array shrunk by block means to at most ``max_side`` per side (for heatmaps).

    Returns the array and the row and column strides used.
    """
    a = np.asarray(array, dtype=np.float32)
    rows, cols = a.shape
    sr, sc = max(1, -(-rows // max_side)), max(1, -(-cols // max_side))
    if sr == 1 and sc == 1:
        return a, 1, 1
    pr, pc = (-rows) % sr, (-cols) % sc
    padded = np.pad(a, ((0, pr), (0, pc)), constant_values=np.nan)
    blocks = padded.reshape(padded.shape[0] // sr, sr, padded.shape[1] // sc, sc)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(blocks, axis=(1, 3)), sr, sc
