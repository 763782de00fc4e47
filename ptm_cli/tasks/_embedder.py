"""Image vectors from a classifier: the network without its head, fed by the shared pipeline.

:class:`Embedder` is a :class:`~ptm_cli.tasks.classify.Classifier`'s network
with its classification head replaced by an identity
(:func:`ptm_cli.nets.features.remove_head`), the same preprocessing, device
and precision. Vectors are L2-normalised in float32 unless ``raw``.

Every batch goes through the network at exactly ``batch_size`` images (a
short or partly failed batch is padded with blank images): a CPU's kernels
can round differently for another batch size, and an image's vector must not
depend on which images it happened to share a batch with. Measured here,
ResNet-18's vectors moved by up to 3e-6 between batches of 8 and 5, while in
batches of one size they are the same bytes whatever the neighbours. So
``ptm embed``, ``ptm embed --update`` and ``ptm batch embed`` give the same
bytes for one image on one machine (at one ``--batch-size``).

Each file is read once: its bytes are hashed (sha256) and decoded from memory,
and its size and modification time come from the same open file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InputError, NonFiniteOutput, PtmError, UsageError
from ..images.inputs import ImageInput

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image
    from torch import nn

    from ..cache.catalog import Entry
    from ..images.transforms import Preprocess
    from ..nets.device import Precision
    from ..vectors.indexfile import IndexMeta
    from .base import Plan
    from .classify import Classifier


@dataclass(frozen=True)
class FileFacts:
    """What an index keeps about an image file to notice that it changed (None for stdin)."""

    sha256: str
    bytes: int
    mtime_ns: int | None


@dataclass(frozen=True)
class Embedding:
    """One input's vector (float32), with the facts of its file; or the error that stopped it."""

    input: str
    vector: np.ndarray | None = None
    facts: FileFacts | None = None
    error: PtmError | None = None


class Embedder:
    """A classifier's network without its head, ready to turn preprocessed batches into vectors."""

    def __init__(self, classifier: Classifier, *, normalise: bool = True):
        from ..nets.features import remove_head

        self.entry: Entry = classifier.entry
        self.weights_label: str = classifier.weights_label
        self.preprocess: Preprocess = classifier.preprocess
        self.device: torch.device = classifier.device
        self.precision: Precision = classifier.precision
        self.model: nn.Module = classifier.model
        self.dimension = remove_head(self.model, classes=len(classifier.labels) if classifier.labels else None)
        self.normalise = normalise
        self.hub_args: tuple[str, ...] = ()  # a hub: model's entry-point arguments, which its index records
        self.openmp_spinning = False

    def embed_each(self, batch: torch.Tensor, batch_size: int) -> list[np.ndarray | PtmError]:
        """Per image of ``batch``: its vector (float32 numpy), or the error that spoils it."""
        import torch

        count = len(batch)
        if count < batch_size:  # the same batch size every time: see the module's docstring
            batch = torch.cat([batch, batch.new_zeros((batch_size - count, *batch.shape[1:]))])
        with torch.inference_mode():
            x = batch.to(self.device).contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.precision.dtype, enabled=self.precision.autocast):
                out = self.model(x)[:count]
            vectors = out.float().flatten(1).cpu()
        if vectors.shape[1] != self.dimension:
            raise UsageError(f"{self.entry.model} gives {vectors.shape[1]} numbers, not the {self.dimension} expected")
        finite = torch.isfinite(vectors).all(dim=1).tolist()
        norms = vectors.norm(dim=1)
        rows: list[np.ndarray | PtmError] = []
        for i, ok in enumerate(finite):
            if not ok:
                rows.append(
                    NonFiniteOutput(
                        f"the model's features for this input hold NaN or infinity ({self.entry.ref}); "
                        "check the weights (`ptm weights inspect`)"
                    )
                )
            elif self.normalise and float(norms[i]) == 0.0:
                rows.append(NonFiniteOutput("the model's features for this input are all zero, so it has no direction"))
            else:
                vector = vectors[i] / norms[i] if self.normalise else vectors[i]
                rows.append(vector.numpy())
        return rows


def embedder_from(classifier: Classifier, *, normalise: bool = True) -> Embedder:
    """``classifier``'s network as an :class:`Embedder` (the classifier is used up: its head is gone)."""
    return Embedder(classifier, normalise=normalise)


