"""Model checkpoints: weights as safetensors plus a JSON model card.

``save_model(model, "runs/mnist-pgd", card)`` writes ``runs/mnist-pgd.safetensors`` (the
state dict, buffers included) and ``runs/mnist-pgd.json`` (the card). ``load_model`` rebuilds the
architecture from the card through the registry and loads the weights with strict key, shape
and normalization checks. Nothing is ever unpickled, so loading an untrusted checkpoint cannot
run code.

A model wrapped in input-transformation defenses (:mod:`robustlab.models.preprocessing`, e.g.
``ThermometerEncoding(net, levels=16)``) is saved as the inner network's weights plus the
card's ``defenses`` list, and ``load_model`` wraps the rebuilt network in the same defenses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

import robustlab
from robustlab.errors import RobustlabError
from robustlab.formatting import timestamp
from robustlab.io import check_header, dumps, file_sha256, header, save_json, save_safetensors
from robustlab.models.normalize import Normalize
from robustlab.models.preprocessing import apply_defenses, split_defenses
from robustlab.models.registry import build_model

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
_MAX_LISTED = 10
# Card fields that cards written before they existed lack.
_OPTIONAL_FIELDS = ("defenses", "weights_sha256")
# load_model refuses cards whose architecture holds more values (parameters and buffers) than
# this, before allocating anything: 2**31 float32 values are 8 GiB, several times the largest
# architecture robustlab builds. Pass max_parameters to load bigger models.
MAX_PARAMETERS = 2**31


def _jsonable(value: Any, name: str) -> Any:
    """``value`` as plain strict-JSON types (tuples become lists, tensors and NumPy values numbers,
    paths strings, non-finite floats ``None``), or a RobustlabError naming the field."""
    try:
        return json.loads(dumps(value, indent=None))
    except (TypeError, ValueError) as error:
        raise RobustlabError(f"model card field {name!r} is not JSON-serializable: {error}") from None


@dataclass
class ModelCard:
    """What a checkpoint is: enough to rebuild the model and to know how it was made.

    ``arguments`` holds ``input_shape``, ``num_classes`` and the architecture's extra arguments
    (everything ``build_model`` takes except ``normalize``, which is ``normalization``).
    ``defenses`` lists the input-transformation defenses around the architecture, innermost
    first, as :meth:`InputTransformDefense.config` gives them (``{"defense": "thermometer",
    "levels": 16}``); ``input_shape`` is then what the architecture receives after them
    (``[C * levels, H, W]`` behind thermometer encoding), not the shape of the data.
    ``training`` records the method and its configuration (threat model, epochs, ...),
    ``metrics`` the measured results. ``weights_sha256`` is the sha256 of the weights file,
    set by :func:`save_model`; :func:`load_model` refuses weights that do not match it (cards
    written before the field existed have none and load unchecked). All values must be JSON-able; tuples are stored as lists,
    tensors and NumPy values as numbers.
    """

    architecture: str
    arguments: dict[str, Any]
    dataset: str | None = None
    input_bounds: tuple[float, float] = (0.0, 1.0)
    normalization: dict[str, list[float]] | None = None
    defenses: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    library_version: str = robustlab.__version__
    created: str = field(default_factory=timestamp)
    extra: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = field(default=None, compare=False)  # integrity, not description

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            raise RobustlabError(f"model card: architecture must be a non-empty string, got {self.architecture!r}")
        self.arguments = self._check_dict(self.arguments, "arguments")
        missing = [key for key in ("input_shape", "num_classes") if key not in self.arguments]
        if missing:
            raise RobustlabError(f"model card: arguments must include {missing}")
        if "normalize" in self.arguments:
            raise RobustlabError("model card: put mean/std in 'normalization', not in arguments['normalize']")
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise RobustlabError(f"model card: dataset must be a string or None, got {self.dataset!r}")
        self.input_bounds = self._check_bounds(self.input_bounds)
        self.normalization = self._check_normalization(self.normalization)
        self.defenses = self._check_defenses(self.defenses)
        self.training = self._check_dict(self.training, "training")
        self.metrics = self._check_dict(self.metrics, "metrics")
        self.extra = self._check_dict(self.extra, "extra")
        for name in ("library_version", "created"):
            if not isinstance(getattr(self, name), str):
                raise RobustlabError(f"model card: {name} must be a string, got {getattr(self, name)!r}")
        digest = self.weights_sha256
        if digest is not None and not (isinstance(digest, str) and len(digest) == 64
                                       and all(c in "0123456789abcdef" for c in digest)):
            raise RobustlabError(f"model card: weights_sha256 must be 64 lowercase hex digits or None, got {digest!r}")

    @staticmethod
    def _check_dict(value: Any, name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise RobustlabError(f"model card: {name} must be a dict, got {type(value).__name__}")
        if not all(isinstance(key, str) for key in value):
            raise RobustlabError(f"model card: keys of {name} must be strings")
        return _jsonable(value, name)

    @staticmethod
    def _check_bounds(value: Any) -> tuple[float, float]:
        try:
            low, high = (float(v) for v in value)
        except (TypeError, ValueError):
            raise RobustlabError(f"model card: input_bounds must be (low, high), got {value!r}") from None
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise RobustlabError(f"model card: input_bounds must be finite with low < high, got {value!r}")
        return (low, high)

    @staticmethod
    def _check_normalization(value: Any) -> dict[str, list[float]] | None:
        if value is None:
            return None
        if not isinstance(value, dict) or set(value) != {"mean", "std"}:
            raise RobustlabError(
                f"model card: normalization must be None or {{'mean': [...], 'std': [...]}}, got {value!r}"
            )
        Normalize(value["mean"], value["std"])  # validates lengths, finiteness and std > 0
        return {stat: [float(v) for v in _jsonable(value[stat], "normalization")] for stat in ("mean", "std")}

    @staticmethod
    def _check_defenses(value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, (list, tuple)):
            raise RobustlabError(f"model card: defenses must be a list, got {type(value).__name__}")
        for entry in value:
            if not isinstance(entry, dict) or not isinstance(entry.get("defense"), str):
                raise RobustlabError(
                    f"model card: each defense must be {{'defense': name, setting: value, ...}}, got {entry!r}"
                )
            ModelCard._check_dict(entry, "defenses")
        return _jsonable(list(value), "defenses")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_bounds"] = list(self.input_bounds)
        # Without defenses the card is exactly what it was before the field existed (same
        # hash in the results store); with them, an older robustlab refuses the card ("unknown
        # field") instead of silently loading the model undefended.
        if not self.defenses:
            del data["defenses"]
        if self.weights_sha256 is None:
            del data["weights_sha256"]
        return data

    def document(self) -> dict[str, Any]:
        """The card file's content: :meth:`to_dict` after the document's kind and version."""
        return {**header("model-card"), **self.to_dict()}

    def to_json(self, *, indent: int | None = 2) -> str:
        return dumps(self.document(), indent=indent)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the card file (:meth:`document`, strict JSON) to ``path`` atomically."""
        return save_json(path, self.document(), indent=2)

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """Build a card from a dict holding exactly the card's fields (all of them), after the
        document's kind and version where it has them (cards written before they existed lack them)."""
        if not isinstance(data, dict):
            raise RobustlabError(f"model card must be a JSON object, got {type(data).__name__}")
        check_header(data, "model card", "model-card", legacy_kind="model-card")
        data = {k: v for k, v in data.items() if k not in ("kind", "version")}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        missing = [name for name in names if name not in data and name not in _OPTIONAL_FIELDS]
        if unknown or missing:
            problems = []
            if missing:
                problems.append(f"missing field(s) {missing}")
            if unknown:
                problems.append(f"unknown field(s) {unknown}")
            raise RobustlabError(f"invalid model card: {'; '.join(problems)} (expected fields: {', '.join(names)})")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise RobustlabError(f"model card is not valid JSON: {error}") from None
        return cls.from_dict(data)


