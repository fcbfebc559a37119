"""Tuning output: the tuned-vs-default table, db listings, and Optuna history/importance PNGs."""
from __future__ import annotations

import re
import warnings
from pathlib import Path

from .space import describe


def ms(t) -> str:
    return "-" if t is None else f"{t * 1e3:.4f}"


def weight_bytes(p) -> int:
    """Bytes of packed weights one call streams: the bit-planes, plus fp16 scales and zero per group."""
    return -(-p.N * p.K * p.bits // 8) + 2 * (p.bits + 1) * p.N * -(-p.K // p.group_size)


def results_table(results) -> str:
    """One row per tuned problem: default vs tuned time, speedup, the weight bytes streamed per
    second at the tuned time (GB/s), spread, the cores other processes used meanwhile (busy),
    trials, the trial that converged, minutes, and the schedule."""
    head = (f"{'shape (NxK)':>12} {'bits':>4} {'M':>4} {'default ms':>11} {'tuned ms':>10} {'speedup':>8} "
            f"{'GB/s':>6} {'spread':>7} {'busy':>5} {'trials':>6} {'conv@':>6} {'min':>5}  best schedule")
    rows = [head, "-" * len(head)]
    for r in results:
        p = r.problem
        sp = f"{r.speedup:.2f}x" if r.speedup else "-"
        spread = f"{100 * r.spread:.1f}%" if r.spread is not None else "-"
        conv = "-" if r.converged_trial is None else str(r.converged_trial)
        busy = "-" if r.contention is None else f"{r.contention:.2f}"
        gbs = f"{weight_bytes(p) / r.time_s / 1e9:.1f}" if r.time_s else "-"
        sched = describe(r.best) if r.best is not None else r.note
        if r.best is not None and r.note:
            sched += f"  ({r.note})"
        rows.append(f"{p.N:>5}x{p.K:<6} {p.bits:>4} {p.M:>4} {ms(r.default_time_s):>11} {ms(r.time_s):>10} "
                    f"{sp:>8} {gbs:>6} {spread:>7} {busy:>5} {r.trials:>6} {conv:>6} {r.minutes:>5.1f}  {sched}")
    return "\n".join(rows)


def entries_table(db) -> str:
    from ..schedule import Schedule
    d = db.device
    lines = [f"device {d.get('id')}: {d.get('cpu_model') or '?'} ({d.get('cpu')}, {d.get('isa')}, "
             f"{d.get('cores')} cores)  file {db.path}"]
    head = (f"{'key':<36} {'ms':>9} {'default':>9} {'speedup':>8} {'source':>9} {'date':>10}  schedule")
    lines += [head, "-" * len(head)]
    for k in sorted(db.entries, key=lambda k: (db.entries[k]["bits"], db.entries[k]["m_bucket"],
                                               db.entries[k]["N"], db.entries[k]["K"], k)):
        e = db.entries[k]
        sp = f"{e['default_time_s'] / e['time_s']:.2f}x" if e.get("default_time_s") and e["time_s"] else "-"
        lines.append(f"{k:<36} {ms(e['time_s']):>9} {ms(e.get('default_time_s')):>9} {sp:>8} "
                     f"{e['source']:>9} {e['date'][:10]:>10}  {describe(Schedule.from_dict(e['schedule']))}")
    if not db.entries:
        lines.append("(no entries)")
    return "\n".join(lines)


def save_plots(study, out_dir) -> list:
    """Optimization history and parameter importances of `study` as PNGs; returns the paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", study.study_name).strip("_")
    written = []
    plots = (("history", ovm.plot_optimization_history), ("importance", ovm.plot_param_importances))
    for tag, fn in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as e:  # e.g. too few complete trials for importances
                warnings.warn(f"lutc tune: no {tag} plot for {study.study_name}: {e}", RuntimeWarning)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = out_dir / f"{stem}-{tag}.png"
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written
