"""ptm: run pretrained PyTorch image models on your own pictures.

The library behind the ``ptm`` command. Importing this package is cheap:
torch, torchvision and Pillow load only when a function that needs them runs.

    from pathlib import Path
    from ptm_cli import ImageInput, ModelOptions, classify_images, load_classifier

    classifier = load_classifier(ModelOptions("resnet101"))
    for result in classify_images([ImageInput("dog.jpg", path=Path("dog.jpg"))], classifier):
        print(result.predictions[0].label)

Every task the command line runs is in :mod:`ptm_cli.tasks` (``tasks.get("classify")``).
A program that runs many models in one process may call :func:`tune_process`
first, as the ``ptm`` command does (see :mod:`ptm_cli.runtime.tuning`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

_LAZY = {
    "Catalog": "cache.catalog",
    "Entry": "cache.catalog",
    "ModelOptions": "tasks.base",
    "Plan": "tasks.base",
    "load_classifier": "tasks.classify",
    "Classifier": "tasks.classify",
    "Classification": "tasks.classify",
    "Prediction": "tasks.classify",
    "classify_images": "tasks.classify",
    "load_translator": "tasks.translate",
    "Translator": "tasks.translate",
    "load_detector": "tasks.detect",
    "Detector": "tasks.detect",
    "Detection": "tasks.detect",
    "Limits": "tasks.detect",
    "detect_images": "tasks.detect",
    "load_segmenter": "tasks.segment",
    "Segmenter": "tasks.segment",
    "segment_images": "tasks.segment",
    "load_embedder": "tasks.embed",
    "Embedder": "tasks.embed",
    "Embedding": "tasks.embed",
    "embed_images": "tasks.embed",
    "ImageInput": "images.inputs",
    "load_image": "images.decode",
    "Preprocess": "images.transforms",
    "preprocess": "images.transforms",
    "ensure_weights": "nets.architectures",
    "load_state_dict": "tensorio",
    "tune_process": "runtime.tuning",
    "PtmError": "errors",
}

__all__ = [  # noqa: RUF022 - grouped by module, like _LAZY
    "__version__",
    "Catalog",
    "Entry",
    "ModelOptions",
    "Plan",
    "load_classifier",
    "Classifier",
    "Classification",
    "Prediction",
    "classify_images",
    "load_translator",
    "Translator",
    "load_detector",
    "Detector",
    "Detection",
    "Limits",
    "detect_images",
    "load_segmenter",
    "Segmenter",
    "segment_images",
    "load_embedder",
    "Embedder",
    "Embedding",
    "embed_images",
    "ImageInput",
    "load_image",
    "Preprocess",
    "preprocess",
    "ensure_weights",
    "load_state_dict",
    "tune_process",
    "PtmError",
]

if TYPE_CHECKING:
    from .cache.catalog import Catalog, Entry
    from .errors import PtmError
    from .images.decode import load_image
    from .images.inputs import ImageInput
    from .images.transforms import Preprocess, preprocess
    from .nets.architectures import ensure_weights
    from .runtime.tuning import tune_process
    from .tasks.base import ModelOptions, Plan
    from .tasks.classify import Classification, Classifier, Prediction, classify_images, load_classifier
    from .tasks.detect import Detection, Detector, Limits, detect_images, load_detector
    from .tasks.embed import Embedder, Embedding, embed_images, load_embedder
    from .tasks.segment import Segmenter, load_segmenter, segment_images
    from .tasks.translate import Translator, load_translator
    from .tensorio import load_state_dict


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ptm_cli' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{module}", __name__), name)
