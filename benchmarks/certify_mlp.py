"""Certification on MNIST MLPs: bound throughput, CROWN vs IBP, and exact MILP against attacks
and certificates, per sample.

Models (trained here with robustlab's loop and cached under --workdir):

- ``mlp32-natural``: 784-32-32-10, natural training;
- ``mlp100-ibp``: 784-100-100-10, IBP training (robustlab.training.certified, method "ibp");
- ``mlp100-natural``: 784-100-100-10, natural training (expected out of reach for HiGHS).

Measured:

1. bound throughput (samples/s) of IBP, CROWN-IBP, CROWN and alpha-CROWN;
2. certified accuracy of CROWN and IBP on the same models and images (CROWN >= IBP);
3. the per-sample bracket on mlp32-natural and mlp100-ibp: CROWN-certified radius <= exact
   minimal Linf perturbation (MILP, HiGHS) <= attacks (FMN, C&W-Linf, DeepFool; and PGD with
   bisection over eps, reported separately), with MILP time per sample and fraction solved;
4. a couple of samples of mlp100-natural with a short MILP limit (reported as out of reach
   when they time out).

Usage:

    ROBUSTLAB_DATA=/work/shared/data python benchmarks/certify_mlp.py
    python benchmarks/certify_mlp.py --samples 20 --time-limit 60 --wide-samples 2 --wide-time-limit 20 \
        --threads 1 --out benchmarks/results/certify_mlp.json

Markdown on stdout, progress on stderr, JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

from robustlab.attacks import PGD, build_attack
from robustlab.certify import CROWN, CROWNIBP, IBP, AlphaCROWN
from robustlab.certify.bracket import bracket
from robustlab.certify.milp import MILPVerifier
from robustlab.training.certified import CertifiedTrainingOptions
from robustlab.data import load_dataset
from robustlab.models import ModelCard, build_model, load_model, save_model
from robustlab.threat import threat_model
from robustlab.training import TrainConfig, train

# name -> (hidden, method, epochs, certified-training options as a function of steps/epoch)
MODELS: dict[str, dict[str, Any]] = {
    "mlp32-natural": {"hidden": (32, 32), "method": "natural", "epochs": 4},
    "mlp100-natural": {"hidden": (100, 100), "method": "natural", "epochs": 4},
    # IBP (Gowal et al. 2018) at eps_train = 0.15 for evaluation at 0.1: 1 epoch natural
    # warm-up, eps and kappa (1 -> 0.5) ramped over the next 4 epochs, 3 epochs at full eps.
    "mlp100-ibp": {"hidden": (100, 100), "method": "ibp", "epochs": 8,
                   "options": lambda spe: CertifiedTrainingOptions(eps=0.15, warmup_steps=spe, ramp_steps=4 * spe)},
}
BATCH = 128
EVAL_EPS = {"mlp32-natural": (0.005, 0.01, 0.02), "mlp100-natural": (0.005, 0.01, 0.02), "mlp100-ibp": (0.05, 0.1)}
TARGET_ATTACK_RATIO = 1.05
TARGET_CERT_RATIO = 0.5


def train_config(spec: dict) -> TrainConfig:
    return TrainConfig(epochs=spec["epochs"], batch_size=BATCH, optimizer="adam", lr=1e-3, weight_decay=0.0,
                       schedule="cosine", seed=0, method=spec["method"])


def get_model(name: str, workdir: Path, train_set, test_set) -> tuple[nn.Module, ModelCard, bool]:
    """The cached model ``name`` (trained now if missing), read back from its safetensors file."""
    stem = workdir / f"mnist-{name}"
    spec = MODELS[name]
    trained_now = False
    if not stem.with_name(stem.name + ".safetensors").exists():
        config = train_config(spec)
        common.log(f"[model] training {name} ({config.epochs} epochs, {config.method}); cached in {workdir}")
        model = build_model("mlp", input_shape=(1, 28, 28), num_classes=10, hidden=spec["hidden"], seed=0)
        steps_per_epoch = math.ceil(len(train_set.x) / BATCH)
        options = spec["options"](steps_per_epoch) if "options" in spec else None
        start = time.perf_counter()
        if options is None:
            result = train(model, train_set.x, train_set.y, config=config, val_x=test_set.x, val_y=test_set.y)
        else:
            from robustlab.training.certified import train_certified

            result = train_certified(model, train_set.x, train_set.y, config=config, options=options,
                                     val_x=test_set.x, val_y=test_set.y)
        seconds = time.perf_counter() - start
        clean = float((common.predict(model, test_set.x) == test_set.y).float().mean())
        common.log(f"[model] {name}: trained in {seconds:.0f} s; clean test accuracy {clean:.4f}")
        card = ModelCard(
            architecture="mlp",
            arguments={"input_shape": [1, 28, 28], "num_classes": 10, "hidden": list(spec["hidden"])},
            dataset="mnist",
            training={"method": config.method, "config": config.to_dict(),
                      "options": None if options is None else options.to_dict(),
                      "seconds": round(seconds, 1), "history": result.history},
            metrics={"clean_test_accuracy": clean},
            extra={"made_by": "benchmarks/certify_mlp.py"},
        )
        workdir.mkdir(parents=True, exist_ok=True)
        save_model(model, stem, card)
        trained_now = True
    model, card = load_model(stem)
    return model.eval(), card, trained_now


# -- 1. throughput -------------------------------------------------------------------------------


def throughput(model, x, y, eps: float, args) -> list[dict]:
    threat = threat_model("Linf", eps)
    certifiers = {
        "IBP": (IBP(batch_size=args.batch_size), len(x)),
        "CROWN-IBP": (CROWNIBP(batch_size=args.batch_size), len(x)),
        "CROWN": (CROWN(batch_size=args.batch_size), len(x)),
        "alpha-CROWN (30 steps)": (AlphaCROWN(batch_size=args.batch_size), min(len(x), args.alpha_images)),
    }
    rows = []
    for label, (certifier, n) in certifiers.items():
        certifier(model, x[:32], y[:32], threat=threat)  # warm-up
        box: dict = {}
        seconds, load, discarded = common.quiet_timing(
            lambda box=box, certifier=certifier, n=n: box.setdefault("r", certifier(model, x[:n], y[:n], threat=threat)),
            wait=args.wait_idle, threshold=args.busy_threshold, retries=args.retries)
        rows.append({"certifier": label, "images": n, "seconds": seconds, "samples_per_s": n / seconds,
                     "other_load_cores": load, "discarded_runs": discarded,
                     "certified_accuracy": box["r"].certified_accuracy})
        common.log(f"[throughput] {label}: {n / seconds:.0f} samples/s ({n} images, {seconds:.2f} s)")
    return rows


# -- 2. CROWN vs IBP --------------------------------------------------------------------------------


def crown_vs_ibp(model, x, y, eps_list, args) -> list[dict]:
    rows = []
    for eps in eps_list:
        threat = threat_model("Linf", eps)
        ibp = IBP(batch_size=args.batch_size)(model, x, y, threat=threat)
        crown = CROWN(batch_size=args.batch_size)(model, x, y, threat=threat)
        crown_only = CROWN(batch_size=args.batch_size, with_ibp=False)(model, x, y, threat=threat)
        rows.append({
            "eps": eps, "images": len(x), "clean": float(ibp.clean_correct.float().mean()),
            "ibp": ibp.certified_accuracy, "crown": crown.certified_accuracy,
            "crown_without_ibp": crown_only.certified_accuracy,
            "ibp_certified_not_crown": int((ibp.certified & ~crown.certified).sum()),
            "crown_ge_ibp": crown.certified_accuracy >= ibp.certified_accuracy,
        })
    return rows


# -- 3. PGD with bisection over eps ----------------------------------------------------------------


def pgd_bisection(model, x, y, *, hi: float, steps: int, pgd_steps: int, restarts: int, seed: int) -> list[float]:
    """Per sample, the smallest eps on a bisection grid in [0, hi] at which PGD (``pgd_steps``,
    ``restarts``) found a verified adversarial example; ``inf`` where PGD fails even at ``hi``."""
    out = []
    attack = PGD(steps=pgd_steps, restarts=restarts)
    for i in range(len(x)):
        xi, yi = x[i:i + 1], y[i:i + 1]
        generator = torch.Generator().manual_seed(seed + i)

        def broken(eps: float, xi=xi, yi=yi, generator=generator) -> float | None:
            r = attack(model, xi, yi, threat=threat_model("Linf", eps), generator=generator)
            return float(r.distance[0]) if bool(r.success[0]) else None

        best = broken(hi)
        if best is None:
            out.append(math.inf)
            continue
        lo, up = 0.0, hi
        for _ in range(steps):
            mid = (lo + up) / 2
            d = broken(mid)
            if d is None:
                lo = mid
            else:
                up, best = mid, min(best, d)
        out.append(best)
    return out


def correctly_classified(model, x, y, n: int) -> Tensor:
    pred = common.predict(model, x)
    return torch.nonzero(pred == y).flatten()[:n]


def run_bracket(name, model, x, y, index, args) -> dict:
    xs, ys = x[index], y[index]
    attacks = {"fmn": build_attack("fmn", steps=args.fmn_steps), "fab": build_attack("fab", restarts=args.fab_restarts),
               "cw-linf": build_attack("cw-linf"), "deepfool": build_attack("deepfool")}
    start = time.perf_counter()
    result = bracket(model, xs, ys, threat=threat_model("Linf", math.inf), attacks=attacks, time_limit=args.time_limit,
                     generator=torch.Generator().manual_seed(args.seed))
    bracket_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pgd = pgd_bisection(model, xs, ys, hi=args.pgd_hi, steps=args.pgd_bisection_steps, pgd_steps=args.pgd_steps,
                        restarts=args.pgd_restarts, seed=args.seed)
    pgd_seconds = time.perf_counter() - start
    rows = []
    for row, i, p in zip(result.rows, index.tolist(), pgd):
        row = dict(row)
        row["test_index"] = i
        row["dist_pgd-bisection"] = p
        exact = row["exact"]
        for key in [k for k in row if k.startswith("dist_")] + ["upper", "lower"]:
            ratio_key = ("ratio_" + key[5:]) if key.startswith("dist_") else f"ratio_{key}"
            row[ratio_key] = (row[key] / exact) if exact and math.isfinite(row[key]) else None
        rows.append(row)
    solved = [r for r in rows if r["milp_status"] == "optimal" and r["exact"]]
    summary = dict(result.summary)
    summary.update({
        "model": name, "samples": len(rows), "time_limit_s": args.time_limit,
        "fraction_solved": len(solved) / len(rows) if rows else None,
        "median_milp_seconds_solved": _median([r["milp_seconds"] for r in solved]),
        "max_milp_seconds_solved": max([r["milp_seconds"] for r in solved], default=None),
        "median_unstable": _median([r["unstable"] for r in rows]),
        "median_pgd-bisection_over_exact": _median([r["ratio_pgd-bisection"] for r in solved
                                                    if r["ratio_pgd-bisection"] is not None]),
        "max_upper_over_exact": max([r["ratio_upper"] for r in solved if r["ratio_upper"] is not None], default=None),
        "bracket_seconds": bracket_seconds, "pgd_bisection_seconds": pgd_seconds,
    })
    summary["target_attack_within_5pct"] = (summary["median_upper_over_exact"] is not None
                                            and summary["median_upper_over_exact"] <= TARGET_ATTACK_RATIO)
    summary["target_crown_at_least_half"] = (summary["median_lower_over_exact"] is not None
                                             and summary["median_lower_over_exact"] >= TARGET_CERT_RATIO)
    common.log(f"[milp] {name}: solved {len(solved)}/{len(rows)}; median best attack / exact "
               f"{summary['median_upper_over_exact']}; median CROWN / exact {summary['median_lower_over_exact']}")
    return {"summary": summary, "rows": rows}


def out_of_reach(name, model, x, y, index, args) -> dict:
    xs, ys = x[index], y[index]
    fmn = build_attack("fmn", steps=args.fmn_steps)(model, xs, ys, threat=threat_model("Linf", math.inf),
                                                  generator=torch.Generator().manual_seed(args.seed))
    upper = torch.where(fmn.success, fmn.distance, torch.full_like(fmn.distance, math.inf))
    crown = [float(v) for v in _certified(model, xs, ys, upper)]
    res = MILPVerifier(time_limit=args.wide_time_limit).minimal_perturbation(model, xs, ys, threat=threat_model("Linf", math.inf),
                                                                             upper=upper,
                                                                             lower=torch.tensor(crown))
    rows = [{"test_index": i, "status": res.status[k], "milp_lower": res.lower[k], "milp_upper": res.upper[k],
             "fmn": float(upper[k]), "crown": crown[k], "unstable": res.unstable[k], "seconds": res.seconds[k]}
            for k, i in enumerate(index.tolist())]
    common.log(f"[milp] {name}: statuses {[r['status'] for r in rows]}, unstable {[r['unstable'] for r in rows]}")
    return {"time_limit_s": args.wide_time_limit, "rows": rows}


def _certified(model, x, y, upper):
    from robustlab.certify import certified_radius

    return certified_radius(CROWN(), model, x, y, threat=threat_model("Linf", math.inf), eps_max=upper.clamp(max=1.0),
                            steps=16)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# -- report -------------------------------------------------------------------------------------


def fmt(v, digits=4):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.{digits}f}"
    return str(v)


def markdown(report: dict) -> str:
    lines = [f"## Certification on MNIST MLPs ({report['provenance']['date']})", ""]
    lines += ["### Models", "", "| model | training | clean test acc. | training time (s) |", "|---|---|---|---|"]
    for name, m in report["models"].items():
        lines.append(f"| {name} | {m['training']} | {fmt(m['clean_test_accuracy'])} | {fmt(m['train_seconds'], 0)} |")
    for name, rows in report["throughput"].items():
        lines += ["", f"### Bound throughput on {name} (eps {report['settings']['throughput_eps'][name]}, "
                  f"{report['settings']['threads']} thread(s), batch {report['settings']['batch_size']})", "",
                  "| certifier | images | seconds | samples/s | certified acc. | other load (cores) |", "|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['certifier']} | {r['images']} | {fmt(r['seconds'], 2)} | {fmt(r['samples_per_s'], 0)} | "
                         f"{fmt(r['certified_accuracy'], 3)} | {fmt(r['other_load_cores'], 2)} |")
    lines += ["", f"### Certified accuracy, CROWN vs IBP ({report['settings']['images']} test images)", "",
              "| model | eps | clean | IBP | CROWN | CROWN without IBP | CROWN ≥ IBP |", "|---|---|---|---|---|---|---|"]
    for name, rows in report["crown_vs_ibp"].items():
        for r in rows:
            lines.append(f"| {name} | {r['eps']} | {fmt(r['clean'], 3)} | {fmt(r['ibp'], 3)} | {fmt(r['crown'], 3)} | "
                         f"{fmt(r['crown_without_ibp'], 3)} | {fmt(r['crown_ge_ibp'])} |")
    for name, b in report["milp"].items():
        s = b["summary"]
        lines += ["", f"### Exact minimal Linf on {name}: {s['samples']} correctly classified test images, "
                  f"MILP limit {s['time_limit_s']} s per sample", "",
                  "| test index | exact | CROWN cert. / exact | FMN / exact | FAB / exact | C&W-Linf / exact | "
                  "DeepFool / exact | PGD-bisection / exact | best attack | MILP status | MILP s | unstable ReLUs | "
                  "consistent |",
                  "|" + "---|" * 13]
        for r in b["rows"]:
            lines.append(
                f"| {r['test_index']} | {fmt(r['exact'])} | {fmt(r['ratio_lower'], 3)} | {fmt(r['ratio_fmn'], 3)} | "
                f"{fmt(r['ratio_fab'], 3)} | {fmt(r['ratio_cw-linf'], 3)} | {fmt(r['ratio_deepfool'], 3)} | {fmt(r['ratio_pgd-bisection'], 3)} | "
                f"{r['best_attack']} | {r['milp_status']}"
                + ("" if r["milp_status"] == "optimal" else f" [{fmt(r['milp_lower'])}, {fmt(r['milp_upper'])}]")
                + f" | {fmt(r['milp_seconds'], 1)} | {r['unstable']} | {fmt(r['consistent'])} |")
        lines += ["", "| statistic | value |", "|---|---|"]
        keys = ["fraction_solved", "median_milp_seconds", "median_milp_seconds_solved", "max_milp_seconds_solved",
                "median_unstable", "median_upper_over_exact", "max_upper_over_exact", "median_fmn_over_exact",
                "median_fab_over_exact", "median_cw-linf_over_exact", "median_deepfool_over_exact", "median_pgd-bisection_over_exact",
                "median_lower_over_exact", "all_consistent", "target_attack_within_5pct", "target_crown_at_least_half"]
        lines += [f"| {k} | {fmt(s.get(k), 3)} |" for k in keys]
    for name, w in report["out_of_reach"].items():
        lines += ["", f"### {name}: MILP with a {w['time_limit_s']} s limit", "",
                  "| test index | status | MILP interval | FMN | CROWN cert. | unstable ReLUs | seconds |", "|---|---|---|---|---|---|---|"]
        for r in w["rows"]:
            lines.append(f"| {r['test_index']} | {r['status']} | [{fmt(r['milp_lower'])}, {fmt(r['milp_upper'])}] | "
                         f"{fmt(r['fmn'])} | {fmt(r['crown'])} | {r['unstable']} | {fmt(r['seconds'], 1)} |")
    p = report["provenance"]
    lines += ["", f"robustlab {p['robustlab']} ({p['robustlab_git']}), torch {p['torch']}, scipy {report['scipy']}, "
              f"{p['cpu']} ({p['cpu_count']} cores, {p['torch_threads']} torch thread(s)); load average before/after "
              f"{report['load_average_before']} / {report['load_average_after']}; other processes used "
              f"{fmt(report['other_load_cores_total'], 2)} cores on average over the run; total {fmt(report['total_seconds'], 0)} s."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1000, help="test images for throughput and CROWN vs IBP (first N)")
    p.add_argument("--alpha-images", type=int, default=200, help="images for the alpha-CROWN throughput")
    p.add_argument("--batch-size", type=int, default=250, help="certifier batch size")
    p.add_argument("--samples", type=int, default=20, help="MILP samples per small model (first correctly classified)")
    p.add_argument("--time-limit", type=float, default=60.0, help="MILP seconds per sample (small models)")
    p.add_argument("--wide-samples", type=int, default=2, help="MILP samples of mlp100-natural")
    p.add_argument("--wide-time-limit", type=float, default=20.0, help="MILP seconds per sample of mlp100-natural")
    p.add_argument("--fmn-steps", type=int, default=1000, help="FMN-Linf iterations")
    p.add_argument("--fab-restarts", type=int, default=5, help="FAB-Linf restarts (100 steps each)")
    p.add_argument("--pgd-steps", type=int, default=100, help="PGD iterations per bisection step")
    p.add_argument("--pgd-restarts", type=int, default=1)
    p.add_argument("--pgd-bisection-steps", type=int, default=12)
    p.add_argument("--pgd-hi", type=float, default=0.5, help="upper end of the PGD eps bisection")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1: shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-idle", type=float, default=20.0, help="throughput: wait up to this long for an idle machine")
    p.add_argument("--busy-threshold", type=float, default=0.3)
    p.add_argument("--retries", type=int, default=1)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: throughput,crown,milp,wide")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workdir", type=Path, default=common.DEFAULT_WORKDIR)
    p.add_argument("--out", type=Path, default=common.BENCH_DIR / "results" / "certify_mlp.json")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    load_before = common.load_average()
    total_start = time.perf_counter()
    train_set = load_dataset("mnist", split="train", data_dir=args.data_dir)
    test_set = load_dataset("mnist", split="test", data_dir=args.data_dir)
    x, y = test_set.x, test_set.y
    report: dict[str, Any] = {"models": {}, "throughput": {}, "crown_vs_ibp": {}, "milp": {}, "out_of_reach": {}}
    with common.OtherLoad() as meter:
        models = {}
        for name in MODELS:
            model, card, trained_now = get_model(name, args.workdir, train_set, test_set)
            models[name] = model
            report["models"][name] = {
                "hidden": MODELS[name]["hidden"], "training": card.training["method"]
                + (f" (eps_train {card.training['options']['eps']})" if card.training.get("options") else ""),
                "train_config": card.training["config"], "options": card.training.get("options"),
                "train_seconds": card.training["seconds"], "trained_now": trained_now,
                "clean_test_accuracy": card.metrics["clean_test_accuracy"]}
        xs, ys = x[:args.images], y[:args.images]
        if "throughput" not in skip:
            for name, eps in (("mlp100-natural", 0.01), ("mlp100-ibp", 0.1)):
                report["throughput"][name] = throughput(models[name], xs, ys, eps, args)
        if "crown" not in skip:
            for name, model in models.items():
                report["crown_vs_ibp"][name] = crown_vs_ibp(model, xs, ys, EVAL_EPS[name], args)
                common.log(f"[crown vs ibp] {name}: {report['crown_vs_ibp'][name]}")
        if "milp" not in skip:
            for name in ("mlp32-natural", "mlp100-ibp"):
                index = correctly_classified(models[name], x, y, args.samples)
                report["milp"][name] = run_bracket(name, models[name], x, y, index, args)
        if "wide" not in skip:
            index = correctly_classified(models["mlp100-natural"], x, y, args.wide_samples)
            report["out_of_reach"]["mlp100-natural"] = out_of_reach("mlp100-natural", models["mlp100-natural"], x, y,
                                                                    index, args)
    import scipy

    report.update({
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "throughput_eps": {"mlp100-natural": 0.01, "mlp100-ibp": 0.1}, "eval_eps": EVAL_EPS},
        "provenance": common.provenance(args.threads), "scipy": scipy.__version__,
        "load_average_before": load_before, "load_average_after": common.load_average(),
        "other_load_cores_total": meter.cores, "total_seconds": time.perf_counter() - total_start,
        "command": "python benchmarks/certify_mlp.py " + " ".join(sys.argv[1:] if argv is None else argv),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_plain(report), indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    return 0


def _plain(value):
    """JSON-safe copy: tensors as lists, non-finite floats as the strings "inf"/"-inf"/"nan"."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


if __name__ == "__main__":
    raise SystemExit(main())
