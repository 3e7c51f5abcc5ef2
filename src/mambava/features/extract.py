"""The per-video feature store: the encoder's CLS token for every frame of every video.

Layout of ``features.dir`` (one pair of files per video of the index, every split)::

    <video>.npy        float16, (n_frames, embed_dim); row i = frame i+1 = annotation line i+2
    <video>.mask.npy   bool, (n_frames,); True where the frame had a face image on disk
    _fingerprint.json  what produced the arrays (checkpoint hash, encoder, normalisation)
    _summary.json      counts and speed of the last run

``n_frames`` is the index's: the annotation length where labels exist, else the highest frame
number on disk. Frames on disk beyond ``n_frames`` (images past the end of the annotation) are
ignored. Frames without a face image are filled **the same way in every split** (the authors
forward-filled in training but zero-filled at test time): forward fill from the previous face
frame, backward fill from the first face frame for a video that starts without one; a video
with no face image at all gets zeros and an all-false mask. Downstream code can tell filled rows
from real ones by the mask.

Writes are atomic per video (temporary file, then ``os.replace``; the mask first, the features
last, so a finished ``<video>.npy`` means a finished video). A rerun skips finished videos and
redoes a partial one. If the fingerprint differs from the one in the folder (another checkpoint,
image size or normalisation), the old arrays are removed first so stale features are never mixed
with new ones.

Batches never span two videos, so a video's features do not depend on which other videos were
done in the same run (a resumed run gives arrays bit-identical to an uninterrupted one).

**Several processes** (``torchrun --nproc-per-node N mambava features``, :mod:`mambava.distributed`):
rank 0 prepares the folder (fingerprint, stale arrays, partial writes) and lists the unfinished
videos while the others wait; the unfinished videos are shared out balanced by frame count
(:func:`mambava.data.sharding.shard_by_size`) and every rank writes its own videos, each
atomically as above. Since a video's arrays do not depend on the other videos of the run, the
union is byte-identical to a one-process extraction (on CPU; on GPUs up to each device's own
kernels). A killed rank leaves its finished videos finished and its current one as a ``.tmp``;
the restart deletes partial writes, skips every finished video and shares out the rest again.
``_summary.json`` (rank 0) sums the ranks' counts and lists each rank's share.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from mambava import distributed
from mambava.data.sharding import shard_by_size
from mambava.io import file_sha256, write_text, write_timing
from mambava.features.frames import FrameDataset, frames_on_disk, normalise
from mambava.features.store import feature_path, fill_missing, is_done, mask_path, prepare_dir, save_array

log = logging.getLogger(__name__)

SUMMARY = "_summary.json"
# Testing hook: SIGKILL this process while writing the (N+1)-th video of a run, after its
# temporary file is written and before it is renamed (a crash in the worst place).
KILL_AFTER_ENV = "MAMBAVA_FEATURES_KILL_AFTER"
KILL_RANK_ENV = "MAMBAVA_FEATURES_KILL_RANK"  # with several processes: only this rank (default: any)


class _VideoChunks:
    """Batch sampler: consecutive chunks of at most ``batch_size`` frames, never across videos."""

    def __init__(self, bounds: Sequence[tuple[int, int]], batch_size: int):
        self.batches = [
            list(range(s, min(s + batch_size, e))) for s, e in bounds for s in range(s, e, batch_size)
        ]

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _worklist(index, rows: list[int]) -> tuple[list[tuple], int]:
    """(video, folder, n_frames, frame numbers on disk up to n_frames) for the given rows of the
    index, and how many frame images lie beyond their video's n_frames (ignored)."""
    todo, n_beyond = [], 0
    for row in index.iloc[rows].itertuples(index=False):
        n = int(row.n_frames)
        on_disk = frames_on_disk(row.path)
        n_beyond += int((on_disk > n).sum())
        todo.append((row.video, row.path, n, on_disk[on_disk <= n]))
    if n_beyond:
        log.info("ignoring %d frame images beyond their video's n_frames", n_beyond)
    return todo, n_beyond