def checkpoint_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(weights, card)`` paths for ``path`` given with or without ``.safetensors``/``.json``."""
    path = Path(path)
    if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        path = path.with_suffix("")
    if not path.name:
        raise RobustlabError(f"checkpoint path has no file name: {str(path)!r}")
    return path.with_name(path.name + WEIGHTS_SUFFIX), path.with_name(path.name + CARD_SUFFIX)


def save_model(model: nn.Module, path: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``<path>.safetensors`` (state dict incl. buffers) and ``<path>.json`` (``card``).

    The card is checked against the model first (the architecture it names, built on the meta
    device, must have the same keys, shapes and normalization, and the defenses wrapped
    around it must be those the card's arguments build, such as input randomization, followed by
    ``card.defenses``, see :func:`robustlab.models.preprocessing.split_defenses`),
    so nothing is written for a card that could not rebuild this model. Only the inner
    network's weights are written. Each file is written to a temporary file in the
    same folder and moved into place with ``os.replace``, so a crash never leaves a truncated
    file; both get the permissions the umask gives new files. The card written records the
    weights' sha256 (``card.weights_sha256``; the ``card`` passed in is not modified). Shared or non-contiguous tensors are saved as contiguous copies. Returns the weights
    path.
    """
    if not isinstance(card, ModelCard):
        raise RobustlabError(f"card must be a ModelCard, got {type(card).__name__}")
    model, defenses = split_defenses(_unwrap(model))
    model = _unwrap(model)
    defenses = _jsonable(defenses, "defenses")
    with torch.device("meta"):
        reference, built = split_defenses(_build(card))
    expected = _jsonable(built, "defenses") + list(card.defenses)
    if defenses != expected:
        raise RobustlabError(
            f"the model's defenses {defenses} (innermost first) differ from the card's {expected}: its architecture "
            f"arguments build {built} and card.defenses must list the ones wrapped around those "
            "(robustlab.models.preprocessing.split_defenses(model)[1] lists them all)"
        )
    state = model.state_dict()
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise RobustlabError(f"cannot save non-tensor state entries as safetensors: {_listed(not_tensors)}")
    tensors = {
        key: value.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for key, value in state.items()
    }
    has_normalize = any(isinstance(module, Normalize) for module in model.modules())
    if has_normalize != (card.normalization is not None):
        raise RobustlabError(
            "the model has a Normalize layer but the card's normalization is None"
            if has_normalize
            else "the card declares a normalization but the model has no Normalize layer"
        )
    check_state(tensors, reference.state_dict(), source="the model", target=f"the card's {card.architecture!r}")
    _check_normalization(reference, tensors, card)

    weights_path, card_path = checkpoint_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "robustlab_version": robustlab.__version__, "architecture": card.architecture}
    save_safetensors(weights_path, tensors, metadata)
    card = dataclasses.replace(card, weights_sha256=file_sha256(weights_path))
    card.save(card_path)
    return weights_path


