"""RoMa (torch3dv.models.roma): shapes, coordinate conventions, sampling, checkpoints, official key layout.

No weights are available here: the real-weights test runs only when TORCH3DV_ROMA_WEIGHTS points to a
checkpoint (official roma_outdoor.pth / roma_indoor.pth, with TORCH3DV_DINOV2_WEIGHTS for the DINOv2 file,
or one safetensors file holding both).
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F

from torch3dv.models.roma import (
    RomaCheckpointError,
    RomaMatches,
    build_roma,
    load_roma_checkpoint,
    roma_outdoor_config,
    roma_tiny_config,
    save_roma_checkpoint,
    to_normalized_coordinates,
    to_pixel_coordinates,
)
from torch3dv.models.roma.config import DinoV2Config
from torch3dv.models.roma.decoder import cls_to_flow_refine
from torch3dv.models.roma.dinov2 import Block, DinoVisionTransformer
from torch3dv.models.roma.gp import GP, grid_coordinates
from torch3dv.models.roma.matcher import _weighted_topk_sample
from torch3dv.models.roma.refiners import local_correlation


def _randomise_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, so that round trips test the buffers too."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(1 + 0.1 * torch.rand(m.running_var.shape, generator=g))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_roma(roma_tiny_config())
    _randomise_bn(model, 0)
    return model


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 56, 56, generator=g), torch.rand(2, 3, 70, 49, generator=g)


@pytest.fixture(scope="module")
def tiny_output(tiny, images):
    with torch.no_grad():
        return tiny.match(*images)


# ----------------------------------------------------------------------------------------------- forward
def test_tiny_match_shapes_and_ranges(tiny, tiny_output):
    warp, cert = tiny_output
    h, w = roma_tiny_config().upsample_res
    assert warp.shape == (2, h, w, 4) and cert.shape == (2, h, w)
    assert torch.isfinite(warp).all() and torch.isfinite(cert).all()
    assert warp.abs().max() <= 1 and cert.min() >= 0 and cert.max() <= 1
    # the image-0 half is RoMa's pixel-centre grid -1 + (2k + 1) / n
    assert torch.allclose(warp[0, 0, :, 0], torch.linspace(-1 + 1 / w, 1 - 1 / w, w), atol=1e-6)
    assert torch.allclose(warp[0, :, 0, 1], torch.linspace(-1 + 1 / h, 1 - 1 / h, h), atol=1e-6)


def test_bidirectional_and_coarse_only(tiny, images, tiny_output):
    with torch.no_grad():
        warp2, cert2 = tiny.match(*images, bidirectional=True)
    h, w = roma_tiny_config().upsample_res
    assert warp2.shape == (2, h, 2 * w, 4) and cert2.shape == (2, h, 2 * w)
    # in eval mode the A -> B half does not depend on whether B -> A is computed alongside
    assert torch.allclose(warp2[:, :, :w], tiny_output[0], atol=1e-5)
    assert torch.allclose(cert2[:, :, :w], tiny_output[1], atol=1e-5)
    # right half: image-1 grid in the last two channels
    assert torch.allclose(warp2[:, :, w:, 2:], warp2[:, :, :w, :2])

    coarse = build_roma(dataclasses.replace(roma_tiny_config(), upsample_preds=False))
    coarse.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        warp_c, cert_c = coarse.match(*images)
    assert warp_c.shape == (2, 56, 56, 4) and cert_c.shape == (2, 56, 56)


def test_bad_input_raises(tiny):
    with pytest.raises(ValueError, match="image0"):
        tiny.match(torch.rand(2, 1, 56, 56), torch.rand(2, 3, 56, 56))
    with pytest.raises(ValueError, match="batch"):
        tiny.match(torch.rand(2, 3, 56, 56), torch.rand(1, 3, 56, 56))
    with pytest.raises(ValueError, match="multiples"):
        dataclasses.replace(roma_tiny_config(), coarse_res=(50, 56))


def test_gradients_reach_refiners(tiny, images):
    im = [tiny._prepare(x, (56, 56)) for x in images]
    out = tiny.dense(*im)
    out[1]["flow"].sum().backward()
    g = tiny.decoder.conv_refiner["1"].out_conv.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert all(p.grad is None for p in tiny.encoder.dinov2_vitl14.parameters())  # frozen
    tiny.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------- coordinates
def test_to_pixel_coordinates_exact():
    h, w = 5, 7
    grid = grid_coordinates(1, h, w, torch.device("cpu"), torch.float64)[0].permute(1, 2, 0)  # (h, w, 2)
    px = to_pixel_coordinates(grid, h, w)
    vv, uu = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    assert torch.allclose(px, torch.stack((uu, vv), -1), atol=1e-12, rtol=0)
    assert torch.allclose(px[0, 0], torch.tensor([0.0, 0.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(px[-1, -1], torch.tensor([w - 1.0, h - 1.0], dtype=torch.float64), atol=1e-12)
    # the normalised image edges (align_corners=False) are half a pixel outside the corner centres
    edges = to_pixel_coordinates(torch.tensor([[-1.0, -1.0], [1.0, 1.0]], dtype=torch.float64), h, w)
    assert torch.allclose(edges, torch.tensor([[-0.5, -0.5], [w - 0.5, h - 0.5]], dtype=torch.float64))
    assert torch.allclose(to_normalized_coordinates(px, h, w), grid, atol=1e-12)
    # consistent with grid_sample(align_corners=False): sampling a ramp u at grid points returns u
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 1, h, w)
    sampled = F.grid_sample(ramp, grid[None], align_corners=False)[0, 0]
    assert torch.allclose(sampled, uu, atol=1e-12)


def test_sample_identity_warp(tiny):
    h, w = 12, 16
    grid = grid_coordinates(2, h, w, torch.device("cpu"), torch.float32).permute(0, 2, 3, 1)
    warp = torch.cat((grid, grid), -1)
    cert = torch.ones(2, h, w)
    cert[1, :, : w // 2] = 0.0  # left half of pair 1 has no certainty: never sampled
    g = torch.Generator().manual_seed(0)
    m = tiny.sample(warp, cert, 50, image0_size=(h, w), image1_size=(2 * h, 2 * w), generator=g)
    assert isinstance(m, RomaMatches) and m.kpts0.shape == (2, 50, 2) and m.mask.all()
    assert torch.allclose(m.kpts0, m.kpts0.round(), atol=1e-4)  # grid points -> integer pixels
    assert torch.allclose(m.kpts1, 2 * m.kpts0 + 0.5, atol=1e-4)  # same point in a 2x image
    assert (m.kpts0[1, :, 0] >= w // 2).all()
    assert m.scores.min() == 1
    # fewer non-zero certainties than requested: padded and masked
    m2 = tiny.sample(warp, cert, 150)
    assert m2.mask[0].all() and m2.mask[1].sum() == h * w // 2
    assert (m2.kpts0[1][m2.mask[1]][:, 0] >= w // 2).all()
    # reproducible with a generator
    m3 = tiny.sample(warp, cert, 50, image0_size=(h, w), image1_size=(2 * h, 2 * w),
                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(m.kpts0, m3.kpts0)


def test_call_returns_pixels_inside_images(tiny, images):
    image0, image1 = images
    with torch.no_grad():
        m = tiny(image0, image1, 64, generator=torch.Generator().manual_seed(0))
    assert m.kpts0.shape == (2, 64, 2) and m.kpts1.shape == (2, 64, 2) and m.scores.shape == (2, 64)
    for k, im in ((m.kpts0[m.mask], image0), (m.kpts1[m.mask], image1)):
        hh, ww = im.shape[-2:]
        assert (k[:, 0] >= -0.5).all() and (k[:, 0] <= ww - 0.5).all()
        assert (k[:, 1] >= -0.5).all() and (k[:, 1] <= hh - 0.5).all()
    assert ((m.scores >= 0) & (m.scores <= 1)).all()


def test_weighted_sampling_distribution():
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]).expand(40000, 5)
    idx, valid = _weighted_topk_sample(w, 1, torch.Generator().manual_seed(0))
    freq = torch.bincount(idx[:, 0], minlength=5).double() / idx.shape[0]
    assert valid.all() and freq[0] == 0
    assert torch.allclose(freq[1:], torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64), atol=0.01)


# ------------------------------------------------------------------------------------------ components
def _reference_block(blk: Block, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Textbook pre-norm ViT block, written out with explicit weights."""
    def ln(t, m):
        mu = t.mean(-1, keepdim=True)
        var = t.var(-1, unbiased=False, keepdim=True)
        return (t - mu) / torch.sqrt(var + m.eps) * m.weight + m.bias

    d = x.shape[-1]
    hd = d // heads
    qkv = ln(x, blk.norm1) @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    out = torch.zeros_like(x)
    for hh in range(heads):
        sl = slice(hh * hd, (hh + 1) * hd)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd), dim=-1)
        out[..., sl] = att @ v[..., sl]
    x = x + blk.ls1.gamma * (out @ blk.attn.proj.weight.T + blk.attn.proj.bias)
    hdn = ln(x, blk.norm2) @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
    hdn = 0.5 * hdn * (1 + torch.erf(hdn / math.sqrt(2)))
    return x + blk.ls2.gamma * (hdn @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias)


