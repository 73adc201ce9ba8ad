"""Packed-file benchmark: onnxopt's pack against general-purpose compressors, on real models.

    python bench/bench_pack.py --models DIR [--repeat 5] [--out results.md] [--no-int8]

For every ``*.onnx`` in DIR (and an int8 version of it, see below) it reports:

* sizes over the same concatenated weight bytes: onnxopt's bytes for the tensors (the .onnxpack minus
  its container (magic, version, trailer) and the compressed model structure: coded data plus the
  index with coder tables, lane states, lengths and a CRC32 per tensor, per bundle of small tensors and
  per chunk of a large tensor, and what the tiny tensors kept in the skeleton add), zlib-9, zstd-19, xz-9
  (lzma preset 9), brotli-11, byte-grouped zstd-19 (ZipNN-style: planes of equal-itemsize tensors,
  each plane compressed separately), and the order-0 entropy bounds (byte planes per tensor, the
  symbols onnxopt's coders see; and plain bytes);
* sizes over the whole file: the .onnxpack against each compressor applied to the .onnx file;
* times: pack vs zlib-9 compress (median of ``--pack-repeat`` runs), unpack (bytes -> ModelProto) vs
  zlib decompress of the same weights (interleaved, medians of ``--repeat`` rounds), and unpack throughput
  as a fraction of zlib's;
* a bit-exact round-trip check.

int8 versions: every float32 tensor of at least 16 elements is replaced by symmetric per-tensor
rounding ``round(w / max|w| * 127)`` stored as INT8 raw data. That is a stand-in for quantized weights,
for size and speed measurements only (the resulting model is not meant to run).

zstd and brotli come from the ``zstandard`` and ``brotli`` packages (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from onnxopt.model import load
from onnxopt.packing import pack_model, unpack_model
from onnxopt.packing.payload import walk_tensors
from onnxopt.packing.planes import split_planes

try:
    import brotli
    import zstandard
except ImportError as exc:  # pragma: no cover
    raise SystemExit(f"bench_pack needs the bench extra (zstandard, brotli): {exc}") from None


def _zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=19).compress(data)


BASELINES: dict[str, Callable[[bytes], bytes]] = {
    "zlib-9": lambda d: zlib.compress(d, 9),
    "zstd-19": _zstd,
    "xz-9": lambda d: lzma.compress(d, preset=9),
    "brotli-11": lambda d: brotli.compress(d, quality=11),
}


@dataclass
class Row:
    name: str
    weights: int = 0
    file: int = 0
    bound: float = 0.0
    byte_bound: float = 0.0
    packed: int = 0
    packed_file: int = 0
    weight_sizes: dict[str, int] = field(default_factory=dict)
    file_sizes: dict[str, int] = field(default_factory=dict)
    pack_s: float = 0.0
    unpack_s: float = 0.0
    zlib_c_s: float = 0.0
    zlib_d_s: float = 0.0
    exact: bool = False


def weight_bytes(model: onnx.ModelProto) -> bytes:
    """Every non-string tensor's values as little-endian bytes, concatenated in walk order."""
    parts = []
    for t in walk_tensors(model):
        if t.data_type == TensorProto.STRING:
            continue
        parts.append(numpy_helper.to_array(t).tobytes())
    return b"".join(parts)


def byte_grouped_zstd(model: onnx.ModelProto) -> int:
    """ZipNN-style: tensors grouped by itemsize, each byte plane of a group zstd-19 compressed."""
    groups: dict[int, list[bytes]] = {}
    for t in walk_tensors(model):
        if t.data_type == TensorProto.STRING:
            continue
        a = numpy_helper.to_array(t)
        groups.setdefault(a.dtype.itemsize, []).append(a.tobytes())
    total = 0
    for itemsize, parts in groups.items():
        data = np.frombuffer(b"".join(parts), dtype=np.uint8)
        for plane in split_planes(data, itemsize) if data.size else []:
            total += len(_zstd(plane.tobytes()))
    return total


def int8_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symmetric per-tensor int8 rounding of every float32 tensor with >= 16 elements (bench only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in walk_tensors(out):
        if t.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t).astype(np.float32)
        if a.size < 16:
            continue
        peak = float(np.abs(a).max()) if a.size else 0.0
        q = np.round(a / peak * 127).astype(np.int8) if peak > 0 else np.zeros(a.shape, np.int8)
        new = numpy_helper.from_array(q, t.name)
        t.CopyFrom(new)
    return out


