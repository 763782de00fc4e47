"""Regenerate models/torchvision.json from the installed torchvision.

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


if __name__ == "__main__":
    main()
