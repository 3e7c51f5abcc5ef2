"""Who does what when a stage runs in several processes (pure functions, no torch.distributed).

**Training windows.** One process trains on global batch ``k`` of an epoch = items
``order[k*B:(k+1)*B]`` of the epoch's seeded permutation (``mambava.train.epoch_order``, a function
of (seed, epoch) only). With ``N`` processes the same global batch is cut into ``N`` contiguous
shares (sizes differing by at most one, the first ranks taking the larger ones): rank ``r`` trains
on share ``r``. The shares of one batch are disjoint and together are the batch, so every window
of an epoch is seen once, by one rank, in the step it would have been seen by one process.
Because every rank knows every share's size, the ranks can gather their predictions back into the
one-process batch order (:func:`mambava.distributed.gather_rows`).

**Videos.** Feature extraction gives each rank a disjoint set of videos balanced by frame count:
largest first, each to the rank with the fewest frames so far (ties: fewer videos, then lower
rank), the classic longest-processing-time rule (within 4/3 of the best possible maximum).
Each rank then works through its videos in index order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def share_sizes(n: int, world: int) -> list[int]:
    """Sizes of the ``world`` contiguous shares of ``n`` items (first ranks one larger)."""
    if world < 1:
        raise ValueError(f"world size must be >= 1 (got {world})")
    q, r = divmod(n, world)
    return [q + (i < r) for i in range(world)]


def window_share(batch: Sequence[int] | np.ndarray, rank: int, world: int) -> tuple[np.ndarray, int, list[int]]:
    """This rank's windows of a global batch: (items, padded share size, all shares' sizes).

    ``padded`` is the largest share (every rank runs a batch of that many windows, the short ones
    padded with windows the loss ignores), so that the ranks' tensors have one shape.
    """
    batch = np.asarray(batch)
    sizes = share_sizes(len(batch), world)
    start = sum(sizes[:rank])
    return batch[start : start + sizes[rank]], max(max(sizes), 1), sizes


def shard_by_size(sizes: Sequence[int], world: int) -> list[list[int]]:
    """Indices of ``sizes`` per rank, balanced by total size (module doc); each list ascending."""
    if world < 1:
        raise ValueError(f"world size must be >= 1 (got {world})")
    sizes = [int(s) for s in sizes]
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    load = [0] * world
    count = [0] * world
    shards: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        r = min(range(world), key=lambda j: (load[j], count[j], j))
        shards[r].append(i)
        load[r] += sizes[i]
        count[r] += 1
    return [sorted(s) for s in shards]
