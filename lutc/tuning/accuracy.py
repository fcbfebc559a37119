"""Accuracy gate: per-element error bound of a schedule's table precision, checked against numpy."""
from __future__ import annotations

import numpy as np

U32 = 2.0 ** -24          # float32 unit roundoff
U16 = 2.0 ** -11          # float16 unit roundoff (relative error of one rounded table entry)
SAFETY = 1.5              # slack on top of the derived bound


class ErrorBound:
    """Reference output and error bounds of x (M, K) @ qt.dequantize().T for any schedule.

    Per (m, n), with S[n, grp] = sum_b |s_b[n, grp]|, Z = |z| and X1[m, grp] = sum |x| over the group:
      int8 tables:    lookups err by <= scale[m, grp] / 2, so |dy| <= sum_grp S * tables_per_group * scale / 2
      float16 tables: entries err by <= U16 * |entry| <= U16 * (sum |x| over the table), so |dy| <= U16 * S @ X1
      float32 tables: exact tables;
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
        self.s = np.abs(qt.scales.astype(np.float64)).sum(0)                # (N, NG)
        self.sz = self.s + np.abs(qt.zeros.astype(np.float64))
        self.ref = x.astype(np.float64) @ qt.dequantize().astype(np.float64).T
        self._int8_scale = {}

    def int8_scale(self, g: int) -> np.ndarray:
        """The kernel's int8 table scale per (m, group): max |subset sum| over the group's tables / 127."""
        if g not in self._int8_scale:
            tpg = -(-self.gs // g)
            xt = np.zeros(self.xg.shape[:2] + (tpg * g,), np.float64)
            xt[..., :self.gs] = self.xg
            xt = xt.reshape(xt.shape[:2] + (tpg, g))
            pos = np.where(xt > 0, xt, 0).sum(-1)
            neg = np.where(xt < 0, xt, 0).sum(-1)
            self._int8_scale[g] = np.maximum(pos, -neg).max(-1) / 127.0
        return self._int8_scale[g]

    def bound(self, sched) -> np.ndarray:
        """Max allowed |y - ref| per output element (M, N) for `sched`, safety factor included."""
        tpg = sched.tables_per_group
        if sched.lut_dtype == "int8":
            prec = (tpg / 2.0) * (self.int8_scale(sched.g) @ self.s.T)
        elif sched.lut_dtype == "float16":
            prec = U16 * (self.x1 @ self.s.T)
        else:
            prec = 0.0
        depth = sched.g + tpg + self.bits + self.ng + self.gs + 4
        rounding = U32 * depth * (self.x1 @ self.sz.T)
        return SAFETY * (prec + rounding)

    def check(self, y: np.ndarray, sched) -> dict:
        """{'ok', 'max_err', 'ratio' (max err / bound over elements), 'reason'}."""
        if y.shape != self.ref.shape:
            return {"ok": False, "max_err": float("inf"), "ratio": float("inf"),
                    "reason": f"output shape {y.shape}, expected {self.ref.shape}"}
        if not np.isfinite(y).all():
            return {"ok": False, "max_err": float("inf"), "ratio": float("inf"),
                    "reason": f"{int((~np.isfinite(y)).sum())} non-finite outputs"}
        err = np.abs(y.astype(np.float64) - self.ref)
        b = self.bound(sched)
        ratio = float((err / np.maximum(b, 1e-300)).max())
        out = {"ok": ratio <= 1.0, "max_err": float(err.max()), "ratio": ratio, "reason": ""}
        if not out["ok"]:
            i = np.unravel_index(int(np.argmax(err - b)), err.shape)
            out["reason"] = (f"error {err[i]:.3g} at {tuple(int(v) for v in i)} exceeds the {sched.lut_dtype} "
                             f"bound {b[i]:.3g} (max err/bound {ratio:.2f})")
        return out