def test_dinov2_block_and_features_match_reference():
    torch.manual_seed(0)
    cfg = DinoV2Config(embed_dim=24, depth=2, num_heads=3, patch_size=4, img_size=16, layerscale_init=0.5)
    vit = DinoVisionTransformer(cfg).double()
    for p in vit.parameters():  # non-trivial LayerNorm / LayerScale / biases
        p.data.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    assert torch.allclose(vit.blocks[0](x), _reference_block(vit.blocks[0], x, 3), atol=1e-12)

    img = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    patches = img.unfold(2, 4, 4).unfold(3, 4, 4).permute(0, 2, 3, 1, 4, 5).reshape(2, 16, 48)
    tok = patches @ vit.patch_embed.proj.weight.reshape(24, 48).T + vit.patch_embed.proj.bias
    tok = torch.cat((vit.cls_token.expand(2, 1, 24), tok), 1) + vit.pos_embed
    for blk in vit.blocks:
        tok = _reference_block(blk, tok, 3)
    ref = F.layer_norm(tok, (24,), vit.norm.weight, vit.norm.bias, eps=1e-6)[:, 1:]
    assert torch.allclose(vit.forward_features(img), ref, atol=1e-10)
    # another resolution interpolates the 4 x 4 position grid to the new grid
    assert vit(torch.randn(1, 3, 20, 12, dtype=torch.float64)).shape == (1, 24, 5, 3)


