"""Calibration activations on disk for streaming quantization (quantize_model(offload_dir=...)).

The block-by-block calibration pass keeps (nsamples, seqlen, hidden) float32 activations per
block: the block's inputs and outputs (and for hlq-ft the float model's targets). At LLaMA-2-7B
shapes and 32 x 512 tokens each copy is 268 MB, and the block's forward over all windows at once
adds its temporaries (an MLP intermediate is 16384 x 11008 floats, 721 MB). `ActStore(folder)`
puts each activation tensor in a scratch file under `folder`, memory-mapped shared and unlinked
at once (so it is removed when the last reference goes, also on an error or a kill), and runs
the block over chunks of about CHUNK_TOKENS tokens of windows. Resident pages of those files are
page cache, not anonymous memory; `drop()` returns them to the kernel after each pass.

`sequential_gptq` is the chunked form of quant.model_quant's one-pass true-sequential GPTQ: per
input-sharing group, one pass over the chunks (the forward stops at the group's first linear)
collects that linear's Hessian, the group is quantized, and the next group's pass sees its
quantized outputs; a last pass writes the block's outputs. The Hessian rows are fed to
HessianAccumulator in the same parts of HESSIAN_ROWS rows as the in-memory pass (a buffer of at
most HESSIAN_ROWS x K), so the sums are the same; the block's forward on a chunk of windows gave
bit-identical outputs to the whole batch in the tests (tests/test_stream.py; sgemm may round a
chunk of very few rows differently, hence chunks of whole windows of CHUNK_TOKENS tokens or more).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import weakref

import numpy as np
import torch

from .gptq import HessianAccumulator

__all__ = ["ActStore", "CHUNK_TOKENS", "HESSIAN_ROWS"]

CHUNK_TOKENS = 256    # tokens per forward chunk (whole windows, at least one)
HESSIAN_ROWS = 8192   # rows per HessianAccumulator.add, here and in quant.model_quant's in-memory pass


class _Stop(Exception):
    """Raised by a pre-hook to end a forward once the group's input is collected."""


class _RowParts:
    """Feeds rows to a HessianAccumulator in consecutive parts of exactly `rows` rows (the last
    part: the remainder), whatever sizes they arrive in: the same adds as x.split(rows) of all rows."""

    def __init__(self, acc: HessianAccumulator, rows: int, total: int):
        self.acc, self.rows = acc, rows
        self.buf = torch.empty(min(rows, total), acc.k, dtype=torch.float32)
        self.fill = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        while x.shape[0]:
            n = min(x.shape[0], self.buf.shape[0] - self.fill)
            self.buf[self.fill:self.fill + n].copy_(x[:n])
            self.fill, x = self.fill + n, x[n:]
            if self.fill == self.buf.shape[0]:
                self.flush()

    def flush(self) -> None:
        if self.fill:
            self.acc.add(self.buf[:self.fill], consume=True)  # the buffer is refilled next
            self.fill = 0


class ActStore:
    """Activation tensors in unlinked scratch files under `folder` (see the module doc)."""

    def __init__(self, folder, chunk_tokens: int | None = None, trim=None):
        self.trim = trim or (lambda: None)  # returns freed heap pages to the OS (quant.model_quant._trim_heap)
        chunk_tokens = CHUNK_TOKENS if chunk_tokens is None else chunk_tokens
        if int(chunk_tokens) < 1:
            raise ValueError(f"chunk_tokens: expected >= 1, got {chunk_tokens!r}")
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.chunk_tokens = int(chunk_tokens)
        self._maps = []  # weak references to the memory maps, for drop()

    def new(self, shape) -> torch.Tensor:
        """An uninitialised float32 tensor of `shape` backed by a scratch file (already unlinked:
        its disk space is freed with the tensor)."""
        shape = tuple(int(s) for s in shape)
        fd, path = tempfile.mkstemp(prefix=".act-", suffix=".f32", dir=self.folder)
        try:
            os.ftruncate(fd, max(1, int(np.prod(shape))) * 4)
            mm = np.memmap(path, dtype=np.float32, mode="r+", shape=shape)
        finally:
            os.close(fd)
            os.unlink(path)
        self._maps = [r for r in self._maps if r() is not None] + [weakref.ref(mm._mmap)]
        return torch.from_numpy(mm)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        """x in a scratch file (x itself if it already is one of this store's)."""
        if self.owns(x):
            return x
        out = self.new(x.shape)
        for i0, i1 in self.chunks(x):
            out[i0:i1] = x[i0:i1]
        self.drop()
        return out

    def owns(self, x: torch.Tensor) -> bool:
        ptr = x.untyped_storage().data_ptr()
        for r in self._maps:
            m = r()
            if m is not None and not m.closed:
                base = np.frombuffer(m, dtype=np.uint8, count=0).__array_interface__["data"][0]
                if base <= ptr < base + len(m):
                    return True
        return False

    def drop(self) -> None:
        """Return the scratch files' resident pages to the kernel (they stay in the page cache,
        written back when it needs the memory)."""
        for r in self._maps:
            m = r()
            if m is not None and not m.closed and hasattr(mmap, "MADV_DONTNEED"):
                m.madvise(mmap.MADV_DONTNEED)
        self.trim()

    def chunks(self, x: torch.Tensor):
        """(i0, i1) ranges of whole windows of about chunk_tokens tokens over x (n, seq, ...)."""
        step = max(1, self.chunk_tokens // max(1, x.shape[1]))
        return [(i, min(i + step, x.shape[0])) for i in range(0, x.shape[0], step)]

    def embedding(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        out = self.new((*ids.shape, weight.shape[1]))
        for i0, i1 in self.chunks(ids[..., None]):
            out[i0:i1] = torch.nn.functional.embedding(ids[i0:i1], weight)
        return out

    def forward(self, run, layer, x: torch.Tensor) -> torch.Tensor:
        """run(layer, x) chunk by chunk into a new scratch tensor."""
        out = None
        for i0, i1 in self.chunks(x):
            y = run(layer, x[i0:i1])
            if out is None:
                out = self.new((x.shape[0], *y.shape[1:]))
            out[i0:i1] = y
            del y
            self.drop()
        return out

    def sequential_gptq(self, run, layer, mods: dict, groups: list, x: torch.Tensor, quantize_group) -> torch.Tensor:
        """True-sequential GPTQ of `layer` over x in chunks (see the module doc); quantize_group(names,
        acc) as quant.model_quant's. Returns the block's output on x (with the quantized weights)."""
        total = x.shape[0] * x.shape[1]
        for names in groups:
            first = mods[names[0]]
            parts = _RowParts(HessianAccumulator(first.in_features), HESSIAN_ROWS, total)

            def pre(module, inputs, parts=parts):
                parts.add(inputs[0])
                raise _Stop

            handle = first.register_forward_pre_hook(pre)
            try:
                for i0, i1 in self.chunks(x):
                    try:
                        run(layer, x[i0:i1])
                    except _Stop:
                        pass
                    self.drop()
            finally:
                handle.remove()
            parts.flush()
            acc = parts.acc
            del parts, pre  # the row buffer goes before GPTQ's K x K work
            quantize_group(names, acc)
            del acc
            self.trim()
        return self.forward(run, layer, x)
