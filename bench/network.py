"""Estimated online time on a network, from measured compute time and the communication counters.

est = latency_s + rounds * RTT + busiest_bytes * 8 / bandwidth, with busiest_bytes the largest
per-party / per-direction count (`comm_bytes_<who>`), since the busier direction limits the link,
or `comm_bytes` when only the total is known. Rows without `rounds` get no estimate (missing, not 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class NetworkConfig:
    bandwidth_gbps: float = 3.0
    rtt_ms: float = 0.1


def busiest_bytes(row: dict[str, Any]) -> float | None:
    split = [v for k, v in row.items() if k.startswith("comm_bytes_") and v is not None]
    if split:
        return max(split)
    return row.get("comm_bytes")


def estimates(row: dict[str, Any], networks: dict[str, NetworkConfig]) -> dict[str, float]:
    """`est_<name>_s` per network for a row that has latency, rounds and bytes; else nothing."""
    latency, rounds, sent = row.get("latency_s"), row.get("rounds"), busiest_bytes(row)
    if latency is None or rounds is None or sent is None or math.isnan(latency):
        return {}
    return {
        f"est_{name}_s": latency + rounds * net.rtt_ms / 1e3 + sent * 8 / (net.bandwidth_gbps * 1e9)
        for name, net in networks.items()
    }
