"""Saved evaluation documents carry a kind and a version; the reader checks both (issue 19)."""

import json

import pytest

from robustlab.errors import RobustlabError
from robustlab.evaluation.io import DOCUMENT_VERSION, read_document
from robustlab.threat import L1, L2, Linf, ThreatModel


def _write(tmp_path, document):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(document))
    return path


def test_a_document_is_read_only_as_its_kind_and_a_known_version(tmp_path):
    assert read_document(_write(tmp_path, {"kind": "targeted", "version": 1}), "targeted")["kind"] == "targeted"
    assert read_document(_write(tmp_path, {"samples": []}), "fixed") == {"samples": []}  # written before kinds
    with pytest.raises(RobustlabError, match="not a minimum-norm evaluation"):
        read_document(_write(tmp_path, {"kind": "targeted", "version": 1}), "minimum-norm")
    with pytest.raises(RobustlabError, match=f"version {DOCUMENT_VERSION + 1} document.*upgrade"):
        read_document(_write(tmp_path, {"kind": "fixed", "version": DOCUMENT_VERSION + 1}), "fixed")


@pytest.mark.parametrize("threat", [Linf(eps=0.3), L2(eps=1.5, bounds=(-1.0, 1.0)), L1(eps=float("inf"))])
def test_threat_models_round_trip_through_their_saved_form(threat, tmp_path):
    from robustlab.evaluation.io import save_json

    path = save_json(tmp_path / "t.json", {"threat": threat.to_dict()})
    assert "Infinity" not in path.read_text()  # strict JSON: inf is written as null
    back = ThreatModel.from_dict(json.loads(path.read_text())["threat"])
    assert type(back) is type(threat) and back.eps == threat.eps and back.bounds == threat.bounds
