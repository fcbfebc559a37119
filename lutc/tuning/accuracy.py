"""Accuracy gate: a schedule's output must be (1) within the per-element error bound its table
precision allows (a wrong kernel fails) and (2) within MAX_REL_ERR of the exact product in
relative RMS error on probe activations with outlier channels (an inaccurate table precision
fails, however fast: it would cost model quality).

MAX_REL_ERR and the perplexity figure (docs/quantization.md, "Table precision"): on SmolLM2-135M
the old int8 path (one scale per group, uncentered) errs by 1.7-3.8% on these probes and cost
3-6% perplexity; the default tables (centered, one scale per 16 activations with integer
ratios at W1-W2, per 32 at W3-W4) err by 0.56-0.82% and cost under 0.5%. The threshold sits between the two.
(The W4 default on pair-sum lookups, block 8 with the top two planes refined, errs less still.)
"""
from __future__ import annotations

import numpy as np

from ..schedule import FINE_STEPS

U32 = 2.0 ** -24          # float32 unit roundoff
U16 = 2.0 ** -11          # float16 unit roundoff (relative error of one rounded table entry)
SAFETY = 1.5              # slack on top of the derived bound
MAX_REL_ERR = 0.01        # quality gate: ||y - ref|| / ||ref|| on probe_activations
OUTLIER_FRACTION, OUTLIER_SCALE = 0.005, 100.0


def probe_activations(rng, M: int, K: int) -> np.ndarray:
    """Standard normal activations whose few outlier channels (0.5%, at least one) are 100x larger,
    as in LLM hidden states: the inputs that make coarse table scales lose precision."""
    x = rng.standard_normal((M, K), dtype=np.float32)
    k = max(1, int(OUTLIER_FRACTION * K))
    x[:, rng.choice(K, k, replace=False)] *= OUTLIER_SCALE
    return x


