"""Bundling: code many small tensors together so they share one set of coder tables.

A model's small tensors (biases, norms, small kernels) each pay for their own frequency tables, lane
states and LZ warm-up, which can be a large share of their coded size. Concatenating the small
payloads of one itemsize and coding the concatenation once is often smaller, as ZipNN's whole-model
byte grouping shows on tiny models. Whether to bundle, and up to which tensor size, is decided by
trying a few size thresholds and keeping the plan with the smallest total; tensors stay separately
addressable (a BUNDLE record plus SLICE records). One CRC32, in the BUNDLE record, covers the
whole bundle: a SLICE record is only its tag and the bundle number, so a model of hundreds of tiny
tensors does not pay four checksum bytes for each (a mismatch names every tensor of the bundle).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

from onnxopt.packing.codecs import Coded

#: candidate "small tensor" thresholds, in bytes
THRESHOLDS = (1 << 10, 1 << 12, 1 << 14, 1 << 16)
#: index bytes a SLICE record costs (tag and bundle number) ...
SLICE_COST = 2
#: ... and a record of its own (tag, lengths, CRC32), or a BUNDLE record besides its coded data
RECORD_COST = 8


@dataclass
class Bundle:
    members: list[int]  # record indices, in file order; the first is the BUNDLE record
    offsets: list[int]
    coded: Coded
    total: int
    crc: int = 0  # CRC32 of the whole bundle (all members' bytes)


def plan_bundles(
    sizes: dict[int, tuple[int, int]],
    individual: dict[int, Coded],
    data: Callable[[int], bytes],
    code: Callable[[bytes, int], Coded],
) -> list[Bundle]:
    """Choose bundles among records ``sizes`` (index -> (bytes, itemsize)) coded as ``individual``."""
    groups: dict[int, list[int]] = {}
    for i, (_, itemsize) in sorted(sizes.items()):
        groups.setdefault(itemsize, []).append(i)
    bundles = []
    for itemsize, indices in groups.items():
        best: Bundle | None = None
        best_gain = 0
        tried: set[tuple[int, ...]] = set()
        for threshold in THRESHOLDS:
            members = [i for i in indices if sizes[i][0] <= threshold]
            if len(members) < 2 or tuple(members) in tried:
                continue
            tried.add(tuple(members))
            parts = [data(i) for i in members]
            offsets = [0]
            for p in parts[:-1]:
                offsets.append(offsets[-1] + len(p))
            blob = b"".join(parts)
            coded = code(blob, itemsize)
            alone = sum(individual[i].size + RECORD_COST for i in members)
            gain = alone - (coded.size + RECORD_COST + SLICE_COST * (len(members) - 1))
            if gain > best_gain:
                best, best_gain = Bundle(members, offsets, coded, len(blob), zlib.crc32(blob)), gain
        if best is not None:
            bundles.append(best)
    return bundles