def test_gp_posterior_matches_direct_solve():
    torch.manual_seed(0)
    gp = GP(gp_dim=6, temperature=0.2, sigma_noise=0.1).double()
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    y = torch.randn(2, 5, 2, 3, dtype=torch.float64)
    xs, ys = x.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)
    cos = lambda a, b: (a @ b.transpose(1, 2)) / (a.norm(dim=-1)[..., None] * b.norm(dim=-1)[:, None] + 1e-6)
    k_xy, k_yy = ((cos(xs, ys) - 1) / 0.2).exp(), ((cos(ys, ys) - 1) / 0.2).exp()
    coords = grid_coordinates(2, 2, 3, torch.device("cpu"), torch.float64)
    f = torch.cos(8 * math.pi * gp.pos_conv(coords)).flatten(2).transpose(1, 2)
    mu = k_xy @ torch.linalg.solve(k_yy + 0.1 * torch.eye(6, dtype=torch.float64), f)
    assert torch.allclose(gp(x, y), mu.transpose(1, 2).reshape(2, 6, 3, 4), atol=1e-9)


def test_cls_to_flow_refine_peaks():
    r = 4
    logits = torch.full((1, r * r, 1, 2), -50.0)
    logits[0, 2 * r + 1, 0, 0] = 50.0  # one anchor: row 2, column 1
    logits[0, r + 2, 0, 1] = 50.0  # two equal anchors: (1, 2) and (1, 3) -> midpoint
    logits[0, r + 3, 0, 1] = 50.0
    flow = cls_to_flow_refine(logits)
    c = lambda k: -1 + (2 * k + 1) / r
    assert torch.allclose(flow[0, :, 0, 0], torch.tensor([c(1), c(2)]), atol=1e-6)
    assert torch.allclose(flow[0, :, 0, 1], torch.tensor([(c(2) + c(3)) / 2, c(1)]), atol=1e-6)


