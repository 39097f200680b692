"""GPU code paths checked on the CPU: SDPA attention, regional compilation with the shared-modulation
fast path, bf16 autocast, gradient accumulation."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from conftest import randomize_, tiny_config
from patchforcing.cli import main
from patchforcing.errors import ConfigError
from patchforcing.models import PatchForcingTransformer
from patchforcing.models.layers import Attention
from patchforcing.training.distributed import check_batch_split, compile_network
from patchforcing.training.step import adamw

B, N = 4, 16  # tiny network: 8x8 inputs, patch 2


def explicit_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v written out, the textbook formula (docs/method.md §3.3)."""
    b, n, d = x.shape
    h = attn.num_heads
    q, k, v = attn.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (B, h, N, d_head)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)  # (B, h, N, N)
    return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


def test_sdpa_attention_equals_the_formula_in_float64():
    torch.manual_seed(0)
    attn = Attention(32, 4).double()
    x = torch.randn(3, 10, 32, dtype=torch.float64)
    assert torch.allclose(attn(x), explicit_attention(attn, x), atol=1e-12, rtol=0)


def test_attention_equals_the_permute_unbind_form_bit_for_bit():
    """Our q, k, v views (unbinding the (B, N, 3, heads, d) view) have the strides of the released
    code's ``permute(2, 0, 3, 1, 4).unbind(0)``: outputs and gradients are the same bits."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    attn = Attention(48, 4)
    x = torch.randn(3, 10, 48, requires_grad=True)

    def released(x):
        b, n, d = x.shape
        q, k, v = attn.qkv(x).reshape(b, n, 3, 4, d // 4).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))

    grad = torch.randn(3, 10, 48)
    ours, theirs = attn(x), released(x)
    assert torch.equal(ours, theirs)
    params = [x, attn.qkv.weight, attn.qkv.bias, attn.proj.weight]
    for a, b in zip(torch.autograd.grad(ours, params, grad), torch.autograd.grad(theirs, params, grad), strict=True):
        assert torch.equal(a, b)


def test_contiguous_tokens_give_the_same_bits_as_the_transposed_view(monkeypatch):
    """The patch embedding hands the blocks token-major memory; the released code's transposed
    view gives the same velocity, log-variance and gradients, bit for bit."""
    torch.manual_seed(0)
    net = randomize_(PatchForcingTransformer(tiny_config()))
    cfg = net.config
    x = torch.randn(B, cfg.in_channels, cfg.input_size, cfg.input_size)
    t, y = torch.rand(B, cfg.num_patches), torch.randint(0, cfg.num_classes, (B,))
    assert net.x_embedder(x).is_contiguous()

    def run():
        net.zero_grad(set_to_none=True)
        v, logvar = net(x, t, y)
        (v.square().mean() + logvar.mean()).backward()
        return [v, logvar] + [p.grad for p in net.parameters() if p.requires_grad]

    ours = run()
    monkeypatch.setattr(type(net.x_embedder), "forward", lambda self, x: self.proj(x).flatten(2).transpose(1, 2))
    assert not net.x_embedder(x).is_contiguous()
    for a, b in zip(ours, run(), strict=True):
        assert torch.equal(a, b)


def _times() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "global": torch.rand(B, generator=g),
        "shared": torch.rand(B, 1, generator=g).expand(B, N).contiguous(),  # Euler: one time per sample
        "two-valued": torch.where(torch.rand(B, N, generator=g) < 0.4, 0.3, 0.7),  # dual-loop, look-ahead
        "per-patch": torch.rand(B, N, generator=g),  # training
    }


def _modulation_rows(net: PatchForcingTransformer, x, t, y) -> list[int]:
    """Rows the first block's adaLN linear sees per forward: B*N without sharing, fewer with it."""
    rows: list[int] = []
    hook = net.blocks[0].adaLN_modulation[1].register_forward_hook(lambda _m, inp, _o: rows.append(inp[0].shape[0]))
    try:
        net(x, t, y)
    finally:
        hook.remove()
    return rows


