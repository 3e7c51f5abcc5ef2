"""The encoder-learnability control (mambava.features.learnability): frames and their drawn
parameters are paired right, and the training harness can tell a learnable target from noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mambava.config import SyntheticConfig
from mambava.data.affwild2 import build_index
from mambava.data.synthetic import generate_twin
from mambava.features import learnability as L

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("learnability")
    cfg = SyntheticConfig(n_videos=8, n_pairs=1, min_frames=40, max_frames=90, workers=1, seed=5)
    root, labels, truth = tmp / "twin" / "affwild2", tmp / "twin" / "test_labels", tmp / "twin" / "truth"
    generate_twin(cfg, root, labels, truth, "test_list.txt")
    return build_index(root, labels, "test_list.txt"), truth


def test_frames_carry_the_drawn_parameters_of_their_own_frame(twin):
    """An independent reading: frame numbers from the file names, parameters by name from the truth file."""
    from PIL import Image

    index, truth = twin
    fs = L.load_frames(index, truth, "train", every=3, size=48)
    assert len(fs) > 20 and fs.images.shape[1:] == (3, 48, 48)
    rows = index[index["split"] == "train"]
    expected, images, labels = [], [], []
    for row in rows.itertuples():
        z = np.load(truth / f"{row.video}.npz")
        lab = np.loadtxt(row.annotation, delimiter=",", skiprows=1, ndmin=2)
        for p in sorted(Path(row.path).glob("*.jpg")):
            f = int(p.stem)
            if f > row.n_frames or f > len(lab) or (lab[f - 1] == -5).any():
                continue
            expected.append([z["mouth_curve"][f - 1], z["eye_open"][f - 1]])
            labels.append(lab[f - 1])
            with Image.open(p) as im:
                images.append(np.asarray(im.convert("RGB").resize((48, 48), Image.BICUBIC)))
    expected, labels = np.asarray(expected)[::3], np.asarray(labels)[::3]
    np.testing.assert_allclose(fs.drawn, expected, atol=1e-6)
    np.testing.assert_allclose(fs.labels, labels, atol=1e-6)
    np.testing.assert_array_equal(fs.images.permute(0, 2, 3, 1).numpy(), np.asarray(images)[::3])
    assert L.DRAWN == ("mouth_curve", "eye_open")


def test_max_frames_spreads_the_sample(twin):
    index, truth = twin
    full = L.load_frames(index, truth, "validation", size=32)
    some = L.load_frames(index, truth, "validation", max_frames=10, size=32)
    assert len(some) == 10
    assert set(some.video_of) == set(full.video_of)  # spread over the videos, not the first ten frames


def test_prepare_without_augmentation_is_plain_normalisation():
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    got = L.prepare(img, 16, MEAN, STD)
    want = (img.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(got, want)
    assert L.prepare(img, 8, MEAN, STD).shape == (2, 3, 8, 8)


def test_augmentation_keeps_shapes_and_only_permutes_scales_or_greys_colours():
    g = torch.Generator().manual_seed(0)
    img = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    img[:, 0, :, :4] = 200  # a red left half
    x = L.prepare(img, 8, (0, 0, 0), (1, 1, 1), g)
    lit = x.amax(1) > 0  # where any channel is lit
    flipped = lit[:, :, 4:].all((1, 2))
    assert (lit[:, :, :4].all((1, 2)) ^ flipped).all()  # the half stays whole, mirrored or not
    assert 10 < int(flipped.sum()) < 54
    assert (x.amin(1)[~lit] == 0).all()  # dark stays dark under any gain or channel order


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=200), rng.normal(size=200)
    b += a
    assert L.pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-12)
    assert L.pearson(np.ones(5), np.arange(5)) == 0.0


def _toy(n, rng):
    """Uniform images whose brightness is the target: learnable by any working harness."""
    y = rng.uniform(-1, 1, n).astype(np.float32)
    img = np.broadcast_to((128 + 100 * y)[:, None, None, None], (n, 3, 16, 16)).astype(np.uint8)
    return torch.from_numpy(img.copy()), y


def test_the_harness_learns_a_learnable_target_and_not_a_shuffled_one():
    """Fails if images and targets were paired wrongly (the shuffled control would then score the same)."""
    rng = np.random.default_rng(0)
    img, y = _toy(600, rng)
    vimg, vy = _toy(200, rng)
    target = np.stack([y, -y], 1)

    def score(model):
        p = L.predict(model, vimg, 16, MEAN, STD)
        return L.pearson(p[:, 0], vy), L.pearson(p[:, 1], -vy)

    torch.manual_seed(0)
    model = L.Regressor(L.SmallCNN(16), 16)
    curve = L.fit(model, target, img, steps=150, lr=3e-3, batch=32, size=16, mean=MEAN, std=STD, seed=0,
                  on_eval=lambda s: dict(zip("ab", score(model))), n_evals=3, augment=False)
    assert [c["step"] for c in curve] == [50, 100, 150]
    assert curve[-1]["a"] > 0.9 and curve[-1]["b"] > 0.9

    torch.manual_seed(0)
    control = L.Regressor(L.SmallCNN(16), 16)
    L.fit(control, target[rng.permutation(len(target))], img, steps=150, lr=3e-3, batch=32, size=16, mean=MEAN,
          std=STD, seed=0, augment=False)
    assert max(abs(r) for r in score(control)) < 0.3


def test_run_one_rejects_unknown_kinds(twin):
    index, truth = twin
    fs = L.load_frames(index, truth, "validation", max_frames=8, size=32)
    with pytest.raises(ValueError, match="encoder"):
        L.run_one("x", "resnet", "drawn", fs, fs, size=32, steps=1, lr=1e-3, batch=4, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="target"):
        L.run_one("x", "cnn", "latent", fs, fs, size=32, steps=1, lr=1e-3, batch=4, mean=MEAN, std=STD)


# --------------------------------------------------------------------------- linear probe of frozen features
def _ridge_reference(X, y, X_new, alpha):
    """Ridge by its normal equations on features standardised with the training rows' mean and
    population s.d., intercept = the training mean of y (what StandardScaler + Ridge should give)."""
    mu, sd = X.mean(0), X.std(0)
    Z, Z_new = (X - mu) / sd, (X_new - mu) / sd
    w = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]), Z.T @ (y - y.mean(0)))
    return Z_new @ w + y.mean(0)


def test_linear_probe_is_ridge_with_a_penalty_chosen_on_training_videos_only():
    rng = np.random.default_rng(0)
    n, d = 600, 12
    groups = np.repeat(np.arange(12), n // 12)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3, d)
    w = rng.normal(size=(d, 2))
    y = X @ w + 0.1 * rng.normal(size=(n, 2))
    X_new = rng.normal(size=(200, d)) * rng.uniform(0.5, 3, d)
    pred, alpha = L.linear_probe(X, y, groups, X_new)
    np.testing.assert_allclose(pred, _ridge_reference(X, y, X_new, alpha), rtol=1e-6, atol=1e-6)
    assert alpha <= 1.0  # a clean linear target wants little penalty
    truth = X_new @ w
    assert min(L.pearson(pred[:, j], truth[:, j]) for j in range(2)) > 0.99
    # the scored rows take no part in the choice: other new rows, same penalty
    assert L.linear_probe(X, y, groups, X_new[::-1] * 5)[1] == alpha
    # a target that no straight line reads across videos: the strongest penalty of the grid
    noise = rng.normal(size=(n, 2))
    assert L.linear_probe(X, noise, groups, X_new)[1] == 1e6


def test_pixel_features_are_grey_levels_at_the_asked_size():
    img = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    img[0] = 51  # uniform grey 0.2
    img[1, :, :, :32] = 255  # left half white
    f = L.pixel_features(img, size=16)
    assert f.shape == (2, 256)
    np.testing.assert_allclose(f[0], 0.2, atol=1e-6)
    half = f[1].reshape(16, 16)
    np.testing.assert_allclose(half[:, :7], 1.0, atol=1e-6)
    np.testing.assert_allclose(half[:, 9:], 0.0, atol=1e-6)


def test_encoder_features_are_the_cls_token_and_the_mean_patch_token():
    from mambava.features.mae import EncoderSpec, build_encoder

    spec = EncoderSpec(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0)
    torch.manual_seed(0)
    enc = build_encoder(spec)
    images = torch.randint(0, 256, (5, 3, 40, 40), dtype=torch.uint8)
    f = L.encoder_features(enc, images, 32, MEAN, STD, batch=2)
    assert f.shape == (5, 32)
    x = L.prepare(images, 32, MEAN, STD)
    with torch.no_grad():
        cls = enc(x).numpy()  # timm's forward: the CLS token after the final norm (num_classes=0)
        tokens = enc.norm(enc.blocks(enc._pos_embed(enc.patch_embed(x))))  # the same path by hand
    np.testing.assert_allclose(f[:, :16], cls, atol=1e-5)
    np.testing.assert_allclose(f[:, 16:], tokens[:, 1:].mean(1).numpy(), atol=1e-5)


def test_probe_targets_are_read_by_name_from_the_truth_files(twin):
    """The face probe's three targets (mouth curve, brow tilt, eye opening), read independently."""
    from mambava.data.population import DRAWN

    index, truth = twin
    fs = L.load_frames(index, truth, "validation", size=32, columns=DRAWN)
    expected = [[z["mouth_curve"][f - 1], z["brow_tilt"][f - 1], z["eye_open"][f - 1]]
                for z, f, _ in _labelled_frames(index, truth, "validation")]
    np.testing.assert_allclose(fs.drawn, np.asarray(expected), atol=1e-6)


