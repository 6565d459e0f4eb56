"""The float64 references against independent torch implementations, and workload validation."""

import math

import pytest
import torch
import torch.nn.functional as F

import workloads
from workloads.base import ConfigError

TOL = 1e-9  # float64 against float64: only rounding differs


def make(name, **cfg):
    cls = workloads.get(name)
    config = cls.Config(**cfg)
    cls.validate(config)
    return cls(config)


def heads_qkv(x, w, n_heads, prefix=""):
    def proj(n):
        y = x @ w[f"{prefix}w{n}"] + w[f"{prefix}b{n}"]
        return y.reshape(x.shape[0], n_heads, -1).transpose(0, 1)

    return proj("q"), proj("k"), proj("v")


def masked_normalised(e, eps):
    e = torch.tril(e)
    return e / (e.sum(-1, keepdim=True) + eps)


@pytest.mark.parametrize("seq_len,d_model,n_heads", [(8, 64, 4), (13, 96, 3), (1, 32, 2)])
def test_exact_head_matches_scaled_dot_product_attention(seq_len, d_model, n_heads):
    wl = make("attention_head", seq_len=seq_len, d_model=d_model, n_heads=n_heads)
    x, w = wl.inputs()["x"], wl.weights()
    q, k, v = heads_qkv(x, w, 1)
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    expected = att[0] @ w["wo"] + w["bo"]
    out, per_op = wl.reference()
    assert out.shape == (seq_len, d_model)
    assert torch.allclose(out, expected, atol=TOL, rtol=0)
    assert list(per_op) == ["qkv_proj", "qk_matmul", "softmax", "av_matmul", "out_proj"]


@pytest.mark.parametrize("variant", ["power", "gaussian", "quad2", "relu"])
def test_softmax_variants_match_their_formulas(variant):
    wl = make("attention_head", softmax=variant, seq_len=6, d_model=32, n_heads=2)
    cfg, d = wl.cfg, wl.head_dim
    q, k, _ = heads_qkv(wl.inputs()["x"], wl.weights(), 1)
    s = q @ k.transpose(-2, -1) / math.sqrt(d)
    expected = {
        "power": lambda: masked_normalised(s**cfg.power_p, cfg.norm_eps),
        "quad2": lambda: masked_normalised((s + cfg.quad_c) ** 2, cfg.norm_eps),
        "relu": lambda: masked_normalised(torch.relu(s), cfg.norm_eps),
        "gaussian": lambda: torch.tril(
            torch.exp(-(torch.cdist(q, k) ** 2) / (2 * cfg.gaussian_sigma**2 * math.sqrt(d)))
        ),
    }[variant]()
    probs = wl.reference()[1]["softmax"]
    assert torch.allclose(probs, expected, atol=TOL, rtol=0)
    if variant != "gaussian":  # normalised rows sum to one up to eps (relu rows may be all zero)
        sums = probs.sum(-1)
        assert torch.allclose(sums[sums > 0.5], torch.ones_like(sums[sums > 0.5]), atol=1e-4)
        assert (sums > 0.5).sum() >= 5


def test_layernorm_matches_torch():
    wl = make("layernorm", seq_len=5, d_model=48)
    x, w = wl.inputs()["x"], wl.weights()
    expected = F.layer_norm(x, (48,), w["gamma"], w["beta"], eps=wl.cfg.eps)
    assert torch.allclose(wl.reference()[0], expected, atol=TOL, rtol=0)


def test_poly_layernorm_is_close_to_exact_within_its_stated_range():
    wl = make("layernorm", norm="poly", seq_len=16, d_model=64)
    x, w = wl.inputs()["x"], wl.weights()
    var = x.var(-1, unbiased=False) + wl.cfg.eps
    assert var.min() > wl.cfg.rsqrt_lo and var.max() < wl.cfg.rsqrt_hi
    expected = F.layer_norm(x, (64,), w["gamma"], w["beta"], eps=wl.cfg.eps)
    err = (wl.reference()[0] - expected).abs().max()
    assert 1e-9 < err < 2e-3  # a real approximation, 2.3e-4 relative on 1/sqrt


