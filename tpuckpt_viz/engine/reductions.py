"""Chunk reductions: the block statistics behind stats, diff, steps and Browse.

Each tensor is read once, in chunks, and reduced in blocks of :data:`BLOCK` values counted
from the tensor's start; the blocks' partial results (count, min, max, mean and sum of squared
deviations merged as in Chan et al., sum of squares, zero, NaN and Inf counts) are merged in
order. So a tensor is never in memory whole, and the numbers do not depend on how it was cut
into chunks or which thread reduced which block: a streamed read gives exactly the statistics
of a whole read.

How a block is reduced, and why (measured on this project's 2-core machine, numpy 2.4):

- Values stay in their stored width where that is exact: float32 as is; bfloat16, float16,
  float8 and small integers widened to float32 a block at a time into reused memory; float64
  and wide integers in float64. Blocks under 64K values are summed in float64 outright.
- ``min`` and ``max`` run on the block as is. A NaN or an Inf makes one of them non-finite,
  so a clean block needs no ``isfinite`` pass; only blocks that hold them pay for masks.
  bfloat16 takes its maximum and zero count from its bits (half the bytes).
- Sums run over rows of 1024 values with ``np.vecdot`` (float32 partial sums, the rows added in
  float64): within about 1e-9 of float64, where ``np.sum`` in float32 was 1e-7 off and
  ``np.dot`` (BLAS ``sdot``, float32 accumulators) 5e-7 to 3e-6. Converting to float64 first,
  as this module used to, cost 1.45 s per GiB of float32; all statistics now cost 0.12 s.
- The variance comes from a block's sum and sum of squares only where that cannot cancel:
  where the mean dominates (squared deviations under 1/16 of the squares: 1e4 plus noise, a
  normalization scale near 1.0) the block is summed again around its own mean. Magnitudes
  whose squares would leave float32's range take float64.
- Zeros are counted only where the block's range holds zero.

``std`` is the population standard deviation (ddof=0); min, max, mean, std and l2 are taken
over the finite values; ``zeros`` is the fraction of all elements.
"""

from __future__ import annotations

import math
import struct
import threading
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np

# Samples kept per tensor for the histogram of a tensor too large to hold whole.
HISTOGRAM_SAMPLE = 1 << 20
# Values per row of the row-wise sums (float32 partial sums over 1024 values stay exact to a
# few ulps; the rows are then added in float64).
_ROW = 1024
# Chunks of at least this many float32 values are summed in float32 rows (within about 1e-9
# of float64 at this size, 1e-8 at 64K values); smaller ones in float64.
FLOAT32_SUMS_FROM = 1 << 16
# Values per block: statistics are reduced block by block, counted from the tensor's start
# (1 MB of float32: every pass over a block after the first hits the core's cache).
BLOCK = 1 << 19

NONE_STATS = {"min": None, "max": None, "mean": None, "std": None, "l2": None}


def is_numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "int", "uint", "bool", "complex", "half"))


def widen(chunk: np.ndarray) -> np.ndarray:
    """``chunk`` as float32 or float64, whichever holds its values exactly (magnitude for
    complex). float32 and float64 come back as they are, without a copy."""
    dt = chunk.dtype
    if dt == np.float32 or dt == np.float64:
        return chunk
    if dt.kind == "c":
        return np.abs(chunk)
    if not dt.isnative:
        return widen(chunk.astype(dt.newbyteorder("=")))
    if dt.kind == "f" or dt.kind == "V" or (dt.kind in "iub" and dt.itemsize <= 2):
        # bfloat16, float16, float8 (ml_dtypes) and 8/16-bit integers and bools fit float32.
        return chunk.astype(np.float32)
    return chunk.astype(np.float64)


_scratch = threading.local()


def scratch_buffer(name: str, size: int, dtype) -> np.ndarray:
    """A per-thread scratch array of at least ``size`` elements (reused: fresh allocations of
    a few MB each cost page faults, measured as a third of the read time here)."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.size < size or buf.dtype != dtype:
        buf = np.empty(max(size, BLOCK), dtype)
        setattr(_scratch, name, buf)
    return buf[:size]


def widen_block(raw: np.ndarray) -> np.ndarray:
    """:func:`widen` into this thread's scratch memory (valid until its next call)."""
    dt = raw.dtype
    if dt == np.float32 or dt == np.float64 or dt.kind == "c" or not dt.isnative:
        return widen(raw)
    wide = np.float32 if (dt.kind == "f" or dt.kind == "V" or
                          (dt.kind in "iub" and dt.itemsize <= 2)) else np.float64
    out = scratch_buffer("wide" + np.dtype(wide).char, raw.size, wide)
    np.copyto(out, raw, casting="unsafe")
    return out