def test_local_correlation_identity_warp():
    torch.manual_seed(0)
    f = torch.randn(1, 4, 6, 7, dtype=torch.float64)
    grid = grid_coordinates(1, 6, 7, torch.device("cpu"), torch.float64)
    corr = local_correlation(f, f, grid, radius=1)  # (1, 9, 6, 7); channel i*3+j <-> offset (j-1, i-1)
    assert torch.allclose(corr[:, 4], (f * f).sum(1) / 2, atol=1e-12)
    # offset dx = +1 (channel 5): neighbour to the right, zero padding beyond the border
    right = F.pad(f[..., 1:], (0, 1))
    assert torch.allclose(corr[:, 5], (f * right).sum(1) / 2, atol=1e-12)
    # offset dy = -1 (channel 1): neighbour above
    up = F.pad(f[..., :-1, :], (0, 0, 1, 0))
    assert torch.allclose(corr[:, 1], (f * up).sum(1) / 2, atol=1e-12)


# ---------------------------------------------------------------------------------------- checkpoints
def test_safetensors_round_trip_is_exact(tiny, images, tiny_output, tmp_path):
    path = tmp_path / "roma_tiny.safetensors"
    save_roma_checkpoint(tiny, path)
    torch.manual_seed(123)
    other = build_roma(roma_tiny_config())
    load_roma_checkpoint(other, path)
    with torch.no_grad():
        warp, cert = other.match(*images)
    assert torch.equal(warp, tiny_output[0]) and torch.equal(cert, tiny_output[1])
    # a model built on the meta device (no random init) loads the same tensors
    with torch.device("meta"):
        lazy = build_roma(roma_tiny_config())
    load_roma_checkpoint(lazy, path)
    assert not any(t.is_meta for t in lazy.state_dict().values())
    assert not any(p.requires_grad for p in lazy.encoder.dinov2_vitl14.parameters())
    ref = tiny.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in lazy.state_dict().items())


def test_official_layout_pth_plus_dinov2(tiny, tmp_path):
    """Official split: RoMa .pth without DINOv2 keys + a DINOv2 file with the reference (unprefixed) keys."""
    sd = tiny.state_dict()
    prefix = "encoder.dinov2_vitl14."
    torch.save({k: v for k, v in sd.items() if not k.startswith(prefix)}, tmp_path / "roma.pth")
    torch.save({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, tmp_path / "dinov2.pth")
    other = build_roma(roma_tiny_config())
    load_roma_checkpoint(other, tmp_path / "roma.pth", dinov2_path=tmp_path / "dinov2.pth")
    assert other.state_dict().keys() == sd.keys()
    assert all(torch.equal(v, sd[k]) for k, v in other.state_dict().items())
    with pytest.raises(RomaCheckpointError, match="dinov2_path"):
        load_roma_checkpoint(build_roma(roma_tiny_config()), tmp_path / "roma.pth")


def test_checkpoint_errors_name_the_keys(tiny, tmp_path):
    sd = dict(tiny.state_dict())
    bad = dict(sd)
    bad["decoder.gps.16.pos_conv.weight_renamed"] = bad.pop("decoder.gps.16.pos_conv.weight")
    torch.save(bad, tmp_path / "renamed.pth")
    with pytest.raises(RomaCheckpointError) as e:
        load_roma_checkpoint(build_roma(roma_tiny_config()), tmp_path / "renamed.pth")
    assert "missing keys (1): decoder.gps.16.pos_conv.weight" in str(e.value)
    assert "unexpected keys (1): decoder.gps.16.pos_conv.weight_renamed" in str(e.value)

    bad = dict(sd)
    bad["decoder.embedding_decoder.to_out.bias"] = torch.zeros(3)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(RomaCheckpointError, match=r"to_out\.bias \(checkpoint \(3,\), model \(65,\)\)"):
        load_roma_checkpoint(build_roma(roma_tiny_config()), tmp_path / "shape.pth")

    bad = {k: v for k, v in sd.items() if k != "encoder.cnn.layers.0.weight"}
    torch.save(bad, tmp_path / "missing.pth")
    with pytest.raises(RomaCheckpointError, match=r"missing keys \(1\): encoder\.cnn\.layers\.0\.weight"):
        load_roma_checkpoint(build_roma(roma_tiny_config()), tmp_path / "missing.pth")


# ------------------------------------------------------------------------------- official key layout
def _official_dinov2_keys() -> dict[str, tuple[int, ...]]:
    """dinov2_vitl14_pretrain.pth: ViT-L/14, img_size 518 (37 x 37 + 1 tokens), LayerScale, qkv bias."""
    d, hidden = 1024, 4096
    keys = {"cls_token": (1, 1, d), "pos_embed": (1, 37 * 37 + 1, d), "mask_token": (1, d),
            "patch_embed.proj.weight": (d, 3, 14, 14), "patch_embed.proj.bias": (d,),
            "norm.weight": (d,), "norm.bias": (d,)}
    for i in range(24):
        p = f"blocks.{i}."
        keys.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                     p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d),
                     p + "attn.proj.bias": (d,),
                     p + "ls1.gamma": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                     p + "mlp.fc1.weight": (hidden, d), p + "mlp.fc1.bias": (hidden,),
                     p + "mlp.fc2.weight": (d, hidden), p + "mlp.fc2.bias": (d,), p + "ls2.gamma": (d,)})
    return keys


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {prefix + "weight": (c,), prefix + "bias": (c,), prefix + "running_mean": (c,),
            prefix + "running_var": (c,), prefix + "num_batches_tracked": ()}