class ErrorBound:
    """Reference output and error bounds of x (M, K) @ qt.dequantize().T for any schedule.

    Per (m, n), with S[n, grp] = sum_b |s_b[n, grp]|, Z = |z| and X1[m, grp] = sum |x| over the group:
      int8 tables:    lookups err by <= scale[m, grp, blk] / 2, so
                      |dy| <= sum_grp S * sum_blk tables_in_blk * scale[blk] / 2 (with refined top
                      planes, lut_fine_planes, their |s_b| count 1 / FINE_STEPS in S: their
                      lookups are the entry to scale / FINE_STEPS)
      float16 tables: entries err by <= U16 * |entry| <= U16 * (sum |x| over the table), so |dy| <= U16 * S @ X1
      float32 tables: exact tables;
      dot path:       int8 activations err by <= amax(act block) / 254 each (/ 254 again with the
                      residual) against levels <= S, and
                      each weight by <= BITS * S / (2 * (127 - BITS / 2)) (q_b rounding, WMAX = 127,
                      the coarser target), so |dy| <= S @ (sum_blocks XB * amax / 254) + X1 @ that;
    all plus float32 rounding U32 * depth * (S + Z) @ X1 with depth the longest chain of float additions.
    """

    def __init__(self, qt, x: np.ndarray):
        self.bits, self.gs, self.K = qt.bits, qt.group_size, qt.K
        self.ng = qt.num_groups
        m = x.shape[0]
        xp = np.zeros((m, self.ng * self.gs), np.float64)
        xp[:, :self.K] = x
        self.xg = xp.reshape(m, self.ng, self.gs)
        self.x1 = np.abs(self.xg).sum(-1)                                   # (M, NG)
        self.planes = np.abs(qt.scales.astype(np.float64))                   # (BITS, N, NG)
        self.s = self.planes.sum(0)                                         # (N, NG)
        self.sz = self.s + np.abs(qt.zeros.astype(np.float64))
        self.ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
        self._int8_scale = {}

    def int8_error(self, sched) -> np.ndarray:
        """(M, NG): sum over a group's scale blocks of tables_in_block * scale / 2, where a block's
        int8 scale is the max over its tables of max |entry| / 127 (entry = subset sum, minus half
        the table's sum when centered); with integer block ratios, see block_scales."""
        key = (sched.g, sched.scale_chunks * sched.per_byte, sched.centered, sched.scale_ratio, sched.ratio_budget)
        if key not in self._int8_scale:
            g, tpb = sched.g, key[1]
            tpg = -(-self.gs // g)
            nb = -(-tpg // tpb)
            xt = np.zeros(self.xg.shape[:2] + (nb * tpb * g,), np.float64)
            xt[..., :self.gs] = self.xg
            xt = xt.reshape(xt.shape[:2] + (nb * tpb, g))
            if sched.centered:
                amax = 0.5 * np.abs(xt).sum(-1)
            else:
                amax = np.maximum(np.where(xt > 0, xt, 0).sum(-1), -np.where(xt < 0, xt, 0).sum(-1))
            amax = amax.reshape(amax.shape[:2] + (nb, tpb))
            ntab = np.minimum(tpb, np.maximum(0, tpg - tpb * np.arange(nb)))       # real tables per block
            self._int8_scale[key] = (block_scales(amax.max(-1), sched.scale_ratio, sched.ratio_budget) * ntab / 2.0).sum(-1)
        return self._int8_scale[key]

    def lookup_weights(self, sched) -> np.ndarray:
        """(N, NG): sum_b |s_b| with each refined plane's (the top sched.fine_planes) / FINE_STEPS."""
        fine = sched.fine_planes
        if not fine:
            return self.s
        return self.planes[:self.bits - fine].sum(0) + self.planes[self.bits - fine:].sum(0) / FINE_STEPS

    def dot_error(self, sched) -> np.ndarray:
        """(M, N): the dot path's bound before rounding and safety (see the class doc)."""
        xb = sched.act_scale_block
        blocks = self.xg.reshape(self.xg.shape[0], self.ng, self.gs // xb, xb)
        act = (xb * np.abs(blocks).max(-1) / 254.0).sum(-1)                     # (M, NG)
        if sched.act_residual:                  # the residual's step is 1/254 of the first's
            act = act / 254.0
        lim = 127 - 0.5 * self.bits
        return act @ self.s.T + self.x1 @ (self.bits * self.s / (2 * lim)).T

    def bound(self, sched) -> np.ndarray:
        """Max allowed |y - ref| per output element (M, N) for `sched`, safety factor included."""
        tpg = sched.tables_per_group
        if sched.path == "dot":
            prec = self.dot_error(sched)
        elif sched.lut_dtype == "int8":
            prec = self.int8_error(sched) @ self.lookup_weights(sched).T
        elif sched.lut_dtype == "float16":
            prec = U16 * (self.x1 @ self.s.T)
        else:
            prec = 0.0
        depth = sched.g + tpg + self.bits + self.ng + self.gs + 4
        rounding = U32 * depth * (self.x1 @ self.sz.T)
        return SAFETY * (prec + rounding)

    def check(self, y: np.ndarray, sched) -> dict:
        """{'ok', 'max_err', 'ratio' (max err / bound over elements), 'rel_err', 'reason'}."""
        if y.shape != self.ref.shape:
            return {"ok": False, "max_err": float("inf"), "ratio": float("inf"),
                    "rel_err": float("inf"), "reason": f"output shape {y.shape}, expected {self.ref.shape}"}
        if not np.isfinite(y).all():
            return {"ok": False, "max_err": float("inf"), "ratio": float("inf"), "rel_err": float("inf"),
                    "reason": f"{int((~np.isfinite(y)).sum())} non-finite outputs"}
        err = np.abs(y.astype(np.float64) - self.ref)
        b = self.bound(sched)
        ratio = float((err / np.maximum(b, 1e-300)).max())
        rel = float(np.linalg.norm(err) / max(np.linalg.norm(self.ref), 1e-300))
        out = {"ok": ratio <= 1.0 and rel <= MAX_REL_ERR, "max_err": float(err.max()), "ratio": ratio,
               "rel_err": rel, "reason": ""}
        if ratio <= 1.0 and not out["ok"]:
            out["reason"] = (f"relative error {rel:.2%} exceeds the quality gate of {MAX_REL_ERR:.0%} "
                             f"({describe_tables(sched)}{'' if sched.path == 'dot' else ' tables'} would cost "
                             f"model quality)")
        elif not out["ok"]:
            i = np.unravel_index(int(np.argmax(err - b)), err.shape)
            what = "dot-path" if sched.path == "dot" else sched.lut_dtype
            out["reason"] = (f"error {err[i]:.3g} at {tuple(int(v) for v in i)} exceeds the {what} "
                             f"bound {b[i]:.3g} (max err/bound {ratio:.2f})")
        return out


def block_scales(bmax: np.ndarray, ratio: int, budget: int) -> np.ndarray:
    """Upper bounds on the int8 table scales of blocks whose largest |entry| is bmax (..., NB):
    bmax / 127, or with integer ratios r * unit, unit = max(max bmax / (127 ratio), sum bmax /
    (127 budget)) and r = ceil(bmax / (127 unit)) in 1..ratio (as build_tables picks them; r is
    taken 1e-5 high, so float32 rounding in the kernel can only make the real one smaller)."""
    if not ratio:
        return bmax / 127.0
    unit = np.maximum(bmax.max(-1, keepdims=True) / (127.0 * ratio), bmax.sum(-1, keepdims=True) / (127.0 * budget))
    r = np.ceil(bmax * (1 + 1e-5) / (127.0 * np.where(unit > 0, unit, 1.0)))
    return np.clip(r, 1, ratio) * unit * (1 + 1e-6)


def describe_tables(s) -> str:
    if s.path == "dot":
        return f"dot path (int8 activations, one scale per {s.act_scale_block})"
    if s.lut_dtype != "int8":
        return s.lut_dtype
    blk = s.scale_chunks * s.g * s.per_byte if s.scale_blocks > 1 else s.group_size
    ratio = f", integer ratios <= {s.scale_ratio}" if s.scale_ratio else ""
    fine = f", top {s.fine_planes} plane(s) refined" if s.fine_planes else ""
    return f"int8 ({'centered, ' if s.centered else ''}one scale per {blk} activations{ratio}{fine})"
