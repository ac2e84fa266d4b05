"""The rows' KV caches as one: a prefix cache holding every row's cached keys (varlen cached
forwards), a stacked cache of one batch row per input row (stacked SDPA forwards), and a
prefill's cache split back per row. `CacheMemo` keeps a group's merged cache while its rows'
caches stay the same (a block's forwards reuse it)."""

from __future__ import annotations

import torch

KV_FIELDS = ("prefix_k", "prefix_v", "suffix_k", "suffix_v")


def is_kv_cache(cache) -> bool:
    from ...models.cache import KVCache

    return isinstance(cache, KVCache)


def rebuild_cache(like, field):
    """A cache of `like`'s type, mode and bounds whose layer ``i`` holds ``field(i, name)``
    for each of `KV_FIELDS`."""
    layers = tuple(
        type(layer)(*(field(i, name) for name in KV_FIELDS)) for i, layer in enumerate(like.layers)
    )
    return type(like)(like.mode, like.block_start, like.block_end, like.total_length, layers)


def split_cache(cache, start: int, stop: int):
    """Batch rows ``start:stop`` of `cache` (a prefill's cache, back to its row)."""

    def field(i, name):
        tensor = getattr(cache.layers[i], name)
        return None if tensor is None else tensor[start:stop]

    return rebuild_cache(cache, field)


def merged_cache(like, keys: list, values: list, num_q: int):
    """A prefix cache holding `keys` / `values` (every row's cached keys), whose real rows are
    all `num_q` query rows: the model's cached forward then attends over ``[merged cached keys,
    every query row's fresh keys]`` under the caller's layout."""
    prefix = keys[0].shape[2]
    layers = tuple(
        type(like.layers[0])(prefix_k=k, prefix_v=v, suffix_k=None, suffix_v=None)
        for k, v in zip(keys, values)
    )
    return type(like)("prefix", prefix, prefix + 1, prefix + num_q, layers)


class CacheMemo:
    """Each group's merged cache, kept while the group's rows' caches (the same objects) and
    its arrangement stay the same; groups that did not run in a round are dropped."""

    def __init__(self):
        self._kept: dict[tuple, tuple] = {}  # group key -> (row caches, arrangement, value)

    def _get(self, key: tuple, caches: list, arrangement):
        kept = self._kept.get(key)
        if kept is not None and len(kept[0]) == len(caches) and kept[1] == arrangement:
            if all(a is b for a, b in zip(kept[0], caches)):
                return kept[2]
        return None

    def keep_only(self, keys) -> None:
        self._kept = {k: v for k, v in self._kept.items() if k in keys}

    def merged_keys(self, key: tuple, caches: list, plans: list):
        """Every row's cached keys and values, one sequence per layer, their key segments'
        lengths and where each row's segments are: ``(row, cache copy, its layout's segment)
        -> merged segment``."""
        lengths, index, slices = [], {}, []  # slices: (row, copy, field part, start, stop)
        for i, (cache, (layout, parts)) in enumerate(zip(caches, plans)):
            for copy in range(cache.batch_size):
                offsets = {"prefix": 0, "suffix": 0}
                for seg, part in enumerate(parts):
                    if part not in offsets:
                        continue
                    n = layout.k_lengths[seg]
                    index[(i, copy, seg)] = len(lengths)
                    lengths.append(n)
                    slices.append((i, copy, part, offsets[part], offsets[part] + n))
                    offsets[part] += n
        kept = self._get(key, caches, slices)
        if kept is not None:
            return *kept, lengths, index
        keys, values = [], []
        for layer in range(len(caches[0].layers)):
            ks, vs = [], []
            for i, copy, part, a, b in slices:
                kv = caches[i].layers[layer]
                ks.append(getattr(kv, f"{part}_k")[copy : copy + 1, :, a:b])
                vs.append(getattr(kv, f"{part}_v")[copy : copy + 1, :, a:b])
            keys.append(torch.cat(ks, dim=2))
            values.append(torch.cat(vs, dim=2))
        self._kept[key] = (caches, slices, (keys, values))
        return keys, values, lengths, index

    def stacked(self, key: tuple, caches: list, rows: list[int]):
        """One cache of ``sum(rows)`` batch rows: each row's cache repeated to its batch rows."""
        kept = self._get(key, caches, rows)
        if kept is not None:
            return kept

        def field(i, name):
            tensors = [getattr(c.layers[i], name) for c in caches]
            if tensors[0] is None:
                return None
            return torch.cat([t.expand(n, -1, -1, -1) for t, n in zip(tensors, rows)])

        stacked = rebuild_cache(caches[0], field)
        self._kept[key] = (caches, rows, stacked)
        return stacked