def row_sums(x: np.ndarray, y: np.ndarray | None = None) -> float:
    """Sum of ``x`` (or of ``x * y``) in float64, from partial sums over rows of 1024 values
    in the arrays' own type (``np.vecdot``). Deterministic for a given array.

    Measured here per 512K float32 values in cache: ``vecdot`` 22 to 27 us, ``add.reduce``
    along rows 48 to 62 us, ``einsum`` 44 to 55 us (and ``einsum`` rows of 512 or more lose
    precision: 5e-7 relative); ``vecdot`` rows stay within about 1e-9 of float64.
    """
    n = x.size
    m = n - n % _ROW
    total = 0.0
    if m:
        rows = x[:m].reshape(-1, _ROW)
        other = _ones(x.dtype) if y is None else y[:m].reshape(-1, _ROW)
        total = float(np.vecdot(rows, other).sum(dtype=np.float64))
    if m < n:
        tail = x[m:].astype(np.float64)
        total += float(tail.sum()) if y is None else float(np.dot(tail, y[m:].astype(np.float64)))
    return total


_ONES: dict = {}


def _ones(dtype) -> np.ndarray:
    ones = _ONES.get(dtype)
    if ones is None:
        ones = _ONES[dtype] = np.ones(_ROW, dtype)
    return ones


def _safe_range(x: np.ndarray, amax: float) -> tuple[np.ndarray, float]:
    """``x`` (and a scale to multiply results back by) in a type whose squares and row sums
    of squares neither overflow nor underflow; ``amax`` is the largest magnitude in ``x``."""
    if amax == 0.0:
        return x, 1.0
    if x.dtype == np.float32:
        if 1e-15 <= amax <= 1e17 and x.size >= FLOAT32_SUMS_FROM:
            return x, 1.0
        # Small chunks cost nothing in float64 (and are exact to 1e-15 there); float32's
        # whole range squares safely in float64.
        x = x.astype(np.float64)
    if 1e-140 <= amax <= 1e140:
        return x, 1.0
    # float64 at the edges of its range: scale by a power of two (exact) and undo afterwards.
    scale = math.ldexp(1.0, math.frexp(amax)[1])
    return x / scale, scale


_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _bf16_range(raw: np.ndarray, x: np.ndarray) -> tuple | None:
    """``(min, max, zeros)`` of a clean bfloat16 block, partly from its bits (half the bytes
    of the widened values: 0.8 of the float32 passes' time here); None if it holds a NaN or
    an Inf. ``x`` is the block widened to float32."""
    v = raw.view(np.int16)
    top = int(np.maximum.reduce(v))
    if top >= 0x7F80:  # +Inf or a NaN with its sign bit clear
        return None
    lo = float(np.minimum.reduce(x))  # -Inf, and a NaN with its sign bit set, show here
    if not math.isfinite(lo):
        return None
    # Non-negative bfloat16 values sort as their bits do; if none, the float32 pass.
    hi = struct.unpack("<f", struct.pack("<I", top << 16))[0] if top >= 0 else float(
        np.maximum.reduce(x))
    zeros = 0
    if lo <= 0.0 <= hi:
        zeros = raw.size - int(np.count_nonzero(raw.view(np.uint16)))  # +0.0
        if int(np.minimum.reduce(v)) == -32768:  # -0.0 (0x8000) is the least int16
            zeros += int(np.count_nonzero(v == -32768))
    return lo, hi, zeros


