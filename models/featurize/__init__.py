"""Features of real image files: deep CNN features, colour features and sidecar metadata."""

from stylestream.models.featurize.backbone import Backbone, EfficientNetLite0
from stylestream.models.featurize.colors import COLORS_DIM, color_features
from stylestream.models.featurize.loading import ImageItem, ImageReadError, iter_catalogue, iter_items
from stylestream.models.featurize.pipeline import FeaturizeReport, featurize_items

__all__ = [
    "Backbone", "COLORS_DIM", "EfficientNetLite0", "FeaturizeReport", "ImageItem", "ImageReadError",
    "color_features", "featurize_items", "iter_catalogue", "iter_items",
]
