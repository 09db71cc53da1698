"""compare_periods on the halves of real captures, checked against plain set arithmetic."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from watchtower_lib import behaviour
from watchtower_lib.zeek import read_log
from watchtower_lib.errors import WatchtowerError

IOT = "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"
NORMAL43 = "labelled/stratosphere-sdt/011-ctu-normal-43-day1/conn.log.labeled"
NORMAL40 = "labelled/stratosphere-sdt/008-ctu-normal-40-day1/conn.log.labeled"
CTU = ["147.32.0.0/16"]  # the Stratosphere lab hosts have public addresses


def read_conn(path: Path) -> pd.DataFrame:
    return read_log(path)


def halves(df: pd.DataFrame):
    t0, t1 = df["ts"].min(), df["ts"].max()
    mid = t0 + (t1 - t0) / 2
    return (t0, mid), (mid, t1 + pd.Timedelta(seconds=1))


def plain_sets(df, host, period, key):
    """Independent reference: python sets over the rows of ``host`` in ``period``."""
    start, end = period
    out = set()
    for ts, orig, value in zip(df["ts"], df["id.orig_h"], key(df)):
        if orig == host and start <= ts < end and value is not None:
            out.add(value)
    return out


@pytest.fixture(scope="module")
def iot(shared_data):
    df = read_conn(shared_data / IOT)
    a, b = halves(df)
    return df, a, b, behaviour.compare_periods(df, a, b)


@pytest.fixture(scope="module")
def normal43(shared_data):
    df = read_conn(shared_data / NORMAL43)
    a, b = halves(df)
    return df, a, b, behaviour.compare_periods(df, a, b, internal_networks=CTU)


def test_iot_new_destinations_match_set_difference(iot):
    df, a, b, result = iot
    dests = lambda d: [str(x) for x in d["id.resp_h"]]  # noqa: E731
    host = "192.168.1.195"
    expected = plain_sets(df, host, b, dests) - plain_sets(df, host, a, dests)
    row = result.hosts.set_index("host").loc[host]
    assert row["new_destinations"] == len(expected) == 10
    got = set(result.new_destinations.loc[result.new_destinations["host"] == host, "destination"])
    assert got == expected
    assert row["reasons"].startswith("10 new destinations, 4 new destination ports")


def test_iot_counts_bytes_and_ports(iot):
    df, a, b, result = iot
    host = "192.168.1.195"
    mine = df[df["id.orig_h"] == host]
    in_a = mine[(mine["ts"] >= a[0]) & (mine["ts"] < a[1])]
    in_b = mine[(mine["ts"] >= b[0]) & (mine["ts"] < b[1])]
    row = result.hosts.set_index("host").loc[host]
    assert (row["conns_a"], row["conns_b"]) == (len(in_a), len(in_b)) == (4919, 18225)
    total = lambda d: float(d["orig_bytes"].fillna(0).sum() + d["resp_bytes"].fillna(0).sum())  # noqa: E731
    assert row["bytes_a"] == total(in_a) and row["bytes_b"] == total(in_b)
    assert row["conns_change_pct"] == pytest.approx(100 * (18225 - 4919) / 4919)
    ports = lambda d: [(str(p), int(q)) for p, q in zip(d["proto"], d["id.resp_p"])]  # noqa: E731
    new_ports = plain_sets(df, host, b, ports) - plain_sets(df, host, a, ports)
    got = {(p, int(q)) for p, q in zip(result.new_ports["proto"], result.new_ports["port"])}
    assert got == new_ports and row["new_ports"] == len(new_ports)
    assert ("tcp", 53) in got


def test_iot_ranking_and_silent_host(iot):
    _, _, _, result = iot
    assert list(result.hosts["host"]) == ["192.168.1.195", "192.168.1.1"]
    silent = result.hosts.set_index("host").loc["192.168.1.1"]
    assert silent["reasons"] == "silent: no connections (had 1)"
    top = result.ranked(1)
    assert list(top["host"]) == ["192.168.1.195"] and top.loc[0, "change_score"] > 5


def test_iot_drift_flags_the_ddos_shift(iot):
    _, _, _, result = iot
    drift = result.drift.set_index("feature")
    # the DDoS starts in the second half: packets per connection change completely
    assert drift.loc["orig_pkts", "psi"] > 1 and drift.loc["orig_pkts", "ks_pvalue"] < 1e-6
    assert drift.loc["orig_pkts", "n_a"] + drift.loc["orig_pkts", "n_b"] == 23145  # every row: both hosts are internal
    worst = result.hosts.set_index("host").loc["192.168.1.195"]
    assert worst["max_psi_feature"] == "orig_pkts" and worst["max_psi"] > behaviour.PSI_NOTABLE


def test_hour_profile_new_hours(normal43):
    df, a, b, result = normal43
    host = "147.32.83.165"
    hours = lambda d: [ts.hour for ts in d["ts"]]  # noqa: E731
    expected = sorted(plain_sets(df, host, b, hours) - plain_sets(df, host, a, hours))
    row = result.hosts.set_index("host").loc[host]
    assert row["new_hours"] == expected and expected
    assert f"active at {behaviour.hour_ranges(expected)} for the first time" in row["reasons"]
    assert 0 < row["hour_js"] <= 1


def test_normal43_services_and_destinations(normal43):
    df, a, b, result = normal43
    host = "147.32.83.165"
    dests = lambda d: [str(x) for x in d["id.resp_h"]]  # noqa: E731
    expected = plain_sets(df, host, b, dests) - plain_sets(df, host, a, dests)
    row = result.hosts.set_index("host").loc[host]
    assert row["new_destinations"] == len(expected) == 291
    assert "ssl" in row["new_services"]
    assert list(result.hosts["host"]) == [host]  # attackers outside 147.32/16 are not our hosts


def test_swapped_periods_give_the_other_difference(shared_data):
    df = read_conn(shared_data / NORMAL40)
    a, b = halves(df)
    host = "147.32.81.167"
    dests = lambda d: [str(x) for x in d["id.resp_h"]]  # noqa: E731
    back = behaviour.compare_periods(df, b, a, internal_networks=CTU)
    expected = plain_sets(df, host, a, dests) - plain_sets(df, host, b, dests)
    assert back.hosts.set_index("host").loc[host, "new_destinations"] == len(expected)


def test_no_internal_hosts_gives_empty_tables(shared_data):
    df = read_conn(shared_data / NORMAL43)
    a, b = halves(df)
    result = behaviour.compare_periods(df, a, b)  # default RFC 1918: nothing internal here
    assert result.hosts.empty and result.ranked().empty and result.new_destinations.empty
    assert list(result.drift["n_a"]) == [0] * len(behaviour.FEATURES)


def test_errors_name_the_problem(shared_data):
    df = read_conn(shared_data / NORMAL43)
    a, b = halves(df)
    with pytest.raises(WatchtowerError, match="id.resp_h"):
        behaviour.compare_periods(df.drop(columns=["id.resp_h"]), a, b)
    with pytest.raises(ValueError, match="period b"):
        behaviour.compare_periods(df, a, (b[1], b[0]))
    with pytest.raises(ValueError, match="period a"):
        behaviour.compare_periods(df, "2022-06-12", b)


def test_ks_matches_scipy_on_real_columns(iot):
    from scipy import special, stats

    df, a, b, _ = iot
    for col in ("orig_pkts", "resp_bytes", "duration"):
        xa = df.loc[(df["ts"] >= a[0]) & (df["ts"] < a[1]), col].dropna()
        xb = df.loc[(df["ts"] >= b[0]) & (df["ts"] < b[1]), col].dropna()
        if col == "duration":
            xa, xb = xa.dt.total_seconds(), xb.dt.total_seconds()
        xa, xb = xa.to_numpy(dtype=float), xb.to_numpy(dtype=float)
        d, p = behaviour.ks_2samp(xa, xb)
        ref = stats.ks_2samp(xa, xb, method="asymp")
        assert d == pytest.approx(ref.statistic, abs=1e-12)
        en = len(xa) * len(xb) / (len(xa) + len(xb))
        assert p == pytest.approx(special.kolmogorov(np.sqrt(en) * d), rel=1e-9, abs=1e-300)
        assert p < 1e-50 and ref.pvalue < 1e-50  # the DDoS half differs beyond doubt either way
    # moderate p-values on real values: two consecutive runs of durations from the same half
    for n in (60, 100, 200):
        d, p = behaviour.ks_2samp(xa[:n], xa[n:2 * n])
        ref = stats.ks_2samp(xa[:n], xa[n:2 * n], method="asymp")
        assert d == pytest.approx(ref.statistic) and 0.1 < p < 0.6
        assert p == pytest.approx(ref.pvalue, rel=0.15)  # limiting vs finite-n distribution
    assert behaviour.ks_2samp(xa, xa) == (0.0, 1.0)


def test_psi_js_and_hour_ranges():
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    assert behaviour.psi(x, x) == pytest.approx(0.0)
    assert behaviour.psi(x, x + 1.0) > behaviour.PSI_NOTABLE
    assert np.isnan(behaviour.psi(x, np.array([])))
    assert behaviour.js_distance([1, 0], [1, 0]) == 0
    assert behaviour.js_distance([1, 0], [0, 1]) == pytest.approx(1.0)
    assert behaviour.hour_ranges([5, 3, 4, 9, 23]) == "03:00-05:59, 09:00-09:59, 23:00-23:59"
