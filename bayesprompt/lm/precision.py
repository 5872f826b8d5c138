"""bf16 autocast that stays fast on CPUs without bf16 units.

Under ``torch.autocast(dtype=torch.bfloat16)`` a linear layer rounds its input, weight and
bias to bf16, multiplies with fp32 accumulation and rounds the result to bf16. CPUs with
AVX-512 BF16 or AMX do this in hardware (about 3x faster than fp32 for MiniLM). On an
AVX2-only CPU PyTorch emulates the bf16 GEMM, which was about 4x *slower* than fp32 on a 2-core AVX2
machine (seconds per call, 32 SST-2 examples, one thread: 3.5 in bf16, 0.72 in fp32).

:func:`bf16_autocast` therefore runs linear layers and ``matmul``/``mm``/``bmm``/``addmm``/
``baddbmm`` on such CPUs as fp32 GEMMs on bf16-rounded operands, rounded back to bf16: the
same arithmetic as the bf16 units (bf16 operands, fp32 accumulation, one rounding), at about
fp32 speed (0.88 s on the same call). Elementwise results differ from PyTorch's own bf16
GEMM only by the order of accumulation (one bf16 ulp on 0.01% of a 512 x 1536 output in a
test), as they do between two CPUs with bf16 units; through MiniLM's six layers that moved
class logits by at most
0.015 (cosines by 0.0006). Every other op runs as under plain autocast.

Examples
--------
>>> import torch
>>> x, w = torch.randn(8, 16), torch.randn(4, 16)
>>> with bf16_autocast(torch.device("cpu"), emulate=True):
...     y = torch.nn.functional.linear(x, w)
>>> y.dtype
torch.bfloat16
>>> exact = x.bfloat16().double() @ w.bfloat16().double().T
>>> bool(((y.double() - exact).abs() <= exact.abs() / 128 + 1e-6).all())  # within one bf16 ulp
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["bf16_autocast", "bf16_arithmetic", "native_bf16"]

#: The GEMM functions :func:`bf16_autocast` routes through fp32 on a CPU without bf16 units.
#: Attention through ``scaled_dot_product_attention``, convolutions and ``einsum`` stay on
#: PyTorch's own bf16 path (MiniLM's attention is under 10% of its time).
_GEMMS: frozenset[Callable[..., Any]] = frozenset({
    F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm,
    torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm, torch.Tensor.addmm,
    torch.Tensor.baddbmm,
})


def native_bf16(device: torch.device) -> bool:
    """Whether PyTorch has a fast bf16 GEMM path on ``device``.

    On a CPU this asks oneDNN, which says yes for AVX-512 BF16 and AMX, and also for plain
    AVX-512 CPUs, where its bf16 kernels convert on the fly; builds without that probe fall
    back on PyTorch's CPU capability (``AVX512...``). AVX2-only CPUs get no. Devices other
    than CPU and CUDA count as native.

    Examples
    --------
    >>> isinstance(native_bf16(torch.device("cpu")), bool)
    True
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return True
    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if probe is None:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return bool(probe())


def bf16_arithmetic(device: torch.device) -> str:
    """How :func:`bf16_autocast` runs bf16 GEMMs on ``device``: ``"native"`` (PyTorch's own
    path) or ``"fp32-accumulate emulation"`` (a CPU without a fast bf16 path)."""
    return "fp32-accumulate emulation" if device.type == "cpu" and not native_bf16(device) else "native"


def _rounded(value: Any) -> Any:
    """A floating tensor rounded to bf16 and held in fp32; anything else unchanged."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.bfloat16).float()
    return value


class _Fp32AccumulatedBf16(TorchFunctionMode):
    """Runs the GEMMs of :data:`_GEMMS` as fp32 GEMMs on bf16-rounded operands, while bf16
    autocast is on for the CPU; the result is rounded to bf16, as autocast's would be."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if func not in _GEMMS or "out" in kwargs or not _bf16_autocast_on() or not _all_cpu_floats(args, kwargs):
            return func(*args, **kwargs)  # autocast does not cast calls with out= either
        with torch.autocast("cpu", enabled=False):
            out = func(*map(_rounded, args), **{k: _rounded(v) for k, v in kwargs.items()})
        return out.to(torch.bfloat16)


def _bf16_autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


#: The dtypes CPU autocast casts to bf16 (float64 operands are left alone, here as there).
_AUTOCAST_DTYPES = frozenset({torch.float32, torch.bfloat16, torch.float16})


def _all_cpu_floats(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    tensors = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)]
    return bool(tensors) and all(t.device.type == "cpu" and t.dtype in _AUTOCAST_DTYPES for t in tensors)


@contextlib.contextmanager
def bf16_autocast(device: torch.device, emulate: bool | None = None) -> Iterator[None]:
    """bf16 autocast on ``device``; on a CPU without bf16 units, with fp32-accumulated GEMMs.

    Parameters
    ----------
    device : torch.device
        Where the model runs.
    emulate : bool or None
        Route GEMMs through fp32 (see the module docstring); ``None``: where
        :func:`native_bf16` is false. Only CPUs are ever emulated.
    """
    emulate = (not native_bf16(device)) if emulate is None else emulate
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.autocast(device_type=device.type, dtype=torch.bfloat16))
        if emulate and device.type == "cpu":
            stack.enter_context(_Fp32AccumulatedBf16())
        yield
