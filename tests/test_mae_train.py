"""MAE pretraining and valence-arousal fine-tuning: freezing, and the three stages end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from _tiny_layout import make_layout

from mambava.config import load_config
from mambava.features.finetune import FrameVA, freeze, train_steps
from mambava.features.mae import EncoderSpec, build_encoder, load_encoder, read_state_dict

SPEC = EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2)


@pytest.mark.parametrize("loss", ["mse", "ccc"])
def test_frozen_parameters_are_bit_identical_and_the_others_change(loss):
    torch.manual_seed(0)
    model = FrameVA(build_encoder(SPEC))
    frozen = set(freeze(model.encoder, 2))
    assert {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed"} <= frozen
    assert any(n.startswith("blocks.1.") for n in frozen) and not any(n.startswith("blocks.2.") for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [(torch.randn(8, 3, 32, 32), torch.rand(8, 2) * 2 - 1) for _ in range(4)]
    train_steps(model, batches, steps=4, lr=1e-3, weight_decay=0.05, warmup=1, loss_kind=loss,
                device=torch.device("cpu"), progress=False)
    for name, p in model.named_parameters():
        enc_name = name.removeprefix("encoder.")
        if enc_name in frozen:
            assert torch.equal(p, before[name]), f"{name} is frozen but changed"
            assert not p.requires_grad
        else:
            assert not torch.equal(p, before[name]), f"{name} is trainable but did not change"


def test_freeze_checks_the_depth_and_zero_freezes_only_the_embedding():
    enc = build_encoder(SPEC)
    with pytest.raises(ValueError, match="freeze_blocks = 4, but the encoder has 3 blocks"):
        freeze(enc, 4)
    frozen = freeze(build_encoder(SPEC), 0)
    assert not any(n.startswith("blocks.") for n in frozen) and "cls_token" in frozen


TINY = {
    "t1": {"split": "train", "n_frames": 30, "missing": [3]},
    "t2": {"split": "train", "n_frames": 25, "unlabelled": [1, 2]},
    "val": {"split": "validation", "n_frames": 24, "missing": [24]},
    "test": {"split": "test", "n_frames": 10, "labels": False},
}


def _params(tmp_path, index, **pretrain) -> str:
    enc = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    params = {
        "device": "cpu",
        "data": {"index": str(index)},
        "model": {"input_dim": enc["embed_dim"]},  # checked to match
        "mae_pretrain": {"encoder": enc, "steps": 3, "batch_size": 4, "warmup_steps": 1, "decoder_dim": 16,
                         "decoder_depth": 1, "decoder_heads": 2, "n_reconstructions": 3, "num_workers": 0,
                         "out": str(tmp_path / "pretrain"), **pretrain},
        "mae_finetune": {"freeze_blocks": 1, "steps": 3, "batch_size": 4, "warmup_steps": 1, "num_workers": 0,
                         "out": str(tmp_path / "finetune")},
        "features": {"dir": str(tmp_path / "features"), "batch_size": 16, "num_workers": 0},
        # every training video fine-tunes the encoder (the clean protocol's split is tested in test_ladder)
        "protocol": "paper",
        "folds": {"file": str(tmp_path / "folds.csv"), "n_splits": 2},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return str(path)


def test_three_stages_end_to_end(tmp_path):
    from mambava.features import extract, finetune, pretrain, store

    index = make_layout(tmp_path / "data", TINY)
    cfg = load_config(_params(tmp_path, index))
    m = pretrain.run(cfg)
    assert m["steps"] == 3 and m["train_loss_first"] > 0 and "heldout_loss" in m
    assert (tmp_path / "pretrain" / "reconstructions.png").stat().st_size > 0
    state = read_state_dict(tmp_path / "pretrain" / "checkpoint.pt")
    assert "decoder_pred.weight" in state and "blocks.1.attn.qkv.weight" in state  # fb/mae layout

    before = read_state_dict(tmp_path / "pretrain" / "checkpoint.pt")
    from mambava.data.windows import run_folds

    run_folds(cfg)
    m = finetune.run(cfg)
    assert set(m) >= {"ccc_valence", "ccc_arousal", "p_va", "n_frames"} and m["n_frames"] == 23
    assert json.loads((tmp_path / "finetune" / "metrics.json").read_text())["frozen_params"] == m["frozen_params"] > 0
    after = read_state_dict(tmp_path / "finetune" / "checkpoint.pt")
    assert torch.equal(after["blocks.0.mlp.fc1.weight"], before["blocks.0.mlp.fc1.weight"])  # frozen
    assert not torch.equal(after["blocks.1.mlp.fc1.weight"], before["blocks.1.mlp.fc1.weight"])
    assert "va_head.weight" in after

    s = extract.run(cfg)
    assert s["videos_written"] == 4 and s["dim"] == 32
    feats, mask = store.load_features(tmp_path / "features", "val")
    assert feats.shape == (24, 32) and mask.sum() == 23
    # the stored features are the fine-tuned encoder's CLS token
    enc = load_encoder(EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2),
                       tmp_path / "finetune" / "checkpoint.pt").eval()
    from mambava.features.frames import load_image

    x = load_image(tmp_path / "data" / "cropped_aligned" / "val" / "00005.jpg", 32, cfg.mae_pretrain.encoder.mean,
                   cfg.mae_pretrain.encoder.std)
    with torch.no_grad():
        want = enc(x[None])[0].numpy().astype(np.float16)
    assert np.array_equal(feats[4], want)


def test_pretrain_from_a_local_checkpoint_without_training(tmp_path):
    from mambava.features import pretrain

    index = make_layout(tmp_path / "data", TINY)
    torch.manual_seed(3)
    ref = build_encoder(EncoderSpec(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2))  # other size
    ckpt = tmp_path / "vit_tiny_patch8_64.mae.pth"
    torch.save(ref.state_dict(), ckpt)  # timm-style plain state dict, no decoder
    cfg = load_config(_params(tmp_path, index, checkpoint=str(ckpt), steps=0))
    m = pretrain.run(cfg)
    assert m["from_checkpoint"] and not m["decoder_trained"] and m["train_loss_first"] is None
    state = read_state_dict(tmp_path / "pretrain" / "checkpoint.pt")
    assert torch.equal(state["blocks.1.attn.proj.weight"], ref.blocks[1].attn.proj.weight)
    assert state["pos_embed"].shape == (1, 17, 32)  # resampled 8x8 -> 4x4
