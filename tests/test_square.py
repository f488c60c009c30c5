"""Square Attack pinned to its published algorithm (issue 15), on hand-built models only.

Andriushchenko, Croce, Flammarion & Hein (ECCV 2020) and the authors' code (pyautoattack 0.2.0,
``square.py``): the L∞ vertical-stripe start, one random ``k x k`` window per step set to
``x + eps * s`` with one sign per channel, the L2 bumps and budget redistribution, the margin
loss (cross-entropy towards the target when targeted), and an update kept only when it lowers
the loss. The tests replay robustlab's random draws (the same ``torch.Generator`` stream, in the
documented order) through the formulas written here, so every query the attack makes is
compared with the one the algorithm prescribes. The L2 bump and the L2 steps are the reference's
own output (``tests/golden/square_l2.json``, from ``benchmarks/golden_references.py``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustlab.attacks import Square
from robustlab.attacks.square import GIVE_UP_CHECKPOINTS, _square_bump, square_fraction
from robustlab.errors import RobustlabError
from robustlab.threat import L2, Linf
from conftest import InputRecorder

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = json.loads((Path(__file__).parent / "golden" / "square_l2.json").read_text())
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def _p(p_init: float, it: int, queries: int, rescale: bool = True) -> float:
    """``p_selection`` of the paper's code."""
    it = int(it / queries * 10000) if rescale else it
    return p_init / 2 ** sum(it > point for point in HALVINGS)


def _linear(n: int = 4, c: int = 2, h: int = 8, k: int = 4, seed: int = 0, lead: float = 3.0):
    """A float64 linear model on ``[n, c, h, h]`` images in which class 0 leads every other by at
    least ``lead`` at the clean inputs (an L∞ step of 0.05 moves a logit difference by < 0.5, so
    nothing is ever broken and every sample is queried at every step). Rows on the box edges make
    the box clip matter."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * h, k)).double()
    x = torch.rand(n, c, h, h, generator=g, dtype=torch.float64)
    x[:, :, 0], x[:, :, -1] = 0.0, 1.0
    with torch.no_grad():
        model[1].weight.copy_(0.05 * torch.randn(k, c * h * h, generator=g, dtype=torch.float64))
        model[1].bias.zero_()
        z = model(x)
        model[1].bias[0] = lead + float((z[:, 1:] - z[:, :1]).max())
    return model.eval(), x, torch.zeros(n, dtype=torch.long)


def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    own = z.gather(1, y[:, None]).squeeze(1)
    return own - z.scatter(1, y[:, None], -math.inf).amax(1)


def _objective(name: str, z: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> torch.Tensor:
    """The loss Square minimises, from its definition."""
    if name == "margin":
        return _margin(z, y) if t is None else -_margin(z, t)
    return -F.cross_entropy(z, y, reduction="none") if t is None else F.cross_entropy(z, t, reduction="none")


def _signs(shape, g) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=g).double() * 2 - 1


def _replay_linf(model, x, y, t, *, eps, queries, p_init, seed, loss, start=None, p_init_start=0.1,
                 rescale=True, lo=0.0, hi=1.0):
    """Square L∞ written from the paper (Algorithm 2) with robustlab's draws: the queries it must
    make (one batch per group of samples and step) and its final point, and how often the other
    loss would have decided otherwise. With ``start``: the samples whose start has a lower loss
    than the stripes continue from it with ``p_init_start`` (a second group, after the others)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    best = (x + eps * _signs((n, c, 1, w), g)).clamp(lo, hi)  # vertical stripes
    other = "ce" if loss == "margin" else "margin"

    def losses(points, idx):
        with torch.no_grad():
            z = model(points)
        tt = None if t is None else t[idx]
        return _objective(loss, z, y[idx], tt), _objective(other, z, y[idx], tt)

    everyone = torch.arange(n)
    best_loss, best_other = losses(best, everyone)
    expected, disagreements = [best.clone()], 0
    _replay_linf.resampled = 0
    groups = [(everyone, p_init)]
    if start is not None:
        expected.append(start.clone())
        value, value_other = losses(start, everyone)
        warm = value < best_loss
        best = torch.where(warm[:, None, None, None], start, best)
        best_loss, best_other = torch.where(warm, value, best_loss), torch.where(warm, value_other, best_other)
        groups = [(everyone[~warm], p_init), (everyone[warm], p_init_start)]
    for it in range(queries - 1):
        for idx, p0 in groups:
            m = len(idx)
            if not m:
                continue
            side = min(max(round(math.sqrt(_p(p0, it, queries, rescale) * h * w)), 1), min(h, w) - 1)
            top = torch.randint(0, h - side, (m,), generator=g)
            left = torch.randint(0, w - side, (m,), generator=g)
            s = _signs((m, c, 1, 1), g)
            code = torch.randint(1, 2**c, (m,), generator=g)
            candidate = best[idx].clone()
            for j, i in enumerate(idx.tolist()):
                rows, cols = slice(int(top[j]), int(top[j]) + side), slice(int(left[j]), int(left[j]) + side)
                new = (x[i, :, rows, cols] + eps * s[j]).clamp(lo, hi)
                if bool(((new - best[i, :, rows, cols]).abs() < 1e-7).all()):  # would change nothing: other signs
                    _replay_linf.resampled += 1
                    flip = torch.tensor([(int(code[j]) >> ch) & 1 for ch in range(c)], dtype=torch.bool)
                    new = (x[i, :, rows, cols] + eps * torch.where(flip[:, None, None], -s[j], s[j])).clamp(lo, hi)
                candidate[j, :, rows, cols] = new
            expected.append(candidate)
            value, value_other = losses(candidate, idx)
            better = value < best_loss[idx]
            disagreements += int((better != (value_other < best_other[idx])).sum())
            best[idx] = torch.where(better[:, None, None, None], candidate, best[idx])
            best_loss[idx] = torch.where(better, value, best_loss[idx])
            best_other[idx] = torch.where(better, value_other, best_other[idx])
    return expected, best, disagreements


