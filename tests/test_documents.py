"""Saved documents: strict JSON, atomic writes, a kind and a version, one loader by kind (issue 19 item 4)."""

import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch

from robustlab.certify.cli import read_bracket
from robustlab.errors import RobustlabError
from robustlab.evaluation import Diagnosis, Evaluation, Finding, MinimumNormEvaluation, TargetedEvaluation
from robustlab.io import (
    KINDS,
    dumps,
    header,
    key_digest,
    load_document,
    read_document,
    save_document,
    save_json,
    save_safetensors,
    write_atomic,
)
from robustlab.models import ModelCard
from robustlab.report.grid import save_examples
from robustlab.threat import L1, L2, Linf, ThreatModel

ROOT = Path(__file__).resolve().parents[1]


def _reject(constant):
    raise AssertionError(f"non-standard JSON constant {constant}")


def _strict(path: Path):
    """The file parsed as RFC 8259 JSON: NaN and Infinity fail the test."""
    return json.loads(path.read_text(), parse_constant=_reject)


def _write(tmp_path, document, name="doc.json"):
    path = tmp_path / name
    path.write_text(json.dumps(document))
    return path


def test_a_document_is_read_only_as_its_kind_and_a_known_version(tmp_path):
    assert read_document(_write(tmp_path, {"kind": "targeted", "version": 1}), "targeted")["kind"] == "targeted"
    assert read_document(_write(tmp_path, {"samples": []}), "fixed", legacy_kind="fixed") == {"samples": []}
    with pytest.raises(RobustlabError, match="not a minimum-norm evaluation"):
        read_document(_write(tmp_path, {"kind": "targeted", "version": 1}), "minimum-norm")
    newer = KINDS["fixed"].version + 1
    with pytest.raises(RobustlabError, match=f"version {newer} fixed document.*upgrade"):
        read_document(_write(tmp_path, {"kind": "fixed", "version": newer}), "fixed")
    with pytest.raises(RobustlabError, match="version 0"):
        load_document(_write(tmp_path, {"kind": "curve", "version": 0}))
    with pytest.raises(RobustlabError, match="unknown kind 'hologram'.*upgrade"):
        load_document(_write(tmp_path, {"kind": "hologram", "version": 1}))
    with pytest.raises(RobustlabError, match="has no 'kind'"):
        load_document(_write(tmp_path, {"samples": []}))
    with pytest.raises(RobustlabError, match="JSON object"):
        load_document(_write(tmp_path, [1, 2]))
    with pytest.raises(RobustlabError, match="cannot read"):
        load_document(tmp_path / "missing.json")
    with pytest.raises(RobustlabError, match="not a valid fixed document"):
        load_document(_write(tmp_path, {"kind": "fixed", "version": 1, "samples": []}))


@pytest.mark.parametrize("threat", [Linf(eps=0.3), L2(eps=1.5, bounds=(-1.0, 1.0)), L1(eps=float("inf"))])
def test_threat_models_round_trip_through_their_saved_form(threat, tmp_path):
    path = save_json(tmp_path / "t.json", {"threat": threat.to_dict()})
    back = ThreatModel.from_dict(_strict(path)["threat"])  # strict JSON: inf is written as null
    assert type(back) is type(threat) and back.eps == threat.eps and back.bounds == threat.bounds


