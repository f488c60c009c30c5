"""The local-intrinsic-dimensionality (LID) detector of adversarial examples (Ma, Li, Wang, Erfani,
Wijewickrema, Schoenebeck, Song, Houle & Bailey, "Characterizing Adversarial Subspaces Using Local
Intrinsic Dimensionality", ICLR 2018; ``xingjunm/lid_adversarial_subspace_detection``).

For each layer ``l`` of the classifier (its input and the output of every leaf module), the
maximum-likelihood estimate of the LID of ``x`` against a clean reference batch ``B`` is
``LID_l(x) = -( (1/k) sum_i log(r_i / r_k) )^-1``, with ``r_1 <= ... <= r_k`` the distances from
``a_l(x)`` to its ``k`` nearest neighbours in ``a_l(B)`` (``util.py: mle_batch``). The feature
vector of ``x`` is ``[LID_l(x)]_l``; a logistic regression on min-max-scaled features
(``detect_adv_examples.py``) separates adversarial inputs from clean and noisy ones.

:class:`LIDDetector` wraps the classifier: ``forward`` returns the classifier's logits unchanged
(the model contract) and keeps the detector's logit of the same pass in ``last_score``
(differentiable, which is what the adaptive attack of
:mod:`robustlab.evaluation.rejection` climbs); :meth:`LIDDetector.score` and
:meth:`LIDDetector.reject` are the detector alone. It is registered as the defense ``"lid"``: its
card entry holds ``k``, the threshold, the scaler and regression coefficients and the reference
batch (float32, base64), so ``load_model`` rebuilds it exactly. Build one with
:func:`fit_lid_detector`.

Differences from the authors' code, all from ``defenses-2.md`` §1(e): the scaler is fitted on
the training split only (the original fits it before the split); the reference batch must be
disjoint from the queries (the original drops the nearest distance, usually the query's own
clean source); distances are ``sqrt(d^2 + 1e-9)`` so ties and zeros keep finite gradients.
"""

from __future__ import annotations

import base64
import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from robustlab.errors import RobustlabError
from robustlab.models.preprocessing import DEFENSES, InputTransformDefense
from robustlab.modes import ModuleMode
from robustlab.validate import is_int, is_number

__all__ = ["LIDDetector", "fit_lid_detector", "lid_estimates", "lid_features"]


def lid_estimates(queries: Tensor, reference: Tensor, k: int) -> Tensor:
    """MLE of the LID of each row of ``queries [M, D]`` against ``reference [B, D]`` (``B >= k``),
    ``[M]``, differentiable in ``queries``."""
    squared = (queries.square().sum(1, keepdim=True) + reference.square().sum(1)[None, :]
               - 2 * queries @ reference.T).clamp_min(0)
    distances = (squared + 1e-9).sqrt()
    nearest = distances.topk(k, dim=1, largest=False).values  # ascending
    logs = torch.log(nearest / nearest[:, -1:]).sum(dim=1).clamp_max(-1e-12)
    return -k / logs


