"""The LAN/WAN estimate: measured time + rounds x RTT + busier direction's bytes / bandwidth."""

import pytest

from bench.network import NetworkConfig, estimates

LAN, WAN = NetworkConfig(3.0, 0.1), NetworkConfig(0.1, 80.0)


def test_estimate_uses_the_busier_party():
    row = {"latency_s": 0.5, "rounds": 100, "comm_bytes": 3_000_000, "comm_bytes_p0": 1_000_000,
           "comm_bytes_p1": 2_000_000}  # fmt: skip
    est = estimates(row, {"lan": LAN, "wan": WAN})
    assert est["est_lan_s"] == pytest.approx(0.5 + 100 * 1e-4 + 2e6 * 8 / 3e9)
    assert est["est_wan_s"] == pytest.approx(0.5 + 100 * 0.08 + 2e6 * 8 / 1e8)  # 8 s of RTT + 0.16 s


def test_total_bytes_when_no_split_is_known():
    est = estimates({"latency_s": 1.0, "rounds": 1, "comm_bytes": 1e8}, {"wan": WAN})
    assert est == {"est_wan_s": pytest.approx(1.0 + 0.08 + 8.0)}


@pytest.mark.parametrize("row", [{"latency_s": 1.0}, {"latency_s": 1.0, "rounds": None, "comm_bytes": 5},
                                 {"latency_s": float("nan"), "rounds": 1, "comm_bytes": 5}])  # fmt: skip
def test_no_estimate_without_counters(row):
    assert estimates(row, {"lan": LAN}) == {}