def independent_block(wl, n_heads=None):
    """GPT-2 block from torch modules and functions, sharing only the weights."""
    cfg, d = wl.cfg, wl.cfg.d_model
    n_heads = n_heads or cfg.n_heads
    x, w = wl.inputs()["x"], wl.weights()

    def ln(t, name):
        layer = torch.nn.LayerNorm(d, eps=cfg.eps, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(w[f"{name}.gamma"])
            layer.bias.copy_(w[f"{name}.beta"])
            return layer(t)

    q, k, v = heads_qkv(ln(x, "ln1"), w, n_heads, prefix="attn.")
    att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = x + att.transpose(0, 1).reshape(cfg.seq_len, d) @ w["attn.wo"] + w["attn.bo"]
    hidden = ln(h, "ln2") @ w["mlp.w1"] + w["mlp.b1"]
    return h + F.gelu(hidden) @ w["mlp.w2"] + w["mlp.b2"]


def test_block_matches_torch_modules():
    wl = make("block", seq_len=7, d_model=48, n_heads=4, d_ff=96)
    out, per_op = wl.reference()
    assert torch.allclose(out, independent_block(wl), atol=TOL, rtol=0)
    assert {"ln1.rsqrt", "attn.softmax", "attn.residual", "mlp.gelu", "mlp.residual"} <= set(per_op)


@pytest.mark.parametrize("n_heads,merge", [(4, 2), (4, 4), (6, 3)])
def test_head_merge_is_attention_with_fewer_wider_heads(n_heads, merge):
    wl = make("block", seq_len=5, d_model=48, n_heads=n_heads, d_ff=96, head_merge=merge)
    out, per_op = wl.reference()
    assert torch.allclose(out, independent_block(wl, n_heads // merge), atol=TOL, rtol=0)
    assert per_op["attn.softmax"].shape == (n_heads // merge, 5, 5)  # merge times fewer softmax rows
    standard = make("block", seq_len=5, d_model=48, n_heads=n_heads, d_ff=96)
    assert (out - standard.reference()[0]).abs().max() > 1e-3  # a different model, not a relabelling


def test_head_merge_must_divide_n_heads():
    with pytest.raises(
        ConfigError, match=r"workload.head_merge=3 must divide workload.n_heads=4; choose among \[1, 2, 4\]"
    ):
        make("block", n_heads=4, head_merge=3)


def test_lora_public_base_changes_only_what_is_private():
    private, public = make("lora_update", base="private"), make("lora_update", base="public")
    assert private.public_weights() == set() and public.public_weights() == {"w", "b"}
    for a, b in zip(private.reference()[0], public.reference()[0], strict=True):
        assert torch.equal(a, b)  # same arithmetic: only the threat model differs
    assert all(make(n).public_weights() == set() for n in ("attention_head", "layernorm", "block"))


@pytest.mark.parametrize("gelu,bound", [("poly", 0.05), ("quad", 5.0), ("relu", 0.2)])
def test_block_gelu_variants_approximate_exact_gelu(gelu, bound):
    wl = make("block", gelu=gelu, seq_len=4, d_model=32, n_heads=2)
    hidden = wl.reference()[1]["mlp.fc1"]
    approx = wl.reference()[1]["mlp.gelu"]
    err = (approx - F.gelu(hidden)).abs().max()
    assert 0 < err < bound


def test_lora_step_matches_autograd():
    wl = make("lora_update", seq_len=6, d_model=32, lora_rank=4)
    x, y = wl.inputs()["x"], wl.inputs()["y"]
    w = wl.weights()
    a = w["lora_a"].clone().requires_grad_()
    b = w["lora_b"].clone().requires_grad_()
    h = x @ w["w"] + w["b"] + (x @ a @ b) * wl.scale
    F.mse_loss(h, y).backward()
    new_a, new_b = wl.reference()[0]
    assert torch.allclose(new_a, a.detach() - wl.cfg.lr * a.grad, atol=TOL, rtol=0)
    assert torch.allclose(new_b, b.detach() - wl.cfg.lr * b.grad, atol=TOL, rtol=0)
    assert (a.grad.abs().max() > 0) and (b.grad.abs().max() > 0)  # a real, non-trivial step
    assert torch.isclose(wl.reference()[1]["loss"][1], F.mse_loss(h, y).detach())


def test_data_is_seeded():
    one, same, other = (make("block", seed=s) for s in (1, 1, 2))
    assert torch.equal(one.inputs()["x"], same.inputs()["x"])
    assert torch.equal(one.weights()["mlp.w1"], same.weights()["mlp.w1"])
    assert not torch.equal(one.inputs()["x"], other.inputs()["x"])


@pytest.mark.parametrize(
    "name,cfg,needle",
    [
        ("attention_head", {"d_model": 64, "n_heads": 5}, "workload.d_model=64 is not divisible by workload.n_heads=5"),
        ("block", {"softmax": "sparse"}, "workload.softmax=sparse is not a variant of block; allowed: exact, power"),
        ("layernorm", {"seq_len": 0}, "workload.seq_len=0 must be a positive integer"),
        ("attention_head", {"power_p": 3}, "workload.power_p=3 must be a positive even integer"),
        ("lora_update", {"lora_rank": 128, "d_model": 64}, "workload.lora_rank=128 exceeds workload.d_model=64"),
        ("layernorm", {"rsqrt_lo": 2.0, "rsqrt_hi": 1.0}, "need 0 < rsqrt_lo < rsqrt_hi"),
    ],
)
def test_bad_configs_are_refused_with_the_key_named(name, cfg, needle):
    cls = workloads.get(name)
    with pytest.raises(ConfigError) as err:
        cls.validate(cls.Config(**cfg))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_workload_names_the_choices():
    with pytest.raises(ConfigError, match="choose one of: attention_head, layernorm, block, lora_update"):
        workloads.get("mlp")