def _frame_loader(todo: list[tuple], img_size: int, mean, std, batch_size: int, num_workers: int,
                  device: torch.device) -> tuple[FrameDataset, DataLoader]:
    """Every present frame of ``todo`` in order, in batches that never span two videos; uint8
    images out of the workers (normalised on the device)."""
    frames = [present for *_, present in todo]
    video_of = [np.full(len(present), k, dtype=np.int64) for k, present in enumerate(frames)]
    ends = np.cumsum([len(p) for p in frames]).tolist()
    bounds = list(zip([0, *ends[:-1]], ends))
    ds = FrameDataset(
        [path for _, path, _, _ in todo], np.concatenate(frames) if frames else np.zeros(0, np.int64),
        np.concatenate(video_of) if video_of else np.zeros(0, np.int64), img_size, mean, std, raw=True,
    )
    loader = DataLoader(ds, batch_sampler=_VideoChunks(bounds, batch_size), num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    return ds, loader


class _VideoWriter:
    """Writes each video's feature and mask files in the order of ``todo`` (a video with no face
    image gets zeros of the encoder's width, in its turn)."""

    def __init__(self, todo: list[tuple], out_dir: Path, dim: int | None, encoder, img_size: int, device, kill_after: int):
        self.todo, self.out_dir, self.dim = todo, out_dir, dim
        self.encoder, self.img_size, self.device, self.kill_after = encoder, img_size, device, kill_after
        self.written = 0
        self.next_k = 0  # the first video not written yet

    def write(self, k: int, feats: np.ndarray | None) -> None:
        video, _, n, present = self.todo[k]
        if feats is None:  # no face image at all
            if self.dim is None:
                self.dim = _probe_dim(self.encoder, self.img_size, self.device)
            full = np.zeros((n, self.dim), dtype=np.float16)
        else:
            self.dim = feats.shape[1]
            full = np.zeros((n, self.dim), dtype=np.float16)
            full[present - 1] = feats.astype(np.float16)
        mask = np.zeros(n, dtype=bool)
        mask[present - 1] = True
        full = fill_missing(full, mask)
        save_array(mask_path(self.out_dir, video), mask)
        save_array(feature_path(self.out_dir, video), full, kill=self.written == self.kill_after)
        self.written += 1

    def empty_until(self, k_stop: int) -> None:
        """Write the videos without frames before ``k_stop`` (they produce no batches)."""
        while self.next_k < k_stop:
            if len(self.todo[self.next_k][3]) == 0:
                self.write(self.next_k, None)
            self.next_k += 1


def _kill_after(ddp: distributed.Dist) -> int:
    """The test hook: the number of videos after which this rank dies (-1: never)."""
    if os.environ.get(KILL_RANK_ENV, str(ddp.rank)) != str(ddp.rank):
        return -1
    return int(os.environ.get(KILL_AFTER_ENV, "-1"))


def channels_last(encoder: nn.Module, device: torch.device, img_size: int, batch_size: int) -> bool:
    """Channels-last for a convolutional encoder on a CPU (oneDNN: the default ResNet 1.4x faster,
    the same features to float rounding), only where the kernels give the same bytes on 1, 2 and
    this process's threads (probed), so the features are the same for any thread count."""
    if device.type != "cpu" or not any(isinstance(m, nn.BatchNorm2d) for m in encoder.modules()):
        return False
    cl = copy.deepcopy(encoder).eval().to(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:  # the same answer whatever this process's thread count: 1 against 2 and against it
        with torch.inference_mode():
            for n in sorted({min(batch_size, 256), 3}):
                x = torch.randn(n, 3, img_size, img_size, generator=torch.Generator().manual_seed(n))
                outs = []
                for t in sorted({1, 2, threads}):
                    torch.set_num_threads(t)
                    outs.append(cl(x.contiguous(memory_format=torch.channels_last)))
                if not all(torch.equal(outs[0], o) for o in outs[1:]):
                    log.info("features: channels-last kernels depend on the thread count here; default layout")
                    return False
    finally:
        torch.set_num_threads(threads)
    return True


def extract_features(
    index,
    encoder: nn.Module,
    out_dir: str | Path,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    fingerprint: dict | None = None,
    progress: bool = True,
    ddp: distributed.Dist = distributed.SINGLE,
) -> dict:
    """Write ``<video>.npy`` and ``<video>.mask.npy`` for every video of ``index`` (module doc).

    index: DataFrame with ``video, n_frames, path`` (the data stage's index). encoder: maps
    (B, 3, img_size, img_size) normalised images to (B, dim) features. ``ddp``: this process's
    place among torchrun's; it writes its share of the unfinished videos. Returns a summary dict
    (with several processes: of all ranks, on every rank).
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    device = torch.device(device)
    t0 = time.perf_counter()
    plan = None
    if ddp.is_main:  # one process looks at the folder, so every rank acts on the same state
        prepare_dir(out_dir, fingerprint)
        plan = _plan(index, out_dir, ddp.world_size)
    dim, skipped, shards = distributed.broadcast(ddp, plan)
    skipped = skipped if ddp.is_main else 0
    todo, n_beyond = _worklist(index, shards[ddp.rank])
    ds, loader = _frame_loader(todo, img_size, mean, std, batch_size, num_workers, device)
    layout = torch.channels_last if channels_last(encoder, device, img_size, batch_size) else torch.contiguous_format
    encoder = encoder.to(device, memory_format=layout).eval()
    autocast = precision == "bf16" and device.type == "cuda"
    writer = _VideoWriter(todo, out_dir, dim, encoder, img_size, device, _kill_after(ddp))
    frames_done = 0
    bar = tqdm(total=len(ds), unit="frame", desc="features" + (f" rank {ddp.rank}" if ddp.enabled else ""),
               disable=not progress, position=ddp.local_rank, smoothing=0.1)
    pending = {}  # video k -> its features so far
    with torch.inference_mode():
        for images, idx in loader:
            k = int(ds.video_of[int(idx[0])])
            writer.empty_until(k)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                batch = normalise(images.to(device, non_blocking=True), mean, std)
                out = encoder(batch.contiguous(memory_format=layout))
            # kept on the device until the video is complete: no host sync per batch, so the
            # next batch is queued while the GPU still works on this one
            pending.setdefault(k, []).append(out.float())
            frames_done += len(idx)
            bar.update(len(idx))
            if sum(len(a) for a in pending[k]) == len(todo[k][3]):
                writer.write(k, torch.cat(pending.pop(k)).cpu().numpy())
                writer.next_k = k + 1
                bar.set_postfix(videos=f"{writer.written + skipped}/{len(index)}")
        writer.empty_until(len(todo))
    bar.close()
    seconds = time.perf_counter() - t0
    summary = _summary(ddp, {
        "videos": int(len(index)), "videos_written": writer.written, "videos_skipped": skipped,
        "frames_encoded": frames_done, "frames_beyond_n_frames_ignored": n_beyond, "dim": writer.dim,
        "seconds": round(seconds, 3), "frames_per_second": round(frames_done / seconds, 1) if seconds > 0 else None,
        "device": str(device), "precision": precision if autocast else "fp32", "batch_size": batch_size,
        "num_workers": num_workers,
    })
    if ddp.is_main:
        _write_summary(out_dir, summary)
    log.info("features: %d videos written, %d already done, %d frames at %.1f frames/s",
             writer.written, skipped, frames_done, summary["frames_per_second"] or 0)
    return summary


def _write_summary(out_dir: Path, summary: dict) -> None:
    """What the arrays are in the summary (an output); what this run did and how fast aside."""
    run_keys = ("videos_written", "videos_skipped", "frames_encoded", "seconds", "frames_per_second",
                "num_workers", "ranks")
    write_text(out_dir / SUMMARY, json.dumps({k: v for k, v in summary.items() if k not in run_keys}, indent=2))
    write_timing(out_dir, "features", {k: summary[k] for k in run_keys if k in summary})


def _plan(index, out_dir: Path, world: int) -> tuple[int | None, int, list[list[int]]]:
    """(feature width of the finished videos, how many are finished, each rank's unfinished
    videos as positions in ``index``, balanced by frame count)."""
    dim, skipped, todo = None, 0, []
    for i, row in enumerate(index.itertuples(index=False)):
        if is_done(out_dir, row.video, int(row.n_frames), dim):
            skipped += 1
            if dim is None:
                dim = int(np.load(feature_path(out_dir, row.video), mmap_mode="r").shape[1])
        else:
            todo.append(i)
    shares = shard_by_size([int(index.iloc[i]["n_frames"]) for i in todo], world)
    return dim, skipped, [[todo[j] for j in share] for share in shares]


def _summary(ddp: distributed.Dist, mine: dict) -> dict:
    """This rank's summary, or with several processes the ranks' summaries combined."""
    if not ddp.enabled:
        return mine
    ranks = distributed.gather(ddp, mine)
    frames = sum(r["frames_encoded"] for r in ranks)
    seconds = max(r["seconds"] for r in ranks)
    out = dict(mine)
    for key in ("videos_written", "videos_skipped", "frames_encoded", "frames_beyond_n_frames_ignored"):
        out[key] = sum(r[key] for r in ranks)
    out.update(
        dim=next((r["dim"] for r in ranks if r["dim"] is not None), None),
        seconds=seconds,
        frames_per_second=round(frames / seconds, 1) if seconds > 0 else None,
        world_size=ddp.world_size,
        dist_backend=ddp.backend,
        ranks=[{k: r[k] for k in ("videos_written", "frames_encoded", "seconds", "device")} for r in ranks],
    )
    return out


def _probe_dim(encoder: nn.Module, img_size: int, device: torch.device) -> int:
    with torch.inference_mode():
        return int(encoder(torch.zeros(1, 3, img_size, img_size, device=device)).shape[-1])


def run(cfg) -> dict:
    """The `features` stage: the fine-tuned encoder over every frame of the index."""
    from mambava.features.frames import load_index
    from mambava.features.mae import EncoderSpec, load_encoder
    from mambava.runtime import resolve_device, resolve_workers

    enc_cfg = cfg.mae_pretrain.encoder
    spec = EncoderSpec.from_config(enc_cfg)
    ckpt = Path(cfg.mae_finetune.out) / "checkpoint.pt"  # written by the mae_finetune stage
    encoder = load_encoder(spec, ckpt)
    ddp, device = distributed.setup(resolve_device(cfg.device))  # torchrun: this rank's place and device
    fingerprint = {
        "checkpoint_sha256": file_sha256(ckpt),
        "index_sha256": file_sha256(cfg.data.index),
        "encoder": spec.describe(),
        "mean": list(enc_cfg.mean),
        "std": list(enc_cfg.std),
        "dtype": "float16",
        "fill": "forward, backward at start; zeros if no face",
    } if ddp.is_main else None  # rank 0 checks the folder's
    fc = cfg.features
    return extract_features(
        load_index(cfg.data.index), encoder, fc.dir, spec.img_size, enc_cfg.mean, enc_cfg.std,
        batch_size=fc.batch_size, num_workers=resolve_workers(fc.num_workers, 0), device=device,
        precision=fc.precision, fingerprint=fingerprint, ddp=ddp,
    )
