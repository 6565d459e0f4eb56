"""Workload definitions: specs, seeded data, float64 references and op decompositions."""

from workloads.attention import AttentionHead
from workloads.base import ConfigError, Recorder, Workload, WorkloadConfig
from workloads.block import Block
from workloads.finetune import Finetune
from workloads.layernorm import LayerNorm
from workloads.llama import LlamaBlock
from workloads.lora import LoraUpdate
from workloads.ops import Ops, TorchOps

REGISTRY: dict[str, type[Workload]] = {
    w.name: w for w in (AttentionHead, LayerNorm, Block, LoraUpdate, LlamaBlock, Finetune)
}


def get(name: str) -> type[Workload]:
    """The workload class registered as `name`; ConfigError naming the choices otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"workload={name} is unknown; choose one of: {', '.join(REGISTRY)}") from None


__all__ = ["REGISTRY", "ConfigError", "Ops", "Recorder", "TorchOps", "Workload", "WorkloadConfig", "get"]
