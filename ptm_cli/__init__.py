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
    "Catalog": "catalog",
    "Entry": "catalog",
    "ModelOptions": "loading",
    "load_classifier": "loading",
    "load_translator": "loading",
    "Classifier": "classify",
    "Classification": "classify",
    "Prediction": "classify",
    "classify_images": "classify",
    "ImageInput": "inputs",
    "Translator": "translate",
    "load_image": "imageio",
    "Preprocess": "transforms",
    "preprocess": "transforms",
    "ensure_weights": "loading",
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
    from .catalog import Catalog, Entry
    from .classify import Classification, Classifier, Prediction, classify_images
    from .errors import PtmError
    from .imageio import load_image
    from .inputs import ImageInput
    from .loading import ModelOptions, ensure_weights, load_classifier, load_translator
    from .tensorio import load_state_dict
    from .transforms import Preprocess, preprocess
    from .translate import Translator


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptm_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
