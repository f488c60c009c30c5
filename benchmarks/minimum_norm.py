"""Minimum-norm attacks on MNIST, side by side: robustlab vs Foolbox, ART and torchattacks.

Five groups, each on the same model (the cached LeNet of the PGD benchmark) and the same images
(the first ``--images`` correctly classified images of a stratified MNIST test subset), with the
same budget for every library as far as its API allows:

- ``cw``: C&W L2: robustlab ``CWL2`` vs Foolbox ``L2CarliniWagnerAttack`` vs ART ``CarliniL2Method``
- ``fmn``: FMN L2: robustlab ``FMN`` vs Foolbox ``L2FMNAttack``
- ``ddn``: DDN: robustlab ``DDN`` vs Foolbox ``DDNAttack``
- ``deepfool``: DeepFool L2: robustlab ``DeepFool`` vs Foolbox ``L2DeepFoolAttack`` vs torchattacks ``DeepFool``
- ``jsma``: JSMA, targeted at random classes fixed by the seed: robustlab ``JSMA`` vs ART
  ``SaliencyMapMethod`` vs torchattacks ``JSMA``
- ``ensemble``: robustlab only: ``MinimumNormEnsemble((DDN(steps=S/2), FMN(steps=S/2)))``, the
  per-sample best of both at the gradient budget of one ``S``-step attack

``--model PATH`` attacks a saved robustlab model (``PATH.safetensors`` + ``PATH.json``, e.g. the
PGD-trained LeNet of ``robustlab reproduce madry-mnist``) instead of the cached natural LeNet.

Every library's output is judged by the same code: a fresh eval-mode forward pass decides
success (untargeted: prediction != label; JSMA: prediction == target), distances are recomputed
from the returned points (L2; for JSMA, L0 in pixels), and every point is checked to be finite
and inside the box [0, 1] (no tolerance). Library success flags are recorded, never used.

Usage (see benchmarks/README.md):

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/minimum_norm.py
    python benchmarks/minimum_norm.py --images 100 --repeats 3 --groups cw,fmn,ddn,deepfool,jsma \
        --out benchmarks/results/minimum_norm.json

Prints a Markdown table on stdout (progress on stderr) and writes a JSON file.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.attacks import CWL2, DDN, FMN, JSMA, DeepFool, MinimumNormEnsemble
from robustlab.data import load_dataset
from robustlab.models import load_model
from robustlab.threat import L0, L2

GROUPS = ("cw", "fmn", "ddn", "deepfool", "jsma", "ensemble")
GROUP_TITLES = {
    "cw": "C&W L2", "fmn": "FMN L2", "ddn": "DDN L2", "deepfool": "DeepFool L2", "jsma": "JSMA (targeted, L0)",
    "ensemble": "Best of DDN + FMN L2",
}
L2_GROUPS = ("cw", "fmn", "ddn", "deepfool", "ensemble")
TARGET_MEDIAN_RATIO = 0.98
TARGET_JSMA_SPEEDUP = 5.0

# (x, y, targets) -> (x_adv, library's own success flag or None)
AttackFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, "Tensor | None"]]


@dataclass(frozen=True)
class Budget:
    """What every library is given (as far as its API allows)."""

    cw_binary_search_steps: int
    cw_steps: int
    cw_lr: float
    cw_initial_const: float
    steps: int  # FMN and DDN
    deepfool_steps: int
    overshoot: float
    jsma_theta: float
    jsma_pairs: int  # at most this many pairs of features changed (2 * pairs features)


@dataclass
class Row:
    group: str
    key: str
    library: str
    version: str | None
    config: str
    make: Callable[[], AttackFn]
    batched: bool
    notes: list[str] = field(default_factory=list)
    attack: AttackFn | None = None
    times: list[float] = field(default_factory=list)
    other_load: list[float | None] = field(default_factory=list)
    discarded: list[int] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    reported: Tensor | None = None
    mutated_model: bool = False
    mutated_inputs: bool = False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# -- robustlab -------------------------------------------------------------------------------

def robustlab_rows(model: nn.Module, b: Budget) -> list[Row]:
    version = common.version_of("robustlab")
    rows = []

    def untargeted(attack, threat) -> Callable[[], AttackFn]:
        def make() -> AttackFn:
            def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
                result = attack(model, x, y, threat=threat, generator=torch.Generator().manual_seed(0))
                return result.x_adv, result.success
            return run
        return make

    cw = CWL2(binary_search_steps=b.cw_binary_search_steps, max_iterations=b.cw_steps,
              learning_rate=b.cw_lr, initial_const=b.cw_initial_const, confidence=0.0, abort_early=True)
    rows.append(Row("cw", "robustlab", "robustlab", version,
                    f"CWL2(binary_search_steps={b.cw_binary_search_steps}, max_iterations={b.cw_steps}, "
                    f"learning_rate={b.cw_lr}, initial_const={b.cw_initial_const}, confidence=0, abort_early=True); "
                    "threat L2(eps=inf)", untargeted(cw, L2(eps=math.inf)), True,
                    ["Adam on tanh variables, f6 hinge; per-sample c and abort-early; best successful iterate"]))
    fmn = FMN(steps=b.steps)
    rows.append(Row("fmn", "robustlab", "robustlab", version,
                    f"FMN(steps={b.steps}) (step_size 1 -> 0.01, gamma 0.05 -> 0.001, cosine); threat L2(eps=inf)",
                    untargeted(fmn, L2(eps=math.inf)), True))
    ddn = DDN(steps=b.steps)
    rows.append(Row("ddn", "robustlab", "robustlab", version,
                    f"DDN(steps={b.steps}) (init_norm 1, gamma 0.05, step 1 -> 0.01 cosine); threat L2(eps=inf)",
                    untargeted(ddn, L2(eps=math.inf)), True))
    half = max(1, b.steps // 2)
    ensemble = MinimumNormEnsemble((DDN(steps=half), FMN(steps=half)))
    rows.append(Row("ensemble", "robustlab", "robustlab", version,
                    f"MinimumNormEnsemble((DDN(steps={half}), FMN(steps={half}))): per sample the smaller success; "
                    "threat L2(eps=inf)", untargeted(ensemble, L2(eps=math.inf)), True,
                    [f"the gradient budget of one {2 * half}-step attack"]))
    df = DeepFool(steps=b.deepfool_steps, overshoot=b.overshoot, candidates=10)
    rows.append(Row("deepfool", "robustlab", "robustlab", version,
                    f"DeepFool(steps={b.deepfool_steps}, overshoot={b.overshoot}, candidates=10); threat L2(eps=inf)",
                    untargeted(df, L2(eps=math.inf)), True,
                    ["drops gradient coordinates that point out of the box at a bound"]))

    max_distortion = 2 * b.jsma_pairs / 784

    def make_jsma() -> AttackFn:
        attack = JSMA(variant="z", theta=b.jsma_theta, max_distortion=max_distortion)

        def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            result = attack(model, x, y, threat=L0(eps=math.inf), targets=t)
            return result.x_adv, result.success
        return run

    rows.append(Row("jsma", "robustlab", "robustlab", version,
                    f"JSMA(variant='z', theta={b.jsma_theta}, max_distortion={max_distortion:.6f} "
                    f"= {2 * b.jsma_pairs}/784, i.e. floor(...*784/2) = {b.jsma_pairs} pairs); threat L0(eps=inf); "
                    "targets given", make_jsma, True,
                    ["pairwise saliency on logits, all images in one batch; exact pair search pruned by a bound"]))
    return rows


# -- Foolbox ---------------------------------------------------------------------------------

def foolbox_rows(model: nn.Module, b: Budget) -> list[Row]:
    import foolbox as fb

    version = common.version_of("foolbox")

    def wrap(build: Callable[[], Any]) -> Callable[[], AttackFn]:
        def make() -> AttackFn:
            fmodel = fb.PyTorchModel(model, bounds=(0, 1), device="cpu")
            attack = build()

            def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
                _raw, clipped, success = attack(fmodel, x, y, epsilons=None)
                return clipped, success
            return run
        return make

    return [
        Row("cw", "foolbox", "Foolbox", version,
            f"L2CarliniWagnerAttack(binary_search_steps={b.cw_binary_search_steps}, steps={b.cw_steps}, "
            f"stepsize={b.cw_lr}, initial_const={b.cw_initial_const}, confidence=0, abort_early=True), epsilons=None",
            wrap(lambda: fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=b.cw_binary_search_steps, steps=b.cw_steps, stepsize=b.cw_lr,
                confidence=0, initial_const=b.cw_initial_const, abort_early=True)), True,
            ["Adam on tanh variables; abort-early on the batch's summed loss (the whole batch stops)"]),
        Row("fmn", "foolbox", "Foolbox", version,
            f"L2FMNAttack(steps={b.steps}, max_stepsize=1.0, min_stepsize=0.01, gamma=0.05), epsilons=None",
            wrap(lambda: fb.attacks.L2FMNAttack(steps=b.steps, max_stepsize=1.0, gamma=0.05)), True),
        Row("ddn", "foolbox", "Foolbox", version,
            f"DDNAttack(init_epsilon=1.0, steps={b.steps}, gamma=0.05), epsilons=None",
            wrap(lambda: fb.attacks.DDNAttack(init_epsilon=1.0, steps=b.steps, gamma=0.05)), True),
        Row("deepfool", "foolbox", "Foolbox", version,
            f"L2DeepFoolAttack(steps={b.deepfool_steps}, candidates=10, overshoot={b.overshoot}, loss='logits'), "
            "epsilons=None",
            wrap(lambda: fb.attacks.L2DeepFoolAttack(steps=b.deepfool_steps, candidates=10,
                                                     overshoot=b.overshoot, loss="logits")), True),
    ]


# -- ART -------------------------------------------------------------------------------------

def art_rows(model: nn.Module, b: Budget, n: int) -> list[Row]:
    from art.attacks.evasion import CarliniL2Method, SaliencyMapMethod
    from art.estimators.classification import PyTorchClassifier

    logging.getLogger("art").setLevel(logging.WARNING)
    version = common.version_of("adversarial-robustness-toolbox")

    def classifier() -> Any:
        return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                 clip_values=(0.0, 1.0), device_type="cpu")

    def make_cw() -> AttackFn:
        attack = CarliniL2Method(classifier(), confidence=0.0, targeted=False, learning_rate=b.cw_lr,
                                 binary_search_steps=b.cw_binary_search_steps, max_iter=b.cw_steps,
                                 initial_const=b.cw_initial_const, max_halving=5, max_doubling=5,
                                 batch_size=n, verbose=False)

        def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, None]:
            return torch.from_numpy(attack.generate(x=x.numpy(), y=y.numpy())), None
        return run

    def make_jsma() -> AttackFn:
        # ART continues while (changed features) / 784 <= gamma, two features per step: with
        # gamma = (2 * pairs - 1) / 784 it stops after exactly `pairs` pairs, like the others.
        attack = SaliencyMapMethod(classifier(), theta=b.jsma_theta, gamma=(2 * b.jsma_pairs - 1) / 784,
                                   batch_size=n, verbose=False)

        def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, None]:
            return torch.from_numpy(attack.generate(x=x.numpy(), y=t.numpy())), None
        return run

    return [
        Row("cw", "art", "ART", version,
            f"CarliniL2Method(binary_search_steps={b.cw_binary_search_steps}, max_iter={b.cw_steps}, "
            f"learning_rate={b.cw_lr}, initial_const={b.cw_initial_const}, confidence=0, max_halving=5, "
            f"max_doubling=5, batch_size={n}); PyTorchClassifier(clip_values=(0, 1))", make_cw, True,
            ["not Adam: gradient descent with a halving/doubling line search on the learning rate "
             "(extra forwards per step); NumPy in/out; no abort-early"]),
        Row("jsma", "art", "ART", version,
            f"SaliencyMapMethod(theta={b.jsma_theta}, gamma={(2 * b.jsma_pairs - 1) / 784:.6f} "
            f"= {2 * b.jsma_pairs - 1}/784, i.e. at most {b.jsma_pairs} pairs, batch_size={n}); "
            "targets as y", make_jsma, True,
            ["batched over images, but not the pairwise saliency map: picks the two features with the "
             "largest target-class gradient (no other-classes term)"]),
    ]


# -- torchattacks ----------------------------------------------------------------------------

def torchattacks_rows(model: nn.Module, b: Budget) -> list[Row]:
    import torchattacks

    version = common.version_of("torchattacks")

    def make_df() -> AttackFn:
        attack = torchattacks.DeepFool(model, steps=b.deepfool_steps, overshoot=b.overshoot)

        def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, None]:
            return attack(x, y), None
        return run

    def make_jsma() -> AttackFn:
        # torchattacks runs max_iters = ceil(784 * gamma / 2) pairs; gamma = 2 * pairs / 784 gives `pairs`.
        attack = torchattacks.JSMA(model, theta=b.jsma_theta, gamma=2 * b.jsma_pairs / 784)

        def run(x: Tensor, y: Tensor, t: Tensor) -> tuple[Tensor, None]:
            attack.set_mode_targeted_by_function(lambda images, labels: t, quiet=True)
            return attack(x, y), None
        return run

    return [
        Row("deepfool", "torchattacks", "torchattacks", version,
            f"DeepFool(model, steps={b.deepfool_steps}, overshoot={b.overshoot})", make_df, False,
            ["one image at a time; full Jacobian (all 10 classes) by 10 backward passes per step"]),
        Row("jsma", "torchattacks", "torchattacks", version,
            f"JSMA(model, theta={b.jsma_theta}, gamma={2 * b.jsma_pairs / 784:.6f} = {2 * b.jsma_pairs}/784, "
            f"i.e. ceil(...*784/2) = {b.jsma_pairs} pairs); set_mode_targeted_by_function(targets)", make_jsma, False,
            ["one image at a time; full Jacobian by 10 backward passes per step; search set excludes "
             "pixels >= 0.99"]),
    ]


# -- running ---------------------------------------------------------------------------------

def build_rows(args: argparse.Namespace, model: nn.Module, b: Budget, n: int) -> tuple[list[Row], dict[str, str]]:
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    makers = {"robustlab": lambda: robustlab_rows(model, b), "foolbox": lambda: foolbox_rows(model, b),
              "art": lambda: art_rows(model, b, n), "torchattacks": lambda: torchattacks_rows(model, b)}
    for lib in args.libraries:
        if lib != "robustlab":
            ok, why = common.peer_available(lib)
            if not ok:
                skipped[lib] = why
                common.log(f"[skip] {lib} is not installed or does not import ({why}); see benchmarks/README.md")
                continue
        rows.extend(r for r in makers[lib]() if r.group in args.groups)
    order = {g: i for i, g in enumerate(GROUPS)}
    rows.sort(key=lambda r: (order[r.group], r.key != "robustlab"))
    return rows, skipped


def run_once(row: Row, model: nn.Module, x: Tensor, y: Tensor, t: Tensor, digest: str, seed: int,
             args: argparse.Namespace) -> tuple[float, Tensor, Tensor | None, float | None, int]:
    x_before = x.clone()
    box: dict[str, Any] = {}

    def call() -> None:
        seed_everything(seed)
        box["out"] = row.attack(x, y, t)  # type: ignore[misc]

    if args.wait_idle > 0:
        seconds, other, discarded = common.quiet_timing(call, wait=args.wait_idle, threshold=args.busy_threshold,
                                                        retries=args.retries)
    else:
        with common.OtherLoad() as meter:
            start = time.perf_counter()
            call()
            seconds = time.perf_counter() - start
        other, discarded = meter.cores, 0
    x_adv, reported = box["out"]
    if not torch.equal(x, x_before):
        row.mutated_inputs = True
    model.eval()
    model.zero_grad(set_to_none=True)
    if common.state_digest(model) != digest:
        row.mutated_model = True
    return seconds, x_adv.detach().to("cpu", torch.float32), reported, other, discarded


def evaluate(row: Row, model: nn.Module, x: Tensor, y: Tensor, t: Tensor, x_adv: Tensor) -> dict[str, Any]:
    """The common judgement: fresh forward pass, recomputed distances, box check."""
    pred = common.predict(model, x_adv)
    success = pred == t if row.group == "jsma" else pred != y
    delta = (x_adv - x).reshape(len(x), -1)
    l2 = delta.norm(dim=1)
    l0 = (delta != 0).sum(dim=1).float()  # one channel: features == pixels
    check = common.check_threat_set(x, x_adv, math.inf)
    dist = (l0 if row.group == "jsma" else l2)[success]
    out = {
        "success_rate": float(success.float().mean()),
        "successes": int(success.sum()),
        "distance": "L0 (pixels)" if row.group == "jsma" else "L2",
        "median_distance": float(np.median(dist.numpy())) if len(dist) else None,
        "mean_distance": float(dist.mean()) if len(dist) else None,
        "max_distance": float(dist.max()) if len(dist) else None,
        "box_violations": check.box_violations,
        "max_box_excess": check.max_box_excess,
        "nonfinite": check.nonfinite,
        "median_l2_over_successes": float(l2[success].median()) if bool(success.any()) else None,
    }
    if row.reported is not None:
        out["library_success_rate"] = float(row.reported.float().mean())
        out["library_flag_disagreements"] = int((row.reported.bool() != success).sum())
    # Foolbox's C&W returns an all-zero (black) image where its optimisation found nothing; a black
    # image is usually misclassified, so it passes the fresh check. Counted here, not excluded.
    out["blank_outputs_counted_as_success"] = int((success & (x_adv.reshape(len(x), -1).abs().sum(dim=1) == 0)).sum())
    out["_success"] = success
    out["_distance"] = l0 if row.group == "jsma" else l2
    out["_l2"] = l2
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=100, help="correctly classified test images (default 100)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (default 3); the median is reported")
    p.add_argument("--max-repeat-seconds", type=float, default=30.0,
                   help="a row whose first timed run took longer than this is not repeated (default 30)")
    p.add_argument("--groups", default=",".join(GROUPS), help="comma-separated subset of " + ",".join(GROUPS))
    p.add_argument("--libraries", default="robustlab,foolbox,art,torchattacks",
                   help="comma-separated subset of robustlab,foolbox,art,torchattacks")
    p.add_argument("--cw-binary-search-steps", type=int, default=5)
    p.add_argument("--cw-steps", type=int, default=100, help="C&W optimisation steps per c (default 100)")
    p.add_argument("--cw-lr", type=float, default=1e-2)
    p.add_argument("--cw-initial-const", type=float, default=1e-2)
    p.add_argument("--steps", type=int, default=100, help="FMN and DDN iterations (default 100)")
    p.add_argument("--deepfool-steps", type=int, default=50)
    p.add_argument("--overshoot", type=float, default=0.02)
    p.add_argument("--jsma-theta", type=float, default=1.0)
    p.add_argument("--jsma-pairs", type=int, default=40,
                   help="JSMA budget in pairs of features (default 40 = 80 features = 10.2%% of 784)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset and of the JSMA targets")
    p.add_argument("--warmup-images", type=int, default=8, help="images in each row's untimed warm-up run")
    p.add_argument("--data-dir", default=None, help="MNIST location (default: robustlab's search, e.g. $ROBUSTLAB_DATA)")
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR, help="where the trained model is cached")
    p.add_argument("--arch", default="lenet", choices=sorted(common.TRAIN_CONFIGS), help="model architecture")
    p.add_argument("--model", type=Path, default=None,
                   help="a saved robustlab model (PATH.safetensors + PATH.json) instead of the cached natural --arch")
    p.add_argument("--freeze-params", action="store_true",
                   help="give every library a model whose parameters have requires_grad=False")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each timed run wait up to this many seconds for an idle machine (0: don't)")
    p.add_argument("--busy-threshold", type=float, default=0.2,
                   help="a timed run during which other processes used this many cores or more is run again")
    p.add_argument("--retries", type=int, default=2, help="re-runs of a disturbed timed run (default 2)")
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "minimum_norm.json", help="JSON output")
    args = p.parse_args(argv)
    args.groups = [s.strip().lower() for s in args.groups.split(",") if s.strip()]
    args.libraries = [s.strip().lower() for s in args.libraries.split(",") if s.strip()]
    bad = sorted(set(args.groups) - set(GROUPS)) + sorted(set(args.libraries) - set(common.PEERS) - {"robustlab"})
    if bad:
        p.error(f"unknown groups/libraries {bad}")
    if args.images < 1 or args.repeats < 1:
        p.error("--images and --repeats must be >= 1")
    return args


def select_images(model: nn.Module, args: argparse.Namespace) -> tuple[Tensor, Tensor, dict[str, Any]]:
    """The first ``--images`` correctly classified images of a stratified subset of twice that size
    (minimum-norm distances are only defined for images the model gets right)."""
    pool = load_dataset("mnist", split="test", data_dir=args.data_dir, limit=min(10000, 2 * args.images + 20),
                        seed=args.seed)
    correct = common.predict(model, pool.x) == pool.y
    keep = torch.nonzero(correct).squeeze(1)[:args.images]
    x, y = pool.x[keep].contiguous(), pool.y[keep]
    info = {"pool": len(pool.y), "pool_clean_accuracy": float(correct.float().mean()), "images": len(y),
            "class_counts": torch.bincount(y, minlength=10).tolist(),
            "test_indices": pool.indices[keep].tolist() if getattr(pool, "indices", None) is not None else None}
    return x, y, info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    load_before = common.load_average()
    started = time.perf_counter()

    if args.model is None:
        model, card, _trained_now = common.get_model(args.arch, args.workdir, args.data_dir)
    else:
        model, card = load_model(args.model)
        model.eval()
    if args.freeze_params:
        model.requires_grad_(False)
    digest = common.state_digest(model)
    x, y, data_info = select_images(model, args)
    targets = (y + torch.randint(1, 10, y.shape, generator=torch.Generator().manual_seed(args.seed))) % 10
    common.log(f"[data] {len(x)} correctly classified MNIST test images (from a stratified subset of "
               f"{data_info['pool']}, seed {args.seed}); JSMA targets from seed {args.seed}")

    budget = Budget(args.cw_binary_search_steps, args.cw_steps, args.cw_lr, args.cw_initial_const, args.steps,
                    args.deepfool_steps, args.overshoot, args.jsma_theta, args.jsma_pairs)
    rows, skipped = build_rows(args, model, budget, len(x))
    if not rows:
        common.log("nothing to run")
        return 1

    n_warm = min(args.warmup_images, len(x))
    for row in rows:
        row.attack = row.make()
        seconds, *_ = run_once(row, model, x[:n_warm], y[:n_warm], targets[:n_warm], digest, args.seed,
                               argparse.Namespace(**{**vars(args), "wait_idle": 0}))
        common.log(f"[warm-up] {GROUP_TITLES[row.group]} / {row.library}: {n_warm} images in {seconds:.2f} s")

    # Round robin within each group and repeat, so that load changes hit a group's rows alike.
    for group in args.groups:
        group_rows = [r for r in rows if r.group == group]
        for repeat in range(args.repeats):
            for row in group_rows:
                if repeat > 0 and row.times[0] > args.max_repeat_seconds:
                    continue
                seconds, x_adv, reported, other, discarded = run_once(row, model, x, y, targets, digest,
                                                                      args.seed, args)
                row.times.append(seconds)
                row.other_load.append(other)
                row.discarded.append(discarded)
                row.outputs.append(x_adv)
                if repeat == 0:
                    row.reported = None if reported is None else reported.detach().cpu()
                common.log(f"[{GROUP_TITLES[group]} {repeat + 1}/{args.repeats}] {row.library}: {seconds:.2f} s"
                           + ("" if other is None else f", other processes {other:.2f} cores")
                           + (f", {discarded} disturbed run(s) discarded" if discarded else ""))

    load_after = common.load_average()
    report = build_report(args, threads, rows, skipped, card, data_info, x, y, targets, model, budget,
                          load_before, load_after, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    common.log(f"[done] JSON written to {args.out}")
    return 0


# -- reporting -------------------------------------------------------------------------------

def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None else round(v, nd)


def build_report(args, threads, rows, skipped, card, data_info, x, y, targets, model, budget, load_before,
                 load_after, wall) -> dict[str, Any]:
    results = []
    evals = {id(row): evaluate(row, model, x, y, targets, row.outputs[0]) for row in rows}
    common_success = {}
    for group in GROUPS:
        # Images on which every row of the group that succeeded at all succeeded (a row with no
        # success, e.g. ART's C&W at this budget, would leave no common image).
        members = [evals[id(r)]["_success"] for r in rows if r.group == group and bool(evals[id(r)]["_success"].any())]
        if not members:
            members = [evals[id(r)]["_success"] for r in rows if r.group == group]
        if members:
            common_success[group] = torch.stack(members).all(dim=0)
    for row in rows:
        ev = evals[id(row)]
        both = common_success[row.group]
        on_common = ev["_distance"][both]
        ev["common_successes"] = int(both.sum())
        ev["median_distance_common"] = float(np.median(on_common.numpy())) if len(on_common) else None
        ev["mean_distance_common"] = float(on_common.mean()) if len(on_common) else None
        same = all(torch.equal(row.outputs[0], o) for o in row.outputs[1:])
        base = next(r for r in rows if r.group == row.group and r.key == "robustlab") \
            if any(r.group == row.group and r.key == "robustlab" for r in rows) else None
        median = statistics.median(row.times)
        base_median = statistics.median(base.times) if base else None
        results.append({
            "group": row.group, "attack": GROUP_TITLES[row.group], "key": row.key, "library": row.library,
            "version": row.version, "configuration": row.config, "batched_over_images": row.batched,
            "seconds_median": _r(median), "seconds_all": [_r(s) for s in row.times],
            "time_ratio_vs_robustlab": _r(median / base_median, 3) if base_median else None,
            "other_processes_cores_during_runs": [_r(v, 2) for v in row.other_load],
            "discarded_disturbed_runs": row.discarded,
            "deterministic_across_repeats": same,
            **{k: (_r(v) if isinstance(v, float) else v) for k, v in ev.items() if not k.startswith("_")},
            "changed_model_weights": row.mutated_model, "changed_inputs": row.mutated_inputs,
            "notes": row.notes,
        })
    targets_report = compute_targets(results)
    return {
        "benchmark": "minimum_norm",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "settings": {
            "images": len(y), "data": data_info, "seed": args.seed, "repeats": args.repeats,
            "warmup_images": args.warmup_images, "budget": budget.__dict__,
            "jsma_targets": targets.tolist(),
            "statistic": f"median wall time over repeats (a row whose first run took > {args.max_repeat_seconds} s "
                         "is timed once); success and distances of repeat 1 (every row is "
                         "deterministic across repeats where deterministic_across_repeats is true); "
                         "median distance = numpy median over the successful images",
            "success": "fresh eval-mode forward pass of the returned points: prediction != label "
                       "(untargeted), prediction == target (JSMA)",
            "params_require_grad": not args.freeze_params,
            "wait_idle_seconds": args.wait_idle, "busy_threshold_cores": args.busy_threshold,
            "retries_of_disturbed_runs": args.retries,
        },
        "model": {"path": None if args.model is None else str(args.model),
                  "architecture": card.architecture, "parameters": sum(p.numel() for p in model.parameters()),
                  "training": {k: card.training.get(k) for k in ("method", "config")},
                  "clean_test_accuracy": card.metrics.get("clean_test_accuracy")},
        "results": results,
        "targets": targets_report,
        "skipped_peers": skipped,
        "load_average_before": load_before, "load_average_after": load_after,
        "total_seconds": round(wall, 1),
        "provenance": common.provenance(threads),
    }


def compute_targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    l2 = [r for r in results if r["group"] in L2_GROUPS and r["median_distance"] is not None
          and r["success_rate"] == 1.0]
    ours = [r for r in l2 if r["key"] == "robustlab"]
    peers = [r for r in l2 if r["key"] != "robustlab"]
    if ours and peers:
        best_ours = min(ours, key=lambda r: r["median_distance"])
        best_peer = min(peers, key=lambda r: r["median_distance"])
        ratio = best_ours["median_distance"] / best_peer["median_distance"]
        time_ratio = best_ours["seconds_median"] / best_peer["seconds_median"]
        out["best_minimum_norm_l2"] = {
            "rule": "among rows with 100% success, the smallest median L2; robustlab's best vs the best peer's",
            "robustlab_best": f"{best_ours['attack']} ({best_ours['median_distance']:.4f}, {best_ours['seconds_median']:.2f} s)",
            "peer_best": f"{best_peer['attack']} / {best_peer['library']} ({best_peer['median_distance']:.4f}, "
                         f"{best_peer['seconds_median']:.2f} s)",
            "median_ratio": round(ratio, 4), "median_target": TARGET_MEDIAN_RATIO,
            "time_ratio": round(time_ratio, 3),
            "met": ratio <= TARGET_MEDIAN_RATIO and time_ratio <= 1.0,
        }
    cw = {r["key"]: r for r in results if r["group"] == "cw"}
    if "robustlab" in cw and "foolbox" in cw:
        a, b = cw["robustlab"], cw["foolbox"]
        out["cw_vs_foolbox"] = {
            "robustlab": {"success_rate": a["success_rate"], "median": a["median_distance"], "seconds": a["seconds_median"]},
            "foolbox": {"success_rate": b["success_rate"], "median": b["median_distance"], "seconds": b["seconds_median"]},
            "median_ratio": _r(a["median_distance"] / b["median_distance"]) if a["median_distance"] and b["median_distance"] else None,
            "time_ratio": _r(a["seconds_median"] / b["seconds_median"], 3),
            "median_on_common_successes": {"robustlab": a["median_distance_common"], "foolbox": b["median_distance_common"],
                                           "n": a["common_successes"]},
            "foolbox_blank_outputs": b["blank_outputs_counted_as_success"],
            "met": (a["success_rate"] >= b["success_rate"] and a["median_distance"] is not None
                    and b["median_distance"] is not None and a["median_distance"] <= b["median_distance"]
                    and a["seconds_median"] <= b["seconds_median"]),
        }
    js = {r["key"]: r for r in results if r["group"] == "jsma"}
    if "robustlab" in js and "art" in js:
        speedup = js["art"]["seconds_median"] / js["robustlab"]["seconds_median"]
        out["jsma_vs_art"] = {
            "robustlab_batched": js["robustlab"]["batched_over_images"],
            "speedup_over_art": round(speedup, 2), "target": TARGET_JSMA_SPEEDUP,
            "met": js["robustlab"]["batched_over_images"] and speedup >= TARGET_JSMA_SPEEDUP,
        }
    if "robustlab" in js and "torchattacks" in js:
        out["jsma_speedup_over_torchattacks"] = round(js["torchattacks"]["seconds_median"] / js["robustlab"]["seconds_median"], 2)
    return out


def _fmt(v: float | None, nd: int = 3) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    b = s["budget"]
    prov = report["provenance"]
    lines = [
        f"Minimum-norm attacks, {s['images']} correctly classified MNIST test images, model "
        f"{report['model']['architecture']} ({report['model']['training'].get('method') or 'natural'} training), "
        f"{prov['torch_threads']} torch threads, median of {s['repeats']} runs. "
        f"C&W: {b['cw_binary_search_steps']} binary-search steps x {b['cw_steps']} iterations, lr {b['cw_lr']}, "
        f"initial c {b['cw_initial_const']}; FMN/DDN: {b['steps']} steps; DeepFool: {b['deepfool_steps']} steps, "
        f"overshoot {b['overshoot']}; JSMA: theta {b['jsma_theta']}, at most {b['jsma_pairs']} pairs "
        f"({2 * b['jsma_pairs']} features), random targets (seed {s['seed']}).",
        "",
        "| Attack | Library | Version | Batched | Success (%) | Median dist. | Mean dist. | Median on common successes (n) | Blank outputs | Time (s) | Time / robustlab | Box violations |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        unit = " px" if r["group"] == "jsma" else ""
        nd = 1 if r["group"] == "jsma" else 3
        lines.append(
            f"| {r['attack']} | {r['library']} | {r['version']} | {'yes' if r['batched_over_images'] else 'no'} | "
            f"{100 * r['success_rate']:.0f} | {_fmt(r['median_distance'], nd)}{unit} | {_fmt(r['mean_distance'], nd)}{unit} | "
            f"{_fmt(r['median_distance_common'], nd)}{unit} ({r['common_successes']}) | {r['blank_outputs_counted_as_success']} | "
            f"{r['seconds_median']:.2f} | {_fmt(r['time_ratio_vs_robustlab'], 2)}× | "
            f"{r['box_violations'] + r['nonfinite']} |")
    t = report["targets"]
    lines.append("")
    if "best_minimum_norm_l2" in t:
        m = t["best_minimum_norm_l2"]
        lines.append(f"- Best minimum-norm L2: robustlab {m['robustlab_best']} vs peer {m['peer_best']}: median ratio "
                     f"{m['median_ratio']:.3f} (target ≤ {m['median_target']}), time ratio {m['time_ratio']:.2f} "
                     f"(target ≤ 1): {'met' if m['met'] else 'NOT met'}")
    if "cw_vs_foolbox" in t:
        c = t["cw_vs_foolbox"]
        lines.append(f"- C&W L2 vs Foolbox: median ratio {_fmt(c['median_ratio'])}, time ratio {c['time_ratio']:.2f}, "
                     f"success {100 * c['robustlab']['success_rate']:.0f}% vs {100 * c['foolbox']['success_rate']:.0f}% "
                     f"(Foolbox: {c['foolbox_blank_outputs']} of them blank images); on the "
                     f"{c['median_on_common_successes']['n']} common successes median "
                     f"{_fmt(c['median_on_common_successes']['robustlab'])} vs {_fmt(c['median_on_common_successes']['foolbox'])}: "
                     f"{'met' if c['met'] else 'NOT met'}")
    if "jsma_vs_art" in t:
        j = t["jsma_vs_art"]
        lines.append(f"- JSMA: robustlab batched: {j['robustlab_batched']}; {j['speedup_over_art']:.1f}× faster than ART "
                     f"(target ≥ {j['target']}×): {'met' if j['met'] else 'NOT met'}"
                     + (f"; {t['jsma_speedup_over_torchattacks']:.1f}× faster than torchattacks"
                        if "jsma_speedup_over_torchattacks" in t else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
