"""What a projection is asked: a model preset (`conf/model/`), its shape, and the block it repeats."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from hydra.core.config_store import ConfigStore

import workloads
from bench.network import NetworkConfig
from workloads.base import ConfigError, Workload, WorkloadConfig

LM_HEAD = ("client", "private")
BLOCKS = {"block": "fit", "llama_block": "fit_llama"}  # the workloads a model can repeat: their fit preset


@dataclass
class ModelConfig:
    """A decoder-only transformer: `n_layers` blocks over `seq_len` tokens.

    `private_layers` (Marill's layer freezing): the last `private_layers` blocks run privately,
    the first `n_layers - private_layers` on the client in plaintext (None: all private). The
    embedding lookup always runs on the client (the token ids are its own). `lm_head` (d_model x
    vocab): `client` applies it in plaintext to the revealed last hidden state; `private` runs it
    as one more private linear layer. `workload`: the block it repeats (`block`: GPT-2's;
    `llama_block`: RMSNorm, rotary, grouped-query attention with `n_kv_heads`, SwiGLU).
    `softmax`, `norm`, `gelu` / `silu`: the block's variant.
    """

    name: str = "gpt2"
    n_layers: int = 12
    d_model: int = 768
    n_heads: int = 12
    d_ff: int = 3072
    vocab: int = 50257
    seq_len: int = 128
    private_layers: int | None = None
    lm_head: str = "client"
    softmax: str = "exact"
    norm: str = "exact"
    gelu: str = "poly"  # the GELU every backend runs (CKKS has no exact one)
    silu: str = "poly"  # likewise, for llama_block
    n_kv_heads: int | None = None  # llama_block: K/V heads (None: n_heads)
    workload: str = "block"
    block: str = "gpt2"  # the block it is projected with, in words, when not its own (pythia-70m)


@dataclass
class ProjectConfig:
    results: list[str] = field(default_factory=list)  # the RESULTS paths, given positionally
    model: ModelConfig = field(default_factory=ModelConfig)
    networks: dict[str, NetworkConfig] = field(default_factory=dict)  # from conf/network/
    network: str = "all"  # one of `networks`, or all
    backend: str = "all"  # one backend of the results, or all
    out: str | None = None  # default: reports/projection/<model>-s<seq_len>-p<private_layers>
    counter_bound: float = 0.05  # validation: the largest relative error a counter may show
    latency_bound: float = 0.25  # ... and a latency


def register() -> None:
    ConfigStore.instance().store(name="project_schema", node=ProjectConfig)


def block_config(model: ModelConfig) -> WorkloadConfig:
    """The block the model repeats, at the model's shape (validated: one-line ConfigError)."""
    if model.private_layers is not None and not 0 <= model.private_layers <= model.n_layers:
        raise ConfigError(f"model.private_layers={model.private_layers}: choose 0..{model.n_layers} (n_layers)")
    if model.lm_head not in LM_HEAD:
        raise ConfigError(f"model.lm_head={model.lm_head} is unknown; allowed: {', '.join(LM_HEAD)}")
    if model.workload not in BLOCKS:
        raise ConfigError(f"model.workload={model.workload} is not a block; choose one of: {', '.join(BLOCKS)}")
    cls = workloads.get(model.workload)
    keys = {f.name for f in fields(cls.Config)} & {f.name for f in fields(ModelConfig)} - {"name"}
    cfg = cls.Config(**{k: getattr(model, k) for k in keys})
    try:
        cls.validate(cfg)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("workload.", "model.")) from None
    return cfg


def private_layers(model: ModelConfig) -> int:
    return model.n_layers if model.private_layers is None else model.private_layers


def block(model: ModelConfig) -> Workload:
    """The block the model repeats, at its shape."""
    return workloads.get(model.workload)(block_config(model))


def variant(model: ModelConfig) -> str:
    """The `variant` of the block cells that project this model."""
    return block(model).variant


def shape(model: ModelConfig) -> dict[str, int]:
    return {"seq_len": model.seq_len, "d_model": model.d_model, "n_heads": model.n_heads, "d_ff": model.d_ff}


def kv_group(block: Workload) -> int:
    """Query heads per K/V head (1 but for grouped-query attention)."""
    return block.cfg.n_heads // (getattr(block.cfg, "n_kv_heads", None) or block.cfg.n_heads)
