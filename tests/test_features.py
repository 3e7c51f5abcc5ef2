"""The per-video feature store: alignment with annotation lines, filling, resume after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny_layout import MeanColour, decode_frame, make_layout

from mambava.config import FACE_MEAN, FACE_STD
from mambava.data.affwild2 import load_index
from mambava.features.extract import KILL_AFTER_ENV, extract_features
from mambava.features.store import fill_missing, load_features, mask_path

VIDEOS = {
    # starts without a face, a gap in the middle, 3 images past the end of the annotation
    "a": {"split": "train", "n_frames": 40, "missing": [1, 2, 10, 11, 25], "beyond": 3, "unlabelled": [5, 6]},
    "b_left": {"split": "validation", "n_frames": 30, "missing": [30]},
    "c": {"split": "test", "n_frames": 20, "labels": False},
    "d": {"split": "test", "n_frames": 12, "missing": list(range(1, 13))},  # no face at all
}


def test_fill_missing():
    v = np.arange(6, dtype=np.float32)[:, None] * [1, 10]
    m = np.array([False, True, True, False, False, True])
    out = fill_missing(v, m)
    assert out[:, 0].tolist() == [1, 1, 2, 2, 2, 5]
    assert not fill_missing(v, np.zeros(6, bool)).any()
    assert np.array_equal(fill_missing(v, np.ones(6, bool)), v)


def _extract(index_path, out, **kw):
    return extract_features(load_index(index_path), MeanColour(FACE_MEAN, FACE_STD), out, 32, FACE_MEAN, FACE_STD,
                            progress=False, **kw)


def test_rows_align_with_annotation_lines(tmp_path):
    index_path = make_layout(tmp_path / "data", VIDEOS)
    out = tmp_path / "features"
    summary = _extract(index_path, out, batch_size=7)  # batches end inside videos
    assert summary["videos_written"] == 4 and summary["frames_beyond_n_frames_ignored"] == 3
    index = load_index(index_path)
    for row in index.itertuples():
        feats, mask = load_features(out, row.video)
        assert isinstance(feats, np.memmap) and feats.dtype == np.float16 and mask.dtype == bool
        assert feats.shape == (row.n_frames, 3) and mask.shape == (row.n_frames,)
        images = {int(p.stem) for p in Path(row.path).glob("*.jpg")}
        assert mask.tolist() == [f in images for f in range(1, row.n_frames + 1)]
        if row.video == "d":
            assert not feats.any() and not mask.any()
            continue
        got = decode_frame(feats.astype(np.float32))
        present = sorted(f for f in images if f <= row.n_frames)
        for i in range(row.n_frames):  # row i = frame i + 1 (or the face frame it was filled from)
            f = i + 1
            before = [p for p in present if p <= f]
            assert got[i] == (before[-1] if before else present[0]), (row.video, i)
        if not row.annotation:
            continue
        # independently of the index and the reader: line L of the label file is row L - 2
        lines = Path(row.annotation).read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) == row.n_frames + 1
        for L in range(2, len(lines) + 1):
            v, a = map(float, lines[L - 1].split(","))
            if v == -5 or not mask[L - 2]:
                continue
            assert got[L - 2] == round(v * 1000) == round(-a * 1000), (row.video, L)


def test_rerun_skips_and_new_fingerprint_rebuilds(tmp_path):
    index_path = make_layout(tmp_path / "data", VIDEOS)
    out = tmp_path / "features"
    _extract(index_path, out, fingerprint={"ckpt": "one"})
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    again = _extract(index_path, out, fingerprint={"ckpt": "one"})
    assert again["videos_skipped"] == 4 and again["videos_written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == first
    (out / "stray.npy.tmp").write_bytes(b"partial")
    mask_path(out, "c").unlink()  # half-finished video: redone
    again = _extract(index_path, out, fingerprint={"ckpt": "one"})
    assert again["videos_written"] == 1 and not list(out.glob("*.tmp"))
    other = _extract(index_path, out, fingerprint={"ckpt": "two"})
    assert other["videos_written"] == 4


def _stage_params(tmp_path, index_path, features_dir) -> Path:
    """A params.yaml for the tiny layout with a small encoder and its 'fine-tuned' checkpoint."""
    from mambava.features.mae import EncoderSpec, build_encoder, save_checkpoint

    spec = EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    torch.manual_seed(0)
    enc = build_encoder(spec)
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(enc.state_dict(), tmp_path / "finetune" / "checkpoint.pt")
    params = {
        "device": "cpu",
        "data": {"index": str(index_path)},
        "mae_pretrain": {"encoder": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}},
        "model": {"input_dim": 32},  # = the encoder's embed_dim (checked)
        "mae_finetune": {"out": str(tmp_path / "finetune")},
        "features": {"dir": str(features_dir), "batch_size": 8, "num_workers": 0},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run_stage(params: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "mambava.cli", "--params", str(params), "features"],
                          env=env, capture_output=True, text=True, timeout=300)


def test_interrupt_and_resume_gives_the_same_arrays(tmp_path):
    videos = {f"v{k}": {"split": "train", "n_frames": 20 + 3 * k, "missing": [2, 7]} for k in range(6)}
    index_path = make_layout(tmp_path / "data", videos)
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    r = _run_stage(_stage_params(tmp_path / "a", index_path, full_dir))
    assert r.returncode == 0, r.stderr

    params = _stage_params(tmp_path / "b", index_path, resumed_dir)
    r = _run_stage(params, {KILL_AFTER_ENV: "2"})  # SIGKILLed while writing the third video
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    assert len([p for p in resumed_dir.glob("v*.npy") if not p.name.endswith(".mask.npy")]) == 2
    assert list(resumed_dir.glob("*.tmp")), "the kill should leave a partial write behind"
    r = _run_stage(params)
    assert r.returncode == 0, r.stderr
    summary = yaml.safe_load((resumed_dir / "features.timing.json").read_text())  # what this run did
    assert summary["videos_skipped"] == 2 and summary["videos_written"] == 4
    # the summary DVC hashes is the same bytes as the uninterrupted run's (times and counts aside)
    assert (resumed_dir / "_summary.json").read_bytes() == (full_dir / "_summary.json").read_bytes()
    assert not list(resumed_dir.glob("*.tmp"))
    for video in videos:
        for suffix in (".npy", ".mask.npy"):
            a = (full_dir / f"{video}{suffix}").read_bytes()
            b = (resumed_dir / f"{video}{suffix}").read_bytes()
            assert a == b, f"{video}{suffix} differs after resume"


@pytest.mark.parametrize("workers", [2])
def test_dataloader_workers_give_the_same_arrays(tmp_path, workers):
    index_path = make_layout(tmp_path / "data", VIDEOS)
    _extract(index_path, tmp_path / "w0", batch_size=5, num_workers=0)
    _extract(index_path, tmp_path / "wn", batch_size=5, num_workers=workers)
    for video in VIDEOS:
        assert (tmp_path / "w0" / f"{video}.npy").read_bytes() == (tmp_path / "wn" / f"{video}.npy").read_bytes()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_on_cuda_is_close_to_fp32_on_cpu(tmp_path):
    from mambava.features.mae import EncoderSpec, build_encoder

    index_path = make_layout(tmp_path / "data", VIDEOS)
    torch.manual_seed(0)
    enc = build_encoder(EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2))
    index = load_index(index_path)
    extract_features(index, enc, tmp_path / "cpu", 32, FACE_MEAN, FACE_STD, progress=False)
    s = extract_features(index, enc, tmp_path / "gpu", 32, FACE_MEAN, FACE_STD, device="cuda", precision="bf16",
                         progress=False)
    assert s["precision"] == "bf16"
    for video in VIDEOS:
        a, _ = load_features(tmp_path / "cpu", video)
        b, _ = load_features(tmp_path / "gpu", video)
        np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), atol=0.1, rtol=0.05)


def test_a_convolutional_encoder_runs_channels_last_with_the_default_layouts_features(tmp_path):
    """The default ResNet is run channels-last on a CPU; its stored features must be the encoder's
    output in the default layout on the plain formula's images (to float16 storage)."""
    from mambava.config import load_config
    from mambava.features.extract import channels_last
    from mambava.features.frames import load_image
    from mambava.features.mae import EncoderSpec, build_encoder

    spec = EncoderSpec.from_config(load_config(Path(__file__).parents[1] / "params.yaml").mae_pretrain.encoder)
    torch.manual_seed(0)
    enc = build_encoder(spec).eval()
    assert channels_last(enc, torch.device("cpu"), spec.img_size, 4)
    assert not channels_last(MeanColour(FACE_MEAN, FACE_STD), torch.device("cpu"), spec.img_size, 4)
    index_path = make_layout(tmp_path / "data", {"a": {"split": "train", "n_frames": 9}})
    row = load_index(index_path).iloc[0]
    with torch.no_grad():
        imgs = torch.stack([load_image(Path(row.path) / f"{f:05d}.jpg", spec.img_size, FACE_MEAN, FACE_STD)
                            for f in range(1, 10)])
        ref_enc = build_encoder(spec).eval()
        ref_enc.load_state_dict(enc.state_dict())
        want = ref_enc(imgs.contiguous()).numpy()
    extract_features(load_index(index_path), enc, tmp_path / "f", spec.img_size, FACE_MEAN, FACE_STD, batch_size=4,
                     progress=False)
    got, _ = load_features(tmp_path / "f", "a")
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2e-3, atol=2e-3)


