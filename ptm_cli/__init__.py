"""ptm: run pretrained PyTorch image models on your own pictures.

The library behind the ``ptm`` command. Importing this package is cheap:
torch, torchvision and Pillow load only when a function that needs them runs.

    from pathlib import Path
    from ptm_cli import ImageInput, ModelOptions, classify_images, load_classifier

    classifier = load_classifier(ModelOptions("resnet101"))
    for result in classify_images([ImageInput("dog.jpg", path=Path("dog.jpg"))], classifier):
        print(result.predictions[0].label)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

_LAZY = {
    "Catalog": "cache.catalog",
    "Entry": "cache.catalog",
    "ModelOptions": "tasks.loading",
    "load_classifier": "tasks.loading",
    "load_translator": "tasks.loading",
    "Classifier": "tasks.classify",
    "Classification": "tasks.classify",
    "Prediction": "tasks.classify",
    "classify_images": "tasks.classify",
    "ImageInput": "images.inputs",
    "Translator": "tasks.translate",
    "load_image": "images.decode",
    "Preprocess": "images.transforms",
    "preprocess": "images.transforms",
    "ensure_weights": "tasks.loading",
    "load_state_dict": "tensorio",
    "PtmError": "errors",
}

__all__ = [  # noqa: RUF022 - grouped by module, like _LAZY
    "__version__",
    "Catalog",
    "Entry",
    "ModelOptions",
    "load_classifier",
    "load_translator",
    "Classifier",
    "Classification",
    "Prediction",
    "classify_images",
    "ImageInput",
    "Translator",
    "load_image",
    "Preprocess",
    "preprocess",
    "ensure_weights",
    "load_state_dict",
    "PtmError",
]

if TYPE_CHECKING:
    from .cache.catalog import Catalog, Entry
    from .errors import PtmError
    from .images.decode import load_image
    from .images.inputs import ImageInput
    from .images.transforms import Preprocess, preprocess
    from .tasks.classify import Classification, Classifier, Prediction, classify_images
    from .tasks.loading import ModelOptions, ensure_weights, load_classifier, load_translator
    from .tasks.translate import Translator
    from .tensorio import load_state_dict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptm_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
