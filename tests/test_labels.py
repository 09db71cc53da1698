"""watchtower_lib.labels: label counts of every labelled file match PROVENANCE.md."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from watchtower_lib import labels, zeek
from watchtower_lib.errors import ZeekParseError

IOT23 = "labelled/iot23/CTU-IoT-Malware-Capture-34-1/conn.log.labeled.gz"


def provenance_labels(shared: Path) -> dict[str, Counter]:
    """file -> Counter{(raw label, raw detail): n} from PROVENANCE.md's label column."""
    out: dict[str, Counter] = {}
    for line in (shared / "PROVENANCE.md").read_text().splitlines():
        cells = [c.strip() for c in re.split(r"\s\|\s", line.strip().strip("|"))]
        if len(cells) < 6 or not cells[0].startswith("`labelled/") or cells[4] == "-":
            continue
        counts: Counter = Counter()
        for part in cells[4].split("; "):
            pair, n = part.rsplit(": ", 1)
            label, detail = pair.split(" / ", 1)
            counts[(label, detail)] = int(n)
        out[cells[0].strip("`")] = counts
    return out


def expected_pair(label: str, detail: str) -> tuple[str, str | None]:
    """PROVENANCE's raw (label, detail) -> what read_labelled must give."""
    norm = label.lower() if label.lower() in ("benign", "malicious") else "unknown"
    return norm, None if detail in ("(empty)", "-") else detail


def test_every_labelled_file_matches_provenance(shared_data: Path) -> None:
    table = provenance_labels(shared_data)
    assert len(table) == 17  # 1 IoT-23 + 16 Stratosphere files with labels
    for rel, counts in table.items():
        df = labels.read_labelled(shared_data / rel)
        got = Counter(zip(df["label"], [None if pd.isna(d) else d for d in df["detail"]]))
        want: Counter = Counter()
        for (label, detail), n in counts.items():
            want[expected_pair(label, detail)] += n
        assert got == want, rel
        assert set(df["label"]) <= set(labels.LABELS)
        assert len(df) == sum(counts.values())


def test_iot23_three_space_columns(shared_data: Path) -> None:
    df = labels.read_labelled(shared_data / IOT23)
    assert len(df) == 23145
    counts = Counter(zip(df["label"], df["detail"].fillna("NA")))
    assert counts == {("malicious", "DDoS"): 14394, ("malicious", "C&C"): 6706, ("benign", "NA"): 1923,
                      ("malicious", "PartOfAHorizontalPortScan"): 122}
    assert (df["label"] == "benign").sum() == 1923 and df.loc[df["label"] == "benign", "detail"].isna().all()
    assert "tunnel_parents" in df.columns and "tunnel_parents   label   detailed-label" not in df.columns
    assert isinstance(df["tunnel_parents"].dtype, pd.ArrowDtype) and df["tunnel_parents"].isna().all()
    assert df.attrs["zeek_types"]["tunnel_parents"] == "set[string]"
    assert df["label_raw"].value_counts().to_dict() == {"Malicious": 21222, "Benign": 1923}
    assert str(df["label"].dtype) == "string" and str(df["id.resp_p"].dtype) == "UInt16"
    first = df.iloc[0]
    assert (first["uid"], first["id.orig_h"], first["label"]) == ("CrDn63WjJEmrWGjqf", "192.168.1.195", "benign")
    assert first["ts"] == pd.Timestamp("2018-12-21T14:50:16.962094Z")  # 1545403816.962094


def test_plain_reader_keeps_the_iot23_quirk_visible(shared_data: Path) -> None:
    """read_log does not guess: the joined column stays one text column; read_labelled splits it."""
    df = zeek.read_log(shared_data / IOT23)
    assert df.columns[-1] == "tunnel_parents   label   detailed-label"
    assert df.iloc[0, -1] == "-   Benign   -"


def test_stratosphere_background_is_unknown(shared_data: Path) -> None:
    df = labels.read_labelled(shared_data / "labelled/stratosphere-sdt/001-njrat-ctu-botnet-230-1/labeled-conn.log")
    assert df["label"].value_counts().to_dict() == {"unknown": 739, "malicious": 244, "benign": 9}
    assert set(df.loc[df["label"] == "unknown", "label_raw"]) == {"Background"}
    assert df.loc[df["label"] == "malicious", "detail"].unique().tolist() == ["CC"]
    assert "detailedlabel" not in df.columns


def test_normalise_label() -> None:
    assert [labels.normalise_label(v) for v in ["Benign", "MALICIOUS", " background ", "Unknown", "", None]] == [
        "benign", "malicious", "unknown", "unknown", "unknown", "unknown"]


def test_unlabelled_log_is_a_clear_error(shared_data: Path) -> None:
    with pytest.raises(ZeekParseError, match="no 'label' column"):
        labels.read_labelled(shared_data / "labelled/stratosphere-sdt/001-njrat-ctu-botnet-230-1/conn.log")


def test_header_only_labelled_file(shared_data: Path) -> None:
    df = labels.read_labelled(shared_data / "labelled/stratosphere-sdt/011-ctu-normal-43-day1/files.log.labeled")
    assert len(df) == 0 and {"label", "detail", "label_raw"} <= set(df.columns)