def block_stats(x: np.ndarray, sample_every: int = 0, sample_start: int = 0,
                raw: np.ndarray | None = None) -> tuple:
    """Partial statistics of one block of widened values (see :class:`Accumulator`).

    Returns ``(count, finite, mean, m2, sumsq, min, max, zeros, nan, inf, sample)``, where
    ``sample`` holds the finite values among ``x[sample_start::sample_every]`` (None when
    ``sample_every`` is 0). ``raw`` is the block as stored, where it was widened.
    """
    n = x.size
    if n == 0:
        return (0, 0, 0.0, 0.0, 0.0, math.inf, -math.inf, 0, 0, 0, None)
    sample = None
    if sample_every:
        sample = x[sample_start::sample_every].astype(np.float32)
    nan = inf = zeros = 0
    if raw is not None and raw.dtype == _BFLOAT16:
        clean = _bf16_range(raw, x)
        if clean is not None:
            lo, hi, zeros = clean
            return _moments(x, n, lo, hi, zeros, sample)
    lo, hi = x.min(), x.max()
    if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN or Inf in this block
        keep = np.isfinite(x)
        kept = int(np.count_nonzero(keep))
        nan = int(np.count_nonzero(np.isnan(x)))
        inf = n - kept - nan
        zeros = int(np.count_nonzero(x == 0))
        if sample is not None:
            sample = sample[np.isfinite(sample)]
        if not kept:
            return (n, 0, 0.0, 0.0, 0.0, math.inf, -math.inf, zeros, nan, inf, sample)
        x = x[keep]
        lo, hi = x.min(), x.max()
    elif lo <= 0 <= hi:
        zeros = int(np.count_nonzero(np.equal(x, 0, out=scratch_buffer("eq", n, np.bool_))))
    return _moments(x, n, float(lo), float(hi), zeros, sample, nan, inf)


def _moments(x: np.ndarray, n: int, lo: float, hi: float, zeros: int, sample, nan: int = 0,
             inf: int = 0) -> tuple:
    """The rest of :func:`block_stats` for the finite values ``x`` (``n`` elements in all)."""
    m = x.size
    y, scale = _safe_range(x, max(-lo, hi))
    s1 = row_sums(y)
    s2 = row_sums(y, y)
    mean = s1 / m
    m2 = s2 - s1 * mean
    if m2 < s2 / 16:  # the mean dominates: sum again around it, or the variance cancels
        k = y.dtype.type(mean)
        d = y - k
        t1 = row_sums(d)
        mean = float(k) + t1 / m
        m2 = max(row_sums(d, d) - t1 * t1 / m, 0.0)
        s2 = m2 + m * mean * mean  # more exact than squares of values that barely differ
    m2 = max(m2, 0.0)
    if scale != 1.0:
        mean, m2, s2 = mean * scale, m2 * scale * scale, s2 * scale * scale
    return (n, m, mean, m2, s2, lo, hi, zeros, nan, inf, sample)


@dataclass
class Accumulator:
    """Running statistics over chunks of one tensor (finite values only for the moments).

    ``add`` takes flat chunks of any numeric dtype, in order; ``result`` gives the record
    fields. The values are reduced in blocks of :data:`BLOCK` elements counted from the
    start of the tensor, whatever the chunks (a chunk's tail waits for the next one), and the
    blocks' partial results are merged in order (Chan et al. for the mean and the sum of
    squared deviations): the same tensor gives the same numbers, bit for bit, however it was
    cut into chunks, and whichever thread reduced which block.
    """

    count: int = 0  # all elements folded in
    finite: int = 0
    mean: float = 0.0  # of the finite values
    m2: float = 0.0  # sum of squared deviations from the mean
    sumsq: float = 0.0  # sum of squares (for l2)
    min: float = math.inf
    max: float = -math.inf
    zeros: int = 0
    nan: int = 0
    inf: int = 0
    sample: list = field(default_factory=list)
    sample_every: int = 0  # keep the finite values among every k-th element; 0 keeps none
    _carry: list = field(default_factory=list, repr=False)  # raw values short of a block
    _carry_n: int = 0

    def add(self, chunk: np.ndarray) -> None:
        """Fold one flat chunk of values (any numeric dtype) into the running statistics."""
        x = chunk.reshape(-1)
        if x.size == 0:
            return
        if self._carry_n:  # complete the pending block first
            need = BLOCK - self._carry_n
            self._carry.append(x[:need].copy())
            self._carry_n += min(need, x.size)
            x = x[need:]
            if self._carry_n < BLOCK:
                return
            self._fold_carry()
        full = x.size - x.size % BLOCK
        for start in range(0, full, BLOCK):
            self.merge(self._block(x[start:start + BLOCK]))
        if full < x.size:
            self._carry.append(x[full:].copy())
            self._carry_n = x.size - full

    def _fold_carry(self) -> None:
        block = self._carry[0] if len(self._carry) == 1 else np.concatenate(self._carry)
        self._carry, self._carry_n = [], 0
        self.merge(self._block(block))

    def _block(self, raw: np.ndarray) -> tuple:
        # self.count is the block's first element in the tensor: the sample is strided over
        # the whole tensor, wherever the blocks fall.
        start = (-self.count) % self.sample_every if self.sample_every else 0
        return block_stats(widen_block(raw), self.sample_every, start, raw)

    def merge(self, part: tuple) -> None:
        """Fold in the partial result of the next block (from :func:`block_stats`)."""
        n, m, mean, m2, s2, lo, hi, zeros, nan, inf, sample = part
        self.count += n
        self.zeros += zeros
        self.nan += nan
        self.inf += inf
        if sample is not None and sample.size:
            self.sample.append(sample)
        if not m:
            return
        if self.finite:
            total = self.finite + m
            delta = mean - self.mean
            self.mean += delta * m / total
            self.m2 += m2 + delta * delta * (self.finite * m / total)
            self.finite = total
        else:
            self.mean, self.m2, self.finite = mean, m2, m
        self.sumsq += s2
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)

    def flush(self) -> None:
        """Reduce values still waiting for a full block (the tensor's tail).

        ``result`` and ``sampled`` call it; adding more values afterwards stays correct, only
        no longer bit-identical to an uninterrupted run.
        """
        if self._carry_n:
            self._fold_carry()

    def result(self) -> dict:
        """The statistics as a record (None where a statistic does not apply)."""
        self.flush()
        if self.finite:
            stats = {"min": self.min, "max": self.max, "mean": self.mean,
                     "std": math.sqrt(self.m2 / self.finite), "l2": math.sqrt(self.sumsq)}
        else:
            stats = dict(NONE_STATS)
        stats["zeros"] = (self.zeros / self.count) if self.count else None
        stats["nan"] = self.nan
        stats["inf"] = self.inf
        return stats

    def sampled(self) -> np.ndarray:
        """The histogram sample: the finite values among every ``sample_every``-th element."""
        self.flush()
        return np.concatenate(self.sample) if self.sample else np.empty(0, np.float32)


