"""Face-encoder pretraining (`mambava pretrain-faces`): objectives, reproducible bytes, resuming,
the shipped checkpoint's hash, and the ResNet encoder through the pipeline's loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mambava.features import facepretrain as FP
from mambava.features.mae import EncoderSpec, build_encoder, load_encoder

RESNET = dict(arch="resnet", img_size=32, patch_size=16, embed_dim=16, channels=[8, 8, 16, 16], layers=[1, 1, 1, 1])


def _params(tmp: Path, **fp) -> Path:
    p = {
        "mae_pretrain": {"encoder": RESNET, "steps": 0, "checkpoint": str(tmp / "shipped.safetensors")},
        "model": {"input_dim": 16},
        "face_pretrain": {"population": {"seed": 3, "n_people": 4, "clip_frames": 2, "clip_seconds": 2.0,
                                         "image_size": 32},
                          "steps": 6, "batch_size": 4, "warmup_steps": 2, "save_every": 2, "threads": 1, "workers": 1,
                          "cache": str(tmp / "pop.npz"), "out": str(tmp / "out"), **fp},
    }
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(p))
    return path


def _cfg(path):
    from mambava.config import load_config

    return load_config(path)


def test_random_mask_masks_exactly_the_ratio():
    m = FP.random_mask(5, 7, 0.6, torch.Generator().manual_seed(0))
    assert m.shape == (5, 7, 7)
    assert (m.reshape(5, -1).sum(1) == round(0.6 * 49)).all()


def test_masked_loss_against_a_loop_over_squares():
    g = torch.Generator().manual_seed(1)
    imgs, pred = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])
    errs = []
    for b in range(2):
        for i in range(2):
            for j in range(2):
                if mask[b, i, j]:
                    t = imgs[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
                    t = (t - t.mean()) / (t.var() + 1e-6).sqrt()
                    p = pred[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].permute(1, 2, 0).reshape(-1)
                    errs.append(((p - t) ** 2).mean())
    torch.testing.assert_close(FP.masked_loss(pred, imgs, mask, 4), torch.stack(errs).mean())


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_feature_map_pooled_is_the_encoders_own_output(arch):
    spec = EncoderSpec(**RESNET) if arch == "resnet" else EncoderSpec(img_size=32, patch_size=16, embed_dim=16,
                                                                       depth=1, num_heads=2)
    torch.manual_seed(0)
    enc = build_encoder(spec).eval()
    x = torch.randn(3, 3, 32, 32)
    pooled, fmap = FP.feature_map(enc, x)
    torch.testing.assert_close(pooled, enc(x))
    assert fmap.shape == (3, 16, 2, 2)


def test_band_pool_against_a_loop_over_rows():
    from mambava.features.resnet import BandPool

    x = torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    for rows, bands in [(1, [(0, 5)]), (2, [(0, 2), (2, 5)]), (3, [(0, 2), (2, 3), (3, 5)])]:  # round(i * 5 / rows)
        want = np.zeros((2, 3 * rows))
        for b in range(2):
            for k, (top, bottom) in enumerate(bands):
                for c in range(3):
                    want[b, 3 * k + c] = np.mean([float(x[b, c, i, j]) for i in range(top, bottom) for j in range(4)])
        np.testing.assert_allclose(BandPool(rows)(x).numpy(), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="6 bands of a map 5 rows high"):
        BandPool(6)(x)


def test_a_two_band_resnet_reads_the_upper_and_lower_half_of_its_last_map():
    spec = EncoderSpec(**{**RESNET, "embed_dim": 32, "pool_rows": 2})
    torch.manual_seed(0)
    enc = build_encoder(spec).eval()
    x = torch.randn(2, 3, 64, 64)  # a 4x4 last map
    fmap = enc.forward_features(x)
    out = enc(x)
    assert fmap.shape == (2, 16, 4, 4) and out.shape == (2, 32)
    torch.testing.assert_close(out[:, :16], fmap[:, :, :2].mean((2, 3)))
    torch.testing.assert_close(out[:, 16:], fmap[:, :, 2:].mean((2, 3)))
    model = FP.FacePretrainer(enc, spec.embed_dim, spec.patch_size)  # the reconstruction head reads the map's 16 channels
    va, fm = model(x)
    assert va.shape == (2, 2) and model.reconstruct(fm).shape == (2, 3, 64, 64)
    one_band = build_encoder(EncoderSpec(**RESNET)).state_dict()  # the band pool has no weights:
    assert {k: v.shape for k, v in enc.state_dict().items()} == {k: v.shape for k, v in one_band.items()}


def test_pool_rows_must_fit_embed_dim_and_the_arch():
    from pydantic import ValidationError

    from mambava.config_sections import EncoderConfig

    EncoderConfig(**{**RESNET, "embed_dim": 32, "pool_rows": 2})
    with pytest.raises(ValidationError, match="last stage's width 16 x pool_rows 2"):
        EncoderConfig(**{**RESNET, "pool_rows": 2})
    with pytest.raises(ValidationError, match="pool_rows is for arch resnet"):
        EncoderConfig(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, pool_rows=2)
    with pytest.raises(ValidationError, match="exceeds the rows"):
        EncoderConfig(**{**RESNET, "embed_dim": 48, "pool_rows": 3})


def test_pretraining_gives_the_same_bytes_twice_and_resumes_to_them(tmp_path):
    a, b, c = (tmp_path / d for d in "abc")
    for d in (a, b, c):
        d.mkdir()
    ma = FP.run(_cfg(_params(a)), progress=False)
    mb = FP.run(_cfg(_params(b)), progress=False)
    assert ma["done"] and ma["sha256"] == mb["sha256"]
    # interrupted after the first saved state (max 0 minutes), then resumed: the same bytes
    mc = FP.run(_cfg(_params(c)), progress=False, max_minutes=0.0)
    assert not mc["done"] and mc["steps_done"] == 2
    mc = FP.run(_cfg(_params(c)), progress=False)
    assert mc["done"] and mc["sha256"] == ma["sha256"]
    # another recipe refuses the old state instead of mixing the two
    with pytest.raises(ValueError, match="last.pt"):
        FP.run(_cfg(_params(c, lr=1e-4)), progress=False)


def test_shipped_checkpoint_loads_into_the_pipeline_encoder_and_a_corrupted_one_is_refused(tmp_path):
    from mambava.errors import UserError
    from mambava.features.pretrain import verified_checkpoint
    from mambava.io import file_sha256

    m = FP.run(_cfg(_params(tmp_path)), ship=True, progress=False)
    shipped = tmp_path / "shipped.safetensors"
    assert file_sha256(shipped) == m["sha256"]
    cfg = _cfg(_params(tmp_path))
    pc = cfg.mae_pretrain.model_copy(update={"checkpoint_sha256": m["sha256"]})
    assert verified_checkpoint(pc) == str(shipped)
    enc = load_encoder(EncoderSpec.from_config(cfg.mae_pretrain.encoder), shipped)  # mim_head.* ignored
    from safetensors.torch import load_file

    state = load_file(str(shipped))
    torch.testing.assert_close(enc.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"])
    assert any(k.startswith("mim_head.") for k in state) and not any(k.startswith("va_head.") for k in state)
    # a supervised run trains no reconstruction head, and ships none
    sup = tmp_path / "sup"
    sup.mkdir()
    FP.run(_cfg(_params(sup, objective="supervised")), progress=False)
    assert not any(k.startswith("mim_head.") for k in load_file(str(sup / "out" / "face_encoder.safetensors")))
    data = bytearray(shipped.read_bytes())
    data[-5] ^= 0xFF
    shipped.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        verified_checkpoint(pc)


def test_resnet_freeze_freezes_the_stem_and_the_first_stages():
    from mambava.features.finetune import freeze

    enc = build_encoder(EncoderSpec(**RESNET))
    names = freeze(enc, 2)
    assert names and all(n.startswith(("conv1.", "bn1.", "layer1.", "layer2.")) for n in names)
    assert all(p.requires_grad for n, p in enc.named_parameters() if n.startswith(("layer3.", "layer4.")))
    with pytest.raises(ValueError, match="4 blocks"):
        freeze(build_encoder(EncoderSpec(**RESNET)), 5)


def test_a_resnet_mae_pretrain_with_steps_is_a_clear_config_error(tmp_path):
    from mambava.config import ConfigError

    p = yaml.safe_load(_params(tmp_path).read_text())
    p["mae_pretrain"]["steps"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    with pytest.raises(ConfigError, match="arch vit"):
        _cfg(tmp_path / "params.yaml")


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_the_encoders_wiring_lets_every_part_learn(arch):
    """A wiring check (issue 23): both encoder families fit the labels of 16 rendered faces within
    60 steps (frozen or mis-scaled embeddings, a broken norm or pooling would stall it), and every
    parameter of the encoder receives a gradient. Measured at scale on the population, the pipeline's
    ViT memorises 64 faces' labels as fast as the ResNet (MSE 0.24 -> 0.002 in 150 steps): its failure
    to read faces it never saw is one of generalisation, not of wiring (benchmarks/README.md)."""
    import torch.nn.functional as F

    from mambava.data.population import PopulationSpec, build_population

    pop = build_population(PopulationSpec(seed=2, n_people=8, clip_frames=2, clip_seconds=2.0, image_size=32),
                           progress=False)
    spec = (EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2) if arch == "vit"
            else EncoderSpec(**{**RESNET, "patch_size": 8, "embed_dim": 32, "channels": [8, 16, 32, 32]}))
    torch.manual_seed(0)
    model = FP.FacePretrainer(build_encoder(spec), spec.embed_dim, spec.patch_size)
    x = FP.prepare(torch.from_numpy(pop.images).permute(0, 3, 1, 2), 32, (0.5,) * 3, (0.25,) * 3)
    y = torch.from_numpy(pop.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(60):
        loss = F.mse_loss(model(x)[0], y)
        opt.zero_grad()
        loss.backward()
        if len(losses) == 10:  # after a few steps (timm's ResNet starts its residual branches at zero)
            dead = [n for n, p in model.encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not dead, f"no gradient reaches {dead[:5]}"
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]


def test_the_shipped_checkpoint_is_the_one_params_yaml_names(repo, monkeypatch):
    """The file in checkpoints/ has the SHA-256 that params.yaml records (computed here with hashlib,
    not with the project's helper) and loads into the configured encoder."""
    import hashlib

    from mambava.config import load_config
    from mambava.features.pretrain import verified_checkpoint

    cfg = load_config(repo / "params.yaml")
    path = repo / cfg.mae_pretrain.checkpoint
    assert hashlib.sha256(path.read_bytes()).hexdigest() == cfg.mae_pretrain.checkpoint_sha256
    assert path.stat().st_size < 25e6  # the limit for a shipped checkpoint
    monkeypatch.chdir(repo)
    assert verified_checkpoint(cfg.mae_pretrain) == cfg.mae_pretrain.checkpoint
    enc = load_encoder(EncoderSpec.from_config(cfg.mae_pretrain.encoder), path)
    assert enc(torch.zeros(2, 3, 64, 64)).shape == (2, cfg.model.input_dim)


def test_a_corrupted_checkpoint_stops_the_stage_with_one_line(tmp_path, capsys):
    from mambava.cli import main

    params = _params(tmp_path)
    (tmp_path / "shipped.safetensors").write_bytes(b"not the shipped bytes")
    p = yaml.safe_load(params.read_text())
    p["mae_pretrain"]["checkpoint_sha256"] = "0" * 64
    params.write_text(yaml.safe_dump(p))
    assert main(["--params", str(params), "mae-pretrain"]) == 2
    err = capsys.readouterr().err
    assert "shipped.safetensors: SHA-256" in err and "Traceback" not in err


def test_the_face_probe_stage_on_a_tiny_twin(tmp_path, monkeypatch):
    """`mambava face-probe` end to end: three rows (random, shipped, fine-tuned), r in [-1, 1], the
    shipped file's hash checked; on real data (no drawn parameters) it writes why it skipped."""
    from mambava.data.prepare import prepare
    from mambava.features.facepretrain import write_safetensors
    from mambava.features.mae import save_checkpoint
    from mambava.features.probe import run
    from mambava.io import file_sha256

    monkeypatch.chdir(tmp_path)
    enc = {**RESNET, "img_size": 32, "patch_size": 8}
    params = {"data": {"root": "twin/affwild2", "test_labels": "twin/test_labels", "index": "index.csv",
                       "synthetic": {"n_videos": 5, "n_pairs": 0, "min_frames": 30, "max_frames": 40, "image_size": 48,
                                     "workers": 1}},
              "model": {"input_dim": 16},
              "mae_pretrain": {"encoder": enc, "steps": 0, "checkpoint": "shipped.safetensors"},
              "mae_finetune": {"out": "finetune"},
              "face_pretrain": {"population": {"n_people": 30, "clip_frames": 2, "clip_seconds": 2.0, "image_size": 48}},
              "face_probe": {"out": "probe"}}
    Path("params.yaml").write_text(yaml.safe_dump(params))
    cfg = _cfg("params.yaml")
    prepare(cfg)
    torch.manual_seed(1)
    encoder = build_encoder(EncoderSpec.from_config(cfg.mae_pretrain.encoder))
    write_safetensors({k: v.contiguous() for k, v in encoder.state_dict().items()}, "shipped.safetensors", {})
    save_checkpoint(encoder.state_dict(), "finetune/checkpoint.pt")
    params["mae_pretrain"]["checkpoint_sha256"] = file_sha256("shipped.safetensors")
    Path("params.yaml").write_text(yaml.safe_dump(params))
    out = run(_cfg("params.yaml"), progress=False)
    assert [r["encoder"].split(" ")[0] for r in out["rows"]] == ["random", "pretrained", "fine-tuned"]
    assert all(-1 <= r[f"r_{c}"] <= 1 for r in out["rows"] for c in out["targets"])
    assert out["probe_people"] == 3 and out["study_frames"] > 0
    # the shipped and the fine-tuned encoder are the same weights here: the same probe
    assert out["rows"][1]["r_mouth_curve"] == out["rows"][2]["r_mouth_curve"]
    params["data"]["source"] = "affwild2"
    Path("params.yaml").write_text(yaml.safe_dump(params))
    assert "skipped" in run(_cfg("params.yaml"), progress=False)