def test_uint8_loading_normalised_on_the_device_equals_the_float_formula(tmp_path):
    """Extraction ships uint8 images and normalises where the batch lands; the result must be the
    plain formula (pixel / 255 - mean) / std of the resized RGB image, written here with PIL and
    numpy in float64."""
    from PIL import Image

    from mambava.features.frames import FrameDataset, load_image, normalise

    index_path = make_layout(tmp_path / "data", {"a": {"split": "train", "n_frames": 6}})
    row = load_index(index_path).iloc[0]
    for size in (32, 56):  # 56: the crops are resized (bicubic), as 112 -> 224 for ViT-L/16
        ds = FrameDataset([row.path], np.arange(1, 7), np.zeros(6, np.int64), size, FACE_MEAN, FACE_STD, raw=True)
        img, _ = ds[3]
        assert img.dtype == torch.uint8 and img.shape == (3, size, size)
        with Image.open(Path(row.path) / "00004.jpg") as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            want = (np.asarray(im, np.float64) / 255.0 - np.array(FACE_MEAN)) / np.array(FACE_STD)
        want = want.transpose(2, 0, 1)
        np.testing.assert_allclose(normalise(img, FACE_MEAN, FACE_STD).numpy(), want, rtol=0, atol=2e-6)
        np.testing.assert_allclose(load_image(Path(row.path) / "00004.jpg", size, FACE_MEAN, FACE_STD).numpy(), want,
                                   rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match="colour"):
        FrameDataset([row.path], np.arange(1, 7), np.zeros(6, np.int64), 32, FACE_MEAN, FACE_STD, raw=True, colour_seed=1)