@pytest.mark.parametrize("targeted, loss", [(False, None), (False, "ce"), (True, None), (True, "margin")])
def test_square_linf_queries_follow_the_published_algorithm(targeted, loss):
    # Every query: the current best point with one random window set to x + eps * s (one sign
    # per channel, clipped to the box), the window side from the p schedule, another sign
    # pattern where the window would not change; kept only where it lowers the loss (margin
    # untargeted, cross-entropy towards the target targeted, unless `loss` says otherwise).
    model, x, y = _linear(c=3)  # 3 channels: the other sign patterns are 1 of 7, coded on 3 bits
    t = torch.tensor([1, 2, 3, 1]) if targeted else None
    queries, eps, p_init, seed = 120, 0.05, 0.3, 5
    recorder = InputRecorder(model)
    result = Square(queries=queries, p_init=p_init, loss=loss)(recorder, x, y, threat=Linf(eps=eps), targets=t,
                                                               generator=torch.Generator().manual_seed(seed))
    name = loss or ("ce" if targeted else "margin")
    expected, best, disagreements = _replay_linf(model, x, y, t, eps=eps, queries=queries, p_init=p_init,
                                                 seed=seed, loss=name)
    calls = recorder.inputs[2:-1]  # after the template's and the attack's clean passes, before the final one
    assert len(calls) == queries
    for it, (got, want) in enumerate(zip(calls, expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"query {it}")
    torch.testing.assert_close(result.x_adv, best, rtol=0, atol=0)
    assert result.extras["queries"].tolist() == [queries + 1] * len(x)
    assert result.extras["queries"].dtype == torch.int64
    assert disagreements > 0  # the other loss would have kept other points: the loss is pinned
    assert _replay_linf.resampled > 0  # windows that would not have changed were given other signs


@pytest.mark.parametrize("queries", [7, 300, 999, 9999])
def test_square_fraction_on_budgets_that_do_not_divide_10000(queries):
    # p_selection rescales int(it / n_queries * 10000): at 9999 queries, query 6000 is at 6000.6 on
    # the 10000-query scale (p_init / 128), not past 6000.
    assert [square_fraction(0.8, it, queries) for it in range(queries)] == [_p(0.8, it, queries) for it in range(queries)]
    if queries == 9999:
        assert square_fraction(0.8, 6000, 9999) == 0.8 / 128


def test_square_linf_init_is_vertical_stripes_clipped_to_the_box():
    model, x, y = _linear()
    recorder = InputRecorder(model)
    Square(queries=1)(recorder, x, y, threat=Linf(eps=0.05), generator=torch.Generator().manual_seed(3))
    init = recorder.inputs[2]
    signs = _signs((4, 2, 1, 8), torch.Generator().manual_seed(3))
    torch.testing.assert_close(init, (x + 0.05 * signs).clamp(0, 1), rtol=0, atol=0)
    assert (signs > 0).any() and (signs < 0).any()
    assert len(recorder.inputs) == 4  # one query: the start; no step


def test_square_linf_rounds_the_window_side_and_keeps_one_row_free():
    # p = 0.3 of 8 x 8 pixels is 19.2, sqrt 4.38: side 4; p_init = 1 gives 8, kept at H - 1 = 7;
    # a tiny p gives side 1 (at least one pixel).
    model, x, y = _linear()
    for p_init, side in ((0.3, 4), (1.0, 7), (0.005, 1)):
        recorder = InputRecorder(model)
        Square(queries=2, p_init=p_init)(recorder, x, y, threat=Linf(eps=0.05),
                                         generator=torch.Generator().manual_seed(1))
        init, step = recorder.inputs[2:4]
        changed = (step != init).any(dim=1)
        for i in range(len(x)):
            rows = changed[i].any(dim=1).nonzero().squeeze(1)
            cols = changed[i].any(dim=0).nonzero().squeeze(1)
            assert int(rows.max() - rows.min()) + 1 <= side and int(cols.max() - cols.min()) + 1 <= side
        expected, _, _ = _replay_linf(model, x, y, None, eps=0.05, queries=2, p_init=p_init, seed=1, loss="margin")
        torch.testing.assert_close(step, expected[1], rtol=0, atol=0)


def test_square_schedule_not_rescaled_keeps_the_10000_query_scale():
    # rescale_schedule=False (AutoAttack's Square): p halves after 10 and 50 queries whatever the
    # budget (16 x 16 images, p_init 0.8: sides 14, 10, 7, where the rescaled 60-query schedule
    # would be at p_init / 512 after 48 queries).
    model, x, y = _linear(n=2, h=16)
    recorder = InputRecorder(model)
    Square(queries=60, p_init=0.8, rescale_schedule=False)(recorder, x, y, threat=Linf(eps=0.05),
                                                            generator=torch.Generator().manual_seed(2))
    sides = [min(max(round(math.sqrt(_p(0.8, it, 60, rescale=False) * 256)), 1), 15) for it in range(59)]
    assert sides == [14] * 11 + [10] * 40 + [7] * 8
    expected, _, _ = _replay_linf(model, x, y, None, eps=0.05, queries=60, p_init=0.8, seed=2, loss="margin",
                                  rescale=False)
    calls = recorder.inputs[2:-1]
    assert len(calls) == len(expected)
    for it, (got, want) in enumerate(zip(calls, expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"query {it}")


# --- L2: the reference's bump, initialisation and step ------------------------------------------


@pytest.mark.parametrize("side", sorted(GOLDEN["bumps"], key=int))
def test_square_l2_bump_is_the_references(side):
    torch.testing.assert_close(_square_bump(int(side)), torch.tensor(GOLDEN["bumps"][side], dtype=torch.float64),
                               rtol=1e-6, atol=1e-7)


def _eta_float64(s: int) -> torch.Tensor:
    """The reference's ``eta(s)`` (with ``eta_rectangles``) transcribed in float64: nested
    rectangles weighted ``1 / (k + 1)^2`` on each half, the bottom half negated, unit norm."""

    def rectangles(x: int, y: int) -> torch.Tensor:
        delta = torch.zeros(x, y, dtype=torch.float64)
        corner = [x // 2, y // 2]
        for k in range(max(x // 2 + 1, y // 2 + 1)):
            delta[max(corner[0], 0):min(corner[0] + 2 * k + 1, x), max(corner[1], 0):min(corner[1] + 2 * k + 1, y)] \
                += 1.0 / (k + 1) ** 2
            corner = [corner[0] - 1, corner[1] - 1]
        return delta / delta.norm() if x else delta

    delta = torch.cat([rectangles(s // 2, s), -rectangles(s - s // 2, s)])
    return delta / delta.norm()


@pytest.mark.parametrize("side", range(1, 12))
def test_square_l2_bump_in_float64_is_the_formula(side):
    # The golden bumps are the reference's float32; robustlab computes them in float64.
    bump = _square_bump(side)
    assert bump.dtype == torch.float64
    torch.testing.assert_close(bump, _eta_float64(side), rtol=1e-12, atol=1e-14)


def _bump(side: int, transpose: bool) -> torch.Tensor:
    b = torch.tensor(GOLDEN["bumps"][str(side)], dtype=torch.float64)
    return b.T if transpose else b


def _l2_init(x, eps, signs, transposes):
    """The reference's L2 start (``attack_single_run``): tiles of side ``s = H // 5`` from
    ``(H - 5 s) // 2``, each a bump (transposed per ``transposes [n, tiles]``) times a sign per
    channel (``signs [n, c, tiles]``), scaled to norm eps, clipped to [0, 1]."""
    n, c, h, w = x.shape
    s = h // 5
    start = (h - 5 * s) // 2
    delta = torch.zeros_like(x)
    tile = 0
    for a in range(h // s):
        for b in range(w // s):
            vh, vw = start + a * s, start + b * s
            for i in range(n):
                bump = _bump(s, bool(transposes[i][tile]))
                rows, cols = min(s, h - vh), min(s, w - vw)
                if rows > 0 and cols > 0:
                    delta[i, :, vh:vh + rows, vw:vw + cols] += (bump[:rows, :cols][None]
                                                                * torch.as_tensor(signs[i])[:, tile, None, None])
            tile += 1
    delta = delta / (delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    return (x + eps * delta).clamp(0, 1)


def _l2_step(x, best, eps, side, corners, signs, transposes):
    """The reference's L2 step: window 1 at ``corners[i][:2]`` gets its old content (normalised)
    plus a signed bump, rescaled to carry its mass, window 2's mass and its share of the unused
    budget; window 2 (``corners[i][2:]``) is emptied; the image is rescaled to norm eps."""
    n, c = x.shape[:2]
    delta = best - x
    out = delta.clone()
    for i in range(n):
        vh, vw, vh2, vw2 = corners[i]
        w1, w2 = (slice(vh, vh + side), slice(vw, vw + side)), (slice(vh2, vh2 + side), slice(vw2, vw2 + side))
        d = delta[i]
        norm_w1 = d[:, w1[0], w1[1]].square().sum(dim=(-2, -1), keepdim=True).sqrt()
        mask = torch.zeros_like(d, dtype=torch.bool)
        mask[:, w1[0], w1[1]] = True
        mask[:, w2[0], w2[1]] = True
        norms_windows = (d * mask).square().sum(dim=(-2, -1), keepdim=True).sqrt()
        norm_image = d.norm()
        new = _bump(side, bool(transposes[i]))[None] * torch.as_tensor(signs[i]).view(c, 1, 1)
        new = new + d[:, w1[0], w1[1]] / (1e-12 + norm_w1)
        budget = ((eps**2 - norm_image**2).clamp_min(0) / c + norms_windows**2).sqrt()
        new = new / (1e-12 + new.square().sum(dim=(-2, -1), keepdim=True).sqrt()) * budget
        out[i, :, w2[0], w2[1]] = 0.0
        out[i, :, w1[0], w1[1]] = new
    out = out / (out.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
    return (x + eps * out).clamp(0, 1)


def test_square_l2_formulas_written_here_reproduce_the_reference():
    # The two functions above, on the draws the reference was given, give what it queried:
    # they are the reference's algorithm, so the replays below compare robustlab with it.
    x = torch.tensor(GOLDEN["x"], dtype=torch.float64)
    n = len(x)
    eps, side = GOLDEN["config"]["eps"], GOLDEN["config"]["side"]
    tiles = len(GOLDEN["init_transposes"])
    signs = torch.tensor(GOLDEN["init_signs"], dtype=torch.float64).permute(1, 2, 0)  # [n, c, tiles]
    init = _l2_init(x, eps, signs, [GOLDEN["init_transposes"]] * n)
    assert tiles == 25
    torch.testing.assert_close(init, torch.tensor(GOLDEN["init"], dtype=torch.float64), rtol=1e-6, atol=1e-7)
    for case in GOLDEN["cases"]:
        step = _l2_step(x, init, eps, side, [case["corners"]] * n, case["signs"], [case["transpose"]] * n)
        torch.testing.assert_close(step, torch.tensor(case["candidate"], dtype=torch.float64), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("size", [8, 11, 14, 17, 24])
def test_square_l2_init_replays_the_reference_tiling(size):
    # Tiles of side H // 5 from (H - 5 s) // 2: 8 -> side 1 from 1; 11 -> side 2 from 0; 14 -> side 2 from 2, the
    # seventh tile cut at the border; 17 -> side 3 from 1; 24 -> side 4 from 2, the sixth cut.
    model, x, y = _linear(n=2, c=3, h=size)
    recorder = InputRecorder(model)
    Square(queries=1)(recorder, x, y, threat=L2(eps=0.7), generator=torch.Generator().manual_seed(size))
    g = torch.Generator().manual_seed(size)
    s = size // 5
    signs = _signs((2, 3, size // s, size // s), g).flatten(2)
    transposes = torch.randint(0, 2, (2, size // s, size // s), generator=g).bool().flatten(1).tolist()
    want = _l2_init(x, 0.7, signs, transposes)
    torch.testing.assert_close(recorder.inputs[2], want, rtol=1e-6, atol=1e-7)
    assert any(any(t) for t in transposes) and not all(all(t) for t in transposes)
    start = (size - 5 * s) // 2
    assert bool((want - x)[:, :, :start].eq(0).all()) and bool((want - x)[:, :, :, :start].eq(0).all())


def test_square_l2_steps_replay_the_reference_algorithm():
    # robustlab's L2 start and steps, with its draws read from the same generator stream, equal
    # the reference's formulas (above) query for query, and a step is kept only where it lowers
    # the margin.
    model, x, y = _linear(n=3, c=2, h=11, lead=3.0)
    eps, queries, p_init, seed = 0.5, 100, 0.8, 4
    recorder = InputRecorder(model)
    result = Square(queries=queries, p_init=p_init)(recorder, x, y, threat=L2(eps=eps),
                                                    generator=torch.Generator().manual_seed(seed))
    calls = recorder.inputs[2:-1]
    assert len(calls) == queries
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = x.shape
    s = h // 5
    signs = _signs((n, c, h // s, w // s), g).flatten(2)
    transposes = torch.randint(0, 2, (n, h // s, w // s), generator=g).bool().flatten(1).tolist()
    # The reference's bumps are float32, robustlab's float64: each query is compared at float32's
    # precision, from robustlab's own previous point.
    torch.testing.assert_close(calls[0], _l2_init(x, eps, signs, transposes), rtol=1e-6, atol=1e-7)
    best = calls[0]
    with torch.no_grad():
        best_loss = _margin(model(best), y)
    sides, kept = set(), 0
    for it, got in enumerate(calls[1:]):
        side = max(round(math.sqrt(_p(p_init, it, queries) * h * w)), 3)
        side = min(side + 1 - side % 2, min(h, w) - 1)
        sides.add(side)
        corners = torch.stack([torch.randint(0, h - side, (n,), generator=g) for _ in range(4)], dim=1)
        corners = corners.tolist()  # window 1 (top, left), window 2 (top, left)
        transpose = torch.randint(0, 2, (n,), generator=g).bool().tolist()
        step_signs = _signs((n, c, 1, 1), g).flatten(1)
        want = _l2_step(x, best, eps, side, corners, step_signs, transpose)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=f"query {it + 1}")
        with torch.no_grad():
            value = _margin(model(got), y)
        better = value < best_loss
        kept += int(better.sum())
        best = torch.where(better[:, None, None, None], got, best)
        best_loss = torch.where(better, value, best_loss)
    torch.testing.assert_close(result.x_adv, best, rtol=0, atol=0)
    assert 0 < kept < n * (queries - 1)
    assert sides == {10, 5, 3}


# --- the give-up rule, keep_near and the warm start ---------------------------------------------


class _Scripted(nn.Module):
    """Two logits whose margin follows a script: sample ``i`` (encoded in its pixel level) has margin
    ``clean[i]`` at the clean passes and ``a[i] - b[i] * log2(q)`` at its ``q``-th query, so every
    query lowers it and is kept, and its average progress per doubling is exactly ``b[i]``."""

    def __init__(self, clean, a, b):
        super().__init__()
        self.clean, self.a, self.b = clean, a, b
        self.calls: dict[int, int] = {}

    def forward(self, x):
        ids = (x.flatten(1).mean(dim=1) * 10).round().long()
        out = []
        for i in ids.tolist():
            q = self.calls.get(i, 0)
            self.calls[i] = q + 1
            out.append(self.clean[i] if q < 2 else self.a[i] - self.b[i] * math.log2(q - 1))
        m = torch.tensor(out, dtype=x.dtype)
        return torch.stack([m, torch.zeros_like(m)], dim=1) + 0 * x.flatten(1)[:, :1]


def _expected_stop(clean, a, b, *, queries, give_up, keep_near):
    """Queries per sample (the clean check included) under the rule of the docstring: at a
    checkpoint c, stop when m > give_up * r * log2(queries / c), r = (m_1 - m) / log2(c), unless
    m < keep_near * clean margin; a margin <= 0 stops the search (broken)."""
    for spent in range(1, queries):
        m = a - b * math.log2(spent)
        if m <= 0:
            return spent + 1
        if spent in GIVE_UP_CHECKPOINTS:
            rate = max(a - m, 0) / math.log2(spent)
            if m > give_up * rate * math.log2(queries / spent) and not (keep_near and m < keep_near * clean):
                return spent + 1
    return queries + 1


@pytest.mark.parametrize("keep_near", [0.05, None])
def test_square_give_up_follows_its_formula(keep_near):
    # give_up = 2, 1000 queries: a sample with margin a - b log2(q) stops at the first checkpoint c
    # where a > b (2 log2(1000) - log2(c)), i.e. a / b above 13.29 (c = 100), 12.29 (200), 11.29
    # (400), 10.29 (800); at a / b = 9.9 it reaches the boundary at q = 2^9.9 = 955 (broken).
    # Sample 5 stays below 5% of its clean margin (kept with keep_near = 0.05); sample 6 makes no
    # progress; sample 7 little (a - m < 1 at c = 100).
    ratios = [13.6, 12.6, 11.6, 10.6, 9.9, 13.6, None, 13.4]
    b = [1.0, 0.5, 2.0, 1.0, 1.0, 1.0, 0.0, 0.1]
    a = [3.0 if r is None else r * bi for r, bi in zip(ratios, b)]
    clean = [100 * ai if i == 5 else ai for i, ai in enumerate(a)]
    n = len(a)
    x = torch.stack([torch.full((1, 4, 4), i / 10 + 0.1) for i in range(n)])  # sample i at pixel level (i + 1) / 10
    model = _Scripted([0.0] + clean, [0.0] + a, [0.0] + b)
    result = Square(queries=1000, give_up=2.0, keep_near=keep_near)(
        model, x, torch.zeros(n, dtype=torch.long), threat=Linf(eps=0.01), generator=torch.Generator().manual_seed(0))
    expected = [_expected_stop(clean[i], a[i], b[i], queries=1000, give_up=2.0, keep_near=keep_near)
                for i in range(n)]
    assert expected == [101, 201, 401, 801, 2 + int(2**9.9), 1001 if keep_near else 101, 101, 101]
    assert result.extras["queries"].tolist() == expected
    assert result.success.tolist() == [i == 4 for i in range(n)]


class _Sequence(nn.Module):
    """Logits that follow a list, call by call (the template's and the attack's clean passes first)."""

    def __init__(self, rows):
        super().__init__()
        self.rows, self.calls = rows, 0

    def forward(self, x):
        row = self.rows[min(self.calls, len(self.rows) - 1)]
        self.calls += 1
        return torch.tensor(row, dtype=x.dtype).expand(x.shape[0], 3) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("targeted, start, step, kept", [
    (True, [5.0, 4.9, -10.0], [0.0, 0.1, 0.05], True),
    (False, [1.0, 0.9, 0.9], [1.0, 1.01, -10.0], True),
    (False, [1.0, 0.9, 0.9], [1.0, 1.0, -5.0], True),
    (False, [1.0, 0.9, 0.9], [1.0, 0.5, -5.0], False),
])
def test_square_keeps_a_query_that_breaks_the_sample_whatever_its_loss(targeted, start, step, kept):
    # The reference keeps a candidate that is adversarial (margin <= 0) even when its loss is not
    # lower (``idx_miscl``), and only then. Cross-entropy towards target 1: the start [5, 4.9, -10]
    # has CE 0.74 and is not the target; the step [0, 0.1, 0.05] has CE 1.05 but is classified as 1.
    # Untargeted cross-entropy on label 0 (Square minimises -CE): the start [1, 0.9, 0.9] has CE
    # 1.03; the steps [1, 1.01, -10] (misclassified), [1, 1, -5] (a tie: margin 0) and [1, 0.5, -5]
    # (margin 0.5, not adversarial) have CE 0.70, 0.69 and 0.48: only the first two are kept.
    rows = [start] * 3 + [step] + [[5.0, 0.0, 0.0]]  # then points far from the boundary with a worse loss
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    recorder = InputRecorder(_Sequence(rows))
    result = Square(queries=50, loss="ce")(recorder, x, y, threat=Linf(eps=0.1),
                                           targets=torch.tensor([1]) if targeted else None,
                                           generator=torch.Generator().manual_seed(0))
    # The clean check, the start, the breaking step; or the whole budget from the start.
    assert result.extras["queries"].tolist() == [3 if kept else 51]
    torch.testing.assert_close(result.x_adv, recorder.inputs[3 if kept else 2], rtol=0, atol=0)


def test_square_start_is_not_queried_for_samples_the_stripes_broke():
    # Sample 0 is broken by its first query (margin -1): it stops there, start or not; samples 1
    # (margin 5 - log2(q)) and 2 (0.5 - 0.01 log2(q), close to the boundary) query the start too.
    model = _Scripted([0.0, 2.0, 6.0, 1.0], [0.0, -1.0, 5.0, 0.5], [0.0, 0.0, 1.0, 0.01])
    x = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 0.2), torch.full((1, 4, 4), 0.3)])
    result = Square(queries=10)(model, x, torch.zeros(3, dtype=torch.long), threat=Linf(eps=0.01),
                                generator=torch.Generator().manual_seed(0), start=x.clone())
    assert result.extras["queries"].tolist() == [2, 12, 12]
    assert result.success.tolist() == [True, False, False]
    assert not torch.equal(result.x_adv[0], x[0])  # the stripes, not the start


def test_square_warm_start_continues_where_the_start_scores_lower_with_smaller_squares():
    # With start: one more query per sample; a sample whose start has a lower margin than the
    # stripes continues from it with p_init_start, the others from the stripes with p_init (the
    # fast protocol's warm start).
    model, x, y = _linear(n=4, h=16)
    eps, queries, seed = 0.05, 30, 6
    with torch.no_grad():
        towards = (model[1].weight[1] - model[1].weight[0]).view(1, 2, 16, 16).sign()
    # Samples 0 and 2 start at the steepest L∞ point towards class 1 (far below the stripes'
    # margin), 1 and 3 at the point away from it (far above).
    closer = torch.tensor([True, False, True, False])[:, None, None, None]
    start = torch.where(closer, x + eps * towards, x - eps * towards).clamp(0, 1)
    recorder = InputRecorder(model)
    result = Square(queries=queries, p_init=0.8, p_init_start=0.05)(
        recorder, x, y, threat=Linf(eps=eps), generator=torch.Generator().manual_seed(seed), start=start)
    assert result.extras["queries"].tolist() == [queries + 2] * 4
    expected, best, disagreements = _replay_linf(model, x, y, None, eps=eps, queries=queries, p_init=0.8, seed=seed,
                                                 loss="margin", start=start, p_init_start=0.05)
    calls = recorder.inputs[2:-1]
    assert [len(c) for c in calls] == [4, 4] + [2] * (2 * (queries - 1))  # stripes, start, then two groups
    for it, (got, want) in enumerate(zip(calls, expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"query {it}")
    torch.testing.assert_close(result.x_adv, best, rtol=0, atol=0)
    # The warm samples' first windows are small (p 0.05 of 256 pixels: side 4), the cold ones' large (14).
    warm_step, cold_step = calls[3], calls[2]
    assert ((warm_step != start[[0, 2]]).any(dim=1).sum(dim=(1, 2)) <= 16).all()
    assert ((cold_step != calls[0][[1, 3]]).any(dim=1).sum(dim=(1, 2)) > 16).all()


def test_square_targeted_warm_start_scores_the_start_by_the_targeted_loss():
    # Targeted: the start is scored by the cross-entropy towards the target, like every query.
    # Samples 0, 2 (target 1) start at the steepest L∞ point towards class 1; samples 1, 3 (targets
    # 2, 3) at the point away from class 1, not towards their target.
    model, x, y = _linear(n=4, h=16)
    eps, queries, seed = 0.05, 20, 7
    t = torch.tensor([1, 2, 1, 3])
    with torch.no_grad():
        towards = (model[1].weight[1] - model[1].weight[0]).view(1, 2, 16, 16).sign()
    start = torch.where(torch.tensor([True, False, True, False])[:, None, None, None], x + eps * towards,
                        x - eps * towards).clamp(0, 1)
    recorder = InputRecorder(model)
    result = Square(queries=queries, p_init=0.8, p_init_start=0.05)(
        recorder, x, y, threat=Linf(eps=eps), targets=t, generator=torch.Generator().manual_seed(seed), start=start)
    expected, best, _ = _replay_linf(model, x, y, t, eps=eps, queries=queries, p_init=0.8, seed=seed, loss="ce",
                                     start=start, p_init_start=0.05)
    calls = recorder.inputs[2:-1]
    assert [len(c) for c in calls] == [len(e) for e in expected] and len(calls[2]) == 2  # two warm, two cold
    for it, (got, want) in enumerate(zip(calls, expected)):
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"query {it}")
    torch.testing.assert_close(result.x_adv, best, rtol=0, atol=0)


def test_square_leaves_misclassified_samples_after_one_query():
    model, x, y = _linear(n=3)
    wrong = torch.tensor([0, 1, 0])  # sample 1 is already misclassified
    result = Square(queries=20)(model, x, wrong, threat=Linf(eps=0.05), generator=torch.Generator().manual_seed(0))
    assert result.extras["queries"].tolist() == [21, 1, 21]
    torch.testing.assert_close(result.x_adv[1], x[1], rtol=0, atol=0)
    assert not torch.equal(result.x_adv[0], x[0])
    # Targeted, success is the target: sample 1 (label 1, classified 0) is searched towards target 2;
    # sample 2 (label 1, classified 0 = its target) is done.
    result = Square(queries=20)(model, x, torch.tensor([0, 1, 1]), targets=torch.tensor([3, 2, 0]),
                                threat=Linf(eps=0.05), generator=torch.Generator().manual_seed(0))
    assert result.extras["queries"].tolist() == [21, 21, 1]


def test_square_counts_a_tie_as_broken():
    # Margin 0 (the label ties with another class) is a success for the search, as in the
    # reference (it searches only margin > 0): one query, x returned. A tie after the start
    # also ends the search before the given start is queried.
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    tie = Square(queries=20)(_Sequence([[1.0, 1.0, -5.0]]), x, y, threat=Linf(eps=0.1),
                             generator=torch.Generator().manual_seed(0))
    assert tie.extras["queries"].tolist() == [1] and torch.equal(tie.x_adv, x)
    rows = [[1.0, 0.0, -5.0]] * 2 + [[1.0, 1.0, -5.0]] + [[3.0, 0.0, -5.0]]
    late = Square(queries=20)(_Sequence(rows), x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0),
                              start=x.clone())
    assert late.extras["queries"].tolist() == [2]


def test_square_rejects_unbounded_threats_and_non_images():
    model, x, y = _linear(n=2)
    with pytest.raises(RobustlabError, match=r"^Square Attack searches at a fixed budget; it needs a bounded threat "
                                             r"model \(finite eps\)$"):
        Square(queries=5)(model, x, y, threat=Linf(eps=math.inf))
    flat = nn.Sequential(nn.Linear(128, 4)).double()
    with pytest.raises(RobustlabError, match=r"^Square Attack needs images \[N, C, H, W\] with H, W >= 2, got shape "
                                             r"\(2, 128\)$"):
        Square(queries=5)(flat, x.flatten(1), y, threat=Linf(eps=0.1))
    narrow = nn.Sequential(nn.Flatten(), nn.Linear(16, 4)).double()
    with pytest.raises(RobustlabError, match=r"got shape \(2, 2, 1, 8\)$"):
        Square(queries=5)(narrow, x[:, :, :1, :8].contiguous(), y, threat=Linf(eps=0.1))
    assert Square(queries=2)(nn.Sequential(nn.Flatten(), nn.Linear(8, 4)).double(), x[:, :, :2, :2].contiguous(),
                             y, threat=Linf(eps=0.1)).x_adv.shape == (2, 2, 2, 2)


def test_square_many_channels_flip_only_the_first_62():
    # The replacement sign pattern is coded on at most 62 channels (an int64 draw); more channels run too.
    model = nn.Sequential(nn.Flatten(), nn.Linear(64 * 9, 3)).double()
    x = torch.rand(2, 64, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    result = Square(queries=20, p_init=0.1)(model, x, y, threat=Linf(eps=0.05),
                                            generator=torch.Generator().manual_seed(1))
    assert (result.distance <= 0.05 + 1e-12).all() and result.extras["queries"].max() <= 21


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_square_steps_stay_on_the_device_of_x(norm):
    # Every tensor the start and the steps make is on x's device (the "meta" device here, so that
    # no accelerator is needed: one CPU tensor in the mix is an error there).
    x = torch.empty(2, 3, 11, 11, device="meta")
    threat = Linf(eps=0.1) if norm == "Linf" else L2(eps=0.5)
    init = (Square._init_linf if norm == "Linf" else Square._init_l2)(x, threat, None)
    step = (Square._step_linf if norm == "Linf" else Square._step_l2)(x, init, 0.1, threat, None)
    assert init.device.type == step.device.type == "meta" and step.shape == x.shape


@pytest.mark.parametrize("options, keyword", [
    ({"queries": True}, "queries"), ({"queries": 0}, "queries"), ({"queries": 1.0}, "queries"),
    ({"give_up": 0.0}, "give_up"), ({"give_up": -1.0}, "give_up"), ({"give_up": math.inf}, "give_up"),
    ({"give_up": True}, "give_up"), ({"give_up": "2"}, "give_up"), ({"give_up": math.nan}, "give_up"),
    ({"give_up": 2.0, "keep_near": False}, "keep_near"), ({"give_up": 2.0, "keep_near": "0.5"}, "keep_near"),
    ({"p_init": 0.0}, "p_init"), ({"p_init": 1.01}, "p_init"),
    ({"p_init_start": 0.0}, "p_init_start"), ({"p_init_start": 1.5}, "p_init_start"),
    ({"loss": "dlr-x"}, "loss"),
])
def test_square_hyperparameters_are_validated(options, keyword):
    with pytest.raises(RobustlabError, match=keyword):
        Square(**options)


@pytest.mark.parametrize("options", [{"queries": 1}, {"give_up": 2, "keep_near": 0.5}, {"give_up": 1e-3},
                                     {"p_init": 1.0, "p_init_start": 1.0}, {"loss": "ce"}, {"loss": "margin"}])
def test_square_accepts_its_valid_hyperparameters(options):
    Square(**options)


class _Trap(nn.Module):
    """Two classes on 1x4x4 images, margin ``f(m) = min(0.1 + 10 |m - 0.01|, 0.9 - 3 m)`` of the
    mean pixel ``m``. Clean images at 0.25 (margin 0.15), eps 0.25: the start at 0.01 everywhere
    has margin 0.1 and is a trap for single-pixel steps (the warm search's squares), while from
    any vertical stripes (margin 0.2 or more, or already broken) larger windows raising the mean
    past 0.3 break it."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # a parameter, so that the attack sees a float32 model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        f = torch.minimum(0.1 + 10 * (m - 0.01).abs(), 0.9 - 3 * m)
        return torch.stack([f, torch.zeros_like(f)], dim=1) + 0 * self.unused


def test_square_cold_search_near_breaks_what_the_warm_search_from_a_trap_cannot():
    model, n, queries = _Trap(), 16, 100
    x, y, start = torch.full((n, 1, 4, 4), 0.25), torch.zeros(n, dtype=torch.long), torch.full((n, 1, 4, 4), 0.01)
    threat = Linf(eps=0.25)

    def run(**kw):
        return Square(queries=queries, p_init=0.8, rescale_schedule=False, **kw)(
            model, x, y, threat=threat, generator=torch.Generator().manual_seed(3), start=start)

    warm = run()
    trapped = ~warm.success  # stripes not broken: all scored worse than the start and continued from it
    assert 0 < int(trapped.sum()) < n
    assert torch.equal(warm.x_adv[trapped], start[trapped]) and (warm.extras["queries"][trapped] == queries + 2).all()
    # The start's margin is 2/3 of the clean one: a threshold above that searches them once more,
    # from their stripes; the better end is kept.
    both = run(cold_search_near=0.8)
    assert both.success.all()
    assert ((both.extras["queries"][trapped] > queries + 2) & (both.extras["queries"][trapped] <= 2 * queries + 1)).all()
    assert torch.equal(both.x_adv[~trapped], warm.x_adv[~trapped])  # the others' search is the same
    assert torch.equal(both.extras["queries"][~trapped], warm.extras["queries"][~trapped])
    # A threshold below the start's fraction changes nothing.
    below = run(cold_search_near=0.5)
    assert torch.equal(below.x_adv, warm.x_adv) and torch.equal(below.extras["queries"], warm.extras["queries"])


@pytest.mark.parametrize("value", [0, -0.1, 1.5, True, "0.3"])
def test_square_cold_search_near_must_be_a_fraction(value):
    with pytest.raises(RobustlabError, match="cold_search_near must be None or a fraction"):
        Square(cold_search_near=value)


def test_square_cold_search_queries_runs_the_first_queries_of_the_cold_search():
    # The cap stops the second, cold search after its first `cap` queries (the initialisation,
    # already evaluated, among them): each trapped sample that the whole cold search broke within
    # them ends as there, with the same queries; the others stop at the cap, unbroken.
    model, n, queries, cap = _Trap(), 16, 100, 3
    x, y, start = torch.full((n, 1, 4, 4), 0.25), torch.zeros(n, dtype=torch.long), torch.full((n, 1, 4, 4), 0.01)
    threat = Linf(eps=0.25)

    def run(**kw):
        return Square(queries=queries, p_init=0.8, rescale_schedule=False, cold_search_near=0.8, **kw)(
            model, x, y, threat=threat, generator=torch.Generator().manual_seed(3), start=start)

    whole, capped = run(), run(cold_search_queries=cap)
    cold_spent = whole.extras["queries"] - (queries + 2)  # the warm search ran to its end on the trapped samples
    trapped = cold_spent > 0
    within = trapped & (cold_spent <= cap - 1)
    assert 0 < int(within.sum()) < int(trapped.sum())  # the cap cuts some searches and not others
    assert torch.equal(capped.x_adv[within], whole.x_adv[within]) and capped.success[within].all()
    assert torch.equal(capped.extras["queries"][within], whole.extras["queries"][within])
    cut = trapped & ~within
    assert (capped.extras["queries"][cut] == queries + 2 + cap - 1).all() and not capped.success[cut].any()
    assert torch.equal(capped.x_adv[~trapped], whole.x_adv[~trapped])


@pytest.mark.parametrize("options", [{"cold_search_queries": 10}, {"cold_search_near": 0.3, "cold_search_queries": 0},
                                     {"cold_search_near": 0.3, "cold_search_queries": 5001},
                                     {"cold_search_near": 0.3, "cold_search_queries": True},
                                     {"cold_search_near": 0.3, "cold_search_queries": 10.0}])
def test_square_cold_search_queries_must_be_a_budget_with_cold_search_near(options):
    with pytest.raises(RobustlabError, match="cold_search_queries must be None or a number of queries"):
        Square(**options)


@pytest.mark.parametrize("options", [{"cold_search_near": 1.0}, {"cold_search_near": 0.3, "cold_search_queries": 1},
                                     {"cold_search_near": 0.3, "cold_search_queries": 5000}])
def test_square_cold_search_accepts_the_ends_of_its_ranges(options):
    Square(**options)


# Scripted logits for one sample and the cold search's two ends (untargeted cross-entropy on label
# 0, which Square minimises as -CE). Calls: 0 the template's clean pass, 1 the clean check (margin
# 2), 2 the stripes [3, 0, 0] (CE 0.10), 3 the start [1, 0.9, 0.9] (CE 1.03, margin 0.1, below
# 0.5 x 2: the sample continues from it), 4-5 the warm steps [5, 0, 0] (CE 0.01, rejected), 6-7
# the cold search's two steps (queries = 3), then the template's passes.
_CLEAN, _STRIPES, _START, _FAR = [2.0, 0.0, 0.0], [3.0, 0.0, 0.0], [1.0, 0.9, 0.9], [5.0, 0.0, 0.0]


@pytest.mark.parametrize("cold, kept, queries", [
    ([[1.0, 1.01, -10.0]], 6, 6),  # broken (CE 0.70, not lower than the warm end's): taken, the search ends
    ([[1.0, 1.0, -5.0]], 6, 6),  # a tie, margin 0 (CE 0.69): broken too, taken
    ([_FAR, _FAR], 3, 7),  # unbroken and worse than the warm end: the start is kept
    ([_START, _FAR], 3, 7),  # the same loss as the warm end: not lower, the start is kept
    ([[1.0, 0.95, 0.95], _FAR], 6, 7),  # unbroken with a lower loss (CE 1.07): taken
])
def test_square_keeps_the_better_end_of_the_warm_and_cold_searches(cold, kept, queries):
    recorder = InputRecorder(_Sequence([_CLEAN, _CLEAN, _STRIPES, _START, _FAR, _FAR, *cold, _FAR]))
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    result = Square(queries=3, loss="ce", cold_search_near=0.5)(
        recorder, x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0), start=x.clone())
    assert result.extras["queries"].tolist() == [queries]
    torch.testing.assert_close(result.x_adv, recorder.inputs[kept], rtol=0, atol=0)


@pytest.mark.parametrize("rows, queries", [
    ([_CLEAN, _CLEAN, _STRIPES, _START, [1.0, 1.0, -5.0]], 4),  # the warm search ended on a tie: broken
    ([_CLEAN, _CLEAN, _STRIPES, [1.0, 0.0, 0.0], _FAR, _FAR], 5),  # start margin exactly 0.5 x 2: not below
])
def test_square_cold_search_skips_broken_samples_and_starts_not_below_the_threshold(rows, queries):
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    result = Square(queries=3, loss="ce", cold_search_near=0.5)(
        _Sequence(rows + [_FAR]), x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0),
        start=x.clone())
    assert result.extras["queries"].tolist() == [queries]


def test_square_cold_search_is_targeted_when_the_attack_is():
    # Target 1, cross-entropy towards it. The cold step [0, 1, 2] is misclassified (an untargeted
    # success) but not the target (targeted margin 1) and has a higher CE (1.41) than the warm end,
    # the start [1, 0.9, 0] (0.92, margin 0.1): the start is kept.
    rows = [_CLEAN, _CLEAN, _STRIPES, [1.0, 0.9, 0.0], _FAR, _FAR, [0.0, 1.0, 2.0], _FAR, _FAR]
    recorder = InputRecorder(_Sequence(rows))
    x, y = torch.full((1, 1, 4, 4), 0.5), torch.tensor([0])
    result = Square(queries=3, cold_search_near=0.5)(
        recorder, x, y, threat=Linf(eps=0.1), targets=torch.tensor([1]), generator=torch.Generator().manual_seed(0),
        start=x.clone())
    assert result.extras["queries"].tolist() == [7]
    torch.testing.assert_close(result.x_adv, recorder.inputs[3], rtol=0, atol=0)


def test_square_cold_search_steps_from_its_own_stripes():
    # The cold search starts from the stripes with their loss: its first step (a 7x7 window on the
    # 8x8 image, p = 0.8) scores worse (CE 0.01 against 0.10) and is rejected, so its second (p =
    # 0.8 / 64: one pixel) changes the stripes in one pixel, not the rejected point.
    recorder = InputRecorder(_Sequence([_CLEAN, _CLEAN, _STRIPES, _START, _FAR, _FAR, _FAR, _FAR, _FAR]))
    x, y = torch.full((1, 1, 8, 8), 0.5), torch.tensor([0])
    Square(queries=3, loss="ce", cold_search_near=0.5)(
        recorder, x, y, threat=Linf(eps=0.1), generator=torch.Generator().manual_seed(0), start=x.clone())
    stripes, first, second = recorder.inputs[2], recorder.inputs[6], recorder.inputs[7]
    assert int((first != stripes).sum()) >= 7 and int((second != stripes).sum()) == 1


def test_square_gives_up_in_each_search_against_its_own_budget():
    # give_up = 1e-9: a sample still unbroken at the checkpoint of 100 queries stops there, in the
    # warm search (the trapped samples make no progress from the start: 3 + 99 queries) and again
    # in the cold one, with the same rule (broken within its 99 steps, or stopped at 201 queries).
    model, n = _Trap(), 16
    x, y, start = torch.full((n, 1, 4, 4), 0.25), torch.zeros(n, dtype=torch.long), torch.full((n, 1, 4, 4), 0.01)
    result = Square(queries=200, p_init=0.8, rescale_schedule=False, give_up=1e-9, cold_search_near=0.8)(
        model, x, y, threat=Linf(eps=0.25), generator=torch.Generator().manual_seed(2), start=start)
    queries, success = result.extras["queries"], result.success
    trapped = queries > 102
    stopped = trapped & ~success
    assert 0 < int(stopped.sum()) < int(trapped.sum())
    assert (queries[stopped] == 201).all() and (queries[trapped & success] < 201).all()


class _Falling(nn.Module):
    """Two classes, margin ``0.999 - 2 mean(x)``: every step of :class:`_Creep` lowers it by 0.002."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.999 - 2 * m, torch.zeros_like(m)], dim=1)


class _Creep(Square):
    """Square whose every step adds 0.001 to each pixel: a search whose margin falls linearly."""

    @staticmethod
    def _step_linf(x, x_best, p, threat, generator):
        return x_best + 0.001


@pytest.mark.parametrize("budget, steps", [(None, 500), (200, 99)])
def test_square_gives_up_against_what_is_left_of_its_budget(budget, steps):
    # Margin 0.999 - 0.002 j after j steps. At the checkpoint of 100 queries (99 steps, margin 0.801,
    # progress r = 0.198 / log2(100) per doubling) the rule with s = 10 gives up when
    # 0.801 > 10 r log2(budget / 100): not with the whole budget of 5000 queries (threshold 1.7),
    # which runs on and breaks the sample after 500 steps, but with 200 (threshold 0.30).
    from robustlab.attacks.base import ModelOracle

    attack = _Creep(queries=5000, give_up=10.0)
    x = torch.zeros(1, 1, 4, 4)
    y, queries = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.int64)
    margin, loss = torch.full((1,), 0.999), torch.full((1,), 0.999)
    attack._search(ModelOracle(_Falling()), attack._objective(None), x, y, None, x.clone(), loss, margin, queries,
                   torch.zeros(1, dtype=torch.bool), torch.zeros(1), Linf(eps=1.0), None, budget=budget)
    assert int(queries) == steps
    assert float(margin) == pytest.approx(0.999 - 0.002 * steps, abs=1e-4)
