"""Learned models: a registry by name, weights only from explicit local files (never a download).

``build_model(name, "tiny")`` builds a random-weight model for tests; ``from_pretrained(name, path)`` builds the
official architecture and loads a local safetensors file or official checkpoint (key mappings are documented per
model in :mod:`torch3dv.models.kornia_models` and :mod:`torch3dv.models.efficientloftr`, which also reads
transformers folders); ``save_pretrained`` writes safetensors that load back.
See :mod:`torch3dv.models.registry` for the lookup rules (``$TORCH3DV_WEIGHTS``) and how other modules register.
"""

from torch3dv.models.registry import (
    WEIGHTS_ENV,
    ModelSpec,
    WeightsError,
    available_models,
    build_model,
    find_packaged_weights,
    from_pretrained,
    get_spec,
    load_weights,
    read_checkpoint,
    register_model,
    resolve_weights,
    save_pretrained,
)

__all__ = [
    "WEIGHTS_ENV",
    "ModelSpec",
    "WeightsError",
    "available_models",
    "build_model",
    "find_packaged_weights",
    "from_pretrained",
    "get_spec",
    "load_weights",
    "read_checkpoint",
    "register_model",
    "resolve_weights",
    "save_pretrained",
]
