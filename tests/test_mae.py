"""The MAE encoder: checkpoint formats, shape errors, positional-embedding resize, masking."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from mambava.features.mae import (
    EncoderSpec,
    MaskedAutoencoder,
    build_encoder,
    load_encoder,
    load_encoder_weights,
)

SPEC = EncoderSpec(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)


def _reference_vit(spec: EncoderSpec, seed: int) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(
        img_size=spec.img_size, patch_size=spec.patch_size, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, num_classes=0, global_pool="token",
    )
    with torch.no_grad():  # timm zero-initialises some tensors; make every one distinctive
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return vit.eval()


def _fb_mae_checkpoint(vit: VisionTransformer, decoder_dim: int = 16) -> dict:
    """What facebookresearch/mae's main_pretrain.py saves: {"model": encoder + decoder keys, ...}."""
    sd = {k: v.clone() for k, v in vit.state_dict().items()}
    n = (SPEC.img_size // SPEC.patch_size) ** 2
    sd.update({
        "mask_token": torch.randn(1, 1, decoder_dim),
        "decoder_pos_embed": torch.randn(1, n + 1, decoder_dim),
        "decoder_embed.weight": torch.randn(decoder_dim, SPEC.embed_dim),
        "decoder_embed.bias": torch.randn(decoder_dim),
        "decoder_blocks.0.norm1.weight": torch.randn(decoder_dim),
        "decoder_norm.weight": torch.randn(decoder_dim),
        "decoder_pred.weight": torch.randn(SPEC.patch_size**2 * 3, decoder_dim),
    })
    return {"model": sd, "epoch": 799, "args": "namespace as a string"}


def test_fb_mae_checkpoint_matches_hand_copied_timm_vit(tmp_path):
    ref = _reference_vit(SPEC, seed=1)
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save(_fb_mae_checkpoint(ref), path)

    enc = load_encoder(SPEC, path).eval()

    by_hand = build_encoder(SPEC).eval()
    src = dict(ref.named_parameters())
    with torch.no_grad():
        for name, p in by_hand.named_parameters():
            p.copy_(src[name])
    x = torch.randn(3, 3, SPEC.img_size, SPEC.img_size)
    with torch.no_grad():
        out, want = enc(x), by_hand(x)
    assert out.shape == (3, SPEC.embed_dim)
    assert torch.equal(out, want)
    # CLS after the final norm, as the paper's feature
    with torch.no_grad():
        assert torch.equal(out, by_hand.forward_features(x)[:, 0])


def test_decoder_keys_are_ignored_and_reported(tmp_path):
    ref = _reference_vit(SPEC, seed=2)
    path = tmp_path / "ckpt.pth"
    torch.save(_fb_mae_checkpoint(ref), path)
    report = load_encoder_weights(build_encoder(SPEC), path)
    assert set(report.ignored) == {k for k in _fb_mae_checkpoint(ref)["model"] if k.startswith(("decoder_", "mask_token"))}
    assert "pos_embed" in report.loaded and not report.resized


def test_timm_plain_state_dict_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = _reference_vit(SPEC, seed=3)
    x = torch.randn(2, 3, SPEC.img_size, SPEC.img_size)
    with torch.no_grad():
        want = ref(x)
    pth = tmp_path / "model.pth"
    torch.save(ref.state_dict(), pth)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st))
    for path in (pth, st):
        with torch.no_grad():
            assert torch.equal(load_encoder(SPEC, path).eval()(x), want), path


def test_wrong_shape_names_the_key(tmp_path):
    ref = _reference_vit(SPEC, seed=4)
    ckpt = _fb_mae_checkpoint(ref)
    ckpt["model"]["blocks.1.mlp.fc1.weight"] = torch.randn(64, 16)
    path = tmp_path / "bad.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc1\.weight") as err:
        load_encoder(SPEC, path)
    assert "bad.pth" in str(err.value)


