"""``gradbench compare BASE NEW``: accuracy changes between two sweeps, cell by cell.

The accuracy twin of ``make bench-compare``. Two sweep folders (before and after changing an
estimator, or two versions of gradbench) are matched row by row: the same cell folder (the
cell's swept values, so the same sweep run twice lands in the same folders) and the same
parameter coordinate. For each matched row it gives

- the variance ratio NEW/BASE with a confidence interval. Where both records carry
  ``var_grad_se`` (the standard error of the variance from the replicates' fourth moment)
  the interval and the test are on log variance with those errors, which holds for the
  heavy-tailed estimates score-function estimators give; otherwise it is the F-test on the
  replicates' variances, which assumes Gaussian estimates (``method`` says which);
- the change in bias in standard errors, and whether a bias appeared: NEW's mean is many
  standard errors from an exact gradient where BASE's was not;
- the time ratio of one estimate.

A variance "grew" when the test rejects ``ratio <= max_variance_ratio`` at the family-wise
false-alarm rate ``false_alarm`` (Bonferroni over the compared rows); a bias "appeared" when
NEW's |z| against the exact gradient exceeds the Bonferroni threshold at the same rate and
BASE's did not. Either makes the exit code 1.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from benchmarks.errors import UsageError
from benchmarks.significance import bonferroni_z
from benchmarks.storage import write_atomic

KEY = ["run_dir", "param"]
COLUMNS = [
    "run_dir", "objective", "estimator", "param", "n_samples", "var_base", "var_new",
    "var_ratio", "ci_low", "ci_high", "method", "p_growth", "variance_grew", "bias_shift_se",
    "z_base", "z_new", "bias_appeared", "time_ratio",
]  # fmt: skip


@dataclass
class Comparison:
    """The matched rows, the rows found on one side only, and what regressed."""

    table: pd.DataFrame
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[str]:
        """One line per row whose variance grew or where a bias appeared."""
        lines = []
        for row in self.table.itertuples():
            cell = f"{row.run_dir} [{row.param}]"
            if row.variance_grew:
                lines.append(
                    f"{cell}: variance × {row.var_ratio:.3g} "
                    f"(CI {row.ci_low:.3g}–{row.ci_high:.3g})"
                )
            if row.bias_appeared:
                lines.append(f"{cell}: bias appeared (z = {row.z_new:.1f}, was {row.z_base:.1f})")
        return lines


def _replicates(frame: pd.DataFrame) -> np.ndarray:
    count = frame["n_finite"] if "n_finite" in frame else frame["replicates"]
    return pd.to_numeric(count, errors="coerce").fillna(frame["replicates"]).to_numpy(float)


def _variance_test(base, new, max_ratio: float, confidence: float):
    """(ratio, ci_low, ci_high, method, p-value of ratio <= max_ratio) per row."""
    from scipy import stats  # scikit-learn's dependency; only this command needs it

    ratio = new["var_grad"].to_numpy(float) / base["var_grad"].to_numpy(float)
    tail = (1 - confidence) / 2
    if "var_grad_se" in base and "var_grad_se" in new:
        se = np.hypot(
            base["var_grad_se"].to_numpy(float) / base["var_grad"].to_numpy(float),
            new["var_grad_se"].to_numpy(float) / new["var_grad"].to_numpy(float),
        )
    else:
        se = np.full(len(ratio), np.nan)
    d_new, d_base = _replicates(new) - 1, _replicates(base) - 1
    f_low = stats.f.ppf(1 - tail, d_new, d_base)
    f_high = stats.f.ppf(tail, d_new, d_base)
    log_ok = np.isfinite(se) & (se > 0)
    z = NormalDist().inv_cdf(1 - tail)
    low = np.where(log_ok, ratio * np.exp(-z * se), ratio / f_low)
    high = np.where(log_ok, ratio * np.exp(z * se), ratio / f_high)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_growth = (np.log(ratio) - math.log(max_ratio)) / se
    p_log = stats.norm.sf(z_growth)
    p_f = stats.f.sf(ratio / max_ratio, d_new, d_base)
    p = np.where(log_ok, p_log, p_f)
    return ratio, low, high, np.where(log_ok, "log-variance", "F"), p


def compare_records(
    base: pd.DataFrame,
    new: pd.DataFrame,
    *,
    max_variance_ratio: float = 1.1,
    false_alarm: float = 1e-3,
    confidence: float = 0.95,
) -> Comparison:
    """Match ``base`` and ``new`` records row by row and test what changed.

    Args:
        base, new: records frames with ``run_dir`` (as ``scan_runs`` gives them).
        max_variance_ratio: a variance ratio NEW/BASE up to this is not a regression.
        false_alarm: family-wise rate of false alarms over all compared rows.
        confidence: level of the variance ratio's confidence interval.
    """
    if not max_variance_ratio > 0:
        raise UsageError(f"--max-variance-ratio must be > 0, got {max_variance_ratio}")
    if not 0 < false_alarm < 1:
        raise UsageError(f"--false-alarm must be in (0, 1), got {false_alarm}")
    ok_base = base[base["status"] == "ok"].drop_duplicates(KEY)
    ok_new = new[new["status"] == "ok"].drop_duplicates(KEY)
    merged = ok_base.merge(ok_new, on=KEY, suffixes=("_b", "_n"))
    merged = merged[(merged["var_grad_b"] > 0) & (merged["var_grad_n"] > 0)]
    keys_base = set(map(tuple, ok_base[KEY].to_numpy()))
    keys_new = set(map(tuple, ok_new[KEY].to_numpy()))
    only = lambda keys: sorted(f"{d} [{p}]" for d, p in keys)  # noqa: E731

    side = {
        suffix: merged[[c for c in merged.columns if c.endswith(suffix)]].rename(
            columns=lambda c, s=suffix: c.removesuffix(s)
        )
        for suffix in ("_b", "_n")
    }
    b, n = side["_b"], side["_n"]
    m = max(len(merged), 1)
    ratio, low, high, method, p = _variance_test(b, n, max_variance_ratio, confidence)
    z_cut = bonferroni_z(false_alarm, m)
    z_base = (b["bias"] / b["bias_se"]).to_numpy(float)
    z_new = (n["bias"] / n["bias_se"]).to_numpy(float)
    exact = np.isfinite(n["true_grad"].to_numpy(float))
    claimed = n["unbiased"] if "unbiased" in n else pd.Series(True, index=n.index)
    claimed_unbiased = claimed.fillna(True).astype(bool).to_numpy()
    table = pd.DataFrame({
        "run_dir": merged["run_dir"].to_numpy(),
        "objective": n["objective"].to_numpy(),
        "estimator": n["estimator"].to_numpy(),
        "param": merged["param"].to_numpy(),
        "n_samples": n["n_samples"].to_numpy(),
        "var_base": b["var_grad"].to_numpy(float),
        "var_new": n["var_grad"].to_numpy(float),
        "var_ratio": ratio,
        "ci_low": low,
        "ci_high": high,
        "method": method,
        "p_growth": p,
        "variance_grew": p < false_alarm / m,
        "bias_shift_se": (n["bias"].to_numpy(float) - b["bias"].to_numpy(float))
        / np.hypot(n["bias_se"].to_numpy(float), b["bias_se"].to_numpy(float)),
        "z_base": z_base,
        "z_new": z_new,
        "bias_appeared": exact & claimed_unbiased & (np.abs(z_new) > z_cut)
        & ~(np.abs(z_base) > z_cut),
        "time_ratio": n["time_per_estimate_s"].to_numpy(float)
        / b["time_per_estimate_s"].to_numpy(float),
    }, columns=COLUMNS)  # fmt: skip
    return Comparison(table, only(keys_base - keys_new), only(keys_new - keys_base))


def format_comparison(comparison: Comparison) -> str:
    """The terminal table: one line per matched row, then the unmatched rows."""
    t = comparison.table
    if t.empty:
        text = "(no matched cells)"
    else:
        shown = pd.DataFrame({
            "cell": t["run_dir"],
            "param": t["param"],
            "var ratio [CI]": [
                f"{r:.3g} [{lo:.3g}, {hi:.3g}]"
                for r, lo, hi in zip(t["var_ratio"], t["ci_low"], t["ci_high"], strict=True)
            ],
            "bias shift (se)": t["bias_shift_se"].map("{:+.1f}".format),
            "time ratio": t["time_ratio"].map("{:.2f}".format),
            "flag": [
                ", ".join(f for f, on in (("variance grew", g), ("bias appeared", a)) if on)
                for g, a in zip(t["variance_grew"], t["bias_appeared"], strict=True)
            ],
        })  # fmt: skip
        text = shown.to_string(index=False)
    for label, rows in (
        ("only in BASE", comparison.only_base),
        ("only in NEW", comparison.only_new),
    ):
        if rows:
            text += f"\n{label}: {', '.join(rows)}"
    return text


def main(args: Sequence[str]) -> int:
    """Entry point of ``gradbench compare``; returns the exit code."""
    from benchmarks.collect import scan_runs

    parser = argparse.ArgumentParser(
        prog="gradbench compare", description=__doc__.splitlines()[0].split(": ", 1)[1]
    )
    parser.add_argument("base", help="sweep folder before the change")
    parser.add_argument("new", help="sweep folder after the change")
    parser.add_argument("--max-variance-ratio", type=float, default=1.1)
    parser.add_argument("--false-alarm", type=float, default=1e-3)
    parser.add_argument("--out", help="folder for compare.md and compare.csv (default: NEW)")
    options = parser.parse_args(args)
    frames = []
    for label, folder in (("BASE", options.base), ("NEW", options.new)):
        if not Path(folder).is_dir():
            raise UsageError(f"compare: {label} is not a folder: {folder}")
        records = scan_runs(folder).records
        if records.empty:
            raise UsageError(f"compare: no readable records under {label} folder {folder}")
        frames.append(records)
    comparison = compare_records(
        *frames, max_variance_ratio=options.max_variance_ratio, false_alarm=options.false_alarm
    )
    text = format_comparison(comparison)
    print(text)
    out = Path(options.out or options.new)
    out.mkdir(parents=True, exist_ok=True)
    markdown = f"# gradbench compare\n\n```\n{text}\n```\n"
    write_atomic(out / "compare.md", lambda handle: handle.write(markdown.encode()))
    csv = comparison.table.to_csv(index=False)
    write_atomic(out / "compare.csv", lambda handle: handle.write(csv.encode()))
    regressions = comparison.regressions
    for line in regressions:
        print(f"regression: {line}", file=sys.stderr)
    print(
        f"{len(comparison.table)} rows compared, {len(regressions)} "
        f"regression{'' if len(regressions) == 1 else 's'}; "
        f"written {out / 'compare.md'}, {out / 'compare.csv'}"
    )
    return 1 if regressions else 0
