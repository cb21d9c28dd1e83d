"""Loading RoMa weights: the official ``roma_outdoor.pth`` / ``roma_indoor.pth`` plus the DINOv2 file, or one
safetensors file with everything.

Key mapping (documented once, here):

* Official RoMa checkpoint: keys are used **unchanged**; :class:`~torch3dv.models.roma.matcher.RomaMatcher`
  has the official module tree, e.g. ``encoder.cnn.layers.0.weight``, ``decoder.gps.16.pos_conv.weight``,
  ``decoder.embedding_decoder.blocks.0.attn.qkv.weight``, ``decoder.proj.16.0.weight``,
  ``decoder.conv_refiner.16.block1.0.weight``. The official file has **no DINOv2 keys** (RoMa hides the ViT
  from its state_dict and loads ``dinov2_vitl14_pretrain.pth`` separately).
* DINOv2 checkpoint (``dinov2_vitl14_pretrain.pth``, keys ``cls_token``, ``pos_embed``, ``mask_token``,
  ``patch_embed.proj.*``, ``blocks.N.*``, ``norm.*``): each key gets the prefix ``encoder.dinov2_vitl14.``
  (keys that already carry it are kept).
* A leading ``module.`` (DistributedDataParallel) is stripped from every key of either file.
* safetensors files written from ``model.state_dict()`` hold both parts under the names above.

Every key of the model must be provided exactly once with its shape, except BatchNorm
``num_batches_tracked`` counters, which may be absent (they do not affect inference). Otherwise a
:class:`RomaCheckpointError` names the missing, unexpected and shape-mismatched keys. Nothing is downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

DINOV2_PREFIX = "encoder.dinov2_vitl14."


class RomaCheckpointError(ValueError):
    """A checkpoint does not fit the model: lists missing, unexpected and shape-mismatched keys."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Reads a ``.safetensors`` file or a torch pickle (``torch.load(weights_only=True)``) as a state dict.

    A pickle holding ``{"model": state_dict}`` or ``{"state_dict": state_dict}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(sd, dict) and set(sd) == {wrapper} and isinstance(sd[wrapper], dict):
                sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise RomaCheckpointError(f"{path} does not hold a flat state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def map_dinov2_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """DINOv2 reference keys -> this model's keys (prefix ``encoder.dinov2_vitl14.``)."""
    return {k if k.startswith(DINOV2_PREFIX) else DINOV2_PREFIX + k: v for k, v in sd.items()}


def _fmt(names: list[str], limit: int = 25) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def check_state_dict(model: nn.Module, sd: dict[str, Tensor]) -> None:
    """Raises :class:`RomaCheckpointError` unless ``sd`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in sd and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in sd if k not in expected)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(sd[k].shape)}, model {tuple(expected[k].shape)})"
        for k in sd if k in expected and sd[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_fmt(missing)}")
            if all(k.startswith(DINOV2_PREFIX) for k in missing):
                parts.append("(only DINOv2 keys are missing: pass dinov2_path)")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_fmt(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_fmt(mismatched)}")
        raise RomaCheckpointError("RoMa checkpoint does not fit the model: " + "; ".join(parts))


def load_roma_checkpoint(
    model: nn.Module, path: str | os.PathLike, dinov2_path: str | os.PathLike | None = None
) -> nn.Module:
    """Loads RoMa weights into ``model`` (in place) and puts it in eval mode.

    Args:
        model: a :class:`~torch3dv.models.roma.matcher.RomaMatcher` whose config matches the checkpoint.
            It may live on the ``meta`` device (``with torch.device("meta"): build_roma(cfg)``), which skips
            the random initialisation; its tensors are then the loaded ones (dtype of the file, on the CPU).
        path: official RoMa ``.pth`` (``roma_outdoor.pth`` / ``roma_indoor.pth``) or a ``.safetensors`` /
            ``.pth`` file of this model's ``state_dict()``.
        dinov2_path: DINOv2 weights (``dinov2_vitl14_pretrain.pth`` or safetensors with the same keys);
            required when ``path`` has no DINOv2 keys (the official RoMa files have none).

    Returns:
        ``model``.

    Raises:
        RomaCheckpointError: missing / unexpected / shape-mismatched keys (all named), or duplicate keys
            between the two files.
    """
    sd = read_state_dict(path)
    if dinov2_path is not None:
        dino = map_dinov2_keys(read_state_dict(dinov2_path))
        dup = sorted(set(dino) & set(sd))
        if dup:
            raise RomaCheckpointError(f"keys given by both checkpoints: {_fmt(dup)}")
        sd = {**sd, **dino}
    check_state_dict(model, sd)
    current = model.state_dict()
    if any(t.is_meta for t in current.values()):
        # a model built on the meta device gets the checkpoint tensors themselves (no second copy)
        sd = {**{k: torch.zeros((), dtype=torch.long) for k in current if k not in sd}, **sd}
        model.load_state_dict(sd, strict=True, assign=True)
    else:
        model.load_state_dict(sd, strict=False)  # already checked (num_batches_tracked may be absent)
    return model.eval()


def save_roma_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Writes ``model.state_dict()`` (DINOv2 included) to one ``.safetensors`` file that
    :func:`load_roma_checkpoint` reads without ``dinov2_path``."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
