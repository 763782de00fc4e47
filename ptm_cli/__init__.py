"""ptm: run pretrained PyTorch image models on your own pictures.

The library behind the ``ptm`` command. Importing this package is cheap:
torch, torchvision and Pillow load only when a function that needs them runs.

    from ptm_cli import Catalog, Classifier, ImageInput, classify_images

    entry = Catalog.load().resolve("resnet101")
    classifier = Classifier.load(entry)
    for result in classify_images([ImageInput("dog.jpg", path=Path("dog.jpg"))], classifier):
        print(result.predictions[0].label)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Catalog": "catalog",
    "Entry": "catalog",
    "Classifier": "classify",
    "Classification": "classify",
    "ImageInput": "classify",
    "Prediction": "classify",
    "classify_images": "classify",
    "Translator": "translate",
    "load_image": "images",
    "Preprocess": "images",
    "preprocess": "images",
    "ensure_weights": "weights",
    "load_state_dict": "weights",
    "PtmError": "errors",
}

__all__ = [  # noqa: RUF022 - grouped by module, like _LAZY
    "__version__",
    "Catalog",
    "Entry",
    "Classifier",
    "Classification",
    "ImageInput",
    "Prediction",
    "classify_images",
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
    from .classify import Classification, Classifier, ImageInput, Prediction, classify_images
    from .errors import PtmError
    from .images import Preprocess, load_image, preprocess
    from .translate import Translator
    from .weights import ensure_weights, load_state_dict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptm_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
