"""``mambava predict``, ``export`` and ``--stream`` on a tiny but real pipeline (twin data, encoder,
features, a trained MambaVA, evaluate) built by the stages' own functions: predictions equal the
evaluate stage's, bundles round-trip without pickle, streaming equals the whole pass, and bad
input gets one line naming the file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mambava.cli import main
from mambava.config import ModelConfig
from mambava.errors import UserError
from mambava.features.store import fill_missing
from mambava.inference import predict_video
from mambava.models.mamba_va import MambaVA
from mambava.predict import COLUMNS, FaceStream, StreamingVA

sys.path.insert(0, str(Path(__file__).parent))
import _tiny_pipeline  # noqa: E402
from _twin_video import make_twin_video, write_mp4  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    cfg = _tiny_pipeline.build(root)
    clip = root / "clip.mp4"
    make_twin_video(clip, n_frames=45, seed=1)
    return cfg, root, clip


def _cli(project, *args) -> int:
    _, root, _ = project
    return main(["--params", str(root / "params.yaml"), *map(str, args)])


def _errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [ln for ln in err.splitlines() if ln.startswith("error:")]


def _evaluated(root: Path) -> pd.DataFrame:
    run = root / "eval" / "mae" / "mamba_va" / "fold0"
    return pd.concat([pd.read_csv(run / "predictions.csv", dtype=str), pd.read_csv(run / "test" / "predictions.csv", dtype=str)])


# --------------------------------------------------------------------------- predict == evaluate
def test_cropped_folder_gives_evaluates_predictions(project, tmp_path):
    cfg, root, _ = project
    ev = _evaluated(root)
    crops = Path(cfg.data.root) / "cropped_aligned"
    videos = sorted(ev["video"].unique())
    assert _cli(project, "predict", *[crops / v for v in videos], "--variant", "mamba_va", "--fold", 0,
                "--out", tmp_path, "--no-progress") == 0
    n_compared = 0
    for v in videos:
        ours = pd.read_csv(tmp_path / f"{v}.csv", dtype=str, keep_default_na=False)
        assert list(ours.columns) == COLUMNS
        on_disk = sorted(int(p.stem) for p in (crops / v).glob("*.jpg"))
        assert len(ours) == max(on_disk) and list(ours["frame"].astype(int)) == list(range(1, max(on_disk) + 1))
        has = ours["frame"].astype(int).isin(on_disk)
        assert (ours.loc[~has, "valence"] == "").all() and (ours.loc[~has, "arousal"] == "").all()
        theirs = ev[ev["video"] == v].set_index(ev[ev["video"] == v]["frame"].astype(int))
        mine = ours[has].set_index(ours[has]["frame"].astype(int))
        # the same numbers to the last written digit
        assert (mine["valence"] == theirs.loc[mine.index, "valence"]).all()
        assert (mine["arousal"] == theirs.loc[mine.index, "arousal"]).all()
        n_compared += len(mine)
        assert (tmp_path / f"{v}.png").stat().st_size > 10_000
    assert n_compared > 50


# --------------------------------------------------------------------------- export round trip
def test_export_bundle_round_trip_without_pickle(project, tmp_path, monkeypatch):
    cfg, root, _ = project
    bundle = tmp_path / "bundle"
    assert _cli(project, "export", "--variant", "mamba_va", "--fold", 0, "--out", bundle) == 0
    assert sorted(p.name for p in bundle.iterdir()) == [
        "MODEL_CARD.md", "bundle.json", "encoder.safetensors", "params.yaml", "temporal.safetensors"]
    meta = json.loads((bundle / "bundle.json").read_text())
    run_metrics = json.loads((root / "eval" / "mae" / "mamba_va" / "fold0" / "metrics.json").read_text())
    assert meta["metrics"]["validation"]["ccc_valence"] == run_metrics["ccc_valence"]
    assert f"{run_metrics['ccc_valence']:.4f}" in (bundle / "MODEL_CARD.md").read_text()
    assert meta["encoder"]["embed_dim"] == meta["model"]["input_dim"] == 24

    def no_pickle(*a, **k):
        raise AssertionError("a bundle must load without torch.load / pickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    folder = Path(cfg.data.root) / "cropped_aligned" / "108-30-1920x1080"
    assert _cli(project, "predict", folder, "--model", bundle, "--out", tmp_path / "b", "--no-progress") == 0
    monkeypatch.undo()
    assert _cli(project, "predict", folder, "--variant", "mamba_va", "--fold", 0, "--out", tmp_path / "r",
                "--no-progress") == 0
    a = (tmp_path / "b" / f"{folder.name}.csv").read_text()
    assert a == (tmp_path / "r" / f"{folder.name}.csv").read_text() and len(a.splitlines()) > 10


def test_data_hash_follows_the_training_labels_only(project, tmp_path):
    from mambava.data.windows import fold_videos, read_folds
    from mambava.export import data_hash

    cfg, root, _ = project
    before = data_hash(cfg, 0)
    index = pd.read_csv(cfg.data.index)
    train, _ = fold_videos(read_folds(cfg.folds.file), 0)
    ann = Path(index.set_index("video").at[train[0], "annotation"])
    test_ann = Path(index[index.split == "test"].iloc[0]["annotation"])
    saved, saved_test = ann.read_text(), test_ann.read_text()
    try:
        test_ann.write_text(saved_test.replace("\n0", "\n-0", 1))
        assert data_hash(cfg, 0) == before  # test labels are not training data
        lines = saved.splitlines()
        lines[5] = "0.1234,0.4321"
        ann.write_text("\n".join(lines) + "\n")
        assert data_hash(cfg, 0) != before
    finally:
        ann.write_text(saved)
        test_ann.write_text(saved_test)
    assert data_hash(cfg, 0) == before


# --------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("tcn,temporal", [(True, "mamba"), (False, "mamba"), (True, "none")])
def test_streaming_equals_the_whole_pass(tcn, temporal):
    torch.manual_seed(0)
    cfg = ModelConfig(input_dim=40, tcn=tcn, tcn_channels=[48, 32, 24], tcn_kernel=5, temporal=temporal, d_model=24,
                      n_layers=3, d_state=8, head_hidden=16, dropout=0.3)
    model = MambaVA(cfg).eval()
    with torch.no_grad():  # trained-looking weights: larger than the initialisation
        for p in model.parameters():
            p.mul_(1.5)
    feats = np.random.default_rng(1).normal(size=(700, 40)).astype(np.float16)
    whole = predict_video(model, feats, torch.device("cpu"), "whole")
    net = StreamingVA(model)
    streamed = np.stack([net.step(torch.from_numpy(f.astype(np.float32))).numpy() for f in feats])
    assert np.abs(streamed - whole).max() <= 1e-5
    assert whole.std() > 0.01  # not a trivially constant output


def test_streaming_fills_frames_without_a_face_like_the_whole_pass():
    torch.manual_seed(1)
    cfg = ModelConfig(input_dim=16, tcn_channels=[16, 16], tcn_kernel=3, d_model=16, n_layers=2, head_hidden=8)
    model = MambaVA(cfg).eval()
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(200, 16)).astype(np.float16)
    mask = rng.random(200) > 0.2
    mask[:7] = False  # the video starts without a face
    whole = predict_video(model, fill_missing(feats, mask), torch.device("cpu"), "whole")
    fs = FaceStream(model, torch.device("cpu"))
    out = [fs.step(f if m else None) for f, m in zip(feats, mask)]
    assert all((o is None) == (not m) for o, m in zip(out, mask))
    got = np.array([o for o in out if o is not None])
    assert np.abs(got - whole[mask]).max() <= 1e-5


def test_transformer_cannot_stream():
    model = MambaVA(ModelConfig(input_dim=8, temporal="transformer", d_model=8, n_heads=2)).eval()
    with pytest.raises(UserError, match="streaming needs"):
        StreamingVA(model)


def test_raw_video_whole_and_streamed(project, tmp_path):
    """A raw twin clip: crops, CSV, plot and overlay; the stream gives the same rows. Its values
    match the whole pass to 1e-3, not 1e-5: the encoder's float32 arithmetic differs in the last
    bits between a batch of 16 frames and one frame, and the features are stored as float16."""
    _, root, clip = project
    assert _cli(project, "predict", clip, "--variant", "mamba_va", "--fold", 0, "--out", tmp_path / "w",
                "--overlay", "--no-progress") == 0
    assert _cli(project, "predict", clip, "--variant", "mamba_va", "--fold", 0, "--out", tmp_path / "s",
                "--stream", "--quiet") == 0
    whole = pd.read_csv(tmp_path / "w" / "clip.csv")
    streamed = pd.read_csv(tmp_path / "s" / "clip.csv")
    assert list(whole.columns) == COLUMNS and len(whole) == 45 and list(whole.frame) == list(range(1, 46))
    assert whole["valence"].notna().mean() >= 0.95
    np.testing.assert_allclose(whole["time_s"], np.arange(45) / 30, atol=1e-3)
    assert (whole["valence"].isna() == streamed["valence"].isna()).all()
    assert np.nanmax(np.abs(whole[["valence", "arousal"]].to_numpy() - streamed[["valence", "arousal"]].to_numpy())) < 1e-3
    from mambava.video.decode import read_frames

    frames = list(read_frames(tmp_path / "w" / "clip.mp4"))
    assert len(frames) == 45 and frames[0].image.shape == (360, 480, 3)
    assert (tmp_path / "w" / "clip.png").stat().st_size > 10_000 and (tmp_path / "s" / "clip.png").exists()
    assert not list((tmp_path / "w").glob("*.tmp*"))


# --------------------------------------------------------------------------- errors
def test_bad_videos_and_missing_camera(project, tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_mp4(tmp_path / "grey.mp4", [np.full((96, 128, 3), 120, np.uint8)] * 4)
    out = tmp_path / "out"
    run = ["--variant", "mamba_va", "--fold", 0, "--out", out, "--no-progress"]
    assert _cli(project, "predict", tmp_path / "empty.mp4", *run) == 2
    assert _errors(capsys) == [f"error: {tmp_path / 'empty.mp4'}: empty file (0 bytes)"]
    assert _cli(project, "predict", tmp_path / "grey.mp4", *run) == 2
    assert _errors(capsys) == [f"error: {tmp_path / 'grey.mp4'}: no face found in any of its 4 frames"]
    assert _cli(project, "predict", tmp_path / "missing.mkv", *run) == 2
    assert _errors(capsys) == [f"error: {tmp_path / 'missing.mkv'}: no such file"]
    assert _cli(project, "predict", "/dev/video97", "--stream", *run) == 2
    assert _errors(capsys) == ["error: /dev/video97: no such camera"]
    # nothing half-written
    left = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert left == []


def test_bad_bundles(project, tmp_path, capsys):
    _, root, _ = project
    good = tmp_path / "good"
    assert _cli(project, "export", "--variant", "mamba_va", "--fold", 0, "--out", good) == 0
    folder = next((root / "twin" / "affwild2" / "cropped_aligned").iterdir())
    capsys.readouterr()

    def predict_with(bundle):
        return _cli(project, "predict", folder, "--model", bundle, "--out", tmp_path / "o", "--no-progress")

    # an encoder that does not match its temporal model
    wrong = tmp_path / "wrong"
    shutil.copytree(good, wrong)
    meta = json.loads((wrong / "bundle.json").read_text())
    meta["model"]["input_dim"] = 32
    (wrong / "bundle.json").write_text(json.dumps(meta))
    assert predict_with(wrong) == 2
    [line] = _errors(capsys)
    assert line.startswith(f"error: {wrong / 'bundle.json'}: the encoder gives 24-d features but the temporal model reads 32-d")
    # temporal weights of another model (hash updated, so only the shapes tell)
    other = tmp_path / "other"
    shutil.copytree(good, other)
    from safetensors.torch import save_file

    from mambava.export import _sha256

    m = MambaVA(ModelConfig(input_dim=24, tcn_channels=[4], d_model=4, n_layers=1))
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(other / "temporal.safetensors"))
    meta = json.loads((other / "bundle.json").read_text())
    meta["files"]["temporal.safetensors"] = _sha256(other / "temporal.safetensors")
    (other / "bundle.json").write_text(json.dumps(meta))
    assert predict_with(other) == 2
    [line] = _errors(capsys)
    assert line.startswith(f"error: {other / 'temporal.safetensors'}: does not fit the model described in bundle.json")
    # a damaged weight file
    (other / "encoder.safetensors").write_bytes((good / "encoder.safetensors").read_bytes()[:-10])
    assert predict_with(other) == 2
    assert _errors(capsys) == [f"error: {other / 'encoder.safetensors'}: SHA-256 differs from bundle.json "
                               "(the file was changed or damaged)"]
    # not a bundle
    assert predict_with(tmp_path) == 2
    [line] = _errors(capsys)
    assert line.startswith(f"error: {tmp_path / 'bundle.json'}: not found")
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_streaming_equals_the_whole_pass_paper_size(repo):
    """The paper's model (67M parameters, TCN 1024-768-512-256 kernel 15, 4 Mamba layers)."""
    from mambava.config import load_config
    from mambava.models import variant_config

    torch.manual_seed(0)
    model = MambaVA(variant_config(load_config(repo / "params.yaml", profile="paper").model, "mamba_va")).eval()
    feats = np.random.default_rng(3).normal(size=(500, 1024)).astype(np.float16)
    whole = predict_video(model, feats, torch.device("cpu"), "whole")
    net = StreamingVA(model)
    streamed = np.stack([net.step(torch.from_numpy(f.astype(np.float32))).numpy() for f in feats])
    assert np.abs(streamed - whole).max() <= 1e-5
