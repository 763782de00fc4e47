"""Regenerate models/torchvision.json and its detection, segmentation and video siblings from torchvision.

ptm lists and resolves models without importing torch (3.5 s here), so the
facts torchvision keeps in Python objects - URLs, hash prefixes, sizes,
accuracy, preprocessing, labels and the keyword arguments each builder applies
when it is given pretrained weights - are written down once as data.

Run it after upgrading torchvision:

    .venv/bin/python scripts/gen_torchvision_catalog.py

`tests/test_catalog.py` checks the file still agrees with the installed
torchvision.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision
import torchvision.models as tvm

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"

# Full digests that were published for a file; for the rest the 8-hex prefix
# in the file name is all that is known until ptm pins the first download.
KNOWN_FULL_SHA256 = {
    "alexnet-owt-7be5be79.pth": "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
}

LICENCE = "BSD-3-Clause (torchvision); trained on ImageNet-1K, whose terms of use apply"
COCO_LICENCE = "BSD-3-Clause (torchvision); trained on COCO 2017, whose terms of use apply"
# Detection models that belong to another task (instance segmentation: `ptm segment`).
NOT_DETECTORS = ("maskrcnn_",)


class _StopBuild(Exception):
    pass


def builder_kwargs(model_name: str, weights: Any) -> dict[str, Any]:
    """The keyword arguments torchvision's builder sets for these weights.

    Records every call the builder makes to `_ovewrite_named_param`, then
    stops at the first module it constructs: nothing is built or downloaded.
    """
    recorded: dict[str, Any] = {}
    module_names = [m for m in sys.modules if m.startswith("torchvision.models.") and m.count(".") == 2]
    originals = {}

    def record(kwargs: dict[str, Any], param: str, new_value: Any) -> None:
        recorded[param] = new_value
        kwargs[param] = new_value

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        raise _StopBuild

    for name in module_names:
        mod = importlib.import_module(name)
        if hasattr(mod, "_ovewrite_named_param"):
            originals[name] = mod._ovewrite_named_param
            mod._ovewrite_named_param = record
    saved_init = torch.nn.Module.__init__
    torch.nn.Module.__init__ = refuse  # type: ignore[method-assign]
    try:
        with contextlib.suppress(_StopBuild):
            tvm.get_model(model_name, weights=weights)
    finally:
        torch.nn.Module.__init__ = saved_init  # type: ignore[method-assign]
        for name, fn in originals.items():
            sys.modules[name]._ovewrite_named_param = fn
    return {k: list(v) if isinstance(v, tuple) else v for k, v in recorded.items()}


def preprocessing(weights: Any) -> dict[str, Any]:
    t = weights.transforms()
    return {
        "resize": int(t.resize_size[0]),
        "crop": int(t.crop_size[0]),
        "interpolation": t.interpolation.value,
        "mean": [float(x) for x in t.mean],
        "std": [float(x) for x in t.std],
    }


def built_with_weights(name: str, weights: Any) -> torch.nn.Module:
    """The model torchvision's builder makes for ``weights``, all of it (what it does after loading included).

    The download is answered with nothing and the load does nothing, so the
    model keeps its initial values; only its structure is looked at.
    """
    loads: list[torch.nn.Module] = []

    def skip(self: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        loads.append(self)

    saved_load, saved_get = torch.nn.Module.load_state_dict, type(weights).get_state_dict
    torch.nn.Module.load_state_dict = skip  # type: ignore[method-assign,assignment]
    type(weights).get_state_dict = lambda self, *args, **kwargs: {}  # type: ignore[method-assign]
    try:
        model: torch.nn.Module = tvm.get_model(name, weights=weights)
    finally:
        torch.nn.Module.load_state_dict = saved_load  # type: ignore[method-assign]
        type(weights).get_state_dict = saved_get  # type: ignore[method-assign]
    if not loads:
        raise SystemExit(f"{name}.{weights.name}: the builder loaded no weights; teach this script about it")
    return model


def detection_entries() -> tuple[list[dict[str, Any]], list[str]]:
    """Every torchvision detector's weights, checked: ptm's build has the structure torchvision's has."""
    import torchvision.models.detection as detection
    from torchvision.ops.misc import FrozenBatchNorm2d

    sys.path.insert(0, str(ROOT))
    from ptm_cli.cache.catalog import entry_from_mapping
    from ptm_cli.nets.detection import factory, input_limits

    categories: list[str] | None = None
    models = []
    for name in tvm.list_models(module=detection):
        if name.startswith(NOT_DETECTORS):
            continue
        enum = tvm.get_model_weights(name)
        variants = []
        for w in enum:
            names = list(w.meta["categories"])
            if len(names) == 91:
                if categories is not None and names != categories:
                    raise SystemExit(f"{name}.{w.name}: COCO categories differ from the other detectors'")
                categories = names
                labels = "coco_categories.txt"
            elif names == ["no person", "person"]:
                labels = "coco_person.txt"
            else:
                raise SystemExit(f"{name}.{w.name}: categories {names[:3]}...; teach this script about them")
            reference = built_with_weights(name, w)
            norms = [m for m in reference.modules() if isinstance(m, FrozenBatchNorm2d)]
            frozen = bool(norms)
            epsilons = {m.eps for m in norms}
            if len(epsilons) > 1:
                raise SystemExit(f"{name}.{w.name}: frozen norms with several epsilons; teach ptm about them")
            kwargs: dict[str, Any] = {"num_classes": len(names)}
            points = list(w.meta.get("keypoint_names", []))
            if points:
                kwargs["num_keypoints"] = len(points)
            file_name = w.url.rsplit("/", 1)[-1]
            match = re.search(r"-([0-9a-f]{8,})\.pth$", file_name)
            metrics = w.meta["_metrics"]["COCO-val2017"]
            limits = input_limits(reference)
            variant = {
                "name": w.name,
                "default": w.name == enum.DEFAULT.name,
                "url": w.url,
                "sha256": KNOWN_FULL_SHA256.get(file_name, match.group(1) if match else None),
                "size_mb": w.meta.get("_file_size"),
                "num_params": w.meta["num_params"],
                "gflops": w.meta.get("_ops"),
                "box_map": metrics.get("box_map"),
                "keypoint_map": metrics.get("kp_map"),
                "labels": labels,
                "num_classes": len(names),
                "recipe": w.meta.get("recipe"),
                "licence": COCO_LICENCE,
                "builder_kwargs": {k: v for k, v in kwargs.items() if k != "num_classes"},
                "frozen_batchnorm": frozen,
                "batchnorm_eps": 0.0 if epsilons == {0.0} else None,
                "keypoint_names": points,
                **limits,
            }
            variant = {k: v for k, v in variant.items() if v not in (None, [])}
            # ptm's build must be torchvision's: same modules (norms included), same tensors.
            entry = entry_from_mapping({"model": name, "architecture": name, "task": "detect", **variant}, source="gen")
            ours = factory(entry)()
            if repr(ours) != repr(reference) or _shapes(ours) != _shapes(reference):
                raise SystemExit(f"{name}.{w.name}: ptm's build differs from torchvision's; teach ptm about it")
            variants.append(variant)
        models.append({"model": name, "architecture": name, "task": "detect", "weights": variants})
    assert categories is not None
    return models, categories


