"""``mambava predict``: valence and arousal of every frame of a video of your own.

    raw video -> crops (mambava.video.crop) -> features (the ``features`` stage's own
    extraction, with the fine-tuned encoder) -> the temporal model (the ``evaluate`` stage's
    inference) -> <out>/<video>.csv, <video>.png [, <video>.mp4]

The input is a video file or an already cropped folder (``<folder>/00001.jpg ...``, the official
layout). The model is a pipeline run (``--variant V --fold K`` of params.yaml: the fine-tuned
encoder of ``mae_finetune.out`` and ``<train.out>/V/foldK/best.pt``) or a bundle written by
``mambava export`` (``--model DIR``, :mod:`mambava.export`). Because features and inference are
the pipeline's own functions (:func:`mambava.features.extract.extract_features`,
:func:`mambava.inference.predict_video`), a twin video's cropped folder gets exactly the
predictions that ``evaluate`` wrote for it.

``<video>.csv`` has one row per frame (and per face with ``--faces 2``): ``frame`` (1-based),
``time_s``, ``face`` (1; 1 = left and 2 = right with two faces), ``valence``, ``arousal``, the
last two empty where no face was found (never an invented value; the model itself sees the
previous face's features there, as in training). ``<video>.png`` plots both over time;
``--overlay`` also writes ``<video>.mp4`` with the face's crop square and the two values drawn on
every frame.

**Streaming** (``--stream``): one frame at a time, latency one frame, from a file or a camera:
:class:`StreamingVA` carries each Mamba layer's recurrent state (``Mamba.step``) and, for each
TCN level, a rolling buffer of the past inputs its causal convolutions need, so its outputs
equal the whole-video pass (tests: max abs difference <= 1e-5 in float32).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from mambava.errors import UserError
from mambava.io import publish, temporary, write_figure

log = logging.getLogger("mambava.predict")

COLUMNS = ["frame", "time_s", "face", "valence", "arousal"]
DECIMALS = 6


# --------------------------------------------------------------------------- the model
@dataclass
class Predictor:
    """Everything prediction needs: encoder, temporal model and the settings they were used with."""

    encoder: nn.Module
    model: nn.Module
    encoder_cfg: object  # mambava.config.EncoderConfig (img_size, mean, std, ...)
    crop: object  # mambava.config.CropConfig
    inference: str = "whole"
    window: int = 500
    stride: int = 500
    batch_size: int = 256  # the features stage's batch: same batches, same numbers
    device: torch.device = torch.device("cpu")
    source: str = ""

    def features(self, folder: str | Path, n_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(features (n, dim) float16, face mask (n,)) of a cropped folder, by the features stage's
        own function; ``n_frames`` defaults to the highest frame number on disk."""
        from mambava.features.extract import extract_features
        from mambava.features.store import load_features
        from mambava.features.frames import frames_on_disk

        folder = Path(folder)
        on_disk = frames_on_disk(folder)
        if n_frames is None:
            if len(on_disk) == 0:
                raise UserError(f"{folder}: no face crops (00001.jpg ...) in this folder")
            n_frames = int(on_disk.max())
        index = pd.DataFrame({"video": ["v"], "n_frames": [int(n_frames)], "path": [str(folder)]})
        e = self.encoder_cfg
        with tempfile.TemporaryDirectory(prefix="mambava-predict-") as tmp:
            extract_features(index, self.encoder, tmp, e.img_size, e.mean, e.std, batch_size=self.batch_size,
                             num_workers=0, device=self.device, precision="fp32", fingerprint=None, progress=False)
            feats, mask = load_features(tmp, "v", mmap=False)
        return feats, mask

    def temporal(self, features: np.ndarray) -> np.ndarray:
        """(n, 2) float32 valence/arousal of every row (the evaluate stage's inference)."""
        from mambava.inference import predict_video

        self.model.eval()
        return predict_video(self.model, features, self.device, self.inference, self.window, self.stride)

    def predict_folder(self, folder: str | Path, n_frames: int | None = None) -> pd.DataFrame:
        """frame, valence, arousal (NaN where the folder has no crop) of a cropped folder."""
        feats, mask = self.features(folder, n_frames)
        out = self.temporal(feats).astype(np.float64)
        out[~mask] = np.nan
        return pd.DataFrame({"frame": np.arange(1, len(out) + 1), "valence": out[:, 0], "arousal": out[:, 1]})


