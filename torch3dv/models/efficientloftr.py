"""EfficientLoFTR (Wang et al., CVPR 2024) from Hugging Face ``transformers``: registration and weight formats.

The network is ``transformers.EfficientLoFTRForKeypointMatching``; ``transformers`` is an optional dependency
(``pip install "torch3dv[models]"``) imported only when a model is built or loaded, never at import. The matcher
built on it (images in, :class:`~torch3dv.features.Matches` out) is :class:`torch3dv.features.EfficientLoFTR`.

Model ``"efficientloftr"``: config ``"default"`` is the official outdoor architecture (the defaults of
``EfficientLoFTRConfig``), ``"tiny"`` a random few-ten-thousand-parameter version for tests. Weights come only from
an explicit local path (or ``$TORCH3DV_WEIGHTS``), never from the Hub:

* a transformers folder, ``config.json`` + ``model.safetensors`` as ``model.save_pretrained(folder)`` writes it:
  read with ``EfficientLoFTRForKeypointMatching.from_pretrained(folder, local_files_only=True)``; its
  ``config.json`` defines the architecture (a named ``config`` is ignored, a dict overrides fields);
* the official zju3dv checkpoint ``eloftr_outdoor.ckpt`` (``ckpt["state_dict"]``), renamed by the key mapping below;
* a safetensors file from :func:`torch3dv.models.save_pretrained`, or any flat state dict in transformers' names.

Missing, unexpected and shape-mismatched keys raise :class:`~torch3dv.models.WeightsError` naming them.

Key mapping, official -> transformers (a leading ``matcher.`` is stripped; the tail ``.weight`` / ``.bias`` /
``.running_mean`` ... is kept):

* ``backbone.layer0.{P}`` -> ``efficientloftr.backbone.stages.0.blocks.0.{Q}``, and
  ``backbone.layer{s}.{k}.{P}`` -> ``efficientloftr.backbone.stages.{s}.blocks.{k}.{Q}`` (s >= 1), with P -> Q:
  ``rbr_dense.conv`` -> ``conv1.conv``, ``rbr_dense.bn`` -> ``conv1.norm``, ``rbr_1x1.conv`` -> ``conv2.conv``,
  ``rbr_1x1.bn`` -> ``conv2.norm``, ``rbr_identity`` -> ``identity`` (the RepVGG training-time branches);
* ``loftr_coarse.layers.{n}.{P}`` -> ``efficientloftr.local_feature_transformer.layers.{n // 2}.{A}.{Q}`` with
  A = ``self_attention`` for even n, ``cross_attention`` for odd n, and P -> Q: ``aggregate`` ->
  ``aggregation.q_aggregation``, ``norm1`` -> ``aggregation.norm``, ``q_proj`` / ``k_proj`` / ``v_proj`` ->
  ``attention.*``, ``merge`` -> ``attention.o_proj``, ``mlp.0`` -> ``mlp.fc1``, ``mlp.2`` -> ``mlp.fc2``,
  ``norm2`` -> ``mlp.layer_norm``;
* ``fine_preprocess.layer3_outconv`` -> ``refinement_layer.out_conv``; ``fine_preprocess.layer{2,1}_outconv`` ->
  ``refinement_layer.out_conv_layers.{0,1}.out_conv1`` and ``layer{2,1}_outconv2.{0,1,3}`` ->
  ``refinement_layer.out_conv_layers.{0,1}.{out_conv2, batch_norm, out_conv3}``.

Keys outside these patterns keep their name and are reported as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from torch3dv.models.registry import WeightsError, register_model

EXTRA_HINT = 'EfficientLoFTR needs Hugging Face transformers (>= 5.24): pip install "torch3dv[models]"'

# A random network small enough for tests: 8 heads (the rotary embedding of transformers' implementation fills
# hidden_size / 2 channels with head_dim * 2 frequencies, so heads = 8 for any width), fine features of 16
# channels of which 4 go to the second refinement stage.
_TINY = {
    "stage_num_blocks": [1, 1, 1, 1],
    "out_features": [16, 16, 16, 32],
    "hidden_size": 32,
    "num_attention_layers": 1,
    "num_attention_heads": 8,
    "fine_matching_slice_dim": 4,
}


def transformers_classes() -> tuple[type, type]:
    """``(EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching)``; ImportError naming the extra otherwise."""
    try:
        from transformers import EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching
    except ImportError as exc:
        raise ImportError(f"{EXTRA_HINT} ({type(exc).__name__}: {exc})") from exc
    return EfficientLoFTRConfig, EfficientLoFTRForKeypointMatching


# ---------------------------------------------------------------- official checkpoint keys

_BLOCK = {"rbr_dense.conv": "conv1.conv", "rbr_dense.bn": "conv1.norm", "rbr_1x1.conv": "conv2.conv",
          "rbr_1x1.bn": "conv2.norm", "rbr_identity": "identity"}
_ATTN = {"aggregate": "aggregation.q_aggregation", "norm1": "aggregation.norm", "q_proj": "attention.q_proj",
         "k_proj": "attention.k_proj", "v_proj": "attention.v_proj", "merge": "attention.o_proj",
         "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2", "norm2": "mlp.layer_norm"}
_FINE = {"outconv": "out_conv1", "outconv2.0": "out_conv2", "outconv2.1": "batch_norm", "outconv2.3": "out_conv3"}
_FINE_LEVEL = {"2": 0, "1": 1}

_RE_BLOCK = re.compile(r"backbone\.layer(\d+)\.(?:(\d+)\.)?(" + "|".join(map(re.escape, _BLOCK)) + r")\.(\w+)")
_RE_ATTN = re.compile(r"loftr_coarse\.layers\.(\d+)\.(" + "|".join(map(re.escape, _ATTN)) + r")\.(\w+)")
_RE_FINE = re.compile(r"fine_preprocess\.layer([12])_(outconv2\.[013]|outconv)\.(\w+)")
_RE_FINE_TOP = re.compile(r"fine_preprocess\.layer3_outconv\.(\w+)")


def official_key_to_transformers(key: str) -> str | None:
    """The transformers name of an official EfficientLoFTR checkpoint key (module docstring), None if unknown."""
    k = key.removeprefix("matcher.")
    if m := _RE_BLOCK.fullmatch(k):
        stage, block, part, leaf = m.groups()
        return f"efficientloftr.backbone.stages.{stage}.blocks.{block or 0}.{_BLOCK[part]}.{leaf}"
    if m := _RE_ATTN.fullmatch(k):
        n, part, leaf = int(m[1]), m[2], m[3]
        kind = "self_attention" if n % 2 == 0 else "cross_attention"
        return f"efficientloftr.local_feature_transformer.layers.{n // 2}.{kind}.{_ATTN[part]}.{leaf}"
    if m := _RE_FINE_TOP.fullmatch(k):
        return f"refinement_layer.out_conv.{m[1]}"
    if m := _RE_FINE.fullmatch(k):
        return f"refinement_layer.out_conv_layers.{_FINE_LEVEL[m[1]]}.{_FINE[m[2]]}.{m[3]}"
    return None


def _is_official(keys: list[str]) -> bool:
    return any(k.startswith(("matcher.", "backbone.layer", "loftr_coarse.", "fine_preprocess.")) for k in keys)


def convert_official(obj: Any) -> dict[str, Tensor]:
    """Official checkpoint (``{"state_dict": {...}}`` or flat) -> state dict in transformers' key names.

    A state dict already in transformers' names passes unchanged; unknown official keys keep their name (and are
    then reported as unexpected).
    """
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(sd, Mapping):
        return sd
    sd = dict(sd)
    if not _is_official(list(sd)):
        return sd
    return {(official_key_to_transformers(k) or k): v for k, v in sd.items()}


# ---------------------------------------------------------------- transformers folders


def _show(xs: list[str]) -> str:
    xs = sorted(xs)
    return ", ".join(xs[:10]) + (f" (+{len(xs) - 10} more)" if len(xs) > 10 else "")


def load_transformers_folder(file: Path, config: str | Mapping[str, Any]) -> nn.Module | None:
    """Loads ``file``'s folder with ``from_pretrained(local_files_only=True)`` when it is a transformers folder
    (``config.json`` beside a ``.safetensors`` file); None otherwise (the registry's generic reader takes over).

    Raises:
        WeightsError: the folder does not load, or its weights miss / add / reshape keys (named).
    """
    folder = Path(file).parent
    if Path(file).suffix != ".safetensors" or not (folder / "config.json").is_file():
        return None
    _, model_cls = transformers_classes()
    overrides = dict(config) if isinstance(config, Mapping) else {}
    try:
        # ignore_mismatched_sizes: report shape mismatches in `info` (checked below) instead of a bare error
        model, info = model_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True,
                                                ignore_mismatched_sizes=True, **overrides)
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"cannot load the transformers folder {folder} as EfficientLoFTR: {exc}") from exc
    missing = [str(k) for k in info.get("missing_keys", ())]
    unexpected = [str(k) for k in info.get("unexpected_keys", ())]
    mismatched = [f"{m[0]}: file {tuple(m[1])} vs model {tuple(m[2])}" if isinstance(m, tuple) else str(m)
                  for m in info.get("mismatched_keys", ())]
    if missing or unexpected or mismatched:
        parts = [f"{label} ({len(xs)}): {_show(xs)}" for label, xs in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if xs]
        raise WeightsError(f"weights do not fit 'efficientloftr' (from {folder}): " + "; ".join(parts))
    return model


@register_model(
    "efficientloftr",
    configs={"default": {}, "tiny": dict(_TINY)},
    filenames=("eloftr_outdoor.ckpt", "model.safetensors", "efficientloftr.safetensors"),
    convert=convert_official,
    key_mapping="unwrap ckpt['state_dict']; strip 'matcher.'; backbone.layer{s}[.{k}].rbr_* -> "
                "efficientloftr.backbone.stages.{s}.blocks.{k}.*; loftr_coarse.layers.{n} -> "
                "efficientloftr.local_feature_transformer.layers.{n//2}.{self,cross}_attention; fine_preprocess -> "
                "refinement_layer (torch3dv.models.efficientloftr)",
    loader=load_transformers_folder,
    description="EfficientLoFTR semi-dense matcher (transformers.EfficientLoFTRForKeypointMatching), outdoor",
)
def _build(config: dict) -> nn.Module:
    config_cls, model_cls = transformers_classes()
    model = model_cls(config_cls(**config))
    # transformers' initialisation (weights and BatchNorm scales from N(0, 0.02)) leaves a random network's coarse
    # features nearly constant, so every confidence ties; the official initialisation (Kaiming convolutions,
    # Xavier linear layers, unit BatchNorm) gives distinct random features. Loaded weights replace all of it.
    for mod in model.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.Linear):
            nn.init.xavier_uniform_(mod.weight)
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return model
