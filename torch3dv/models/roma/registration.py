"""Registers RoMa with :mod:`torch3dv.models.registry` (``roma-outdoor``, ``roma-indoor``).

Each name has the configs ``"default"`` (the official architecture, coarse 560 / upsample 864) and ``"tiny"``
(:func:`~torch3dv.models.roma.config.roma_tiny_config`). A config dict may override ``coarse_res``,
``upsample_res``, ``upsample_preds``, ``symmetric``, ``attenuate_cert`` and ``sample_thresh``.

Weights for ``from_pretrained`` are ONE file holding RoMa and DINOv2 (the official release is two files:
``roma_outdoor.pth`` without DINOv2 keys, and ``dinov2_vitl14_pretrain.pth``). Merge them once::

    model = load_roma_checkpoint(build_roma(roma_outdoor_config()), "roma_outdoor.pth",
                                 dinov2_path="dinov2_vitl14_pretrain.pth")
    torch3dv.models.save_pretrained(model, "roma_outdoor.safetensors", name="roma-outdoor")

Passing the official ``.pth`` alone fails with a WeightsError that lists the missing
``encoder.dinov2_vitl14.*`` keys.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from torch3dv.models.roma.config import roma_outdoor_config, roma_tiny_config
from torch3dv.models.roma.matcher import build_roma

_OVERRIDES = ("upsample_preds", "symmetric", "attenuate_cert", "sample_thresh")
_KEY_MAPPING = (
    "identity: official RoMa keys (encoder.cnn.*, decoder.*) plus DINOv2 reference keys under "
    "'encoder.dinov2_vitl14.'; merge roma_*.pth and dinov2_vitl14_pretrain.pth with "
    "torch3dv.models.roma.load_roma_checkpoint, then save_pretrained"
)


def _build(config: dict) -> nn.Module:
    if config.get("variant") == "tiny":
        cfg = roma_tiny_config()
    else:
        cfg = roma_outdoor_config(config.get("coarse_res", 560), config.get("upsample_res", 864))
    over = {k: config[k] for k in _OVERRIDES if k in config}
    if config.get("variant") == "tiny":
        over.update({k: tuple(config[k]) for k in ("coarse_res", "upsample_res") if k in config})
    return build_roma(dataclasses.replace(cfg, **over) if over else cfg)


def register() -> None:
    """Registers the RoMa names; a name that is already registered is left as it is."""
    try:
        from torch3dv.models.registry import register_model
    except ImportError:  # registry not available in this checkout
        return
    configs = {
        "default": {"variant": "full", "coarse_res": 560, "upsample_res": 864},
        "tiny": {"variant": "tiny"},
    }
    for name, desc in (("roma-outdoor", "RoMa dense matcher, MegaDepth (outdoor) weights"),
                       ("roma-indoor", "RoMa dense matcher, ScanNet (indoor) weights")):
        stem = name.replace("-", "_")
        try:
            register_model(
                name,
                configs=configs,
                filenames=(f"{stem}.safetensors",),
                key_mapping=_KEY_MAPPING,
                derived_keys=(),
                description=desc,
            )(_build)
        except ValueError as exc:
            if "already registered" not in str(exc):
                raise