def from_run(cfg, variant: str, fold: int) -> Predictor:
    """The Predictor of a pipeline run: ``mae_finetune.out``'s encoder and the run's best.pt."""
    from mambava.features.mae import EncoderSpec, load_encoder
    from mambava.runtime import load_best, resolve_device, train_dir

    device = resolve_device(cfg.device)
    ckpt = Path(cfg.mae_finetune.out) / "checkpoint.pt"
    if not ckpt.exists():
        raise UserError(f"{ckpt}: no fine-tuned encoder (run `dvc repro mae_finetune`, or use --model DIR)")
    best = train_dir(cfg, "mae", variant, fold, cfg.train.seed) / "best.pt"
    if not best.exists():
        raise UserError(f"{best}: no trained model (run `dvc repro train@mae-{variant}`, or use --model DIR)")
    enc_cfg = cfg.mae_pretrain.encoder
    encoder = load_encoder(EncoderSpec.from_config(enc_cfg), ckpt).to(device).eval()
    model, _ = load_best(best, device)
    check_widths(encoder, model, enc_cfg, str(best))
    e = cfg.evaluate
    return Predictor(encoder, model, enc_cfg, cfg.crop, e.inference, e.window, e.stride, cfg.features.batch_size,
                     device, f"{best}")


def check_widths(encoder, model, enc_cfg, where: str) -> None:
    dim = int(getattr(encoder, "embed_dim", enc_cfg.embed_dim))
    want = int(model.cfg.input_dim)
    if dim != want:
        raise UserError(f"{where}: the encoder gives {dim}-d features but the temporal model reads {want}-d "
                        "(encoder and temporal model do not belong together)")


# --------------------------------------------------------------------------- whole videos
def _table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat(parts, ignore_index=True)[COLUMNS]
    return df.sort_values(["frame", "face"], kind="stable").reset_index(drop=True)


def predict_folder_table(pred: Predictor, folder: str | Path, fps: float | None = None) -> pd.DataFrame:
    """The CSV table of an already cropped folder (time_s = (frame - 1) / fps, crop.fps by default)."""
    fps = fps or pred.crop.fps
    df = pred.predict_folder(folder)
    df.insert(1, "time_s", (df["frame"] - 1) / fps)
    df.insert(2, "face", 1)
    return df[COLUMNS]


