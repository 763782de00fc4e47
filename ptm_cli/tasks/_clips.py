"""Video classification: Kinetics-400 actions over clips of a video's frames (R3D-18, MViT, Swin3D...).

A video classifier sees a clip, not an image: ``clip_frames`` frames taken
``clip_rate`` times a second (the rate and length its weights were measured
at), each resized and cropped as torchvision's ``VideoClassification``
transform does (bilinear and antialiased, on tensors; to exactly
``frame_size`` when the weights give a height and width), normalised, and
stacked as [C, T, H, W]. :func:`classify_clips` cuts each video's frames into
consecutive clips and gives one record per clip: where it starts
(``frame``, ``time``), where it ends and how many frames it holds; a video's
last clip, when shorter, is filled out by repeating its last frame. The
frames of a clip before its last carry no record of their own
(``Outcome.pending``): theirs is the clip's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import InputError, NonFiniteOutput, PtmError, UnsupportedFormat
from .base import Outcome

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Entry
    from ..images.inputs import ImageInput
    from ..nets.device import Precision
    from ..video.sampling import Sampling


class VideoClassifier:
    """A video classification model ready to run on batches of clips."""

    def __init__(
        self,
        entry: Entry,
        model: nn.Module,
        labels: list[str] | None,
        *,
        weights_label: str,
        device: torch.device,
        precision: Precision,
    ):
        assert entry.clip_frames is not None
        self.entry = entry
        self.model = model
        self.labels = labels
        self.weights_label = weights_label
        self.device = device
        self.precision = precision
        self.clip_frames = entry.clip_frames

    def frame_tensor(self, image: Image.Image) -> torch.Tensor:
        """One frame as the model's transform leaves it: [3, crop, crop], normalised."""
        import numpy as np
        import torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        entry = self.entry
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
        size = list(entry.frame_size) if entry.frame_size else [entry.resize or 128]
        mode = InterpolationMode(entry.interpolation)
        pixels = F.resize(pixels, size, interpolation=mode, antialias=True)
        if entry.crop:
            pixels = F.center_crop(pixels, [entry.crop, entry.crop])
        x: torch.Tensor = pixels.float() / 255
        if entry.mean and entry.std:
            x = F.normalize(x, list(entry.mean), list(entry.std))
        return x

    def predict_each(self, clips: torch.Tensor, top_k: int) -> list[list[dict[str, Any]] | NonFiniteOutput]:
        """Top-k labels for each clip of a [B, C, T, H, W] batch."""
        import torch

        with torch.inference_mode():
            x = clips.to(self.device)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                logits = self.model(x)
            logits = logits.float().cpu()
        results: list[list[dict[str, Any]] | NonFiniteOutput] = []
        for row in logits:
            if not bool(torch.isfinite(row).all()):
                results.append(NonFiniteOutput(f"the model's output holds NaN or infinity ({self.entry.ref})"))
                continue
            probabilities = torch.softmax(row, dim=0)
            values, indices = probabilities.topk(min(top_k, probabilities.numel()))
            results.append(
                [
                    {"rank": rank, "index": int(i), "label": self._label(int(i)), "probability": float(p)}
                    for rank, (p, i) in enumerate(zip(values, indices, strict=True), start=1)
                ]
            )
        return results

    def _label(self, index: int) -> str | None:
        return self.labels[index] if self.labels is not None and index < len(self.labels) else None


def clip_sampling(entry: Entry, sampling: Sampling) -> Sampling:
    """The frames a video classifier takes: its own rate unless ``--every``/``--frames`` says otherwise."""
    import dataclasses

    if entry.clip_rate is None or sampling.every_seconds or sampling.every_frames or sampling.count:
        return sampling
    return dataclasses.replace(sampling, every_seconds=1 / entry.clip_rate)


def classify_clips(
    classifier: VideoClassifier, inputs: Iterable[ImageInput], *, top_k: int, batch_size: int
) -> Iterator[Outcome]:
    """One outcome per input, in input order: a clip's record on its last frame, ``pending`` on the others."""
    window: list[tuple[ImageInput, torch.Tensor]] = []
    ready: list[list[tuple[ImageInput, torch.Tensor]]] = []

    def close_window() -> None:
        if window:
            ready.append(list(window))
            window.clear()

    for item in inputs:
        if item.frame is None or item.error is not None:
            close_window()
            yield from _run(classifier, ready, top_k)
            error = item.error or UnsupportedFormat(
                f"{item.name} is an image; {classifier.entry.model} labels clips of a video's frames"
            )
            yield Outcome(_error_record(item, error))
            continue
        if window and window[-1][0].frame.clip is not item.frame.clip:  # type: ignore[union-attr]
            close_window()
        try:
            window.append((item, classifier.frame_tensor(item.open())))
        except InputError as exc:
            close_window()
            yield from _run(classifier, ready, top_k)
            yield Outcome(_error_record(item, exc))
            continue
        if len(window) == classifier.clip_frames or item.frame.last:
            close_window()
        if len(ready) >= batch_size:
            yield from _run(classifier, ready, top_k)
    close_window()
    yield from _run(classifier, ready, top_k)


def _run(
    classifier: VideoClassifier, ready: list[list[tuple[ImageInput, torch.Tensor]]], top_k: int
) -> Iterator[Outcome]:
    """Classify the clips in ``ready`` (emptied): a pending outcome for each frame but a clip's last."""
    import torch

    if not ready:
        return
    clips = []
    for frames in ready:
        tensors = [t for _, t in frames]
        tensors += [tensors[-1]] * (classifier.clip_frames - len(tensors))  # a short last clip: its last frame again
        clips.append(torch.stack(tensors, dim=1))
    try:
        results: list[Any] = classifier.predict_each(torch.stack(clips), top_k)
    except PtmError as exc:
        results = [exc] * len(ready)
    for frames, result in zip(ready, results, strict=True):
        for item, _ in frames[:-1]:
            yield Outcome({"input": item.name}, pending=True)
        first, last = frames[0][0].frame, frames[-1][0].frame
        assert first is not None and last is not None
        item = frames[-1][0]
        where = {"input": item.name, "frame": first.index, "time": first.time, "end": last.time}
        if isinstance(result, PtmError):
            yield Outcome({**where, "error": result.record()})
            continue
        from ..output.records import round_float

        predictions = [{**p, "probability": round_float(p["probability"])} for p in result]
        yield Outcome(
            {
                **where,
                "frames": len(frames),
                "model": classifier.entry.model,
                "weights": classifier.weights_label,
                "predictions": predictions,
            }
        )
    ready.clear()


def _error_record(item: ImageInput, error: PtmError) -> dict[str, Any]:
    return {"input": item.name, "error": error.record()}


def build_video_classifier(
    entry: Entry,
    *,
    weights_file: Any = None,
    weights_label: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
) -> VideoClassifier:
    """A ready video classifier for a catalog entry, with its weights or ``weights_file``."""
    from ..cache.catalog import load_labels
    from ..nets import architectures

    labels = load_labels(entry)
    model, torch_device, chosen = architectures.ready(
        entry, weights_file, device=device, precision=precision, progress=progress
    )
    label = weights_label or (str(weights_file) if weights_file is not None else entry.weights)
    return VideoClassifier(entry, model, labels, weights_label=label, device=torch_device, precision=chosen)
