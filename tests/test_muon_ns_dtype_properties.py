"""Muon's float32 path as a property over generated shapes and options: two steps with
``ns_dtype: float32`` equal, bit for bit, the direct computation (momentum and Nesterov
update, decoupled weight decay, timm's Newton-Schulz iteration in float32 of the flattened
update, lr scale by shape), and each step's direction is float64's iteration to 1e-5."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_muon import newton_schulz
from timm.optim.muon import get_lr_scale, zeropower_via_newtonschulz

from groupwise.optim import Muon
from groupwise.optim.muon import ADJUST_LR_FNS, DEFAULT_NS_COEFFICIENTS

SHAPES = st.one_of(
    st.tuples(st.integers(2, 24), st.integers(2, 24)),  # weight matrices, wide or tall
    st.tuples(st.integers(2, 12), st.integers(1, 6), st.sampled_from([1, 3]), st.just(3)),
)


@settings(max_examples=20, deadline=None)
@given(
    shape=SHAPES,
    momentum=st.floats(0.0, 0.95),
    nesterov=st.booleans(),
    lr=st.floats(1e-3, 0.5),
    weight_decay=st.floats(0.0, 0.2),
    adjust_lr_fn=st.sampled_from(ADJUST_LR_FNS),
    ns_steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_float32_steps_are_the_direct_float32_computation(
    shape, momentum, nesterov, lr, weight_decay, adjust_lr_fn, ns_steps, seed
):
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(shape, generator=generator)
    grads = [torch.randn(shape, generator=generator) for _ in range(2)]
    param = torch.nn.Parameter(start.clone())
    optimizer = Muon(
        [param],
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        adjust_lr_fn=adjust_lr_fn,
        ns_steps=ns_steps,
        ns_dtype="float32",
    )

    expected, buffer = start.clone(), torch.zeros(shape)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        expected.mul_(1 - lr * weight_decay)
        buffer.lerp_(grad, 1 - momentum)
        update = grad.lerp(buffer, momentum) if nesterov else buffer.clone()
        matrix = update.reshape(shape[0], -1)
        ortho = zeropower_via_newtonschulz(
            matrix, ns_steps, [DEFAULT_NS_COEFFICIENTS], dtype=torch.float32
        )
        assert ortho.dtype == torch.float32
        # float32's iteration is float64's to rounding: independent of timm's code
        torch.testing.assert_close(ortho.double(), newton_schulz(matrix, ns_steps), rtol=0,
                                   atol=1e-5)  # fmt: skip
        scale = get_lr_scale(matrix.shape, adjust_lr_fn) if adjust_lr_fn else 1.0
        expected.add_(ortho.reshape(shape), alpha=-lr * scale)
        assert torch.equal(param.detach(), expected)
    assert torch.equal(optimizer.state[param]["momentum_buffer"], buffer)