def predict_video_table(pred: Predictor, video: str | Path, work: str | Path, n_faces: int = 1,
                        progress: bool = True) -> pd.DataFrame:
    """The CSV table of a raw video: crops into ``work`` (kept; reused when there), then features
    and the temporal model per face."""
    from mambava.video.crop import LOG_DIR, crop_video, face_names, is_done

    video, work = Path(video), Path(work)
    names = face_names(video.stem, n_faces)
    if not all(is_done(work, n) for n in names):
        bar = None
        if progress:
            from tqdm.auto import tqdm

            from mambava.video.decode import probe

            bar = tqdm(total=probe(video).n_frames or None, unit="frame", desc=f"crop {video.name}")
        try:
            crop_video(video, work, pred.crop, n_faces, progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()
    parts = []
    for k, name in enumerate(names):
        log_df = pd.read_csv(work / LOG_DIR / f"{name}.csv")
        n = len(log_df)
        folder = work / "cropped_aligned" / name
        if folder.is_dir():
            vals = pred.predict_folder(folder, n_frames=n)
        else:  # this face was never seen
            vals = pd.DataFrame({"frame": np.arange(1, n + 1), "valence": np.nan, "arousal": np.nan})
        vals.insert(1, "time_s", log_df["time_s"].to_numpy())
        vals.insert(2, "face", k + 1)
        parts.append(vals[COLUMNS])
    return _table(parts)


def write_table(df: pd.DataFrame, path: str | Path) -> None:
    from mambava.evaluate import write_csv

    write_csv(df, path, float_format=f"%.{DECIMALS}f")


def plot(df: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Valence and arousal over time (one panel per face), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    faces = sorted(df["face"].unique())
    fig, axes = plt.subplots(len(faces), 1, figsize=(10, 3.2 * len(faces)), squeeze=False, sharex=True)
    for ax, face in zip(axes[:, 0], faces):
        d = df[df["face"] == face]
        ax.plot(d["time_s"], d["valence"], color="tab:blue", lw=1.2, label="valence")
        ax.plot(d["time_s"], d["arousal"], color="tab:red", lw=1.2, label="arousal")
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel("value" if len(faces) == 1 else f"face {face} ({'left' if face == 1 else 'right'})")
        no_face = d["valence"].isna().to_numpy()
        if no_face.any():
            t = d["time_s"].to_numpy()
            ax.fill_between(t, -1.05, 1.05, where=no_face, color="0.9", step="mid", label="no face")
        ax.legend(loc="upper right", ncol=3, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    write_figure(fig, Path(path), format="png", dpi=110)
    plt.close(fig)


def draw(image: np.ndarray, pose, values: tuple[float, float] | None, crop_cfg, label: str = "") -> np.ndarray:
    """The frame with the face's crop square (where the crop came from) and V/A written on it."""
    import cv2

    from mambava.video.faces import alignment_matrix

    out = np.ascontiguousarray(image.copy())
    if pose is None:
        return out
    m = np.vstack([alignment_matrix(pose, crop_cfg.size, crop_cfg.eye_distance, crop_cfg.eye_y), [0, 0, 1]])
    inv = np.linalg.inv(m)
    s = crop_cfg.size
    sq = np.array([[0, 0, 1], [s, 0, 1], [s, s, 1], [0, s, 1]], float) @ inv.T
    pts = sq[:, :2].round().astype(np.int32)
    thick = max(1, round(min(image.shape[:2]) / 240))
    cv2.polylines(out, [pts], True, (0, 255, 0), thick, cv2.LINE_AA)
    text = "no face" if values is None or np.isnan(values[0]) else f"{label}V {values[0]:+.2f}  A {values[1]:+.2f}"
    scale = max(0.35, min(image.shape[:2]) / 600)
    org = (int(pts[:, 0].min()), max(12, int(pts[:, 1].min()) - 6))
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return out


class VideoWriter:
    """H.264 MP4 (PyAV; MPEG-4 part 2 where libx264 is missing), written to a temporary file and
    renamed into place by :meth:`close`."""

    def __init__(self, path: str | Path, fps: float):
        import av
        from fractions import Fraction

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary(self.path, ".tmp.mp4")
        self.c = av.open(str(self.tmp), "w")
        try:
            self.s = self.c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            self.s.options = {"crf": "20", "preset": "veryfast"}
        except Exception:  # pragma: no cover - a PyAV without libx264
            self.s = self.c.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1001))
        self.s.pix_fmt = "yuv420p"
        self.started = False

    def write(self, image: np.ndarray) -> None:
        import av

        if not self.started:
            h, w = image.shape[:2]
            self.s.height, self.s.width = h - h % 2, w - w % 2
            self.started = True
        image = image[: self.s.height, : self.s.width]
        for pkt in self.s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            self.c.mux(pkt)

    def close(self) -> None:
        for pkt in self.s.encode():
            self.c.mux(pkt)
        self.c.close()
        publish(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.c.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def poses_from_log(work: Path, name: str):
    """Per frame the smoothed pose that ``data crop`` logged (None where no face)."""
    import math

    from mambava.video.crop import LOG_DIR
    from mambava.video.faces import Pose

    df = pd.read_csv(work / LOG_DIR / f"{name}.csv")
    return [None if s == "none" else Pose(x, y, d, math.radians(r))
            for s, x, y, d, r in zip(df["source"], df["x"], df["y"], df["eye_distance"], df["roll_deg"])]


def write_overlay(video: str | Path, df: pd.DataFrame, work: Path, crop_cfg, out: str | Path, n_faces: int = 1) -> None:
    """``out`` (MP4): every frame of ``video`` with each face's crop square and values."""
    from mambava.video.crop import face_names
    from mambava.video.decode import probe, read_frames

    video = Path(video)
    names = face_names(video.stem, n_faces)
    poses = [poses_from_log(work, n) for n in names]
    values = {(int(f), int(k)): (v, a) for f, k, v, a in zip(df["frame"], df["face"], df["valence"], df["arousal"])}
    w = VideoWriter(out, probe(video).fps)
    try:
        for fr in read_frames(video):
            img = fr.image
            for k in range(n_faces):
                p = poses[k][fr.number - 1] if fr.number - 1 < len(poses[k]) else None
                img = draw(img, p, values.get((fr.number, k + 1)), crop_cfg, "" if n_faces == 1 else f"{k + 1}: ")
            w.write(img)
    except BaseException:
        w.abort()
        raise
    w.close()


def run(pred: Predictor, inputs: Iterable[str | Path], out: str | Path, n_faces: int = 1, overlay: bool = False,
        progress: bool = True) -> list[Path]:
    """Predict each input (video file or cropped folder) into ``out``; returns the CSV paths."""
    from mambava.video.decode import VideoError

    out = Path(out)
    written = []
    for item in inputs:
        item = Path(item)
        t0 = time.perf_counter()
        if item.is_dir():
            if overlay:
                log.warning("%s: a cropped folder has no video to draw on; no overlay", item)
            df = predict_folder_table(pred, item)
            name = item.name
        elif item.is_file() or not item.exists():
            if not item.exists():
                raise VideoError(f"{item}: no such file")
            work = out / "crops"
            df = predict_video_table(pred, item, work, n_faces, progress)
            name = item.stem
            if overlay:
                write_overlay(item, df, work, pred.crop, out / f"{name}.mp4", n_faces)
        write_table(df, out / f"{name}.csv")
        plot(df, out / f"{name}.png", title=f"{name}: valence and arousal ({pred.source})")
        n_face = int(df["valence"].notna().sum())
        log.info("%s: %d frames, %d with a face, in %.1f s -> %s", item, df["frame"].nunique(), n_face,
                 time.perf_counter() - t0, out / f"{name}.csv")
        written.append(out / f"{name}.csv")
    return written


# --------------------------------------------------------------------------- streaming
class StreamingVA:
    """A trained MambaVA run one frame at a time: (input_dim,) features -> (2,) values.

    Each TCN level keeps the last ``(kernel - 1) * dilation`` inputs of each of its two causal
    convolutions (zeros at the start, as the whole pass's left padding); each Mamba layer keeps
    its (conv, scan) state. The transformer variant cannot stream (it attends to all the past).
    """

    def __init__(self, model: nn.Module):
        from mambava.models.mamba_va import MambaStack

        if not (model.temporal.__class__ is MambaStack or isinstance(model.temporal, nn.Identity)):
            raise UserError(f"streaming needs the mamba or none temporal model, not {model.cfg.temporal!r}")
        self.model = model.eval()
        self.reset()

    def reset(self) -> None:
        m = self.model
        p = next(m.parameters())
        self.bufs = []
        # Each causal convolution gives one output per frame: a matrix-vector product of its
        # weight (out, in * kernel), computed once (the weight-norm parametrisation would
        # recompute g v/|v| on every call), with the buffer's taps (every dilation-th input).
        self.weights = []
        with torch.no_grad():
            for lvl in (m.tcn.levels if m.tcn is not None else []):
                flat = [c.weight.detach().reshape(c.out_channels, -1).contiguous() for c in (lvl.conv1, lvl.conv2)]
                ds = None if lvl.downsample is None else lvl.downsample.weight.detach()[:, :, 0].contiguous()
                self.weights.append((flat[0], flat[1], ds))
        if m.tcn is not None:
            for lvl in m.tcn.levels:
                n_in = lvl.conv1.in_channels
                n_out = lvl.conv1.out_channels
                self.bufs.append([torch.zeros(1, n_in, lvl.pad + 1, dtype=p.dtype, device=p.device),
                                  torch.zeros(1, n_out, lvl.pad + 1, dtype=p.dtype, device=p.device)])
        layers = getattr(m.temporal, "layers", [])
        self.states = [layer.mixer.allocate_state(1, device=p.device, dtype=p.dtype) for layer in layers]

    @staticmethod
    def _push(buf: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([buf[:, :, 1:], x[:, :, None]], dim=2)

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """One frame's features (input_dim,) -> valence, arousal (2,), clipped to [-1, 1]."""
        m = self.model
        h = x.reshape(1, -1).to(m.proj.weight.dtype)
        if m.tcn is not None:
            for lvl, bufs, (w1, w2, ds) in zip(m.tcn.levels, self.bufs, self.weights):
                d = lvl.conv1.dilation[0]
                bufs[0] = self._push(bufs[0], h)
                o = lvl.act1(F.linear(bufs[0][:, :, ::d].reshape(1, -1), w1, lvl.conv1.bias))
                bufs[1] = self._push(bufs[1], o)
                o = lvl.act2(F.linear(bufs[1][:, :, ::d].reshape(1, -1), w2, lvl.conv2.bias))
                res = h if ds is None else F.linear(h, ds, lvl.downsample.bias)
                h = lvl.act(o + res)
        h = m.norm_in(m.proj_in(h))
        for i, layer in enumerate(getattr(m.temporal, "layers", [])):
            y, self.states[i] = layer.mixer.step(h, self.states[i])
            h = layer.norm(h + y)
        return m.head(m.proj(h))[0].clamp(-1.0, 1.0)


def _encode_one(pred: Predictor, crop: np.ndarray) -> np.ndarray:
    """Features (dim,) float16 of one aligned crop, exactly as if ``data crop`` had written it to
    disk and the features stage had read it back (same JPEG bytes, same decoder and resize)."""
    import io

    from PIL import Image

    from mambava.features.frames import normalise
    from mambava.video.crop import encode_jpeg

    e = pred.encoder_cfg
    with Image.open(io.BytesIO(encode_jpeg(crop, pred.crop.jpeg_quality))) as im:
        im = im.convert("RGB")
        if im.size != (e.img_size, e.img_size):
            im = im.resize((e.img_size, e.img_size), Image.BICUBIC)
        arr = np.array(im, dtype=np.uint8)
    x = normalise(torch.from_numpy(arr).permute(2, 0, 1)[None].to(pred.device), e.mean, e.std)
    with torch.inference_mode():
        return pred.encoder(x)[0].float().cpu().numpy().astype(np.float16)


class FaceStream:
    """One face slot of a stream: features in, values out, with the whole pass's handling of frames
    without a face (forward fill; frames before the first face take its features, so the model is
    held back until it appears and those frames get no value)."""

    def __init__(self, model: nn.Module, device):
        self.net = StreamingVA(model)
        self.device = device
        self.last: np.ndarray | None = None
        self.waiting = 0  # frames before the first face

    def step(self, feats: np.ndarray | None) -> tuple[float, float] | None:
        if feats is None and self.last is None:
            self.waiting += 1
            return None
        if feats is not None:
            if self.last is None:  # backward fill of a leading gap
                x = torch.from_numpy(feats.astype(np.float32)).to(self.device)
                for _ in range(self.waiting):
                    self.net.step(x)
            self.last = feats
        y = self.net.step(torch.from_numpy(self.last.astype(np.float32)).to(self.device)).cpu().numpy()
        return (float(y[0]), float(y[1])) if feats is not None else None


def stream(pred: Predictor, source: str | Path, n_faces: int = 1) -> Iterator[tuple]:
    """Rows ``(frame, time_s, face, valence, arousal, frame, observations)`` as each frame
    arrives from a file or camera (valence/arousal NaN where no face)."""
    from mambava.video.crop import crop_stream

    slots = [FaceStream(pred.model, pred.device) for _ in range(n_faces)]
    for cf in crop_stream(source, pred.crop, n_faces):
        for k, crop in enumerate(cf.crops):
            feats = None if crop is None else _encode_one(pred, crop)
            v = slots[k].step(feats)
            va = (np.nan, np.nan) if v is None else v
            yield cf.frame.number, cf.frame.time_s, k + 1, va[0], va[1], cf


def run_stream(pred: Predictor, source: str | Path, out: str | Path, n_faces: int = 1, overlay: bool = False,
               echo: bool = True) -> Path:
    """Stream ``source`` into ``out/<name>.csv`` row by row (flushed each frame; on Ctrl-C what was
    done is kept), then plot it; with ``overlay`` also ``<name>.mp4`` drawn as frames arrive."""
    from mambava.video.decode import is_camera, probe

    out = Path(out)
    name = f"camera{str(source).split('video')[-1].split(':')[-1]}" if is_camera(source) else Path(source).stem
    path = out / f"{name}.csv"
    out.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    writer = None
    if overlay:
        writer = VideoWriter(out / f"{name}.mp4", 30.0 if is_camera(source) else probe(source).fps)
    rows = []
    t0 = time.perf_counter()
    interrupted = False
    try:
        with open(tmp, "w") as f:
            f.write(",".join(COLUMNS) + "\n")
            pending = []
            for frame, t, face, v, a, cf in stream(pred, source, n_faces):
                vals = "," if np.isnan(v) else f"{v:.{DECIMALS}f},{a:.{DECIMALS}f}"
                f.write(f"{frame},{t:.{DECIMALS}f},{face},{vals}\n")
                f.flush()
                rows.append((frame, t, face, v, a))
                pending.append((face, v, a))
                if echo:
                    print(f"frame {frame} t {t:.3f}s face {face}: " + ("no face" if np.isnan(v) else f"V {v:+.3f} A {a:+.3f}"))
                if len(pending) == n_faces:
                    if writer is not None:
                        img = cf.frame.image
                        for (k, vv, aa), o in zip(pending, cf.faces):
                            img = draw(img, None if o is None else o.pose, (vv, aa), pred.crop,
                                       "" if n_faces == 1 else f"{k}: ")
                        writer.write(img)
                    pending = []
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        tmp.unlink(missing_ok=True)
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    if not rows:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{source}: no frame was read")
    publish(tmp, path)
    df = pd.DataFrame(rows, columns=COLUMNS)
    plot(df, out / f"{name}.png", title=f"{name}: valence and arousal, streamed ({pred.source})")
    secs = time.perf_counter() - t0
    log.info("%s: %d frames streamed in %.1f s (%.1f frames/s)%s -> %s", source, df["frame"].nunique(), secs,
             df["frame"].nunique() / secs, " (interrupted)" if interrupted else "", path)
    return path