def segmentation_entries(coco: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every torchvision segmentation model's weights (semantic, and Mask R-CNN), checked like the detectors'."""
    import torchvision.models.detection as detection
    import torchvision.models.segmentation as segmentation

    sys.path.insert(0, str(ROOT))
    from ptm_cli.cache.catalog import entry_from_mapping
    from ptm_cli.nets.detection import input_limits
    from ptm_cli.nets.segmentation import factory

    voc: list[str] | None = None
    models = []
    semantic = tvm.list_models(module=segmentation)
    instance = [name for name in tvm.list_models(module=detection) if name.startswith(NOT_DETECTORS)]
    for name in semantic + instance:
        enum = tvm.get_model_weights(name)
        variants = []
        for w in enum:
            names = list(w.meta["categories"])
            file_name = w.url.rsplit("/", 1)[-1]
            match = re.search(r"-([0-9a-f]{8,})\.pth$", file_name)
            metrics = next(iter(w.meta["_metrics"].values()))
            reference = built_with_weights(name, w)
            variant: dict[str, Any] = {
                "name": w.name,
                "default": w.name == enum.DEFAULT.name,
                "url": w.url,
                "sha256": KNOWN_FULL_SHA256.get(file_name, match.group(1) if match else None),
                "size_mb": w.meta.get("_file_size"),
                "num_params": w.meta["num_params"],
                "gflops": w.meta.get("_ops"),
                "num_classes": len(names),
                "recipe": w.meta.get("recipe"),
                "licence": COCO_LICENCE,
            }
            if name in semantic:
                if voc is not None and names != voc:
                    raise SystemExit(f"{name}.{w.name}: VOC categories differ from the other models'")
                voc = names
                t = w.transforms()
                variant.update(
                    labels="voc_classes.txt",
                    miou=metrics.get("miou"),
                    pixel_acc=metrics.get("pixel_acc"),
                    builder_kwargs={"aux_loss": True} if getattr(reference, "aux_classifier", None) else {},
                    resize=int(t.resize_size[0]),
                    interpolation=t.interpolation.value,
                    mean=[float(x) for x in t.mean],
                    std=[float(x) for x in t.std],
                )
            else:
                if names != coco:
                    raise SystemExit(f"{name}.{w.name}: categories other than the detectors' COCO ones")
                from torchvision.ops.misc import FrozenBatchNorm2d

                norms = [m for m in reference.modules() if isinstance(m, FrozenBatchNorm2d)]
                epsilons = {m.eps for m in norms}
                variant.update(
                    labels="coco_categories.txt",
                    box_map=metrics.get("box_map"),
                    mask_map=metrics.get("mask_map"),
                    builder_kwargs={},
                    frozen_batchnorm=bool(norms),
                    batchnorm_eps=0.0 if epsilons == {0.0} else None,
                    **input_limits(reference),
                )
            variant = {k: v for k, v in variant.items() if v not in (None, [])}
            entry = entry_from_mapping(
                {"model": name, "architecture": name, "task": "segment", **variant}, source="gen"
            )
            ours = factory(entry)()
            if repr(ours) != repr(reference) or _shapes(ours) != _shapes(reference):
                raise SystemExit(f"{name}.{w.name}: ptm's build differs from torchvision's; teach ptm about it")
            variants.append(variant)
        models.append({"model": name, "architecture": name, "task": "segment", "weights": variants})
    assert voc is not None
    return models, voc


KINETICS_LICENCE = "BSD-3-Clause (torchvision); trained on Kinetics-400, whose terms of use apply"


def video_entries() -> tuple[list[dict[str, Any]], list[str]]:
    """Every torchvision video classifier's weights, with the clip length and frame rate they were measured at."""
    import torchvision.models.video as video

    models: list[dict[str, Any]] = []
    categories: list[str] = []
    for name in tvm.list_models(module=video):
        enum = tvm.get_model_weights(name)
        variants = []
        for w in enum:
            if not categories:
                categories = list(w.meta["categories"])
            if list(w.meta["categories"]) != categories:
                raise SystemExit(f"{name}.{w.name}: labels other than Kinetics-400's; teach this script about them")
            docs = w.meta.get("_docs", "")
            clip = re.search(r"clip_len=(\d+)", docs)
            rate = re.search(r"frame_rate=([\d.]+)", docs)
            if clip is None or rate is None:
                raise SystemExit(f"{name}.{w.name}: its documentation gives no clip_len or frame_rate")
            t = w.transforms()
            file_name = w.url.rsplit("/", 1)[-1]
            match = re.search(r"-([0-9a-f]{8,})\.pth$", file_name)
            metrics = next(iter(w.meta["_metrics"].values()))
            resize = [int(x) for x in t.resize_size]
            variants.append(
                {
                    "name": w.name,
                    "default": w.name == enum.DEFAULT.name,
                    "url": w.url,
                    "sha256": match.group(1) if match else None,
                    "size_mb": w.meta.get("_file_size"),
                    "num_params": w.meta["num_params"],
                    "gflops": w.meta.get("_ops"),
                    "acc1": metrics.get("acc@1"),
                    "acc5": metrics.get("acc@5"),
                    "labels": "kinetics400_classes.txt",
                    "num_classes": len(categories),
                    "recipe": w.meta.get("recipe"),
                    "licence": KINETICS_LICENCE,
                    "builder_kwargs": builder_kwargs(name, w),
                    "clip_frames": int(clip.group(1)),
                    "clip_rate": float(rate.group(1)),
                    **({"frame_size": resize} if len(resize) == 2 else {"resize": resize[0]}),
                    "crop": int(t.crop_size[0]),
                    "interpolation": t.interpolation.value,
                    "mean": [float(x) for x in t.mean],
                    "std": [float(x) for x in t.std],
                }
            )
        models.append({"model": name, "architecture": name, "task": "classify", "weights": variants})
    return models, categories


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def main() -> None:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    imagenet = list(_IMAGENET_CATEGORIES)
    (MODELS_DIR / "imagenet_classes.txt").write_text("\n".join(imagenet) + "\n", encoding="utf-8")

    models = []
    for name in tvm.list_models(module=tvm):
        enum = tvm.get_model_weights(name)
        default_name = enum.DEFAULT.name
        variants = []
        for w in enum:
            file_name = w.url.rsplit("/", 1)[-1]
            match = re.search(r"-([0-9a-f]{8,})\.pth$", file_name)
            categories = w.meta["categories"]
            if categories is None:
                # Feature extractors without a classifier head (vgg16's
                # IMAGENET1K_FEATURES) cannot classify anything.
                continue
            if list(categories) != imagenet:
                raise SystemExit(f"{name}.{w.name}: labels other than ImageNet's; teach this script about them")
            metrics = next(iter(w.meta["_metrics"].values()))
            variants.append(
                {
                    "name": w.name,
                    "default": w.name == default_name,
                    "url": w.url,
                    "sha256": KNOWN_FULL_SHA256.get(file_name, match.group(1) if match else None),
                    "size_mb": w.meta.get("_file_size"),
                    "num_params": w.meta["num_params"],
                    "gflops": w.meta.get("_ops"),
                    "acc1": metrics.get("acc@1"),
                    "acc5": metrics.get("acc@5"),
                    "min_size": list(w.meta["min_size"]),
                    "labels": "imagenet",
                    "num_classes": len(categories),
                    "recipe": w.meta.get("recipe"),
                    "licence": LICENCE,
                    "builder_kwargs": builder_kwargs(name, w),
                    **preprocessing(w),
                }
            )
        models.append({"model": name, "architecture": name, "task": "classify", "weights": variants})

    doc = {
        "generated_by": "scripts/gen_torchvision_catalog.py",
        "torchvision": torchvision.__version__.split("+")[0],
        "models": models,
    }
    out = MODELS_DIR / "torchvision.json"
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}: {len(models)} models, {sum(len(m['weights']) for m in models)} weights")

    detectors, categories = detection_entries()
    (MODELS_DIR / "coco_categories.txt").write_text("\n".join(categories) + "\n", encoding="utf-8")
    (MODELS_DIR / "coco_person.txt").write_text("no person\nperson\n", encoding="utf-8")
    doc = {**doc, "models": detectors}
    out = MODELS_DIR / "torchvision_detection.json"
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(
        f"wrote {out.relative_to(ROOT)}: {len(detectors)} models, {sum(len(m['weights']) for m in detectors)} weights"
    )

    videos, kinetics = video_entries()
    (MODELS_DIR / "kinetics400_classes.txt").write_text("\n".join(kinetics) + "\n", encoding="utf-8")
    doc = {**doc, "models": videos}
    out = MODELS_DIR / "torchvision_video.json"
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT)}: {len(videos)} models, {sum(len(m['weights']) for m in videos)} weights")

    segmenters, voc = segmentation_entries(categories)
    (MODELS_DIR / "voc_classes.txt").write_text("\n".join(voc) + "\n", encoding="utf-8")
    doc = {**doc, "models": segmenters}
    out = MODELS_DIR / "torchvision_segmentation.json"
    out.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    print(
        f"wrote {out.relative_to(ROOT)}: {len(segmenters)} models, {sum(len(m['weights']) for m in segmenters)} weights"
    )


if __name__ == "__main__":
    main()