def test_strict_json_writes_null_for_nan_and_inf_and_readers_take_it_back(tmp_path):
    assert dumps({"a": [math.nan, -math.inf, (1.5, math.inf)], "t": torch.tensor([math.nan, 2.0]), "p": tmp_path},
                 indent=None) == f'{{"a": [null, null, [1.5, null]], "t": [null, 2.0], "p": "{tmp_path}"}}'
    # A minimum-norm evaluation: an attack that failed has distance inf; over zero samples an accuracy is NaN.
    samples = [{"index": 0, "label": 0, "clean_prediction": 0, "distance": math.inf, "best_attack": None,
                "attacks": {"ddn": {"distance": math.inf, "reported": math.inf}}},
               {"index": 1, "label": 0, "clean_prediction": 0, "distance": 0.5, "best_attack": "ddn",
                "attacks": {"ddn": {"distance": 0.5, "reported": 0.5}}}]
    ev = MinimumNormEvaluation(threat=L2(eps=math.inf), attacks={"ddn": {"attack": "ddn"}}, samples=samples,
                               provenance={"nan": math.nan})
    path = ev.save(tmp_path / "minimum-norm.json")
    data = _strict(path)
    assert data["kind"] == "minimum-norm" and data["version"] == 1 and data["threat"]["eps"] is None
    assert data["samples"][0]["distance"] is None and data["provenance"]["nan"] is None
    back = MinimumNormEvaluation.load(path)
    assert back.samples[0]["distance"] == math.inf and back.samples[0]["attacks"]["ddn"]["reported"] == math.inf
    assert back.threat.eps == math.inf and back.metrics == ev.metrics
    # Fixed-eps evaluation over zero samples: its accuracies are undefined (NaN), written as null.
    empty = Evaluation(threat=Linf(eps=0.1), attacks={"pgd": {"attack": "pgd"}}, samples=[])
    assert math.isnan(empty.metrics["clean_accuracy"]["value"])
    assert _strict(empty.save(tmp_path / "evaluation.json"))["metrics"]["clean_accuracy"]["value"] is None


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = save_json(tmp_path / "sub" / "doc.json", {"old": 1})  # the folder is created
    with pytest.raises(TypeError):
        save_json(path, {"new": object()})  # serialization fails: nothing is written
    assert _strict(path) == {"old": 1}

    def half_then_fail(temporary):
        temporary.write_text('{"new": ')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert _strict(path) == {"old": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["doc.json"]  # no temporary file left
    with pytest.raises(TypeError):
        save_json(tmp_path / "new.json", {"x": object()})
    assert list(tmp_path.glob("*new*")) == [] and list(tmp_path.glob(".*")) == []
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_safetensors_files_are_the_same_bytes_for_the_same_tensors(tmp_path):
    # The library writes the metadata in the order of a Rust hash map, different at every call:
    # the same weights saved twice would get two sha256 on their cards.
    from safetensors import safe_open
    from safetensors.torch import save

    tensors = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor([1, 2], dtype=torch.int64)}
    metadata = {key: str(i) for i, key in enumerate("pqrstu")}
    assert len({save(tensors, metadata=metadata) for _ in range(8)}) > 1  # what this guards against
    files = [save_safetensors(tmp_path / f"{i}.safetensors", tensors, metadata) for i in range(8)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), "pt") as handle:
        assert handle.metadata() == metadata
        assert all(torch.equal(handle.get_tensor(k), v) for k, v in tensors.items())
    length = int.from_bytes(files[0].read_bytes()[:8], "little")
    assert length % 8 == 0 and list(json.loads(files[0].read_bytes()[8:8 + length])["__metadata__"]) == sorted(metadata)


def _card() -> ModelCard:
    return ModelCard(architecture="mlp", arguments={"input_shape": [1, 4, 4], "num_classes": 3}, dataset="toy",
                     metrics={"nan": math.nan})


# Each kind written by its own writer, and what load_document must give back.
def _fixed(path):
    Evaluation(threat=Linf(eps=0.1), attacks={"pgd": {"attack": "pgd"}},
               samples=[{"index": 0, "label": 1, "clean_prediction": 1, "broken_by": None, "distance": math.inf,
                         "attacks": {"pgd": {"success": False, "distance": None}}}]).save(path)
    return lambda ev: isinstance(ev, Evaluation) and ev.samples[0]["distance"] is None and ev.metrics["samples"] == 1


def _minimum_norm(path):
    MinimumNormEvaluation(threat=L2(eps=math.inf), attacks={"ddn": {"attack": "ddn"}}, samples=[
        {"index": 0, "label": 0, "clean_prediction": 0, "distance": math.inf, "best_attack": None,
         "attacks": {"ddn": {"distance": math.inf}}}]).save(path)
    return lambda ev: isinstance(ev, MinimumNormEvaluation) and ev.samples[0]["distance"] == math.inf


def _targeted(path):
    TargetedEvaluation(threat=L2(eps=math.inf), attack={"attack": "cw"}, num_classes=3, samples=[
        {"index": 0, "label": 0, "clean_prediction": 0, "attacked": True, "targets": {"1": 0.5, "2": math.inf},
         "random_target": 1, "best": 0.5, "average": 0.5, "worst": math.inf, "best_target": 1,
         "worst_target": 2}]).save(path)
    return lambda ev: isinstance(ev, TargetedEvaluation) and ev.samples[0]["worst"] == math.inf


def _diagnostics(path):
    save_json(path, Diagnosis([Finding("one-step", "warn", "flat", {"ratio": math.inf})], Linf(eps=0.1)).to_dict())
    return lambda d: d["verdict"] == "warn" and d["findings"][0]["numbers"]["ratio"] is None


def _certification(path):
    save_document(path, "certification", {"norm": "Linf", "certified_accuracy": {"ibp": {"0.1": 0.5}}})
    return lambda d: d["certified_accuracy"] == {"ibp": {"0.1": 0.5}}


def _bracket(path):
    save_document(path, "bracket", {"rows": [{"lower": 0.1, "exact": None, "upper": math.inf, "dist_pgd": math.inf}],
                                     "summary": {}})
    return lambda d: d["rows"][0]["upper"] == math.inf and d["rows"][0]["dist_pgd"] == math.inf and d["rows"][0]["exact"] is None


def _model_card(path):
    written = _card()  # one card: its "created" time is to the second
    written.save(path)
    return lambda card: isinstance(card, ModelCard) and card.to_dict() == {**written.to_dict(), "metrics": {"nan": None}}


def _attack_summary(path):
    x = torch.zeros(2, 1, 4, 4)
    save_examples(path.parent, x=x, y=torch.tensor([0, 1]), x_adv=x.clone(), clean=torch.tensor([0, 1]),
                  adversarial=torch.tensor([0, 1]), success=torch.tensor([False, False]), distance=torch.zeros(2),
                  summary={"attack": {"attack": "pgd"}, "success_rate": math.nan}, norm="Linf")
    (path.parent / "summary.json").rename(path)
    return lambda d: d["success_rate"] is None and d["norm"] == "Linf"


