"""Classifying with a torch.hub model: ``-m hub:OWNER/NAME[:REF]/ENTRY`` as a ready classifier."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, UsageError, first_line

if TYPE_CHECKING:
    from ..cache.catalog import Entry
    from .base import ModelOptions


def _classify_entry(spec: str, labels_file: str | None) -> Entry:
    """A catalog entry for a hub model: ImageNet preprocessing (the book's), ImageNet or the user's labels."""
    from ..cache.catalog import IMAGENET_MEAN, IMAGENET_STD, Entry

    labels = str(Path(labels_file).expanduser()) if labels_file is not None else "imagenet"
    return Entry(
        model=spec,
        weights="hub",
        task="classify",
        architecture="hub",
        labels=labels,
        resize=256,
        crop=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        source="hub",
    )


def _output_classes(classifier: Any, crop: int) -> int:
    """Run one blank image through the model as ``predict`` would, and count its outputs."""
    import torch

    x = torch.zeros(1, 3, crop, crop, device=classifier.device).contiguous(memory_format=torch.channels_last)
    precision = classifier.precision
    what = classifier.entry.model
    try:
        with (
            torch.inference_mode(),
            torch.autocast(classifier.device.type, dtype=precision.dtype, enabled=precision.autocast),
        ):
            out = classifier.model(x)
    except Exception as exc:
        raise UsageError(
            f"{what} fails on a 1x3x{crop}x{crop} image batch ({type(exc).__name__}: {first_line(exc)}), "
            "so it is not an image classifier ptm can run"
        ) from exc
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"{what} returns {shape}, not one row of class scores per image, so ptm cannot classify with it"
        )
    return int(out.shape[1])


def hub_classifier(options: ModelOptions, *, build: Any) -> Any:
    """A ready classifier (made by ``build``) for ``hub:OWNER/NAME[:REF]/ENTRY`` or ``hub:./dir/ENTRY``."""
    from ..cache.catalog import load_labels
    from ..hub import load_model, parse_kwargs, parse_model_spec
    from ..nets.device import check_device_spec, choose_device, choose_precision, place_classifier

    spec = options.model
    repo, entry_name = parse_model_spec(spec)
    check_device_spec(options.device)
    entry = _classify_entry(spec.strip(), options.labels_file)
    # Labels, device and precision first: each can fail without running any repository code.
    labels = load_labels(entry)
    torch_device = choose_device(options.device)
    chosen_precision = choose_precision(options.precision, torch_device)
    kwargs = parse_kwargs(options.hub_args)
    model, info = load_model(repo, entry_name, kwargs=kwargs, trust_repo=options.trust_repo)
    entry = replace(entry, num_params=info.num_params, description=info.source)
    classifier = build(
        entry,
        place_classifier(model, torch_device),
        weights_label="hub",
        labels=labels,
        preprocess=entry.preprocess(),
        device=torch_device,
        precision=chosen_precision,
    )
    outputs = _output_classes(classifier, entry.crop or 224)
    if labels is not None and outputs != len(labels):
        raise ConfigError(
            f"{spec} gives {outputs} class scores but its labels list {len(labels)} names; "
            "pass a labels file with one name per output (--labels)"
        )
    return classifier
