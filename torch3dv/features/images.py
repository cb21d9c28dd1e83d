"""Image input checks and conversions shared by every feature wrapper."""

from __future__ import annotations

import torch
from torch import Tensor

_GREY = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as OpenCV and kornia's rgb_to_grayscale


def prepare_images(images: Tensor, channels: int, dtype: torch.dtype, name: str = "images",
                   device: torch.device | None = None) -> Tensor:
    """Validates a batch of images and converts it to what a network expects.

    Args:
        images: (B, C, H, W) with C = 1 (grey) or 3 (RGB); float in [0, 1] or uint8 in [0, 255]; any strides.
        channels: 1 or 3, what the network takes (grey is repeated to RGB, RGB is converted to BT.601 luma).
        dtype: floating dtype of the output.
        name: argument name for messages.
        device: move to this device (the model's) when given.

    Returns:
        Contiguous (B, channels, H, W) float tensor in [0, 1].

    Raises:
        ValueError: not a tensor, not 4-D, C not in (1, 3), an integer dtype other than uint8, empty images.
    """
    if not isinstance(images, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, C, H, W), got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}; add a batch dimension "
                         "with images[None] for a single image")
    B, C, H, W = images.shape
    if C not in (1, 3):
        raise ValueError(f"{name} must have 1 (grey) or 3 (RGB) channels, got {C} (shape {tuple(images.shape)})")
    if B == 0 or H < 8 or W < 8:
        raise ValueError(f"{name} must be a non-empty batch of images of at least 8x8 pixels, got "
                         f"{tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.to(device=device, dtype=dtype) / 255.0
    elif images.is_floating_point():
        x = images.to(device=device, dtype=dtype)
    else:
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got {images.dtype}")
    if C != channels:
        if channels == 3:
            x = x.expand(B, 3, H, W)
        else:
            w = torch.tensor(_GREY, dtype=dtype, device=x.device).view(1, 3, 1, 1)
            x = (x * w).sum(1, keepdim=True)
    return x.contiguous()


def check_pair(image0: Tensor, image1: Tensor) -> None:
    """Both images of a pair batch must be tensors with the same batch size (sizes may differ)."""
    for n, im in (("image0", image0), ("image1", image1)):
        if not isinstance(im, Tensor) or im.ndim != 4:
            raise ValueError(f"{n} must be a (B, C, H, W) tensor, got "
                             f"{tuple(im.shape) if isinstance(im, Tensor) else type(im).__name__}")
    if image0.shape[0] != image1.shape[0]:
        raise ValueError(f"image0 and image1 must have the same batch size B, got {image0.shape[0]} and "
                         f"{image1.shape[0]}")
    if image0.device != image1.device:
        raise ValueError(f"image0 is on {image0.device} but image1 is on {image1.device}")