def median_time(fn: Callable[[], object], repeat: int) -> float:
    return interleaved_medians([fn], repeat)[0]


def interleaved_medians(fns: list[Callable[[], object]], repeat: int) -> list[float]:
    """Median time of each of ``fns``, run in turn ``repeat`` rounds (load swings hit all alike)."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [statistics.median(ts) for ts in times]


class BaselineCache:
    """Baseline compressor sizes by input digest (brotli-11 and xz-9 are slow on big models)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, int] = {}
        if path is not None and path.is_file():
            self.data = json.loads(path.read_text())

    def size(self, label: str, data: bytes, compute: Callable[[], int]) -> int:
        """``compute()`` (a compressed size) for ``label`` applied to ``data``, cached by digest."""
        key = f"{label}:{hashlib.sha256(data).hexdigest()}"
        if key not in self.data:
            self.data[key] = compute()
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text(json.dumps(self.data, indent=0))
        return self.data[key]


def measure(
    name: str, model: onnx.ModelProto, file_bytes: bytes, repeat: int, cache: BaselineCache, pack_repeat: int = 1
) -> Row:
    row = Row(name)
    weights = weight_bytes(model)
    row.weights, row.file = len(weights), len(file_bytes)
    start = time.perf_counter()
    result = pack_model(model)
    pack_times = [time.perf_counter() - start]
    # everything the file spends on tensors: coded payloads, coder words, and the compressed index
    # (tables, lane states, lengths and the CRC32s); only the model skeleton is excluded
    row.packed = result.tensor_bytes_in_file
    row.packed_file = result.file_bytes
    row.bound, row.byte_bound = result.entropy_bound_bytes, result.byte_entropy_bound_bytes
    packed = result.data  # joined once: the unpack timing below must not include the join
    row.exact = unpack_model(packed).SerializeToString() == model.SerializeToString()
    for label, fn in BASELINES.items():
        row.weight_sizes[label] = cache.size(label, weights, lambda fn=fn: len(fn(weights)))
        row.file_sizes[label] = cache.size(label, file_bytes, lambda fn=fn: len(fn(file_bytes)))
    # (keyed by the weight bytes, which fix the tensors it groups)
    row.weight_sizes["zipnn-zstd-19"] = cache.size("zipnn-zstd-19", weights, lambda: byte_grouped_zstd(model))
    for _ in range(pack_repeat - 1):
        start = time.perf_counter()
        pack_model(model)
        pack_times.append(time.perf_counter() - start)
    row.pack_s = statistics.median(pack_times)
    compressed = zlib.compress(weights, 9)
    row.zlib_c_s = median_time(lambda: zlib.compress(weights, 9), min(repeat, 3 * pack_repeat))
    row.unpack_s, row.zlib_d_s = interleaved_medians(
        [lambda: unpack_model(packed), lambda: zlib.decompress(compressed)], repeat
    )
    return row


# --------------------------------------------------------------------------- tables


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.2f}%" if whole else "-"


def size_table(rows: list[Row]) -> list[str]:
    names = [*BASELINES, "zipnn-zstd-19"]
    head = "| model | weights | order-0 bound (planes) | **onnxopt** | " + " | ".join(names)
    head += " | onnxopt / bound | onnxopt <= all |"
    lines = [head, "|" + "---|" * (len(names) + 6)]
    tot = Row("**total**")
    for r in [*rows, tot]:
        if r is tot:
            for x in rows:
                tot.weights += x.weights
                tot.bound += x.bound
                tot.packed += x.packed
                for k in names:
                    tot.weight_sizes[k] = tot.weight_sizes.get(k, 0) + x.weight_sizes[k]
        best = min(r.weight_sizes.values()) if r.weight_sizes else 0
        cells = [_pct(r.weight_sizes[k], r.weights) for k in names]
        lines.append(
            f"| {r.name} | {r.weights / 1e6:.2f} MB | {_pct(r.bound, r.weights)} | **{_pct(r.packed, r.weights)}** | "
            + " | ".join(cells)
            + f" | {r.packed / r.bound:.4f} | {'yes' if r.packed <= best else 'NO'} |"
        )
    return lines


