"""What a projection is asked: a model preset (`conf/model/`), its shape, and the block it repeats."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from bench.network import NetworkConfig
from workloads.base import ConfigError
from workloads.block import Block, BlockConfig

LM_HEAD = ("client", "private")


@dataclass
class ModelConfig:
    """A decoder-only transformer: `n_layers` blocks over `seq_len` tokens.

    `private_layers` (Marill's layer freezing): the last `private_layers` blocks run privately,
    the first `n_layers - private_layers` on the client in plaintext (None: all private). The
    embedding lookup always runs on the client (the token ids are its own). `lm_head` (d_model x
    vocab): `client` applies it in plaintext to the revealed last hidden state; `private` runs it
    as one more private linear layer. `softmax`, `norm`, `gelu`: the block's variant.
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
    block: str = "gpt2"  # the block it is projected with, when not its own (pythia-70m)


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


def block_config(model: ModelConfig) -> BlockConfig:
    """The block the model repeats, at the model's shape (validated: one-line ConfigError)."""
    if model.private_layers is not None and not 0 <= model.private_layers <= model.n_layers:
        raise ConfigError(f"model.private_layers={model.private_layers}: choose 0..{model.n_layers} (n_layers)")
    if model.lm_head not in LM_HEAD:
        raise ConfigError(f"model.lm_head={model.lm_head} is unknown; allowed: {', '.join(LM_HEAD)}")
    cfg = BlockConfig(
        seq_len=model.seq_len,
        d_model=model.d_model,
        n_heads=model.n_heads,
        d_ff=model.d_ff,
        softmax=model.softmax,
        norm=model.norm,
        gelu=model.gelu,
    )
    try:
        Block.validate(cfg)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("workload.", "model.")) from None
    return cfg


def private_layers(model: ModelConfig) -> int:
    return model.n_layers if model.private_layers is None else model.private_layers


def block(model: ModelConfig) -> Block:
    """The block the model repeats, at its shape."""
    return Block(block_config(model))


def variant(model: ModelConfig) -> str:
    """The `variant` of the block cells that project this model."""
    return block(model).variant


def shape(model: ModelConfig) -> dict[str, int]:
    return {"seq_len": model.seq_len, "d_model": model.d_model, "n_heads": model.n_heads, "d_ff": model.d_ff}
