"""EfficientLoFTR: the matching head on synthetic features with known answers and against transformers' own
modules; the matcher's conventions on a tiny random network; weight formats (transformers folder, official
checkpoint, torch3dv safetensors) and their key checks. Tests that need transformers skip without the extra."""

from __future__ import annotations

import ast
import copy
import importlib.util
import re
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import torch3dv
import torch3dv.models as M
from torch3dv.features import EfficientLoFTR, Matches, build_matcher
from torch3dv.features.efficientloftr import _windows, coarse_matches, refine
from torch3dv.models.efficientloftr import official_key_to_transformers
from torch3dv.testing.render import render_pair

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason='pip install "torch3dv[models]"')


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Weights come only from local files: any network connection fails the test."""

    def boom(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", boom)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return M.build_model("efficientloftr", "tiny")


@pytest.fixture(scope="module")
def pair():
    return render_pair(batch=2, image_size=(96, 64), planar=True, texture_size=128, seed=3)


def check(m: Matches, B: int, size0: tuple[int, int], size1: tuple[int, int]) -> None:
    M_ = m.kpts0.shape[1]
    assert m.kpts0.shape == m.kpts1.shape == (B, M_, 2) and M_ >= 1
    assert m.scores.shape == m.mask.shape == m.idx0.shape == m.idx1.shape == (B, M_)
    assert m.mask.dtype == torch.bool and m.idx0.dtype == torch.long and m.kpts0.dtype == torch.float32
    assert torch.equal(m.num_matches, m.mask.sum(-1))
    assert bool((m.idx0 == -1).all()) and bool((m.idx1 == -1).all())
    assert float(m.kpts0[~m.mask].abs().sum() + m.kpts1[~m.mask].abs().sum() + m.scores[~m.mask].abs().sum()) == 0
    for k, (W, H) in ((m.kpts0, size0), (m.kpts1, size1)):  # README frame: pixel centres span [0, W-1]
        v = k[m.mask]
        assert bool((v >= -0.5).all()) and bool((v[:, 0] <= W - 0.5).all()) and bool((v[:, 1] <= H - 0.5).all())
    s = m.scores[m.mask]
    assert bool((s >= 0).all()) and bool((s <= 1).all())
    s = torch.where(m.mask, m.scores, torch.full_like(m.scores, -1))
    assert bool((s[:, :-1] >= s[:, 1:]).all())


def same_matches(a: Matches, b: Matches, atol: float = 0.0) -> None:
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.kpts0, b.kpts0, atol=atol, rtol=0)
    torch.testing.assert_close(a.kpts1, b.kpts1, atol=atol, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=max(atol, 1e-6), rtol=0)


# ------------------------------------------------------------------ matching head, synthetic (no transformers)

_CFG = SimpleNamespace(coarse_matching_temperature=0.1, coarse_matching_skip_softmax=False,
                       coarse_matching_border_removal=1, fine_matching_slice_dim=4,
                       fine_matching_regress_temperature=10.0)


@pytest.mark.parametrize("valid0", [(6, 7), (4, 5)], ids=["full", "padded"])
def test_coarse_matches_recover_a_permutation(valid0, device):
    g = torch.Generator().manual_seed(0)
    B, C, h, w = 2, 32, 6, 7
    f0 = F.normalize(torch.randn(B, C, h * w, generator=g), dim=1) * 8
    perm = torch.randperm(h * w, generator=g)
    coarse = torch.stack([f0, f0[:, :, perm]], 1).reshape(B, 2, C, h, w).to(device)  # image-1 n = image-0 perm[n]
    b, i, j, conf = coarse_matches(coarse, valid0, (h, w), _CFG, 0.2)

    def allowed(n, vh, vw):  # inside the real image and not on its 1-cell border
        r, c = n // w, n % w
        return 1 <= r < vh - 1 and 1 <= c < vw - 1

    want = {(bb, int(perm[n]), n) for bb in range(B) for n in range(h * w)
            if allowed(int(perm[n]), *valid0) and allowed(n, h, w)}
    assert set(zip(b.tolist(), i.tolist(), j.tolist())) == want and len(want) > 5
    assert bool((conf > 0.99).all()) and bool((conf <= 1).all())


def test_windows_are_unfold_windows(device):
    g = torch.Generator().manual_seed(1)
    fmap = torch.randn(2, 5, 24, 32, generator=g).to(device)
    b, r, c = (torch.tensor(x, device=device) for x in ([0, 1, 1], [0, 2, 1], [3, 0, 2]))
    for size, pad in ((8, 0), (10, 1)):
        ref = F.unfold(fmap, size, padding=pad, stride=8).reshape(2, 5, size * size, -1).permute(0, 3, 2, 1)
        torch.testing.assert_close(_windows(fmap, b, r, c, size, 8, pad), ref[b, r * 4 + c], atol=0, rtol=0)


def test_refine_recovers_integer_shifts(device):
    g = torch.Generator().manual_seed(2)
    C = 24
    fmap0 = torch.randn(1, C, 48, 48, generator=g).to(device) * 3
    fmap0[:, C - 4:] = 0  # second stage sees equal logits: uniform 3x3 heatmap, no shift
    cells = torch.tensor([1, 2, 3, 2], device=device)
    kp = torch.stack([cells * 8.0, cells.flip(0) * 8.0], -1)
    b = torch.zeros(4, dtype=torch.long, device=device)
    for dx, dy in ((0, 0), (2, -1), (-3, 3)):
        fmap1 = torch.roll(fmap0, shifts=(dy, dx), dims=(2, 3))  # pixel (x, y) of image 0 is (x+dx, y+dy) in 1
        w0 = _windows(fmap0, b, cells.flip(0), cells, 8, 8, 0)
        w1 = _windows(fmap1, b, cells.flip(0), cells, 10, 8, 1)
        k0, k1 = refine(w0, w1, kp, kp, _CFG, 1.0)
        torch.testing.assert_close(k1 - k0, kp.new_tensor([[dx, dy]] * 4), atol=0, rtol=0)
        off = k0 - kp  # first-stage offsets: pixel k of the 8 x 8 window sits at k - 3.5 from the coarse point
        assert bool((off.abs() <= 3.5).all()) and bool(((off + 3.5) == (off + 3.5).round()).all())


def test_refine_second_stage_follows_the_official_indexing(device):
    # first stage: window-0 pixel 27 (row 3, col 3) matches padded window-1 pixel (5, 6) = cropped (4, 5)
    M_, C, s = 1, 12, 4
    w0, w1 = torch.zeros(M_, 64, C), torch.zeros(M_, 100, C)
    w0[0, 27, 0] = w1[0, 5 * 10 + 6, 0] = 20.0
    # second stage: the 3x3 patch is centred on padded (4, 5) (the official code indexes the padded window with
    # cropped coordinates); put the evidence at its (+1 row, -1 col) neighbour, padded (5, 4)
    w0[0, 27, C - s] = 1.0
    w1[0, 5 * 10 + 4, C - s] = 400.0
    kp = torch.tensor([[40.0, 24.0]], device=device)
    k0, k1 = refine(w0.to(device), w1.to(device), kp, kp, _CFG, 1.0)
    torch.testing.assert_close(k0, kp + kp.new_tensor([[3 - 3.5, 3 - 3.5]]))
    stage1 = kp + kp.new_tensor([[5 - 3.5, 4 - 3.5]])
    torch.testing.assert_close(k1, stage1 + kp.new_tensor([[-1.0, 1.0]]), atol=1e-3, rtol=0)


# ------------------------------------------------------------------ the matcher on a tiny random network


@needs_transformers
def test_tiny_matcher_conventions(tiny, pair):
    u8 = (pair.image1[:, :, 3:60, 5:90].mean(1, keepdim=True) * 255).round().to(torch.uint8)  # grey, uint8, 85x57
    m = EfficientLoFTR(tiny, threshold=0.0)(pair.image0, u8)
    check(m, 2, (96, 64), (85, 57))
    same = EfficientLoFTR(tiny, threshold=0.0)(pair.image0, pair.image0)
    check(same, 2, (96, 64), (96, 64))
    assert int(same.num_matches.sum()) >= 1  # the refinement path ran
    m2 = build_matcher("efficientloftr", tiny=True, num_matches=1)(pair.image0, pair.image0)
    assert m2.kpts0.shape == (2, 1, 2)


@needs_transformers
def test_batch_equals_pairs_one_by_one(tiny, pair):
    mt = EfficientLoFTR(tiny, threshold=0.0)
    im1 = torch.roll(pair.image0, (4, -8), (2, 3))
    both = mt(pair.image0, im1)
    for b in range(2):
        one = mt(pair.image0[b : b + 1], im1[b : b + 1])
        n = int(one.num_matches[0])
        assert int(both.num_matches[b]) == n
        torch.testing.assert_close(both.kpts0[b, :n], one.kpts0[0, :n], atol=1e-4, rtol=0)
        torch.testing.assert_close(both.kpts1[b, :n], one.kpts1[0, :n], atol=1e-4, rtol=0)


@needs_transformers
def test_grey_colour_uint8_float_agree(tiny, pair):
    u8 = (pair.image0[:, :1] * 255).round().to(torch.uint8)
    mt = EfficientLoFTR(tiny, threshold=0.0)
    ref = mt(u8.float() / 255, u8.float() / 255)
    same_matches(mt(u8, u8), ref)
    same_matches(mt(u8.expand(-1, 3, -1, -1), u8.float().expand(-1, 3, -1, -1) / 255), ref, atol=1e-4)


@needs_transformers
def test_no_matches_gives_an_empty_mask(tiny, pair):
    flat = torch.full((2, 1, 64, 64), 0.5)
    for m in (EfficientLoFTR(tiny)(flat, flat), EfficientLoFTR(tiny, threshold=1.0)(pair.image0, pair.image0)):
        assert m.kpts0.shape == (2, 1, 2) and not bool(m.mask.any()) and m.num_matches.tolist() == [0, 0]
        assert float(m.kpts0.abs().sum() + m.scores.abs().sum()) == 0


@needs_transformers
def test_head_agrees_with_transformers_modules(tiny, pair):
    """Coarse matches equal those of transformers' head (read from its image-0-indexed row) and the fine windows
    equal its unfolded ones; its fine coordinates are not compared (see torch3dv.features.efficientloftr)."""
    model = copy.deepcopy(tiny)
    model.config.coarse_matching_threshold = 0.0
    x = F.interpolate(pair.image0[:1].mean(1, keepdim=True), scale_factor=2.0, mode="bilinear")  # 192 x 128
    pv = torch.stack([x, x], 1)  # a random network matches an image with itself at a few cells
    with torch.no_grad():
        out = model(pixel_values=pv)
        feats = model.efficientloftr(pixel_values=pv).feature_maps
        f0u, f1u = model.refinement_layer(feats[0] / feats[0].shape[2] ** 0.5, feats[1:])
    h, w = feats[0].shape[-2:]
    b, i, j, conf = coarse_matches(feats[0], (h, w), (h, w), model.config, 0.0)
    row = out.matches[0, 1]
    theirs = {(a, int(row[a])) for a in range(row.numel()) if int(row[a]) >= 0}
    assert set(zip(i.tolist(), j.tolist())) == theirs and len(theirs) >= 1
    torch.testing.assert_close(conf, out.matching_scores[0, 1, i])
    with torch.no_grad():
        fine = model.refinement_layer.forward_pyramid(feats[0].flatten(0, 1) / feats[0].shape[2] ** 0.5,
                                                      list(reversed(feats[1:])))
    fine = fine.reshape(1, 2, *fine.shape[1:])
    assert torch.equal(_windows(fine[:, 0], b, i // w, i % w, 8, 8, 0), f0u[b, i])
    assert torch.equal(_windows(fine[:, 1], b, j // w, j % w, 10, 8, 1), f1u[b, j])


# ------------------------------------------------------------------ weights


@needs_transformers
def test_save_load_round_trips(tiny, pair, tmp_path):
    mt = EfficientLoFTR(tiny, threshold=0.0)
    ref = mt(pair.image0, pair.image1)
    p = M.save_pretrained(tiny, tmp_path / "e", name="efficientloftr")
    same_matches(EfficientLoFTR(M.from_pretrained("efficientloftr", p, config="tiny"), threshold=0.0)(
        pair.image0, pair.image1), ref)
    tiny.save_pretrained(tmp_path / "hf")  # transformers format: config.json + model.safetensors
    assert (tmp_path / "hf" / "config.json").is_file() and (tmp_path / "hf" / "model.safetensors").is_file()
    loaded = M.from_pretrained("efficientloftr", tmp_path / "hf")  # the architecture comes from config.json
    assert not loaded.training
    same_matches(EfficientLoFTR(loaded, threshold=0.0)(pair.image0, pair.image1), ref)
    m = build_matcher("efficientloftr", weights=tmp_path / "hf")
    same_matches(m(pair.image0, pair.image1), EfficientLoFTR(tiny)(pair.image0, pair.image1))


@needs_transformers
def test_wrong_keys_are_named(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = dict(tiny.state_dict())
    gone = "refinement_layer.out_conv.weight"
    shaped = "efficientloftr.backbone.stages.0.blocks.0.conv1.conv.weight"
    sd.pop(gone)
    sd["bogus.weight"] = torch.zeros(3)
    sd[shaped] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(M.WeightsError) as e:
        M.from_pretrained("efficientloftr", tmp_path / "bad.pth", config="tiny")
    msg = str(e.value)
    assert "missing keys (1)" in msg and gone in msg and "unexpected keys (1)" in msg and "bogus.weight" in msg
    assert "shape mismatches (1)" in msg and shaped in msg
    # a transformers folder whose weights lack a key, hold a foreign one and reshape a third
    tiny.save_pretrained(tmp_path / "hf")
    st = load_file(tmp_path / "hf" / "model.safetensors")
    st.pop(gone)
    st["bogus.weight"] = torch.zeros(3)
    st[shaped] = torch.zeros(1, 1, 1, 1)
    save_file(st, tmp_path / "hf" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(M.WeightsError) as e:
        M.from_pretrained("efficientloftr", tmp_path / "hf")
    msg = str(e.value)
    assert "missing keys (1)" in msg and gone in msg and "unexpected keys (1)" in msg and "bogus.weight" in msg
    assert "shape mismatches (1)" in msg and shaped in msg


# Official zju3dv names, written independently of torch3dv.models.efficientloftr (its inverse).
_BLOCK = {"conv1.conv": "rbr_dense.conv", "conv1.norm": "rbr_dense.bn", "conv2.conv": "rbr_1x1.conv",
          "conv2.norm": "rbr_1x1.bn", "identity": "rbr_identity"}
_ATTN = {"aggregation.q_aggregation": "aggregate", "aggregation.norm": "norm1", "attention.q_proj": "q_proj",
         "attention.k_proj": "k_proj", "attention.v_proj": "v_proj", "attention.o_proj": "merge",
         "mlp.fc1": "mlp.0", "mlp.fc2": "mlp.2", "mlp.layer_norm": "norm2"}
_FINE = {"out_conv1": "outconv", "out_conv2": "outconv2.0", "batch_norm": "outconv2.1", "out_conv3": "outconv2.3"}


def to_official(key: str) -> str:
    if m := re.fullmatch(r"efficientloftr\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.(.+)\.(\w+)", key):
        s, k, part, leaf = m.groups()
        return f"backbone.layer{s}{'' if s == '0' else '.' + k}.{_BLOCK[part]}.{leaf}"
    if m := re.fullmatch(r"efficientloftr\.local_feature_transformer\.layers\.(\d+)\.(self|cross)_attention\.(.+)\."
                         r"(\w+)", key):
        n = 2 * int(m[1]) + (m[2] == "cross")
        return f"loftr_coarse.layers.{n}.{_ATTN[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"refinement_layer\.out_conv\.(\w+)", key):
        return f"fine_preprocess.layer3_outconv.{m[1]}"
    m = re.fullmatch(r"refinement_layer\.out_conv_layers\.(\d)\.(\w+)\.(\w+)", key)
    assert m, key
    return f"fine_preprocess.layer{2 - int(m[1])}_{_FINE[m[2]]}.{m[3]}"


def test_official_key_names():
    cases = {
        "matcher.backbone.layer0.rbr_dense.conv.weight": "efficientloftr.backbone.stages.0.blocks.0.conv1.conv.weight",
        "matcher.backbone.layer1.0.rbr_identity.running_var":
            "efficientloftr.backbone.stages.1.blocks.0.identity.running_var",
        "matcher.backbone.layer3.13.rbr_1x1.bn.num_batches_tracked":
            "efficientloftr.backbone.stages.3.blocks.13.conv2.norm.num_batches_tracked",
        "matcher.loftr_coarse.layers.7.mlp.2.weight":
            "efficientloftr.local_feature_transformer.layers.3.cross_attention.mlp.fc2.weight",
        "matcher.loftr_coarse.layers.0.aggregate.weight":
            "efficientloftr.local_feature_transformer.layers.0.self_attention.aggregation.q_aggregation.weight",
        "matcher.fine_preprocess.layer1_outconv2.1.running_mean": "refinement_layer.out_conv_layers.1.batch_norm.running_mean",
        "matcher.fine_preprocess.layer3_outconv.weight": "refinement_layer.out_conv.weight",
        "matcher.coarse_matching.something": None,
    }
    for k, v in cases.items():
        assert official_key_to_transformers(k) == v, k


@needs_transformers
def test_official_checkpoint_loads(tiny, pair, tmp_path):
    sd = {"matcher." + to_official(k): v for k, v in tiny.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "eloftr_outdoor.ckpt")
    loaded = M.from_pretrained("efficientloftr", tmp_path, config="tiny")  # folder + conventional name
    for k, v in tiny.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    same_matches(EfficientLoFTR(loaded)(pair.image0, pair.image1), EfficientLoFTR(tiny)(pair.image0, pair.image1))
    # every key of the full architecture round-trips through the official names
    from transformers import EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching

    with torch.device("meta"):
        full = EfficientLoFTRForKeypointMatching(EfficientLoFTRConfig())
    keys = list(full.state_dict())
    assert len(keys) > 300 and all(official_key_to_transformers("matcher." + to_official(k)) == k for k in keys)
    # an unknown official key is named
    sd["matcher.extra_head.weight"] = torch.zeros(2)
    torch.save({"state_dict": sd}, tmp_path / "x.ckpt")
    with pytest.raises(M.WeightsError, match=r"unexpected keys \(1\): matcher\.extra_head\.weight"):
        M.from_pretrained("efficientloftr", tmp_path / "x.ckpt", config="tiny")


# ------------------------------------------------------------------ optional dependency


def test_transformers_is_imported_only_when_needed(monkeypatch):
    # no module of torch3dv imports transformers outside a function body (a statement run at import)
    root = Path(torch3dv.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        scoped = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        for n in ast.walk(tree):
            if id(n) in scoped or not isinstance(n, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            assert not any(x.split(".")[0] == "transformers" for x in names), f"{path}:{n.lineno}"
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ImportError, match=re.escape('pip install "torch3dv[models]"')):
        M.build_model("efficientloftr", "tiny")
