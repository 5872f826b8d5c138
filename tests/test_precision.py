"""bf16 autocast with fp32-accumulated GEMMs on CPUs without bf16 units (``bayesprompt.lm.precision``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from bayesprompt.lm import bf16_arithmetic, bf16_autocast, native_bf16

CPU = torch.device("cpu")


def one_ulp(exact: torch.Tensor) -> torch.Tensor:
    """One bf16 unit in the last place at each value (8 significant bits), plus a floor near zero."""
    return exact.abs() / 128 + 1e-6


GEMMS = {
    "linear": lambda x, w, b: F.linear(x, w, b),
    "addmm": lambda x, w, b: torch.addmm(b, x.flatten(0, 1), w.T),
    "baddbmm": lambda x, w, b: torch.baddbmm(b.expand(x.shape[0], 1, -1), x, w.T.expand(x.shape[0], -1, -1)),
    "matmul": lambda x, w, b: torch.matmul(x, w.T),
    "operator": lambda x, w, b: x @ w.T,
    "mm": lambda x, w, b: torch.mm(x.flatten(0, 1), w.T),
    "bmm": lambda x, w, b: torch.bmm(x, w.T.expand(x.shape[0], -1, -1)),
}


class GemmDtypes(TorchDispatchMode):
    """Records the operand dtypes of the GEMM kernels that actually run."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in ("addmm", "mm", "bmm", "baddbmm"):
            self.seen |= {a.dtype for a in args if isinstance(a, torch.Tensor)}
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(GEMMS))
def test_emulated_gemms_do_bf16_arithmetic(name):
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((4, 64, 96), (48, 96), (48,)))
    gemm = GEMMS[name]
    with bf16_autocast(CPU, emulate=False), GemmDtypes() as native:
        reference = gemm(x, w, b)
    with bf16_autocast(CPU, emulate=True), GemmDtypes() as fp32:
        emulated = gemm(x, w, b)
    assert native.seen == {torch.bfloat16} and fp32.seen == {torch.float32}  # the kernels that ran
    assert emulated.dtype == reference.dtype == torch.bfloat16
    # the exact product of the bf16-rounded operands, rounded once: both are within one ulp of it
    rx, rw, rb = (t.bfloat16().double() for t in (x, w, b))
    exact = gemm(rx, rw, rb)
    for result in (emulated, reference):
        assert ((result.double() - exact).abs() <= one_ulp(exact)).all()
    assert (emulated != reference).float().mean() < 0.01  # they differ only in the order of accumulation


@pytest.mark.parametrize("emulate", [False, True])
def test_emulation_runs_the_gemm_kernels_in_fp32(emulate):
    layer = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    with bf16_autocast(CPU, emulate=emulate), GemmDtypes() as spy:
        out = layer(torch.randn(5, 16))
    assert spy.seen == ({torch.float32} if emulate else {torch.bfloat16})
    assert out.dtype == torch.bfloat16


def test_emulation_leaves_other_ops_and_plain_fp32_alone():
    x, w = torch.randn(8, 16), torch.randn(4, 16)
    with bf16_autocast(CPU, emulate=True):
        assert torch.tanh(x).dtype == torch.float32
        wide = F.linear(x.double(), w.double())  # float64 is not cast, by autocast nor here
        assert wide.dtype == torch.float64
        torch.testing.assert_close(wide, x.double() @ w.double().T, rtol=1e-12, atol=1e-12)
        with torch.autocast("cpu", enabled=False):  # autocast off inside: a plain fp32 GEMM
            plain = F.linear(x, w)
    assert plain.dtype == torch.float32 and torch.equal(plain, F.linear(x, w))
    assert F.linear(x, w).dtype == torch.float32  # nothing left behind after the context


def test_calls_with_out_are_left_to_autocast():
    a, b, out = torch.randn(4, 8), torch.randn(8, 3), torch.zeros(4, 3)
    with bf16_autocast(CPU, emulate=True):
        result = torch.matmul(a, b, out=out)
    assert result is out and torch.equal(out, a @ b)  # filled in fp32, as plain autocast does


def test_emulated_linear_has_the_gradient_of_bf16_autocast():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 24, generator=generator)
    grads = []
    for emulate in (False, True):
        w = torch.randn(8, 24, generator=torch.Generator().manual_seed(2)).requires_grad_()
        with bf16_autocast(CPU, emulate=emulate):
            loss = F.linear(x, w).float().square().sum()
        loss.backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=0.02, atol=0.02 * grads[0].abs().max().item())


def test_emulation_is_chosen_by_the_hardware(monkeypatch):
    entered = []
    monkeypatch.setattr("bayesprompt.lm.precision._Fp32AccumulatedBf16.__enter__",
                        lambda self: entered.append(True) or self)
    monkeypatch.setattr("bayesprompt.lm.precision._Fp32AccumulatedBf16.__exit__", lambda self, *exc: None)
    for native, expected in ((True, []), (False, [True])):
        entered.clear()
        monkeypatch.setattr("bayesprompt.lm.precision.native_bf16", lambda device, native=native: native)
        with bf16_autocast(CPU):
            assert torch.is_autocast_enabled("cpu")
        assert entered == expected
        assert bf16_arithmetic(CPU) == ("native" if native else "fp32-accumulate emulation")


def test_native_bf16_reads_the_cpu():
    assert isinstance(native_bf16(CPU), bool)
    assert native_bf16(torch.device("meta"))  # devices other than CPU and CUDA: no emulation
    assert bf16_arithmetic(torch.device("meta")) == "native"