def _official_roma_keys() -> dict[str, tuple[int, ...]]:
    """Keys of roma_outdoor.pth / roma_indoor.pth as romatch's roma_model() builds the module tree."""
    keys: dict[str, tuple[int, ...]] = {}
    # encoder.cnn = torchvision vgg19_bn().features[:40]
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M"]
    i, c_in = 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        keys[f"encoder.cnn.layers.{i}.weight"] = (v, c_in, 3, 3)
        keys[f"encoder.cnn.layers.{i}.bias"] = (v,)
        keys.update(_bn(f"encoder.cnn.layers.{i + 1}.", v))
        i, c_in = i + 3, v
    # coarse decoder: 5 x Block(1024, 8 heads, qkv_bias=False, no LayerScale) + Linear(1024, 64^2 + 1)
    d = 1024
    for b in range(5):
        p = f"decoder.embedding_decoder.blocks.{b}."
        keys.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                     p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,), p + "norm2.weight": (d,),
                     p + "norm2.bias": (d,), p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                     p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
    keys["decoder.embedding_decoder.to_out.weight"] = (4097, d)
    keys["decoder.embedding_decoder.to_out.bias"] = (4097,)
    keys["decoder.gps.16.pos_conv.weight"] = (512, 2, 1, 1)
    keys["decoder.gps.16.pos_conv.bias"] = (512,)
    proj = {"16": (1024, 512), "8": (512, 512), "4": (256, 256), "2": (128, 64), "1": (64, 9)}
    for s, (ci, co) in proj.items():
        keys[f"decoder.proj.{s}.0.weight"] = (co, ci, 1, 1)
        keys[f"decoder.proj.{s}.0.bias"] = (co,)
        keys.update(_bn(f"decoder.proj.{s}.1.", co))
    refiners = {"16": (2 * 512 + 128 + 15**2, 128), "8": (2 * 512 + 64 + 7**2, 64),
                "4": (2 * 256 + 32 + 5**2, 32), "2": (2 * 64 + 16, 16), "1": (2 * 9 + 6, 6)}
    for s, (c, emb) in refiners.items():
        p = f"decoder.conv_refiner.{s}."
        for blk in ["block1."] + [f"hidden_blocks.{k}." for k in range(8)]:
            keys[p + blk + "0.weight"] = (c, 1, 5, 5)  # depthwise
            keys[p + blk + "0.bias"] = (c,)
            keys.update(_bn(p + blk + "1.", c))
            keys[p + blk + "3.weight"] = (c, c, 1, 1)
            keys[p + blk + "3.bias"] = (c,)
        keys[p + "out_conv.weight"] = (3, c, 1, 1)
        keys[p + "out_conv.bias"] = (3,)
        keys[p + "disp_emb.weight"] = (emb, 2, 1, 1)
        keys[p + "disp_emb.bias"] = (emb,)
    return keys


