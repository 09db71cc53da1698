"""Feature transformers on real Zeek logs from the shared corpus."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from watchtower_lib import features as F
from watchtower_lib.errors import ModelError
from watchtower_lib.zeek import read_log

SDT = "labelled/stratosphere-sdt"
FRAME_TRANSFORMERS = [F.ConnFeatures, F.HostWindowFeatures, F.PairBeaconFeatures, F.DnsFeatures]


@pytest.fixture(scope="module")
def conn011(shared_data):
    return read_log(shared_data / SDT / "011-ctu-normal-43-day1/conn.log.labeled")


@pytest.fixture(scope="module")
def njrat(shared_data):
    return read_log(shared_data / SDT / "001-njrat-ctu-botnet-230-1/labeled-conn.log")


@pytest.fixture(scope="module")
def feats011(conn011):
    return F.build_features().fit(conn011).transform(conn011)


# --------------------------------------------------------------- sklearn contract
@parametrize_with_checks([F.FeatureBaseline()])
def test_numeric_step_passes_sklearn_checks(estimator, check):
    check(estimator)


@pytest.mark.parametrize("cls", FRAME_TRANSFORMERS)
def test_frame_transformers_follow_the_contract(cls, conn011):
    est = cls()
    assert clone(est).get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        est.transform(conn011)
    assert est.fit(conn011) is est
    out = est.transform(conn011)
    assert list(out.columns) == list(est.get_feature_names_out())
    assert out.index.equals(conn011.index)
    assert all(dt == np.float32 for dt in out.dtypes)  # the trees' own precision
    assert np.isfinite(out.to_numpy()).all()


@pytest.mark.parametrize("cls", [F.ConnFeatures, F.HostWindowFeatures, F.PairBeaconFeatures])
def test_missing_columns_name_what_is_missing(cls, conn011):
    with pytest.raises(ModelError, match="conn_state|id.orig_h|ts|proto"):
        cls().fit(conn011.drop(columns=["conn_state", "id.orig_h", "ts", "proto"], errors="ignore"))
    with pytest.raises(ModelError, match="DataFrame"):
        cls().fit(conn011.to_numpy())


def test_union_has_named_numeric_features_and_no_identifiers(conn011, feats011):
    names = list(feats011.columns)
    assert len(names) == len(set(names)) == 103
    assert feats011.shape == (len(conn011), 103)
    for raw in ("ts", "uid", "id.orig_h", "id.resp_h", "id.orig_p", "id.resp_p", "label", "detailedlabel"):
        assert raw not in names
    assert np.isfinite(feats011.to_numpy()).all()


def test_input_frame_is_not_modified(conn011):
    before = conn011.copy()
    F.build_features().fit_transform(conn011)
    pd.testing.assert_frame_equal(conn011, before)


def test_empty_frame_gives_empty_features():
    empty = F.empty_conn_frame()
    out = F.build_features().fit(empty).transform(empty)
    assert out.shape == (0, 103)


# --------------------------------------------------------------- per connection
def test_conn_features_of_a_bare_syn_and_a_tls_session(conn011, feats011):
    s0 = np.flatnonzero(((conn011["conn_state"] == "S0") & (conn011["history"] == "S")).fillna(False))[0]
    row = feats011.iloc[s0]
    assert row["state_S0"] == 1 and row["no_reply"] == 1 and row["hist_o_s"] == 1 and row["hist_r_h"] == 0
    assert row["history_len"] == 1
    tls = np.flatnonzero(((conn011["service"] == "ssl") & (conn011["conn_state"] == "SF")).fillna(False))[0]
    r, c = feats011.iloc[tls], conn011.iloc[tls]
    assert r["service_ssl"] == 1 and r["state_SF"] == 1 and r["resp_port_class"] == 0  # 443
    assert r["orig_bytes_log"] == pytest.approx(math.log1p(int(c["orig_bytes"])))
    assert r["resp_byte_share"] == pytest.approx(int(c["resp_bytes"]) / (int(c["orig_bytes"]) + int(c["resp_bytes"])))
    assert r["duration_log"] == pytest.approx(math.log1p(c["duration"].total_seconds()))


# --------------------------------------------------------------- host windows
def test_host_window_counts_match_brute_force(conn011, feats011):
    t = conn011["ts"].astype("int64").to_numpy()
    src = conn011["id.orig_h"].to_numpy()
    dst = conn011["id.resp_h"].to_numpy()
    rng = np.random.default_rng(0)
    exact = distinct_ok = checked = 0
    for i in rng.choice(len(conn011), 300, replace=False):
        inw = (src == src[i]) & (t > t[i] - 60e9) & (t <= t[i])
        if (t[inw] == t[i]).sum() > 1:  # ties in time are ordered by row; skip them
            continue
        checked += 1
        exact += round(math.expm1(feats011["src_conns_60s"].iloc[i])) == inw.sum()
        got = round(math.expm1(feats011["src_dsts_60s"].iloc[i]))
        true = len(set(dst[inw]))
        distinct_ok += got == true
    assert checked > 250
    assert exact >= checked - 2  # boundary rows may round to the microsecond
    assert distinct_ok >= checked - 2


@pytest.mark.parametrize("feature,key,peer,window", [
    ("src_ports_3600s", "id.orig_h", "id.resp_p", 3600), ("dst_srcs_60s", "id.resp_h", "id.orig_h", 60),
    ("dst_srcs_3600s", "id.resp_h", "id.orig_h", 3600)])
def test_distinct_peers_match_brute_force(conn011, feats011, feature, key, peer, window):
    t = conn011["ts"].astype("int64").to_numpy()
    keys, peers = conn011[key].to_numpy(), conn011[peer].to_numpy()
    rng = np.random.default_rng(1)
    wrong = 0
    for i in rng.choice(len(conn011), 200, replace=False):
        inw = (keys == keys[i]) & (t > t[i] - window * 1e9) & (t <= t[i])
        if (t[inw] == t[i]).sum() > 1:
            continue
        wrong += round(math.expm1(feats011[feature].iloc[i])) != len(set(peers[inw]))
    assert wrong <= 2


def test_a_port_scan_stands_out_in_its_host_window(shared_data, feats011):
    scan = read_log(shared_data / "scenarios/stratosphere-sdt/002-nmap-port-scanning/conn.log")
    out = F.build_features().fit(scan).transform(scan)
    # nmap from 172.16.1.11: the median connection sees ~90 ports and ~1,000 probes in the minute before
    assert np.expm1(out["src_ports_60s"]).median() > 50
    assert np.expm1(out["src_conns_60s"]).median() > 500
    assert out["src_failed_share_60s"].median() > 0.5
    # the benign Windows host of 011 talking out on 443 does not
    benign = feats011[feats011["src_port_share_60s"] < 1]
    assert np.expm1(benign["src_ports_60s"]).median() < 5


def test_sensors_are_kept_apart(conn011):
    one = F.build_features().fit(conn011).transform(conn011)
    two = pd.concat([conn011.assign(_sensor="a"), conn011.assign(_sensor="b")], ignore_index=True)
    both = F.build_features().fit(two).transform(two)
    np.testing.assert_allclose(both.iloc[: len(conn011)].to_numpy(), one.to_numpy())
    np.testing.assert_allclose(both.iloc[len(conn011):].to_numpy(), one.to_numpy())


# --------------------------------------------------------------- pair beacon
def test_njrat_command_and_control_scores_as_a_beacon(njrat):
    out = F.PairBeaconFeatures().fit(njrat).transform(njrat)
    cc = (njrat["id.resp_h"] == "41.108.179.197").fillna(False).to_numpy(dtype=bool)
    assert cc.sum() == 237
    score = out.loc[cc, "pair_beacon_score"]
    assert score.nunique() == 1  # a property of the pair
    others = out.loc[~cc & (out["pair_conns_log"] > math.log1p(3)), "pair_beacon_score"]
    assert score.iloc[0] > 0.7 > others.median()
    # the formula of the docstring, recomputed by hand for this pair
    t = np.sort(njrat.loc[cc, "ts"].astype("int64").to_numpy()) / 1e9
    d = np.diff(t)
    q1, q2, q3 = np.quantile(d, [0.25, 0.5, 0.75])
    mad = np.median(np.abs(d - q2))
    ts_score = (1 - abs(F.bowley(q1, q2, q3)) + 1 - min(1, mad / q2) + min(1, math.log(237) / math.log(100))) / 3
    assert out.loc[cc, "pair_ts_score"].iloc[0] == pytest.approx(ts_score)


def test_bowley_is_zero_for_symmetric_and_signed_for_skewed():
    assert F.bowley(np.array([1.0]), np.array([2.0]), np.array([3.0]))[0] == 0
    assert F.bowley(np.array([1.0]), np.array([1.5]), np.array([3.0]))[0] > 0
    assert F.bowley(np.array([2.0]), np.array([2.0]), np.array([2.0]))[0] == 0


# --------------------------------------------------------------- DNS
def test_dns_features_of_the_simda_dga(shared_data):
    base = shared_data / "scenarios/stratosphere-sdt/005-simda-dga"
    conn, dns = read_log(base / "conn.log"), read_log(base / "dns.log")
    joined = F.join_logs(conn, dns=dns)
    assert list(conn.columns) == [c for c in joined.columns if not c.startswith("dns.")]
    out = F.DnsFeatures().fit(joined).transform(joined)
    has = out["dns_has_query"] == 1
    # 557 connections have a dns record; 4 of those records carry no query
    assert conn["uid"].isin(dns["uid"]).sum() == 557
    assert has.sum() == joined["dns.query"].notna().sum() == 553
    i = int(np.flatnonzero(has)[0])
    q = str(joined["dns.query"].iloc[i])
    counts = Counter(q)
    entropy = -sum(c / len(q) * math.log2(c / len(q)) for c in counts.values())
    assert out["dns_entropy"].iloc[i] == pytest.approx(entropy)
    assert out["dns_query_len"].iloc[i] == len(q)
    assert out["dns_labels"].iloc[i] == q.count(".") + 1
    nx = (joined["dns.rcode_name"] == "NXDOMAIN").fillna(False)
    assert out["dns_nxdomain"].sum() == nx.sum() > 0
    # without a dns log the same columns are zero
    plain = F.DnsFeatures().fit(conn).transform(conn)
    assert (plain.to_numpy() == 0).all()


def test_char_entropy_matches_counter():
    names = np.array(["aaaa", "ab", "google.com", "xq7r9vbn2k.info", ""], dtype=object)
    expected = [-sum(c / len(s) * math.log2(c / len(s)) for c in Counter(s).values()) if s else 0.0
                for s in names]
    np.testing.assert_allclose(F.char_entropy(names), expected)
