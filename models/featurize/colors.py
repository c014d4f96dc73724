"""Colour features: a hue histogram, its peaks, and saturation and brightness statistics.

Dominant hues are the peaks of the hue histogram, as in "Learning Users' Preferred Visual Styles
in an Image Marketplace" (Gomez Bruballa et al., RecSys 2022). Statistics cover foreground pixels
only: pixels with alpha >= 0.5, or every pixel of an image without transparency. A pixel is
chromatic when its saturation and value (HSV) are both at least 0.2; other pixels have no
meaningful hue.

Layout of the COLORS_DIM = 32 floats:

| index | feature |
|---|---|
| 0-11 | hue histogram of chromatic pixels, 12 bins of 30 degrees from red (0 degrees); sums to 1, or all 0 without chromatic pixels |
| 12-23 | hue peaks: the histogram value of each bin that is a circular local maximum holding at least 0.05, else 0 |
| 24 | chromatic share of the foreground |
| 25 | dark share: foreground pixels with value < 0.2 |
| 26 | grey share: foreground pixels with value >= 0.2 and saturation < 0.2 |
| 27, 28 | mean and standard deviation of saturation |
| 29, 30 | mean and standard deviation of value (brightness) |
| 31 | foreground share of the image (1 for images without transparency) |
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HUE_BINS = 12
PEAK_MIN_MASS = 0.05
CHROMATIC_MIN = 0.2
COLORS_DIM = 2 * HUE_BINS + 8
MAX_SIDE = 128


def _foreground_hsv(image: Image.Image) -> tuple[np.ndarray, float]:
    """Return the HSV values in [0, 1] of foreground pixels as (n, 3), and the foreground share."""
    image = image.copy()
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    hsv = np.asarray(rgba.convert("RGB").convert("HSV"), dtype=np.float32).reshape(-1, 3) / 255.0
    mask = alpha.reshape(-1) >= 0.5
    return hsv[mask], float(mask.mean()) if mask.size else 0.0


def hue_peaks(histogram: np.ndarray, min_mass: float = PEAK_MIN_MASS) -> np.ndarray:
    """Keep the bins of a circular histogram that are local maxima with at least `min_mass`.

    A bin is a peak when it is greater than its left neighbour and not less than its right one, so
    a plateau of equal bins yields one peak.
    """
    left = np.roll(histogram, 1)
    right = np.roll(histogram, -1)
    is_peak = (histogram > left) & (histogram >= right) & (histogram >= min_mass)
    return np.where(is_peak, histogram, 0.0)


def color_features(image: Image.Image) -> np.ndarray:
    """Compute the COLORS_DIM colour features of an image, laid out as in the module docstring."""
    features = np.zeros(COLORS_DIM, dtype=np.float32)
    pixels, foreground_share = _foreground_hsv(image)
    features[31] = foreground_share
    if len(pixels) == 0:
        return features
    hue, saturation, value = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    chromatic = (saturation >= CHROMATIC_MIN) & (value >= CHROMATIC_MIN)
    if chromatic.any():
        bins = np.minimum((hue[chromatic] * HUE_BINS).astype(np.int64), HUE_BINS - 1)
        histogram = np.bincount(bins, minlength=HUE_BINS).astype(np.float32)
        histogram /= histogram.sum()
        features[0:HUE_BINS] = histogram
        features[HUE_BINS:2 * HUE_BINS] = hue_peaks(histogram)
    features[24] = chromatic.mean()
    features[25] = (value < CHROMATIC_MIN).mean()
    features[26] = ((value >= CHROMATIC_MIN) & (saturation < CHROMATIC_MIN)).mean()
    features[27] = saturation.mean()
    features[28] = saturation.std()
    features[29] = value.mean()
    features[30] = value.std()
    return features
