"""RoMa: robust dense feature matching (Edstedt et al., CVPR 2024), written for torch3dv.

Architecture and checkpoint layout follow the official MIT-licensed ``romatch`` code (github Parskatt/RoMa);
the implementation is independent and needs no torchvision. Weights are never downloaded:

>>> from torch3dv.models.roma import build_roma, roma_outdoor_config, load_roma_checkpoint  # doctest: +SKIP
>>> model = load_roma_checkpoint(build_roma(roma_outdoor_config()), "roma_outdoor.pth",
...                              dinov2_path="dinov2_vitl14_pretrain.pth")                  # doctest: +SKIP
>>> with torch.no_grad():                                                                    # doctest: +SKIP
...     m = model(image0, image1, num_matches=5000)  # kpts0, kpts1 (B, 5000, 2) pixels, scores, mask
"""

from torch3dv.models.roma.checkpoint import (
    RomaCheckpointError,
    load_roma_checkpoint,
    read_state_dict,
    save_roma_checkpoint,
)
from torch3dv.models.roma.config import (
    DinoV2Config,
    RefinerConfig,
    RomaConfig,
    VGGConfig,
    roma_indoor_config,
    roma_outdoor_config,
    roma_tiny_config,
)
from torch3dv.models.roma.matcher import (
    RomaMatcher,
    RomaMatches,
    build_roma,
    to_normalized_coordinates,
    to_pixel_coordinates,
)
from torch3dv.models.roma.registration import register as _register

_register()  # roma-outdoor / roma-indoor in torch3dv.models.registry (see registration.py)

__all__ = [
    "DinoV2Config",
    "RefinerConfig",
    "RomaCheckpointError",
    "RomaConfig",
    "RomaMatcher",
    "RomaMatches",
    "VGGConfig",
    "build_roma",
    "load_roma_checkpoint",
    "read_state_dict",
    "roma_indoor_config",
    "roma_outdoor_config",
    "roma_tiny_config",
    "save_roma_checkpoint",
    "to_normalized_coordinates",
    "to_pixel_coordinates",
]