def test_full_config_has_official_keys_and_shapes():
    with torch.device("meta"):
        model = build_roma(roma_outdoor_config())
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = dict(_official_roma_keys())
    expected.update({"encoder.dinov2_vitl14." + k: v for k, v in _official_dinov2_keys().items()})
    assert set(got) == set(expected), sorted(set(got) ^ set(expected))[:10]
    assert {k: v for k, v in got.items() if v != expected[k]} == {}
    # a few representative keys spelled out
    assert got["decoder.conv_refiner.16.block1.0.weight"] == (1377, 1, 5, 5)
    assert got["decoder.conv_refiner.8.hidden_blocks.7.3.weight"] == (1137, 1137, 1, 1)
    assert got["encoder.cnn.layers.36.weight"] == (512, 512, 3, 3)
    assert got["encoder.dinov2_vitl14.pos_embed"] == (1, 1370, 1024)
    # parameter counts: DINOv2 ViT-L/14 is the published 304,368,640; the rest follows the derivation above
    params = dict(model.named_parameters())
    n_dino = sum(p.numel() for k, p in params.items() if k.startswith("encoder.dinov2_vitl14."))
    n_roma = sum(p.numel() for k, p in params.items() if not k.startswith("encoder.dinov2_vitl14."))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    derived = sum(math.prod(s) for k, s in _official_roma_keys().items() if not k.endswith(buffers))
    assert n_dino == 304_368_640
    assert n_roma == derived == 111_288_336


# ------------------------------------------------------------------------------------------ real weights
@pytest.mark.slow
def test_real_weights_recover_a_known_shift():
    path = os.environ.get("TORCH3DV_ROMA_WEIGHTS")
    if not path:
        pytest.skip("set TORCH3DV_ROMA_WEIGHTS (and TORCH3DV_DINOV2_WEIGHTS for the official split files)")
    with torch.device("meta"):  # no random init of 415 M parameters; the loader assigns the file's tensors
        model = build_roma(roma_outdoor_config())
    load_roma_checkpoint(model, path, dinov2_path=os.environ.get("TORCH3DV_DINOV2_WEIGHTS"))
    g = torch.Generator().manual_seed(0)
    texture = F.interpolate(torch.rand(1, 3, 60, 80, generator=g), size=(480, 640), mode="bicubic",
                            align_corners=False).clamp(0, 1)
    texture = (texture + 0.3 * F.interpolate(torch.rand(1, 3, 240, 320, generator=g), size=(480, 640),
                                             mode="bilinear", align_corners=False)).clamp(0, 1)
    image0, image1 = texture[..., :, :600], texture[..., :, 40:]  # image1 pixel u = image0 pixel u - 40
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, image0, image1 = model.to(device), image0.to(device), image1.to(device)
    with torch.no_grad():
        m = model(image0, image1, 2000, generator=torch.Generator(device).manual_seed(0))
    ok = m.mask & (m.scores > 0.5)
    assert ok.sum() > 500
    err = (m.kpts1 - (m.kpts0 - torch.tensor([40.0, 0.0], device=device)))[ok].norm(dim=-1)
    assert err.median() < 1.5


def test_registry_names(tmp_path):
    registry = pytest.importorskip("torch3dv.models.registry")
    assert {"roma-outdoor", "roma-indoor"} <= set(registry.available_models())
    model = registry.build_model("roma-outdoor", "tiny")
    _randomise_bn(model, 3)
    file = registry.save_pretrained(model, tmp_path / "roma_outdoor", name="roma-outdoor")
    loaded = registry.from_pretrained("roma-outdoor", tmp_path, config="tiny")
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())
    assert file.name == "roma_outdoor.safetensors"
    # the official RoMa file alone lacks DINOv2: the error names those keys
    prefix = "encoder.dinov2_vitl14."
    torch.save({k: v for k, v in ref.items() if not k.startswith(prefix)}, tmp_path / "roma_only.pth")
    with pytest.raises(ValueError, match="encoder.dinov2_vitl14"):
        registry.from_pretrained("roma-outdoor", tmp_path / "roma_only.pth", config="tiny")