def _curve(path):
    save_document(path, "curve", {"attack": "pgd-20", "norm": "Linf", "robust_accuracy": {0.1: 0.5}})
    return lambda d: d["robust_accuracy"] == {"0.1": 0.5}


def _reproduction(path, monkeypatch):
    from robustlab.reproduce.registry import REPRODUCTIONS, Reproduction, ReproOptions, run_reproduction

    monkeypatch.setitem(REPRODUCTIONS, "toy", Reproduction("a toy", "none", lambda options: ({"gap": math.nan}, "# toy")))
    run_reproduction("toy", ReproOptions(out=path.parent))
    (path.parent / "toy.json").rename(path)
    return lambda d: d["reproduction"] == "toy" and d["gap"] is None


def _evaluation_state(path):
    from robustlab.attacks import FGSM
    from robustlab.evaluation import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]))
        model[1].bias.zero_()
    x, y = torch.full((2, 1, 4, 4), 0.5), torch.tensor([0, 0])
    evaluate(model, x, y, threat=Linf(eps=0.1), attacks={"fgsm": FGSM()}, state_file=path)
    return lambda d: d["shard"] == [0, 2] and d["clean_prediction"] == [0, 0]


WRITERS = {"fixed": _fixed, "minimum-norm": _minimum_norm, "targeted": _targeted, "diagnostics": _diagnostics,
           "certification": _certification, "bracket": _bracket, "model-card": _model_card,
           "attack-summary": _attack_summary, "curve": _curve, "reproduction": _reproduction,
           "evaluation-state": _evaluation_state}


def test_every_kind_has_a_writer_test():
    assert set(WRITERS) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_each_kind_is_written_with_its_header_and_loaded_by_kind(kind, tmp_path, monkeypatch):
    path = tmp_path / "out" / "document.json"
    path.parent.mkdir()
    writer = WRITERS[kind]
    check = writer(path, monkeypatch) if kind == "reproduction" else writer(path)
    data = _strict(path)
    assert {k: data[k] for k in ("kind", "version")} == header(kind) == {"kind": kind, "version": KINDS[kind].version}
    assert check(load_document(path))
    assert check(load_document(path, kind))
    other = "curve" if kind != "curve" else "fixed"
    with pytest.raises(RobustlabError, match=f"kind={kind!r}"):
        load_document(path, other)
    data["version"] = KINDS[kind].version + 1
    path.write_text(json.dumps(data))
    with pytest.raises(RobustlabError, match="upgrade robustlab"):
        load_document(path)


def test_documents_the_project_ships_without_a_kind_still_load():
    cards = sorted((ROOT / "src" / "robustlab" / "zoo" / "models").glob("*.json"))
    assert cards
    for path in cards:
        assert "kind" not in json.loads(path.read_text()) or _strict(path)["kind"] == "model-card"
        card = load_document(path)
        assert isinstance(card, ModelCard) and card == ModelCard.from_json(path.read_text())
    records = sorted((ROOT / "docs" / "results").glob("*.json"))
    assert records
    for path in records:
        assert load_document(path)["reproduction"] == path.stem


def test_legacy_evaluation_and_bracket_files_load_as_their_role(tmp_path):
    # Written before documents had a kind: an evaluation file is a fixed-eps evaluation, a
    # bracket.json a bracket (its infinite distances were null or, older still, Infinity).
    path = tmp_path / "evaluation.json"
    _fixed(path)
    data = json.loads(path.read_text())
    del data["kind"], data["version"]
    path.write_text(json.dumps(data))
    assert Evaluation.load(path).metrics["samples"] == 1
    bracket = _write(tmp_path, {"rows": [{"lower": 0.0, "upper": None, "milp_upper": float("inf")}], "summary": {}},
                     "bracket.json")
    rows = read_bracket(bracket)["rows"]
    assert rows[0]["upper"] == math.inf and rows[0]["milp_upper"] == math.inf


def test_a_model_card_file_is_a_document_and_refuses_another_kind(tmp_path):
    card = _card()
    assert json.loads(card.to_json())["kind"] == "model-card" and "kind" not in card.to_dict()
    assert ModelCard.from_json(card.to_json()) == card
    with pytest.raises(RobustlabError, match="not a model card"):
        ModelCard.from_dict({**card.to_dict(), "kind": "fixed", "version": 1})


def test_key_digest_names_a_configuration_independently_of_key_order():
    key = {"seed": 3, "recipe": {"epochs": 2, "lr": 0.1}, "path": Path("/x")}
    assert key_digest(key) == key_digest(dict(reversed(list(key.items()))))
    # The cache names written before the helper existed: sha1 of the sorted-key JSON, values as str.
    text = '{"path": "/x", "recipe": {"epochs": 2, "lr": 0.1}, "seed": 3}'
    assert key_digest(key, 16) == hashlib.sha1(text.encode()).hexdigest()[:16]
    assert key_digest({**key, "seed": 4}) != key_digest(key)