def test_compiled_blocks_equal_eager_and_keep_the_fast_path():
    torch.manual_seed(0)
    net = randomize_(PatchForcingTransformer(tiny_config()))
    x, y = torch.randn(B, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    eager = {k: net(x, t, y) for k, t in _times().items()}
    compile_network(net, backend="aot_eager")  # the graphs inductor would compile, without a C++ toolchain
    assert list(net.state_dict()) == list(PatchForcingTransformer(tiny_config()).state_dict())  # names unchanged
    for kind, t in _times().items():
        out = net(x, t, y)
        assert torch.allclose(out.velocity, eager[kind].velocity, atol=1e-6), kind
        assert torch.allclose(out.logvar, eager[kind].logvar, atol=1e-6), kind
    assert _modulation_rows(net, x, _times()["shared"], y) == [B]  # one modulation row per sample
    assert _modulation_rows(net, x, _times()["two-valued"], y) == [2 * B]
    assert _modulation_rows(net, x, _times()["per-patch"], y) == [B * N]


def test_bf16_autocast_keeps_the_fast_path():
    net = randomize_(PatchForcingTransformer(tiny_config()))
    x, y, t = torch.randn(B, 3, 8, 8), torch.tensor([0, 1, 2, 3]), _times()["shared"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _modulation_rows(net, x, t, y) == [B]
        fast = net(x, t, y).velocity
        net.share_modulation = False  # the per-token path, as the reference computes it
        assert _modulation_rows(net, x, t, y) == [B * N]
        per_token = net(x, t, y).velocity
    assert fast.dtype == torch.bfloat16
    assert (fast.float() - per_token.float()).abs().max() <= 0.02 * per_token.float().abs().max()


@pytest.mark.slow
def test_inductor_compiled_blocks_equal_eager():
    """The real GPU setting's compiler (inductor), here on the CPU; about 1.5 minutes on 2 cores."""
    net = randomize_(PatchForcingTransformer(tiny_config()))
    x, y = torch.randn(B, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    eager = {k: net(x, t, y).velocity for k, t in _times().items()}
    compile_network(net)
    for kind, t in _times().items():
        assert torch.allclose(net(x, t, y).velocity, eager[kind], atol=1e-5), kind


TRAIN = ["--depth", "2", "--hidden-size", "32", "--num-heads", "2", "--device", "cpu", "--steps", "2",
         "--val-every", "0", "--sample-every", "0", "--warmup-steps", "1", "--batch-size", "16"]


def test_grad_accum_2_x_8_equals_batch_16(tmp_path, one_thread):
    for accum in (1, 2):
        assert main(["train", "--out", str(tmp_path / str(accum)), *TRAIN, "--grad-accum", str(accum)]) == 0
    one, two = (torch.load(tmp_path / a / "checkpoints" / "step-00000002.pt", weights_only=True) for a in ("1", "2"))
    assert one["model"].keys() == two["model"].keys()
    for name in one["model"]:
        assert torch.allclose(one["model"][name], two["model"][name], atol=1e-6, rtol=1e-5), name
    assert any(not torch.equal(one["model"][k], two["model"][k]) for k in one["model"])  # really two code paths
    logs = [json.loads(line) for line in (tmp_path / "2" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "1" / "metrics.jsonl").read_text().splitlines()]
    assert logs[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-5)


def test_grad_accum_must_split_the_batch(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="2 processes x 3 micro-batches"):
        check_batch_split(16, 3)
    check_batch_split(12, 3)


def test_trainer_adamw_is_the_default_on_the_cpu_and_fused_on_cuda(monkeypatch):
    """CPU runs keep PyTorch's default AdamW step bit for bit; all-CUDA weights take the fused kernel."""
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 3))
    plain = torch.nn.Parameter(ours.detach().clone())
    ours.grad = torch.randn(5, 3)
    plain.grad = ours.grad.clone()
    before = ours.detach().clone()
    opt = adamw([ours], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0)
    assert opt.defaults["fused"] is None
    opt.step()
    torch.optim.AdamW([plain], lr=1e-2, betas=(0.9, 0.999), weight_decay=0.0).step()
    assert torch.equal(ours, plain) and not torch.equal(ours, before)

    seen = []
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: seen.append(kw.get("fused")))
    on_cuda = SimpleNamespace(device=torch.device("cuda"))
    adamw([on_cuda, on_cuda], lr=1.0)
    adamw([on_cuda, ours], lr=1.0)  # mixed devices: the default implementation
    assert seen == [True, None]