def test_wider_checkpoint_fails_on_first_key_and_missing_keys_fail(tmp_path):
    wide = _reference_vit(EncoderSpec(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2), seed=5)
    path = tmp_path / "wide.pth"
    torch.save({"model": wide.state_dict()}, path)
    with pytest.raises(ValueError, match="has shape"):
        load_encoder(SPEC, path)
    short = {k: v for k, v in _reference_vit(SPEC, seed=5).state_dict().items() if not k.startswith("blocks.1.")}
    torch.save(short, path)
    with pytest.raises(ValueError, match=r"missing.*blocks\.1\."):
        load_encoder(SPEC, path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_encoder(SPEC, tmp_path / "nowhere.pth")


def test_a_renamed_key_is_one_line_naming_both_names(tmp_path, capsys):
    """A checkpoint whose key was renamed (another layout, a typo): one InputError line naming the
    file, the key the encoder does not know and the one it misses; the CLI prints just that."""
    from mambava.checks import InputError
    from mambava.cli import report_error

    ckpt = _fb_mae_checkpoint(_reference_vit(SPEC, seed=6))
    ckpt["model"]["blocks.0.attn.qkv.w"] = ckpt["model"].pop("blocks.0.attn.qkv.weight")
    path = tmp_path / "renamed.pth"
    torch.save(ckpt, path)
    with pytest.raises(InputError) as err:
        load_encoder(SPEC, path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "keys not in the encoder: blocks.0.attn.qkv.w;" in msg
    assert "missing from the checkpoint: blocks.0.attn.qkv.weight" in msg
    assert report_error(err.value) == 2 and capsys.readouterr().err == f"error: {msg}\n"


def test_pos_embed_is_resampled_for_another_image_size(tmp_path):
    small = _reference_vit(SPEC, seed=6)  # 4x4 grid
    path = tmp_path / "at32.pth"
    torch.save({"model": small.state_dict()}, path)
    big_spec = EncoderSpec(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)  # 8x8 grid
    enc = build_encoder(big_spec)
    report = load_encoder_weights(enc, path)
    assert report.resized == ["pos_embed 4x4 -> 8x8"]
    assert enc.pos_embed.shape == (1, 65, 32)
    assert torch.equal(enc.pos_embed[:, 0], small.pos_embed[:, 0])  # the CLS position is kept
    assert torch.equal(enc.blocks[0].attn.qkv.weight, small.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_masking_ratio_is_honoured(ratio):
    mae = MaskedAutoencoder(EncoderSpec(img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2),
                            decoder_dim=16, decoder_depth=1, decoder_heads=2)
    n = 64
    x = torch.randn(5, n, 7)
    kept, mask, ids_restore = mae.random_masking(x, ratio, torch.Generator().manual_seed(0))
    n_keep = round(n * (1 - ratio))
    assert kept.shape == (5, n_keep, 7)
    assert (mask.sum(1) == n - n_keep).all()
    # the kept tokens are exactly the unmasked ones, in shuffled order
    for b in range(5):
        vis = x[b][mask[b] == 0]
        assert sorted(map(tuple, vis.tolist())) == sorted(map(tuple, kept[b].tolist()))
    # different samples get different masks
    assert not all(torch.equal(mask[0], mask[b]) for b in range(1, 5))
    # the encoder sees only the kept patches plus CLS
    imgs = torch.randn(2, 3, 64, 64)
    latent, mask2, _ = mae.forward_encoder(imgs, ratio)
    assert latent.shape[1] == n_keep + 1 and (mask2.sum(1) == n - n_keep).all()


def test_loss_only_counts_masked_patches():
    torch.manual_seed(0)
    mae = MaskedAutoencoder(SPEC, decoder_dim=16, decoder_depth=1, decoder_heads=2, norm_pix_loss=False)
    imgs = torch.randn(2, 3, 32, 32)
    g = torch.Generator().manual_seed(1)
    loss, pred, mask = mae(imgs, 0.75, g)
    per_patch = ((pred - mae.patchify(imgs)) ** 2).mean(-1)
    assert torch.allclose(loss, per_patch[mask == 1].mean())
    recon = mae.reconstruct(imgs, pred, mask)  # visible patches are the input itself
    keep = mae.unpatchify((1 - mask)[..., None].expand_as(pred)).bool()
    assert torch.equal(recon[keep], imgs[keep])


def test_patchify_roundtrip_and_mae_state_dict_is_fb_format(tmp_path):
    mae = MaskedAutoencoder(SPEC, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    imgs = torch.randn(2, 3, 32, 32)
    assert torch.equal(mae.unpatchify(mae.patchify(imgs)), imgs)
    sd = mae.mae_state_dict()
    assert "cls_token" in sd and "decoder_pred.weight" in sd and not any(k.startswith("encoder.") for k in sd)
    path = tmp_path / "ours.pth"
    torch.save({"model": sd}, path)
    enc = load_encoder(SPEC, path).eval()
    with torch.no_grad():
        assert torch.equal(enc(imgs), mae.encoder.eval()(imgs))
    # decoder weights come back too
    other = MaskedAutoencoder(SPEC, decoder_dim=16, decoder_depth=1, decoder_heads=2)
    other.load_mae_state_dict(sd)
    assert torch.equal(other.decoder_pred.weight, mae.decoder_pred.weight)
