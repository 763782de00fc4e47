"""Building a network and filling it with weights, without wasted work.

A freshly constructed torchvision model spends most of its construction time
drawing random initial weights that the checkpoint then overwrites. ptm
builds the module on the ``meta`` device (no memory, no initialisation) and
assigns the loaded tensors straight into it. The few builders that compute
with real tensors while constructing (RegNet's width schedule) are built on
the CPU instead, with the ``torch.nn.init`` functions turned into no-ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import IncompatibleWeights

if TYPE_CHECKING:
    import torch
    from torch import nn

_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Make ``torch.nn.init`` leave tensors as allocated while models are built."""
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    try:
        for name in saved:
            setattr(init, name, keep)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def build_with_weights(
    factory: Callable[[], nn.Module], state_dict: Mapping[str, torch.Tensor], *, what: str
) -> nn.Module:
    """``factory()`` with ``state_dict`` loaded strictly, in eval mode.

    Raises ``IncompatibleWeights`` naming the missing, unexpected or
    mis-shaped keys when the file was saved for another architecture.
    """
    import torch

    try:
        # skip_init here too: initialising meta tensors is free but goes through
        # torch's reference implementations, whose first use imports the compiler (~2 s).
        with torch.device("meta"), skip_init():
            model = factory()
    except (NotImplementedError, RuntimeError):
        model = None
    if model is not None:
        check_compatible(model, state_dict, what=what)
        model.load_state_dict(state_dict, strict=True, assign=True)
        if not _has_meta_tensors(model):
            return model.eval()
    with skip_init():
        model = factory()
    check_compatible(model, state_dict, what=what)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _has_meta_tensors(model: nn.Module) -> bool:
    """Also looks at plain tensor attributes, which ``assign`` cannot fill."""
    import torch

    tensors = list(model.parameters()) + list(model.buffers())
    for module in model.modules():
        tensors.extend(v for v in vars(module).values() if isinstance(v, torch.Tensor))
    return any(t.is_meta for t in tensors)


def check_compatible(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state_dict[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    wrong_kind = [
        f"{k} {problem}"
        for k, v in expected.items()
        if k in state_dict and (problem := _kind_problem(state_dict[k], v)) is not None
    ]
    if not (missing or unexpected or wrong_shape or wrong_kind):
        return
    parts = []
    for label, keys in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", wrong_shape),
        ("wrong kind", wrong_kind),
    ):
        if keys:
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            parts.append(f"{label}: {shown}")
    raise IncompatibleWeights(
        f"the weights do not fit {what} ({'; '.join(parts)}); check -m/--model, or describe the model "
        "in a catalog file (PTM_CATALOG) with its architecture and num_classes"
    )


def _kind_problem(given: torch.Tensor, expected: torch.Tensor) -> str | None:
    """Why ``given`` cannot stand where the model keeps ``expected`` (None when it can).

    A model's floating tensors need dense real floating-point numbers: an
    integer, boolean, complex, sparse, quantized or storage-less (meta) tensor
    would load, and then fail or compute nonsense on the first image.
    """
    import torch

    if given.is_quantized:
        return f"is quantized ({str(given.dtype).removeprefix('torch.')})"
    if given.layout != torch.strided:
        return f"is {str(given.layout).removeprefix('torch.').replace('_', ' ')}, not dense"
    if given.is_meta:
        return "has no data (a meta tensor)"
    if expected.is_floating_point() and not given.is_floating_point():
        return f"holds {str(given.dtype).removeprefix('torch.')} (expected floating point)"
    return None
