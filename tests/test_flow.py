"""The flow (docs/method.md §1, §4): per-patch interpolation, the training objective, the validation loss."""

from __future__ import annotations

import math

import pytest
import torch

import patchforcing as pf
from conftest import make_model, tiny_config
from patchforcing.models import ModelOutput
from reference_impl import ref_forward, ref_training_loss

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


# --- interpolation ------------------------------------------------------------------------------
def test_interpolation_endpoints():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(2, 3, 8, 8, generator=g, dtype=F64), torch.randn(2, 3, 8, 8, generator=g, dtype=F64)
    assert torch.equal(pf.interpolate(x0, x1, torch.zeros(2, 16, dtype=F64), 2), x0)
    assert torch.equal(pf.interpolate(x0, x1, torch.ones(2, 16, dtype=F64), 2), x1)
    assert torch.equal(pf.interpolate(x0, x1, torch.zeros(2, dtype=F64), 2), x0)
    assert torch.equal(pf.interpolate(x0, x1, torch.ones(2, dtype=F64), 2), x1)
    half = pf.interpolate(x0, x1, torch.full((2,), 0.5, dtype=F64), 2)
    torch.testing.assert_close(half, (x0 + x1) / 2, atol=1e-15, rtol=0)


@pytest.mark.parametrize("p, height, width", [(2, 8, 12), (4, 8, 8), (1, 3, 5)])
def test_each_patch_sits_at_its_own_time_row_major(p, height, width):
    """Non-square grids catch row/column confusion: patch (i, j) is token i*w + j."""
    g = torch.Generator().manual_seed(1)
    b, gh, gw = 2, height // p, width // p
    x0 = torch.randn(b, 3, height, width, generator=g, dtype=F64)
    x1 = torch.randn(b, 3, height, width, generator=g, dtype=F64)
    t = torch.rand(b, gh * gw, generator=g, dtype=F64)
    xt = pf.interpolate(x0, x1, t, p)
    for i in range(gh):
        for j in range(gw):
            sl = (slice(None), slice(None), slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p))
            tt = t[:, i * gw + j].view(b, 1, 1, 1)
            torch.testing.assert_close(xt[sl], tt * x1[sl] + (1 - tt) * x0[sl], atol=1e-15, rtol=0)


# --- training loss ---------------------------------------------------------------------------------
def _batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(b, 3, 8, 8, generator=g, dtype=F64)
    x0 = torch.randn(b, 3, 8, 8, generator=g, dtype=F64)
    return x1, x0, g


def _ref_net(model):
    cfg, sd = model.config, model.state_dict()
    return lambda x, t, y: ref_forward(sd, x, t, y, patch_size=cfg.patch_size, num_heads=cfg.num_heads, head=cfg.has_difficulty_head)


