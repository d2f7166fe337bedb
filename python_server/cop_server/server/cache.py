"""The encoding cache: a memory-bounded LRU of :class:`~cop_server.models.base.Features`.

Encoding is by far the most expensive step (a SAM3 tile costs a GPU second, a CPU minute), and
users run the same region again with one more class or a moved click; keeping encodings makes
that second run cost no encoder pass at all.

Keys are whatever :class:`~cop_server.wsi.runner.SlideSegmenter` asks for: the slide identity
(``client:<image id>|<w>x<h>`` for pixels from the client, ``file:<resolved path>|<size>|<mtime>``
for files the server reads, so an edited file is not served stale), the tile's level-0 box, its
output size (hence the downsample) and the model name. One server runs one model, so the model's
options are fixed for the cache's life.

Sizes are measured, not guessed: the bytes of every array reachable from the Features (numpy
arrays and framework tensors, inside dataclasses, dicts, lists and tuples), so the bound holds
for any backend, including decoder state that a model keeps on the GPU (which counts the same).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from typing import Any, Hashable

import numpy as np

from cop_server.models.base import Features


def nbytes_of(obj: Any, _seen: set[int] | None = None) -> int:
    """Bytes held by the arrays reachable from ``obj`` (each counted once); small objects count ~0."""
    seen = _seen if _seen is not None else set()
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, slice)):
        return len(obj) if isinstance(obj, bytes) else 0
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch.Tensor, without importing torch
        try:
            return int(obj.element_size() * obj.nelement())
        except Exception:  # noqa: BLE001 - not a tensor after all
            return 0
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(nbytes_of(getattr(obj, f.name), seen) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(nbytes_of(k, seen) + nbytes_of(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(nbytes_of(v, seen) for v in obj)
    nb = getattr(obj, "nbytes", None)
    if isinstance(nb, int):
        return nb
    if hasattr(obj, "__dict__"):
        return sum(nbytes_of(v, seen) for v in vars(obj).values())
    return sys.getsizeof(obj, 0)


class FeatureCache:
    """Thread-safe LRU bounded by the measured bytes of its entries.

    An entry larger than the whole budget is not kept (it would evict everything for one tile).
    ``max_bytes == 0`` keeps nothing (the cache is off, lookups always miss).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("cache size must be >= 0")
        self.max_bytes = int(max_bytes)
        self._items: "OrderedDict[Hashable, tuple[Features, int]]" = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.too_large = 0

    def get(self, key: Hashable) -> Features | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, features: Features) -> None:
        size = nbytes_of(features)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if size > self.max_bytes:
                self.too_large += 1 if self.max_bytes else 0
                return
            while self._items and self.bytes + size > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
                self.evictions += 1
            self._items[key] = (features, size)
            self.bytes += size

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"entries": len(self._items), "bytes": self.bytes, "max_bytes": self.max_bytes, "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions, "too_large": self.too_large}