def read_input(item: ImageInput) -> tuple[ImageInput, FileFacts]:
    """``item`` with its bytes in memory, and the facts of the file they came from (of a video frame: of its
    RGB pixels)."""
    from ..images.decode import read_file

    if item.error is not None:
        raise item.error
    if item.frame is not None:  # a video's frame: the facts of its decoded RGB pixels
        pixels = item.frame.image.tobytes()
        return item, FileFacts(hashlib.sha256(pixels).hexdigest(), len(pixels), None)
    if item.data is not None:
        return item, FileFacts(hashlib.sha256(item.data).hexdigest(), len(item.data), None)
    if item.path is None:
        raise UsageError(f"{item.name}: neither a path nor data to read")
    data, info = read_file(item.path, item.name)
    facts = FileFacts(hashlib.sha256(data).hexdigest(), len(data), info.st_mtime_ns)
    return ImageInput(item.name, path=item.path, data=data), facts


def embed_images(
    inputs: Iterable[ImageInput],
    embedder: Embedder,
    *,
    batch_size: int = 8,
    workers: int = 2,
    on_image: Callable[[ImageInput, Image.Image], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> Generator[Embedding, None, None]:
    """One :class:`Embedding` per input, in input order; a failed input carries its error."""
    from ..images.transforms import preprocess as run_preprocess
    from ._pipeline import run_batched
    from .classify import DRAFT_MARGIN

    short_side = embedder.preprocess.resize or embedder.preprocess.crop
    min_short_side = None if short_side is None else DRAFT_MARGIN * short_side
    facts: dict[int, FileFacts] = {}

    def load(item: ImageInput) -> Any:
        try:
            loaded, found = read_input(item)
            image = loaded.open(min_short_side=min_short_side, on_note=on_note)
            facts[id(item)] = found
            if on_image is not None:
                on_image(item, image)
            return run_preprocess(image, embedder.preprocess, without_torch=True)
        except InputError as exc:
            return exc

    def forward(batch: torch.Tensor) -> list[Any]:
        return embedder.embed_each(batch, batch_size)

    # An item is alive from its decoding until it is yielded back, so its id() names it meanwhile.
    for item, outcome in run_batched(inputs, load, forward, model=embedder, batch_size=batch_size, workers=workers):
        found = facts.pop(id(item), None)
        if isinstance(outcome, PtmError):
            yield Embedding(item.name, facts=found, error=outcome)
        else:
            yield Embedding(item.name, vector=outcome, facts=found)


# --- records and index metadata ---------------------------------------------------------------------------


def to_record(
    result: Embedding, embedder: Embedder, *, with_vector: bool = True, dtype: str = "float32"
) -> dict[str, Any]:
    """The record ptm writes for one input; ``vector`` holds the exact float32 (or float16) values."""
    if result.error is not None:
        return {"input": result.input, "error": result.error.record()}
    assert result.vector is not None and result.facts is not None
    record: dict[str, Any] = {
        "input": result.input,
        "model": embedder.entry.model,
        "weights": embedder.weights_label,
        "dimension": embedder.dimension,
        "sha256": result.facts.sha256,
        "bytes": result.facts.bytes,
        "mtime_ns": result.facts.mtime_ns,
    }
    if with_vector:
        record["vector"] = result.vector.astype(dtype).tolist()  # floats that convert back to the same bytes
    return record


def index_meta(embedder: Embedder, *, dtype: str) -> IndexMeta:
    """What an index of ``embedder``'s vectors records about them."""
    from ..vectors.indexfile import IndexMeta

    return IndexMeta(
        model=embedder.entry.model,
        weights=embedder.weights_label,
        dimension=embedder.dimension,
        dtype=dtype,
        normalised=embedder.normalise,
        resize=embedder.preprocess.resize,
        crop=embedder.preprocess.crop,
        extra=_hub_extra(embedder.hub_args),
    )


def _hub_extra(hub_args: tuple[str, ...]) -> dict[str, str]:
    import json

    return {"hub_args": json.dumps(list(hub_args))} if hub_args else {}


def planned_meta(plan: Plan[Any], *, raw: bool, dtype: str) -> IndexMeta:
    """The index metadata ``plan`` will give, before the model loads (its dimension unknown: 0)."""
    from ..vectors.indexfile import IndexMeta
    from .classify import _with_overrides

    options = plan.options
    resize: int | None
    crop: int | None
    if plan.entry is None:
        resize, crop = options.resize or 256, options.crop or 224  # a hub model's preprocessing (tasks/_hub.py)
    else:
        preprocess = _with_overrides(plan.entry.preprocess(), options.resize, options.crop)
        resize, crop = preprocess.resize, preprocess.crop
    model = options.model.strip() if plan.entry is None else plan.entry.model
    extra = _hub_extra(tuple(options.hub_args)) if plan.entry is None else {}
    return IndexMeta(model, plan.weights_label, 0, dtype, not raw, resize, crop, extra)