def _labelled_frames(index, truth, split):
    """(truth file, frame number, label row) of every labelled on-disk frame of ``split``, read by hand."""
    for row in index[index["split"] == split].itertuples():
        z = np.load(truth / f"{row.video}.npz")
        lab = np.loadtxt(row.annotation, delimiter=",", skiprows=1, ndmin=2)
        for p in sorted(Path(row.path).glob("*.jpg")):
            f = int(p.stem)
            if f <= row.n_frames and f <= len(lab) and not (lab[f - 1] == -5).any():
                yield z, f, lab[f - 1]


def test_probe_scores_read_a_planted_linear_target_and_not_noise():
    from mambava.features.probe import pearson, probe_scores

    rng = np.random.default_rng(0)
    w = rng.normal(size=(12, 3))
    x, xt = rng.normal(size=(400, 12)), rng.normal(size=(200, 12))
    y = np.c_[x @ w[:, :2], rng.normal(size=400)]
    yt = np.c_[xt @ w[:, :2], rng.normal(size=200)]
    s = probe_scores(x, y, np.repeat(np.arange(40), 10), xt, yt)
    assert s["r_mouth_curve"] > 0.99 and s["r_brow_tilt"] > 0.99 and abs(s["r_eye_open"]) < 0.2
    assert s["alpha_eye_open"] >= 1e4  # noise: the strongest penalties of the grid
    assert abs(pearson(yt[:, 0], yt[:, 0]) - 1) < 1e-12