def new_accumulator(numel: int, sample_size: int = HISTOGRAM_SAMPLE) -> Accumulator:
    """An accumulator that keeps about ``sample_size`` values of a ``numel``-element tensor."""
    return Accumulator(sample_every=max(1, -(-numel // sample_size)))


def _sums_ok(n: int, *sums: float) -> bool:
    """Whether float32 sums of squares are trustworthy: finite, and not so small that the
    squares underflowed float32 (zero is fine)."""
    return all(math.isfinite(v) and (v == 0.0 or v >= n * 1e-30) for v in sums)


def sumsq(x: np.ndarray) -> float:
    """Sum of squares of a widened chunk, in float64 (NaN if it holds a NaN)."""
    if x.dtype == np.float32 and x.size >= FLOAT32_SUMS_FROM:
        s = row_sums(x, x)
        if _sums_ok(x.size, s):
            return s
    y = x.astype(np.float64, copy=False)
    return row_sums(y, y)


def delta_sumsq(a: np.ndarray, b: np.ndarray) -> float:
    """``||b - a||^2`` of two widened chunks of the same length (float64 result)."""
    if a.dtype == b.dtype == np.float32 and a.size >= FLOAT32_SUMS_FROM:
        d = b - a
        sd = row_sums(d, d)
        if _sums_ok(a.size, sd):
            return sd
    d = b.astype(np.float64) - a.astype(np.float64)
    return row_sums(d, d)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype != b.dtype:
        # The same type in the other byte order (an HDF5 file written big-endian): the same
        # values have the same bits once swapped. A copy, in this rare case only.
        if a.dtype.newbyteorder("=") != b.dtype.newbyteorder("="):
            return False
        b = b.astype(a.dtype)
    size = a.dtype.itemsize
    if a.dtype.kind in "fcViub" and size in (1, 2, 4, 8):
        return bool(np.array_equal(a.view(f"u{size}"), b.view(f"u{size}")))
    return bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))


def pair_part(ca: np.ndarray, cb: np.ndarray, compare: bool = True) -> tuple | None:
    """The contribution of one chunk of each side (equal lengths) to a
    :class:`PairAccumulator`: ``(n, same, s, sums, top, nonfinite)``, None for empty chunks.

    With ``compare`` and identical bytes, ``s`` is the sum of squares (and ``nonfinite``
    whether a value is NaN or infinite); otherwise ``sums`` holds ``||a||^2``, ``||b||^2``,
    ``||b - a||^2`` and ``a . b``, and ``top`` is ``max |b - a|`` (NaN if any is NaN).
    """
    n = ca.size
    if n == 0:
        return None
    same = compare and _same_bits(ca, cb)
    a, b = widen(ca.reshape(-1)), widen(cb.reshape(-1))
    if same:
        s = sumsq(a)
        # A non-finite value makes the sum non-finite; only then is it worth a look.
        nonfinite = not math.isfinite(s) and not bool(np.isfinite(a).all())
        return (n, True, s, None, None, nonfinite)
    if a.dtype == b.dtype == np.float32 and n >= FLOAT32_SUMS_FROM:
        d = np.subtract(b, a, out=scratch_buffer("delta", n, np.float32))
        sums = (row_sums(a, a), row_sums(b, b), row_sums(d, d), row_sums(a, b))
        if not _sums_ok(n, *sums[:3]) or not math.isfinite(sums[3]):
            a, b = a.astype(np.float64), b.astype(np.float64)
            sums = None
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
        sums = None
    if sums is None:
        d = b - a
        sums = (row_sums(a, a), row_sums(b, b), row_sums(d, d), row_sums(a, b))
    top = max(float(d.max()), -float(d.min()))
    return (n, False, None, sums, top, False)


@dataclass
class PairAccumulator:
    """One pass over two tensors of the same shape and dtype, a chunk of each at a time:
    ``||a||^2``, ``||b||^2``, ``||b - a||^2``, ``a . b``, ``max |b - a|`` and whether the
    bytes are identical. Sums run over every element (a NaN makes them NaN); chunks whose
    bytes are identical on both sides add nothing to the difference.
    """

    identical: bool = True
    count: int = 0
    sa: float = 0.0
    sb: float = 0.0
    sd: float = 0.0
    dot: float = 0.0
    max_abs: float = 0.0

    def add(self, ca: np.ndarray, cb: np.ndarray) -> None:
        """Fold in the next chunk of each side (equal lengths)."""
        # Compared only while nothing has moved (as a plain loop would stop comparing).
        self.merge(pair_part(ca, cb, compare=self.identical))

    def merge(self, part: tuple | None) -> None:
        """Fold in the next chunk's :func:`pair_part`, in order: folding the parts of a
        tensor's chunks gives exactly what :meth:`add` on the chunks gives."""
        if part is None:
            return
        n, same, s, sums, top, nonfinite = part
        self.count += n
        if same and self.identical:  # nothing moved: one sum of squares serves all three
            self.sa += s
            self.sb += s
            self.dot += s
            return
        self.identical = False
        if same:
            # Identical bytes after an earlier chunk moved (parts computed apart, as on a
            # cluster): what the changed path gives for them. b - a is 0, or NaN where a
            # value is NaN or infinite; the sums of squares are the same sum.
            sums = (s, s, math.nan if nonfinite else 0.0, s)
            top = math.nan if nonfinite else 0.0
        self.sa += sums[0]
        self.sb += sums[1]
        self.sd += sums[2]
        self.dot += sums[3]
        self.max_abs = top if top != top else max(self.max_abs, top)  # NaN sticks

    def result(self) -> dict:
        """``identical``, ``l2_a``, ``l2_b``, ``delta_l2``, ``rel_change``, ``cosine``,
        ``max_abs_delta`` (None where not finite or not defined)."""
        l2_a, l2_b = math.sqrt(self.sa), math.sqrt(self.sb)
        delta, max_abs = math.sqrt(self.sd), self.max_abs
        if self.identical:  # NaN - NaN is NaN, but identical bits did not move
            delta, max_abs = 0.0, 0.0
        cosine = self.dot / (l2_a * l2_b) if l2_a > 0 and l2_b > 0 else None
        if cosine is not None and math.isfinite(cosine):
            # Rounding in the norms must not show an unchanged tensor at 0.9999999999999998,
            # nor any cosine outside [-1, 1].
            cosine = 1.0 if self.identical else min(1.0, max(-1.0, cosine))
        return {
            "identical": self.identical,
            "l2_a": _finite_or_none(l2_a),
            "l2_b": _finite_or_none(l2_b),
            "delta_l2": _finite_or_none(delta),
            "rel_change": _finite_or_none(delta / l2_a) if l2_a > 0 else None,
            "cosine": _finite_or_none(cosine),
            "max_abs_delta": _finite_or_none(max_abs),
        }


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
