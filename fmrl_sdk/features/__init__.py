"""Item featurization: frozen text (and image) embeddings for every item, stored with a manifest.

Public API (light imports only; encoders load torch/transformers lazily):
    load_features(features_dir, item_ids) -> (float32 matrix [N, F], manifest)
    item_text(meta, template=None) -> str
    featurize(data, out, ...) -> report dict           (what `fmrl-sdk featurize` runs)
    features_for_items(manifest, metas, images, ...)   (features for new items, same encoders)
"""

from .store import load_features, read_manifest
from ..data.text import DEFAULT_TEMPLATE, item_text


def featurize(*args, **kwargs):
    from .pipeline import featurize as _featurize

    return _featurize(*args, **kwargs)


def features_for_items(*args, **kwargs):
    from .pipeline import features_for_items as _features_for_items

    return _features_for_items(*args, **kwargs)


__all__ = ["DEFAULT_TEMPLATE", "featurize", "features_for_items", "item_text", "load_features", "read_manifest"]
