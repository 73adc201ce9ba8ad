"""Lockstep decoding of many entropy-coded streams at once, vectorized with numpy.

A coded plane of ``n`` symbols is dealt round-robin to ``L`` lanes: symbol ``i`` is step ``i // L`` of
lane ``i % L`` (padded up to ``T * L`` symbols, ``T = ceil(n / L)``). Each lane is an independent
coder state, so one numpy call advances every lane by one symbol, and the symbols one step produces
are neighbours in the output (good for caches; lanes of consecutive chunks would touch a page per lane).

Numpy's cost per call is fixed (about a microsecond), so decoding one plane at a time would be slow
for the hundreds of small tensors of a real model. Instead *all* streams of a file are decoded
together: the lanes of every stream form one array, sorted so that streams with more steps come
first; at step ``t`` the lanes still working are a prefix. A step costs about fifteen numpy calls
over the live lanes, whatever the number of tensors. (With the compiled loops of ``_lanes.c``, see
native.py, the same batch is walked symbol by symbol in C, step by step and within a step stream by
stream, in the same global lane order; this numpy form is the reference and the fallback.)

The renormalization words of all streams of one coder live in one section of the file, in exactly
the order this decoder reads them (step by step, lanes in global order), so a refill is a slice.
:func:`interleave_words` computes that order when packing.

Decoded symbols are scattered straight to their final byte in the output buffer: element ``i`` of
plane ``p`` of an ``itemsize``-byte tensor lands at ``base + i * itemsize + p``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np

#: entries of each stream's decode table (12-bit lookups, rANS and Huffman alike)
TABLE_SIZE = 4096


@dataclass
class EncodedStream:
    """A coded plane on the packing side: its header bytes and its words tagged with read times."""

    lanes: int
    steps: int
    header: bytes
    words: np.ndarray  # in this stream's own read order
    word_step: np.ndarray  # decoder step after which each word is read
    word_lane: np.ndarray  # lane that reads it

    @property
    def word_bytes(self) -> int:
        return int(self.words.nbytes)


@dataclass
class LaneStream:
    """A coded plane on the unpacking side, as the batch decoder needs it."""

    lanes: int
    steps: int
    nwords: int
    init: np.ndarray  # initial lane state (rANS state or Huffman first word)
    table: np.ndarray  # 4096-entry decode table
    dest: int = 0  # output index of symbol 0
    stride: int = 1  # output distance between consecutive symbols (the itemsize)
    carry: np.ndarray | None = None  # rANS: the 16 bits per lane recovered from the final states
    carry_at: int = -1  # where in its tensor's raw-plane pool the carried bytes belong (-1: none)
    tail: bool = False  # the carried bytes are the lanes' own last two symbols (not lockstep-decoded)


S = TypeVar("S", EncodedStream, LaneStream)


def lane_order(streams: Sequence[S]) -> list[S]:
    """The streams in the order their lanes are laid out: most steps first, file order among equals."""
    return sorted(streams, key=lambda s: -s.steps)  # (a stable sort)


def interleave_words(streams: Sequence[EncodedStream], dtype: type) -> np.ndarray:
    """All streams' words merged in the batch decoder's read order (step, then global lane)."""
    if not streams:
        return np.zeros(0, dtype=dtype)
    ordered = lane_order(streams)
    lanes = np.array([s.lanes for s in ordered], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(lanes)])
    total = int(start[-1])
    keys = np.concatenate(
        [s.word_step.astype(np.int64) * total + start[k] + s.word_lane for k, s in enumerate(ordered)]
    )
    words = np.concatenate([s.words for s in ordered]).astype(dtype, copy=False)
    return words[np.argsort(keys, kind="stable")]


class LaneBatch:
    """Lane layout shared by the rANS and Huffman batch decoders.

    The streams, sorted by :func:`lane_order`, are described per stream (``lanes``, ``steps``,
    ``dest``, ``stride``: what the compiled loops take, which lay the lanes out themselves); the
    per-lane arrays of the numpy loops are worked out only when those ask for them.
    """

    def __init__(self, streams: Sequence[LaneStream], words: np.ndarray, state_dtype: type) -> None:
        ordered = lane_order(streams)
        k = len(ordered)
        lanes = [s.lanes for s in ordered]
        starts = [0, *itertools.accumulate(lanes)]
        #: rows lanes, steps, dest, stride and (scratch for the C loops) lane starts, each k + 1 long
        self.layout = np.array(
            [[*lanes, 0], [*(s.steps for s in ordered), 0], [*(s.dest for s in ordered), 0],
             [*(s.stride for s in ordered), 0], starts],
            dtype=np.int64,
        )
        self.lanes, self.steps, self.dest, self.stride = (row[:k] for row in self.layout[:4])
        self.total_lanes = starts[-1]
        self.max_steps = ordered[0].steps if k else 0
        if k == 1:  # (no copy of the table; the states are copied: the loops update them)
            self.tables, self.states = ordered[0].table, ordered[0].init.astype(state_dtype)
        elif k:
            self.tables = np.concatenate([s.table for s in ordered])
            self.states = np.concatenate([s.init for s in ordered]).astype(state_dtype)
        else:
            self.tables = self.states = np.zeros(0, dtype=state_dtype)
        self.words = words
        self.read = 0
        self.ordered = ordered
        self.lane_ranges = list(itertools.pairwise(starts))
        self._starts = starts

    @cached_property
    def _start(self) -> np.ndarray:
        return np.array(self._starts, dtype=np.int64)

    @cached_property
    def alive_lanes(self) -> list[int]:
        """Lanes still working at each step: those of the streams with more steps, a prefix thanks to the sort."""
        alive_streams = np.searchsorted(-self.steps, -np.arange(self.max_steps), side="left")
        return self._start[alive_streams].tolist()

    @cached_property
    def _sid(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.ordered), dtype=np.int64), self.lanes)

    @cached_property
    def pos(self) -> np.ndarray:
        """Each lane's next output index."""
        lane_in_stream = np.arange(self.total_lanes, dtype=np.int64) - self._start[:-1][self._sid]
        return self.dest[self._sid] + lane_in_stream * self.stride[self._sid]

    @cached_property
    def step_stride(self) -> np.ndarray:
        return (self.lanes * self.stride)[self._sid]

    @cached_property
    def tbase(self) -> np.ndarray:
        """Where each lane's stream's table starts in ``tables``."""
        return (self._sid * TABLE_SIZE).astype(self.states.dtype)

    def next_words(self, k: int) -> np.ndarray | None:
        """The next ``k`` words of the section, or None if it runs out (a corrupt file)."""
        if self.read + k > self.words.size:
            return None
        chunk = self.words[self.read : self.read + k]
        self.read += k
        return chunk

    def all_read(self) -> bool:
        return self.read == self.words.size


def out_extent(streams: Sequence[LaneStream]) -> int:
    """One past the largest output index any stream writes (padding symbols included)."""
    return max((s.dest + (s.lanes * s.steps - 1) * s.stride + 1 for s in streams), default=0)