def load_model(
    path: str | os.PathLike[str],
    *,
    map_location: str | torch.device = "cpu",
    seed: int | None = None,
    max_parameters: int | None = MAX_PARAMETERS,
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model described by ``<path>.json`` and load ``<path>.safetensors`` into it.

    The card's ``defenses`` are wrapped around the result; stochastic ones (random
    resize-and-pad) draw from one CPU generator seeded with ``seed`` (None: torch's global RNG).

    Keys and shapes must match exactly (a mismatch raises a ``RobustlabError`` naming the keys);
    the Normalize statistics in the weights must equal the card's ``normalization``. If the
    weights were saved in another floating dtype (e.g. float64 for verification), the model is
    converted to it. Returns ``(model, card)`` with the model on ``map_location`` in eval mode.

    Checked before anything is allocated: the architecture the card describes is built on the
    meta device and refused if it holds more than ``max_parameters`` values (``None``: no
    limit), so a card alone cannot make it allocate without bound; the weights file's keys and
    shapes (read from its header) must fit it. Then the file's sha256 must equal the card's
    ``weights_sha256`` (when the card has one: cards from before it existed load without the
    check), and every tensor the architecture holds as floating point must be floating point in
    the file (integer weights are refused rather than cast).
    """
    weights_path, card_path = checkpoint_paths(path)
    for required in (card_path, weights_path):
        if not required.is_file():
            raise RobustlabError(f"checkpoint file not found: {required}")
    try:
        card = ModelCard.from_json(card_path.read_text(encoding="utf-8"))
    except RobustlabError as error:
        raise RobustlabError(f"{card_path}: {error}") from None
    target = f"{card.architecture!r} as described by {card_path}"
    with torch.device("meta"):
        try:
            skeleton = split_defenses(_build(card))[0]
        except RobustlabError as error:
            raise RobustlabError(f"{card_path}: {error}") from None
    expected = skeleton.state_dict()
    size = sum(t.numel() for t in expected.values())
    if max_parameters is not None and size > max_parameters:
        raise RobustlabError(
            f"{card_path}: the architecture it describes ({card.architecture} with {card.arguments}) holds {size:,} "
            f"values ({size * 4 / 2**30:.1f} GiB as float32), more than max_parameters={max_parameters:,}; refused "
            "before allocating. Pass max_parameters=None (or a larger limit) if the model is really that big")
    check_state(_header_shapes(weights_path), expected, source=str(weights_path), target=target)
    if card.weights_sha256 is not None:
        digest = file_sha256(weights_path)
        if digest != card.weights_sha256:
            raise RobustlabError(
                f"{weights_path} does not match its card {card_path}: sha256 {digest} instead of {card.weights_sha256} "
                "(the file was corrupted or replaced); restore it, or save the model again")
    built = _build(card)
    model = split_defenses(built)[0]  # the architecture's own defenses (e.g. input randomization) stay on
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise RobustlabError(f"cannot read weights {weights_path}: {error}") from None
    expected = model.state_dict()
    check_state(tensors, expected, source=str(weights_path), target=target)
    not_float = [f"{key!r} ({tensors[key].dtype})" for key, value in expected.items()
                 if value.is_floating_point() and not tensors[key].is_floating_point()]
    if not_float:
        raise RobustlabError(f"{weights_path}: tensor(s) {', '.join(not_float[:_MAX_LISTED])} are not floating point "
                             f"but {card.architecture!r} holds them as float; integer (quantized) weights are not "
                             "supported: save the float weights")
    dtypes = {t.dtype for t in tensors.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        (dtype,) = dtypes
        if dtype != next((t.dtype for t in expected.values() if t.is_floating_point()), dtype):
            model.to(dtype=dtype)
    model.load_state_dict(tensors, strict=True)
    _check_normalization(model, tensors, card)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    try:
        model = apply_defenses(built, card.defenses, generator=generator)
    except RobustlabError as error:
        raise RobustlabError(f"{card_path}: {error}") from None
    model.to(map_location)
    model.eval()
    return model, card


def _build(card: ModelCard) -> nn.Module:
    normalize = None
    if card.normalization is not None:
        normalize = (card.normalization["mean"], card.normalization["std"])
    return build_model(card.architecture, **card.arguments, normalize=normalize)


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps in OptimizedModule (._orig_mod); (Distributed)DataParallel in .module.
    while True:
        if hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def _listed(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def check_state(
    tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], *, source: str, target: str
) -> None:
    missing = [key for key in expected if key not in tensors]
    unexpected = [key for key in tensors if key not in expected]
    wrong_shape = [
        f"{key!r} {tuple(tensors[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in expected
        if key in tensors and tensors[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing key(s) {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s) {_listed(unexpected)}")
    if wrong_shape:
        shown = "; ".join(wrong_shape[:_MAX_LISTED])
        problems.append(f"wrong shape(s): {shown}")
    if problems:
        raise RobustlabError(f"weights from {source} do not fit {target}: {'; '.join(problems)}")


def _check_normalization(model: nn.Module, tensors: dict[str, torch.Tensor], card: ModelCard) -> None:
    for name, module in model.named_modules():
        if not isinstance(module, Normalize):
            continue
        prefix = f"{name}." if name else ""
        for stat in ("mean", "std"):
            stored = tensors[prefix + stat].to(dtype=torch.float64, device="cpu")
            declared = torch.tensor(card.normalization[stat], dtype=torch.float64)  # type: ignore[index]
            if stored.shape != declared.shape or not torch.allclose(stored, declared, rtol=1e-6, atol=1e-7):
                raise RobustlabError(
                    f"the weights' Normalize {stat} {stored.tolist()} differs from the card's "
                    f"normalization {stat} {declared.tolist()}"
                )


def _header_shapes(path: Path) -> dict[str, torch.Tensor]:
    """The tensors' keys and shapes in a safetensors file, from its header alone (as meta tensors)."""
    import struct

    try:
        with open(path, "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            if length > os.path.getsize(path) - 8:
                raise ValueError("header longer than the file")
            header = json.loads(file.read(length))
        return {key: torch.empty(entry["shape"], device="meta") for key, entry in header.items()
                if key != "__metadata__"}
    except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
        raise RobustlabError(f"cannot read weights {path}: not a safetensors file ({error})") from None


def save_network(net: nn.Module, path: str | os.PathLike[str], kind: str, settings: dict[str, str]) -> Path:
    """Write a helper network that is not a registry classifier (a purifier, a generator):
    its weights to ``path`` (``.safetensors``, atomically), ``kind`` and its ``settings``
    (strings) in the metadata. Loading it (:func:`load_network`) never unpickles."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_safetensors(path, state, {"robustlab": kind, **settings})
    return path


def load_network(path: str | os.PathLike[str], kind: str, build: Callable[[dict[str, str]], nn.Module], *,
                 what: str) -> nn.Module:
    """The network :func:`save_network` wrote to ``path`` as ``kind``, rebuilt by
    ``build(settings)`` and in eval mode; anything else is a clear error naming ``what`` it
    should have been."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  safe_open is not a dict
    except (SafetensorError, OSError) as error:
        raise RobustlabError(f"cannot read the {what} {path}: {error}") from None
    if metadata.get("robustlab") != kind:
        raise RobustlabError(f"{path} is not a {what} written by robustlab")
    net = build(metadata)
    try:
        net.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise RobustlabError(f"{path}: weights do not fit its {what} settings: {error}") from None
    return net.eval()

