"""Byte-level mutation fuzzing of onnxopt's entry points (used by tests and bench).

Every case must end in success or an :class:`OnnxOptError`; anything else (another exception, a case
running past its time limit, or an output file left after a failure) is a finding.
"""

from __future__ import annotations

import os
import random
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxopt.errors import OnnxOptError


def mutate(data: bytes, rng: random.Random) -> bytes:
    """Flip, delete, insert or duplicate a few byte ranges (protobuf-aware fuzzers are not needed:
    varint lengths and tags get corrupted naturally)."""
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 16))):
        if not buf:
            buf.extend(rng.randbytes(8))
        pos = rng.randrange(len(buf))
        op = rng.random()
        if op < 0.5:
            buf[pos] = rng.randrange(256)
        elif op < 0.65:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op < 0.8:
            del buf[pos : pos + rng.randrange(1, 64)]
        elif op < 0.9:
            buf[pos:pos] = rng.randbytes(rng.randrange(1, 16))
        else:
            end = min(len(buf), pos + rng.randrange(1, 128))
            buf[pos:pos] = buf[pos:end]
    return bytes(buf)


class CaseTimeout(Exception):
    pass


@dataclass
class FuzzStats:
    cases: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    findings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"cases": self.cases, "ok": self.ok, "errors": self.errors, "findings": self.findings[:50]}


def _on_alarm(signum, frame):  # pragma: no cover - only on a hang
    raise CaseTimeout()


def run_case(target: Callable[[bytes, Path], object], data: bytes, stats: FuzzStats, label: str,
             time_limit: int = 60) -> None:
    """Run ``target(data, out_path)`` once, bounded in time; record the outcome in ``stats``."""
    stats.cases += 1
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuzz-") as tmp:
        out = Path(tmp) / "out.onnx"
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(time_limit)
        try:
            target(data, out)
            stats.ok += 1
        except OnnxOptError as exc:
            name = type(exc).__name__
            stats.errors[name] = stats.errors.get(name, 0) + 1
            if out.exists():
                stats.findings.append(f"{label}: output left after {name}: {exc}")
            if not str(exc).strip():
                stats.findings.append(f"{label}: {name} with an empty message")
        except CaseTimeout:
            stats.findings.append(f"{label}: no result within {time_limit}s")
        except Exception as exc:
            stats.findings.append(f"{label}: unexpected {type(exc).__name__}: {str(exc)[:300]}")
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
        leftovers = [p.name for p in Path(tmp).iterdir() if p.name != "out.onnx"]
        if leftovers:
            stats.findings.append(f"{label}: stray files {leftovers}")


def optimize_bytes(data: bytes, out: Path) -> None:
    """Fuzz target: the whole default pipeline from model bytes to a written file."""
    from onnxopt.api import optimize

    src = out.parent / "in.onnx"
    src.write_bytes(data)
    try:
        optimize(src, out)
    finally:
        os.unlink(src)


def unpack_bytes(data: bytes, out: Path) -> None:
    """Fuzz target: ``onnxopt unpack`` — a (packed) file loaded and written back as .onnx."""
    from onnxopt.model import load, save

    src = out.parent / "in.onnxpack"
    src.write_bytes(data)
    try:
        save(load(src), out)
    finally:
        os.unlink(src)


def packed_seeds(models: dict[str, bytes]) -> dict[str, bytes]:
    """Packed versions of seed models, for fuzzing the packed-file reader: as packed by default
    (``<name>.pack``), without the lockstep coders (``<name>.lz.pack``: the LZ, split and row-group
    payloads that the default choice rarely picks on small models) and with tensors above 4 KB in
    2 KB chunks (``<name>.chunks.pack``)."""
    import onnx

    from onnxopt.packing import PackOptions, pack_model

    variants = {
        "": None,
        ".lz": PackOptions(codecs=frozenset({"raw", "zlib", "lzma", "brotli", "split", "groups"})),
        ".chunks": PackOptions(chunk_min_bytes=4096, chunk_bytes=2048),
    }
    out = {}
    for name, data in models.items():
        model = onnx.ModelProto()
        model.ParseFromString(data)
        for suffix, options in variants.items():
            out[f"{name}{suffix}.pack"] = pack_model(model, options=options).data
    return out


def mutate_behind_checksums(data: bytes, rng: random.Random) -> bytes:
    """A packed file damaged past its trailer's checksum: a few bytes of its payloads and coder words
    (which only the per-tensor CRCs cover), or of its raw index or skeleton, re-emitted with a valid
    trailer checksum. (:func:`mutate` mostly meets the trailer's CRC; these reach the record readers.)"""
    from onnxopt.packing import sections

    parts = sections.split(data)
    where = rng.randrange(3) if parts.rest else rng.randrange(1, 3)
    if where == 0:
        buf = bytearray(data)
        _damage(buf, rng, parts.rest_start, parts.rest_start + len(parts.rest))
        return bytes(buf)
    if where == 1:
        buf = bytearray(parts.index_raw())
        _damage(buf, rng, 0, len(buf))
        return sections.rebuild(data, index=bytes(buf))
    buf = bytearray(parts.skeleton_raw())
    _damage(buf, rng, 0, len(buf))
    return sections.rebuild(data, skeleton_raw=bytes(buf))


def _damage(buf: bytearray, rng: random.Random, lo: int, hi: int) -> None:
    """Change, flip, drop or insert 1-8 bytes of ``buf[lo:hi]`` (the range follows drops and inserts)."""
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        if hi <= lo:
            return
        at = rng.randrange(lo, hi)
        op = rng.randrange(5)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.randrange(256)
        elif op == 2:
            buf[at] = rng.choice((0, 0x7F, 0x80, 0xFF))  # (varint edges)
        elif op == 3:
            del buf[at]
            hi -= 1
        else:
            buf.insert(at, rng.randrange(256))
            hi += 1