@contextlib.contextmanager
def _recording(model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the context, every forward of ``model`` appends the output of each leaf module."""
    outputs: list[Tensor] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in leaves]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _layers(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    with _recording(model) as outputs:
        logits = model(x)
    return logits, [x.flatten(1)] + [o.flatten(1) for o in outputs if isinstance(o, Tensor)]


def lid_features(model: nn.Module, x: Tensor, reference: Tensor, k: int) -> Tensor:
    """``[N, L]``: the LID of ``x`` at the input and after every leaf module of ``model``,
    against the activations of ``reference`` at the same layers. Differentiable in ``x``."""
    with torch.no_grad():
        _, reference_layers = _layers(model, reference)
    _, layers = _layers(model, x)
    return torch.stack([lid_estimates(a, r, k) for a, r in zip(layers, reference_layers)], dim=1)


def _encode(t: Tensor) -> dict[str, Any]:
    array = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
    return {"shape": list(array.shape), "float32_base64": base64.b64encode(array.tobytes()).decode("ascii")}


def _decode(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float32).clone()
    if not isinstance(value, Mapping) or set(value) != {"shape", "float32_base64"}:
        raise RobustlabError("lid: reference must be a tensor or {'shape': [...], 'float32_base64': '...'}")
    array = np.frombuffer(base64.b64decode(value["float32_base64"]), dtype="<f4")
    shape = tuple(int(s) for s in value["shape"])
    if array.size != math.prod(shape):
        raise RobustlabError(f"lid: the reference holds {array.size} values, not the {shape} its shape says")
    return torch.from_numpy(array.copy()).reshape(shape)


def _floats(value: Any, name: str) -> list[float]:
    if isinstance(value, Tensor):
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise RobustlabError(f"lid: {name} must be a non-empty list of numbers, got {value!r}")
    out = [float(v) for v in value]
    if not all(math.isfinite(v) for v in out):
        raise RobustlabError(f"lid: {name} must be finite, got {value!r}")
    return out


class LIDDetector(InputTransformDefense):
    """The classifier ``model`` plus an LID detector; see the module docstring.

    Settings (what the card records): ``reference`` (the clean reference batch ``[B, ...]``,
    disjoint from every query), ``k`` (neighbours, 20 in the authors' code), ``feature_min`` /
    ``feature_scale`` (the min-max scaler: ``(f - min) * scale``), ``coef`` / ``intercept``
    (the logistic regression), ``threshold`` (reject when the detector's logit exceeds it).
    Deterministic and differentiable: a detector-unaware attack is an ordinary attack on the
    classifier, and the adaptive one climbs the classifier's margin and the detector's logit
    together. Cost: one pass of the classifier, plus ``L`` distance matrices ``[N, B]``.
    """

    reference: Tensor
    feature_min: Tensor
    feature_scale: Tensor
    coef: Tensor

    name = "lid"
    differentiable: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, reference: Any = None, k: int = 20, feature_min: Sequence[float] = (0.0,),
                 feature_scale: Sequence[float] = (1.0,), coef: Sequence[float] = (0.0,), intercept: float = 0.0,
                 threshold: float = 0.0):
        super().__init__(model)
        if reference is None:
            raise RobustlabError("lid: the detector needs its clean reference batch (and fitted coefficients); build it "
                                 "with robustlab.models.lid.fit_lid_detector")
        reference = _decode(reference)
        if not is_int(k, 1) or reference.shape[0] < k:
            raise RobustlabError(f"lid: k must be a positive integer no larger than the reference batch "
                                 f"({reference.shape[0]}), got {k!r}")
        columns = [_floats(v, n) for v, n in ((feature_min, "feature_min"), (feature_scale, "feature_scale"),
                                                (coef, "coef"))]
        if len({len(c) for c in columns}) != 1:
            raise RobustlabError(f"lid: feature_min, feature_scale and coef must have one value per layer, got "
                                 f"lengths {[len(c) for c in columns]}")
        for name, value in (("intercept", intercept), ("threshold", threshold)):
            if not is_number(value, finite=False) or not math.isfinite(value):
                raise RobustlabError(f"lid: {name} must be a finite number, got {value!r}")
        self.k = k
        self.intercept = float(intercept)
        self.threshold = float(threshold)
        self.register_buffer("reference", reference, persistent=False)
        for name, column in zip(("feature_min", "feature_scale", "coef"), columns):
            self.register_buffer(name, torch.tensor(column), persistent=False)
        self.last_score: Tensor | None = None
        self._reference_layers: tuple[Any, list[Tensor]] | None = None

    def features(self, x: Tensor) -> Tensor:
        """``[N, L]`` LID features of ``x`` (differentiable)."""
        return self._logits_and_features(x)[1]

    def _logits_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        reference_layers = self._reference_activations(x)
        logits, layers = _layers(self.model, x)
        return logits, torch.stack([lid_estimates(a, r, self.k) for a, r in zip(layers, reference_layers)], dim=1)

    def _check_layers(self, features: Tensor) -> None:
        if features.shape[1] != self.coef.numel():
            raise RobustlabError(f"lid: the classifier has {features.shape[1]} layers but the detector was fitted on "
                                 f"{self.coef.numel()}")

    def _score(self, features: Tensor) -> Tensor:
        self._check_layers(features)
        scaled = (features - self.feature_min.to(features)) * self.feature_scale.to(features)
        return scaled @ self.coef.to(features) + self.intercept

    def score(self, x: Tensor) -> Tensor:
        """The detector's logit ``[N]`` (higher: more likely adversarial)."""
        return self._score(self.features(x))

    def reject(self, x: Tensor) -> Tensor:
        """``bool [N]``: the detector flags ``x`` (score above ``threshold``)."""
        with torch.no_grad():
            return self.score(x) > self.threshold

    def _reference_activations(self, x: Tensor) -> list[Tensor]:
        # Cached: the detector is fitted to fixed weights, and recomputing would double the cost
        # of every forward on small batches.
        key = (x.device, x.dtype)
        if self._reference_layers is None or self._reference_layers[0] != key:
            with torch.no_grad():
                self._reference_layers = (key, _layers(self.model, self.reference.to(x.device, x.dtype))[1])
        return self._reference_layers[1]

    def forward(self, x: Tensor) -> Tensor:
        logits, features = self._logits_and_features(x)
        self.last_score = self._score(features)
        return logits

    def arguments(self) -> dict[str, Any]:
        return {"reference": _encode(self.reference), "k": self.k, "feature_min": self.feature_min.tolist(),
                "feature_scale": self.feature_scale.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept, "threshold": self.threshold}

    def extra_repr(self) -> str:
        return f"k={self.k}, reference={tuple(self.reference.shape)}, threshold={self.threshold:.4g}"


def _batched_features(model: nn.Module, x: Tensor, reference: Tensor, k: int, batch_size: int = 250) -> Tensor:
    with torch.no_grad():
        return torch.cat([lid_features(model, x[i:i + batch_size], reference, k)
                          for i in range(0, x.shape[0], batch_size)]) if x.shape[0] else torch.empty(0)


def fit_lid_detector(model: nn.Module, *, reference: Tensor, positives: Tensor, negatives: Tensor,
                     calibration: Tensor, k: int = 20, false_positive_rate: float = 0.05,
                     seed: int = 0) -> tuple[LIDDetector, dict[str, float]]:
    """Fit the detector around ``model`` (in eval mode).

    ``positives``: adversarial inputs (``[P, ...]``); ``negatives``: clean and noisy inputs
    (Ma et al. add Gaussian noise whose L2 norm matches the attack's); ``calibration``: clean
    inputs, disjoint from the others, whose scores set the threshold so that a fraction
    ``false_positive_rate`` of them is rejected (5% in ``defenses-2.md`` §0). All disjoint from
    ``reference``. The features are split 80/20 (seeded); ``MinMaxScaler`` and
    ``LogisticRegressionCV`` are fitted on the 80% only. Returns the detector and
    ``{"train_auc", "test_auc"}`` on the split.
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import MinMaxScaler

    if not 0 < false_positive_rate < 1:
        raise RobustlabError(f"false_positive_rate must be in (0, 1), got {false_positive_rate!r}")
    if positives.shape[0] < 5 or negatives.shape[0] < 5 or calibration.shape[0] < 1:
        raise RobustlabError("fit_lid_detector needs at least 5 positives, 5 negatives and 1 calibration input")
    with ModuleMode(model, False):
        features = torch.cat([_batched_features(model, positives, reference, k),
                              _batched_features(model, negatives, reference, k)]).double().numpy()
        labels = np.concatenate([np.ones(positives.shape[0]), np.zeros(negatives.shape[0])])
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).numpy()
        cut = int(0.8 * len(order))
        train, test = order[:cut], order[cut:]
        scaler = MinMaxScaler().fit(features[train])
        regression = LogisticRegressionCV(max_iter=1000).fit(scaler.transform(features[train]), labels[train])
        detector = LIDDetector(model, reference=reference, k=k, feature_min=scaler.data_min_.tolist(),
                               feature_scale=scaler.scale_.tolist(), coef=regression.coef_[0].tolist(),
                               intercept=float(regression.intercept_[0]))
        scores = detector._score(torch.from_numpy(features).float()).numpy()
        clean_scores = detector._score(_batched_features(model, calibration, reference, k))
        detector.threshold = float(torch.quantile(clean_scores.double(), 1 - false_positive_rate))
        metrics = {"train_auc": float(roc_auc_score(labels[train], scores[train])),
                   "test_auc": float(roc_auc_score(labels[test], scores[test])) if len(set(labels[test])) == 2
                   else float("nan")}
    return detector.eval(), metrics


DEFENSES.add(LIDDetector)