def file_table(rows: list[Row]) -> list[str]:
    names = list(BASELINES)
    lines = [
        "| model | .onnx | **.onnxpack** | " + " | ".join(names) + " | onnxopt <= all |",
        "|" + "---|" * (len(names) + 4),
    ]
    for r in rows:
        best = min(r.file_sizes.values())
        cells = [_pct(r.file_sizes[k], r.file) for k in names]
        lines.append(
            f"| {r.name} | {r.file / 1e6:.2f} MB | **{_pct(r.packed_file, r.file)}** | "
            + " | ".join(cells)
            + f" | {'yes' if r.packed_file <= best else 'NO'} |"
        )
    return lines


def speed_table(rows: list[Row]) -> list[str]:
    lines = [
        "| model | pack | zlib-9 compress | pack / zlib | unpack | zlib decompress | unpack MB/s | zlib MB/s "
        "| unpack / zlib throughput | bit-exact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        up = r.weights / r.unpack_s / 1e6
        zd = r.weights / r.zlib_d_s / 1e6
        lines.append(
            f"| {r.name} | {r.pack_s:.3f} s | {r.zlib_c_s:.3f} s | {r.pack_s / r.zlib_c_s:.2f}x | "
            f"{r.unpack_s * 1e3:.2f} ms | {r.zlib_d_s * 1e3:.2f} ms | {up:.0f} | {zd:.0f} | {up / zd:.3f} | "
            f"{'yes' if r.exact else 'NO'} |"
        )
    tw = sum(r.weights for r in rows)
    tu = sum(r.unpack_s for r in rows)
    tz = sum(r.zlib_d_s for r in rows)
    tp = sum(r.pack_s for r in rows)
    tc = sum(r.zlib_c_s for r in rows)
    lines.append(
        f"| **total** | {tp:.2f} s | {tc:.2f} s | {tp / tc:.2f}x | {tu * 1e3:.0f} ms | {tz * 1e3:.0f} ms | "
        f"{tw / tu / 1e6:.0f} | {tw / tz / 1e6:.0f} | {tz / tu:.3f} | {'yes' if all(r.exact for r in rows) else 'NO'} |"
    )
    below = [f"{r.name} {r.zlib_d_s / r.unpack_s:.3f}" for r in rows if r.zlib_d_s / r.unpack_s < 1 / 3]
    lines += ["", f"Unpack throughput at least 1/3 of zlib's: {len(rows) - len(below)} of {len(rows)} models"
              + (f" (below: {', '.join(below)})" if below else "")]
    return lines


def report(title: str, rows: list[Row]) -> list[str]:
    return [
        f"### {title}: size over the same weight bytes (percent of raw weights)",
        "",
        *size_table(rows),
        "",
        f"### {title}: whole file (.onnxpack vs compressing the .onnx)",
        "",
        *file_table(rows),
        "",
        f"### {title}: time (median of runs)",
        "",
        *speed_table(rows),
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="folder of .onnx files")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds of unpack vs zlib.decompress (median)")
    ap.add_argument("--pack-repeat", type=int, default=1, help="timed runs of pack (median; packing is slow)")
    ap.add_argument("--out", help="also write the markdown tables here")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 versions")
    ap.add_argument(
        "--cache",
        default=str(Path(__file__).resolve().parent / "results" / "baseline_sizes.json"),
        help="file caching baseline compressor sizes by input digest ('' to disable)",
    )
    args = ap.parse_args(argv)
    paths = sorted(Path(args.models).glob("*.onnx"))
    if not paths:
        print(f"no .onnx files in {args.models}", file=sys.stderr)
        return 2
    cache = BaselineCache(Path(args.cache) if args.cache else None)
    fp32: list[Row] = []
    int8: list[Row] = []
    for path in paths:
        name = path.stem
        print(f"... {name}", file=sys.stderr, flush=True)
        model = load(path, check=False)
        fp32.append(measure(name, model, path.read_bytes(), args.repeat, cache, args.pack_repeat))
        if not args.no_int8:
            q = int8_version(model)
            int8.append(measure(name, q, q.SerializeToString(), args.repeat, cache, args.pack_repeat))
    cmd = "python bench/bench_pack.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = ["## Packed files: onnxopt vs general-purpose compressors", "", f"Reproduce: `{cmd}`", ""]
    lines += report("Original models (as shipped)", fp32)
    if int8:
        lines += [
            "Int8 versions below: every float32 tensor (>= 16 elements) replaced by symmetric per-tensor "
            "rounding to int8, for the benchmark only (no calibration; the models are not meant to run). "
            "Whole-file baselines compress the int8 model's serialized bytes.",
            "",
        ]
        lines += report("Int8 versions", int8)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