@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
@pytest.mark.parametrize("time_kind", ["per-patch", "per-sample"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_training_loss_matches_reference(kind, time_kind, with_labels):
    model = make_model(kind, 2, seed=4).eval()
    x1, x0, g = _batch()
    t = torch.rand(4, 16, generator=g, dtype=F64) if time_kind == "per-patch" else torch.rand(4, generator=g, dtype=F64)
    y = torch.tensor([0, 4, 1, 3]) if with_labels else None
    out = pf.training_loss(model, x1, x0=x0, t=t, labels=y)
    loss, flow, nll = ref_training_loss(_ref_net(model), x1, x0, t, y, patch_size=2)
    assert set(out) == {"loss", "flow_loss", "uncertainty_loss"}
    assert all(v.shape == () for v in out.values())
    torch.testing.assert_close(out["flow_loss"], flow, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["loss"], loss, atol=1e-10, rtol=0)
    torch.testing.assert_close(out["uncertainty_loss"], nll, atol=1e-10, rtol=0)
    if kind == "sit":
        assert out["loss"] == out["flow_loss"] and out["uncertainty_loss"] == 0
    else:
        assert out["uncertainty_loss"] != 0
        torch.testing.assert_close(out["loss"], out["flow_loss"] + 0.01 * out["uncertainty_loss"], atol=1e-14, rtol=0)


def test_uncertainty_weight_is_lambda(pf_model):
    x1, x0, g = _batch(1)
    t = torch.rand(4, 16, generator=g, dtype=F64)
    a = pf.training_loss(pf_model, x1, x0=x0, t=t, uncertainty_weight=0.5)
    torch.testing.assert_close(a["loss"], a["flow_loss"] + 0.5 * a["uncertainty_loss"], atol=1e-14, rtol=0)


class _Fixed(torch.nn.Module):
    """A fake network returning a given velocity and logvar, for exact loss formulas."""

    def __init__(self, v, logvar):
        super().__init__()
        self.config = tiny_config()
        self.v, self.logvar = v, logvar
        self.anchor = torch.nn.Parameter(torch.zeros((), dtype=F64))

    def forward(self, x, t, y=None):
        return ModelOutput(self.v + 0 * self.anchor, self.logvar + 0 * self.anchor)


def test_sigma_clamp_and_detached_mean():
    """logvar far outside [-30, 20] is clamped (sigma in [e^-15, e^10]); the NLL gives no gradient
    to the velocity (mean detached) but does to logvar."""
    x1, x0, _ = _batch(2, b=1)
    u = x1 - x0
    v = torch.zeros_like(u, requires_grad=True)
    logvar = torch.full((1, 1, 8, 8), 100.0, dtype=F64)
    logvar[..., :4, :] = -100.0
    logvar.requires_grad_(True)

    class Net(_Fixed):
        def forward(self, x, t, y=None):
            return ModelOutput(v, logvar)

    out = pf.training_loss(Net(None, None), x1, x0=x0, t=torch.rand(1, 16, dtype=F64))
    log_sigma = torch.where(logvar > 0, torch.tensor(10.0, dtype=F64), torch.tensor(-15.0, dtype=F64))
    nll = 0.5 * (math.log(2 * math.pi) + 2 * log_sigma + u**2 / torch.exp(2 * log_sigma))
    torch.testing.assert_close(out["uncertainty_loss"], nll.mean(), rtol=1e-12, atol=0)
    (grad_v,) = torch.autograd.grad(out["uncertainty_loss"], v, retain_graph=True, allow_unused=True)
    assert grad_v is None or torch.count_nonzero(grad_v) == 0
    (grad_v_total,) = torch.autograd.grad(out["loss"], v, retain_graph=True)
    torch.testing.assert_close(grad_v_total, 2 * (v - u).detach() / u.numel(), atol=1e-15, rtol=0)


def test_logvar_gradient_only_from_the_nll():
    x1, x0, _ = _batch(3, b=2)
    v = torch.randn(2, 3, 8, 8, dtype=F64, requires_grad=True)
    logvar = torch.randn(2, 1, 8, 8, dtype=F64, requires_grad=True)

    class Net(_Fixed):
        def forward(self, x, t, y=None):
            return ModelOutput(v, logvar)

    out = pf.training_loss(Net(None, None), x1, x0=x0, t=torch.rand(2, 16, dtype=F64))
    (g,) = torch.autograd.grad(out["loss"], logvar)
    # d/dl of 0.01 * mean_c 0.5 (l + r^2 e^-l) over B*C*H*W elements, summed over C channels
    r2 = ((x1 - x0) - v.detach()) ** 2
    expected = 0.01 * 0.5 * (1 - r2 * torch.exp(-logvar.detach())).sum(dim=1, keepdim=True) / r2.numel()
    torch.testing.assert_close(g, expected, atol=1e-14, rtol=1e-10)


def test_drawn_times_and_noise_are_reproducible(pf_model):
    x1, _, _ = _batch(4)
    a = pf.training_loss(pf_model, x1, generator=torch.Generator().manual_seed(0))
    b = pf.training_loss(pf_model, x1, generator=torch.Generator().manual_seed(0))
    c = pf.training_loss(pf_model, x1, generator=torch.Generator().manual_seed(1))
    assert a["loss"] == b["loss"] and a["loss"] != c["loss"]
    for name in pf.DISTRIBUTIONS:
        out = pf.training_loss(pf_model, x1, timesteps=name, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(out["loss"])


def test_training_loss_shape_errors(pf_model):
    x1, x0, _ = _batch(5)
    with pytest.raises(pf.ShapeError, match="x0 has shape"):
        pf.training_loss(pf_model, x1, x0=x0[:, :2])


# --- label dropout -------------------------------------------------------------------------------
class _Recorder(torch.nn.Module):
    """Records the labels the network sees; returns zeros."""

    def __init__(self, dropout):
        super().__init__()
        self.config = tiny_config(class_dropout_prob=dropout)
        self.seen = []

    def forward(self, x, t, y=None):
        self.seen.append(y)
        return ModelOutput(torch.zeros_like(x), torch.zeros_like(x[:, :1]))


def test_label_dropout_only_in_train_mode():
    b = 4000
    x1 = torch.zeros(b, 3, 8, 8)
    labels = torch.randint(0, 5, (b,), generator=torch.Generator().manual_seed(0))
    net = _Recorder(0.1)
    net.eval()
    pf.training_loss(net, x1, labels=labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(net.seen[-1], labels)
    net.train()
    pf.training_loss(net, x1, labels=labels, generator=torch.Generator().manual_seed(1))
    seen = net.seen[-1]
    dropped = seen != labels
    assert torch.equal(seen[dropped], torch.full((int(dropped.sum()),), 5))  # the null class
    assert abs(float(dropped.float().mean()) - 0.1) < 0.02
    # no labels: the network gets None (= null class) in either mode
    pf.training_loss(net, x1[:2], labels=None)
    assert net.seen[-1] is None


def test_label_dropout_reaches_real_network_loss():
    """With dropout probability 1 in train mode, the loss equals the null-class loss."""
    model = make_model("patch-forcing", 2, seed=7, class_dropout_prob=1.0)
    x1, x0, g = _batch(6)
    t = torch.rand(4, 16, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2, 3])
    model.train()
    dropped = pf.training_loss(model, x1, x0=x0, t=t, labels=y)
    model.eval()
    null = pf.training_loss(model, x1, x0=x0, t=t, labels=None)
    kept = pf.training_loss(model, x1, x0=x0, t=t, labels=y)
    torch.testing.assert_close(dropped["loss"], null["loss"], atol=1e-14, rtol=0)
    assert abs(float(kept["loss"].detach() - null["loss"].detach())) > 1e-6


# --- validation loss -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["patch-forcing", "sit"])
def test_validation_loss_matches_manual_computation(kind):
    model = make_model(kind, 2, seed=8)
    x1, x0, _ = _batch(7)
    y = torch.tensor([1, 2, 3, 4])
    mean, per_segment = pf.validation_loss(model, x1, x0=x0, labels=y)
    assert per_segment.shape == (8,)
    manual = []
    for k in range(8):
        t = (k + 0.5) / 8
        xt = t * x1 + (1 - t) * x0
        with torch.no_grad():
            v, _ = model(xt, torch.full((4,), t, dtype=F64), y)  # global time (B,)
        manual.append(((v - (x1 - x0)) ** 2).mean())
    manual = torch.stack(manual)
    torch.testing.assert_close(per_segment, manual, atol=1e-12, rtol=0)
    torch.testing.assert_close(mean, manual.mean(), atol=1e-12, rtol=0)
    assert per_segment.std() > 0  # segments differ: the times really differ


def test_validation_loss_segments_and_errors(pf_model):
    x1, x0, _ = _batch(8)
    _, per = pf.validation_loss(pf_model, x1, x0=x0, num_segments=3)
    assert per.shape == (3,)
    with pytest.raises(ValueError):
        pf.validation_loss(pf_model, x1, x0=x0, num_segments=0)
