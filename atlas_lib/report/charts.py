"""Matplotlib charts of the comparison (each function returns one Figure).

Charts read :class:`atlas_lib.report.collect.Collected` (``.runs``: key -> RunInfo with ``train``/``evals``
DataFrames; ``.baseline``). A run or a series that is absent is named in its panel's legend ("not run"),
never drawn as zeros; a chart with no data for any run is not drawn at all (:class:`NotDrawn`: one line,
with the test split's values where they exist). Figures are closed before they are returned so a notebook shows each
one exactly once (as the cell's value); ``stage_figure(..., keep_open=True)`` leaves its figure to
the inline backend instead, for notebooks that do not return it.
"""

from __future__ import annotations

import html
import io
import logging

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import offset_copy

from atlas_lib.core import registry
from atlas_lib.data.splits import length_stats
from atlas_lib.report.collect import RunInfo

log = logging.getLogger(__name__)


def aligned(info: RunInfo) -> bool:
    return info.spec is not None and info.spec.divergence == "aligned"


def figure(ncols: int, title: str, width: float = 5.4) -> tuple[Figure, list]:
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.9), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def alt_text(fig: Figure) -> str:
    """What a chart shows, in words, for its HTML ``alt`` attribute: the title, then each panel's
    title, axes, series and notes (e.g. "GRPO: not run")."""
    parts = [fig.get_suptitle()]
    for i, ax in enumerate(fig.axes, 1):
        desc = f"{ax.get_title() or f'panel {i}'}: {ax.get_ylabel() or 'value'} against {ax.get_xlabel() or 'x'}"
        series = [label for label in ax.get_legend_handles_labels()[1] if label]
        notes = [t.get_text() for t in ax.texts if t.get_text()]
        desc += "".join(f"; {x}" for x in (["series: " + ", ".join(series)] if series else []) + notes)
        parts.append(desc)
    return ". ".join(p for p in parts if p)


def svg(fig: Figure) -> str:
    """The figure as SVG text (crisp at any zoom, and smaller than a PNG of these line charts: text
    stays text, rendered in the page's sans-serif font), its :func:`alt_text` as ``<title>`` and
    ``aria-label`` so screen readers and the HTML report get the description."""
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "font.family": "sans-serif"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = text[text.index("<svg"):]  # no XML prolog or DOCTYPE: it is inlined into HTML pages
    alt = html.escape(alt_text(fig), quote=True)
    head_end = text.index(">") + 1
    return (text[:head_end - 1] + f' role="img" aria-label="{alt}">' + f"<title>{alt}</title>" + text[head_end:])


def _offer_svg() -> None:
    """Inside IPython, figures display as :func:`svg` only (no PNG copy), in the notebook and so in
    the HTML pages nbconvert renders from it. Registered after a figure exists, since creating the
    first one is what makes the inline backend register its own printers."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    formatters = shell.display_formatter.formatters
    if getattr(formatters["image/svg+xml"].type_printers.get(Figure), "is_atlas", False):
        return
    formatters["image/png"].type_printers.pop(Figure, None)

    def printer(fig):
        return svg(fig) if fig.axes else None

    printer.is_atlas = True
    formatters["image/svg+xml"].for_type(Figure, printer)


def done(fig: Figure, keep_open: bool = False) -> Figure:
    for ax in fig.axes:  # optimizer steps are whole numbers: no tick at step 0.5
        if ax.get_xlabel() == "optimizer step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # legends sit under the panels: the figure grows by their rows so the panels keep their height
    rows = max((len(ax.get_legend().get_texts()) for ax in fig.axes if ax.get_legend()), default=0)
    fig.set_figheight(fig.get_figheight() + 0.17 * rows)
    fig.tight_layout()
    _offer_svg()
    if not keep_open:
        plt.close(fig)
    return fig


def absent(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def series(df, *cols):
    """The rows of ``df`` where every column in ``cols`` (and step) is present, or None."""
    if df is None or len(df) == 0 or any(c not in df for c in ("step", *cols)):
        return None
    d = df.dropna(subset=["step", *cols])
    return d if len(d) else None


def _legend(ax, missing: list[str] = ()) -> None:
    """The panel's legend below its x-axis label, never over the data (error bars, constant series)."""
    if missing:
        ax.plot([], [], " ", label="not run / no data: " + ", ".join(missing))
    if ax.get_legend_handles_labels()[0]:
        # anchored a fixed 34 pt under the axes (tick labels + axis label), whatever the panel's height
        below = offset_copy(ax.transAxes, fig=ax.figure, y=-34, units="points")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, 0.0), bbox_transform=below, frameon=False)


def _hours_unit(runs: dict) -> str:
    kinds = set()
    for info in runs.values():
        if info.evals is not None and "device_kind" in info.evals:
            kinds |= set(info.evals["device_kind"].dropna())
    if kinds == {"CPU"}:
        return "CPU-hours (whole machine = 1 device)"
    return "GPU-hours" if kinds == {"GPU"} else "device-hours"


def acc_errorbar(ax, d, x: str, **kw) -> None:
    acc = 100 * d["accuracy"]
    if "ci_low" in d and "ci_high" in d and d[["ci_low", "ci_high"]].notna().all().all():
        yerr = [acc - 100 * d["ci_low"], 100 * d["ci_high"] - acc]
    else:
        yerr = None
    ax.errorbar(d[x], acc, yerr=yerr, marker="o", capsize=3, **kw)


def _curves(runs: dict, column: str, aligned_runs: bool | None = False) -> tuple[list, list[str]]:
    """``(info, points)`` of each run whose eval points carry ``column``, and the names of those whose do
    not. ``aligned_runs``: False same-tokenizer runs only, True cross-tokenizer only, None every run."""
    found, missing = [], []
    for info in runs.values():
        if aligned_runs is not None and aligned(info) != aligned_runs:
            continue
        d = series(info.evals, column)
        if d is None:
            missing.append(info.name)
        else:
            found.append((info, d))
    return found, missing


def _compute_x(d) -> str | None:
    """The training-compute column of a run's eval points: the ledger's (evaluation left out), else the
    wall clock of runs recorded before it."""
    return next((c for c in ("train_device_hours", "device_hours") if c in d and d[c].notna().any()), None)


def accuracy_chart(col) -> Figure:
    """Validation accuracy vs optimizer step, vs training FLOPs and vs training device hours (every run,
    each seed its own curve), 95% CI bars; each curve ends with the trained model's test accuracy (a
    square), the number the table reports."""
    fig, axes = figure(3, "Accuracy during training: validation curve, final test point "
                          "(error bars: 95% Wilson CI)", width=4.6)
    found, missing = _curves(col.runs, "accuracy")
    xs = ("step", "train_flops", None)
    for info, d in found:
        kw = {"color": info.color, "label": f"{info.name} (n={d['n'].iloc[-1]:.0f})" if "n" in d else info.name}
        test = info.summary.get("distilled") or {}
        for ax, x in zip(axes, xs, strict=True):
            x = x or _compute_x(d)
            if x is None or x not in d:
                continue
            pts = d.dropna(subset=[x])
            acc_errorbar(ax, pts, x, **kw)
            if isinstance(test.get("accuracy"), (int, float)) and len(pts):
                ax.plot([pts.iloc[-1][x]], [100 * test["accuracy"]], marker="s", mfc="none", ms=9, ls="none",
                        color=kw["color"], label=f"{info.name} final, test (n={test.get('n')})" if x == "step" else None)
    for role, style in (("student", ":"), ("teacher", "--")):
        m = (col.baseline or {}).get(role) or {}
        if isinstance(m.get("accuracy"), (int, float)):
            for ax in axes:
                ax.axhline(100 * m["accuracy"], color="0.3", ls=style, lw=1,
                           label=f"{role} before training, test (n={m.get('n')})" if ax is axes[0] else None)
    axes[0].set(xlabel="optimizer step", ylabel="accuracy (%)", title="vs step")
    axes[1].set(xlabel="training FLOPs (estimated; evaluation not included)", ylabel="accuracy (%)",
                title="vs training FLOPs")
    axes[2].set(xlabel=f"training {_hours_unit(col.runs)}", ylabel="accuracy (%)", title="vs training device time")
    _legend(axes[0], missing)
    return done(fig)


def loss_chart(col) -> Figure | NotDrawn:
    """Training loss per method; each method optimises a different objective, so one panel each (a method
    that logged no loss gets no panel; the legend line under the chart names it)."""
    title = "Training loss (each method's own objective; not comparable across panels)"
    methods = list(dict.fromkeys(info.method for info in col.runs.values()))
    logged = {m: [(info, d) for info in col.runs.values() if info.method == m
                  and (d := series(info.train, "loss")) is not None] for m in methods}
    panels = [m for m in methods if logged[m]]
    if not panels:
        return NotDrawn(title)
    missing = [registry.get(m).name if m in registry.keys() else m for m in methods if not logged[m]]
    # a method without a loss is named in the title, not drawn as an empty panel
    fig, axes = figure(len(panels), title + (f"; not run or no loss logged: {', '.join(missing)}" if missing else ""),
                       4.6)
    for ax, method in zip(axes, panels, strict=True):
        spec = registry.get(method) if method in registry.keys() else None
        for info, d in logged[method]:
            ax.plot(d["step"], d["loss"], color=info.color, label=info.name)
        ax.set(xlabel="optimizer step", ylabel="loss", title=spec.loss_title if spec else method)
        _legend(ax, [])
    return done(fig)


def reward_chart(col) -> Figure | NotDrawn:
    """Reward (group mean ± std) of the methods that log one (GRPO), and the fraction of groups whose
    rewards were all equal (no learning signal)."""
    info = next((i for i in col.runs.values() if "reward_mean" in i.train), None)
    if series(info.train if info else None, "reward_mean") is None:
        return NotDrawn("Reward during training (RL methods)")
    fig, (a_r, a_z) = figure(2, "Reward during training (RL methods)")
    color = info.color if info else "C1"
    d = series(info.train if info else None, "reward_mean")
    if d is None:
        absent(a_r, "GRPO: not run or no reward logged")
    else:
        a_r.plot(d["step"], d["reward_mean"], color=color, label="mean reward")
        if "reward_std" in d and d["reward_std"].notna().all():
            a_r.fill_between(d["step"], d["reward_mean"] - d["reward_std"], d["reward_mean"] + d["reward_std"],
                             color=color, alpha=0.2, label="± std")
    a_r.set(xlabel="optimizer step", ylabel="reward (1 = correct answer)", title="reward mean ± std",
            ylim=(-0.05, 1.05))  # the reward's own range, so a constant series reads as what it is
    z = series(info.train if info else None, "frac_zero_std")
    if z is None:
        absent(a_z, "GRPO: not run or frac_zero_std not logged")
    else:
        a_z.plot(z["step"], 100 * z["frac_zero_std"], color=color, label="groups with zero reward std")
    a_z.set(xlabel="optimizer step", ylabel="groups (%)", title="groups with no learning signal (all rewards equal)",
            ylim=(-5, 105))
    _legend(a_r, [])
    _legend(a_z, [])
    return done(fig)


def tokens_chart(col) -> Figure | NotDrawn:
    """Mean generated tokens on the held-out set (greedy) and of training samples, per step."""
    found, missing = _curves(col.runs, "avg_generated_tokens", aligned_runs=None)
    if not found:
        return NotDrawn("Generated tokens over training")
    fig, (ax,) = figure(1, "Generated tokens over training", 8.0)
    for info, d in found:
        ax.plot(d["step"], d["avg_generated_tokens"], marker="o", color=info.color, label=f"{info.name} held-out (greedy)")
        t = series(info.train, "completion_length")
        if t is not None:
            ax.plot(t["step"], t["completion_length"], ls=":", color=info.color, label=f"{info.name} training samples")
    ax.set(xlabel="optimizer step", ylabel="tokens per completion")
    _legend(ax, missing)
    return done(fig)


class NotDrawn:
    """In place of a chart that has no data for any row: one line saying so and, where the test split has
    the values the chart would show, those values (an empty panel captioned "no data" reads as a bug)."""

    def __init__(self, title: str, values: list[str] = ()):
        self.title, self.values = title, list(values)

    @property
    def text(self) -> str:
        head = f"{self.title}: no run logged it during training, so no chart is drawn."
        return head + (" On the test split (untrained → trained): " + "; ".join(self.values) + "."
                       if self.values else "")

    def _repr_html_(self) -> str:
        return f'<p class="atlas-nochart">{html.escape(self.text)}</p>'

    def __repr__(self) -> str:
        return self.text


def _test_values(col, metric: str, aligned_runs: bool) -> list[str]:
    """'GKD 0.782 → 0.181' for each run whose untrained and trained test rows carry ``metric``."""
    out = []
    student = ((col.baseline or {}).get("student") or {}).get(metric)
    for info in col.runs.values():
        if aligned(info) != aligned_runs or info.key != info.method:
            continue
        before = (info.summary.get("initial") or {}).get(metric) if aligned_runs else student
        after = (info.summary.get("distilled") or {}).get(metric)
        if isinstance(before, (int, float)) and isinstance(after, (int, float)):
            out.append(f"{info.name} {before:.3f} → {after:.3f}")
    return out


def divergence_chart(col) -> Figure | NotDrawn:
    """Mean reverse KL to the teacher (same tokenizer) and, on its own panel, the aligned divergence; a
    panel without data for any run is left out, and with neither the test split's values stand instead."""
    kl, missing = _curves(col.runs, "mean_reverse_kl")
    al, _ = _curves(col.runs, "aligned_divergence", aligned_runs=True)
    title = "Divergence from the teacher on held-out completions"
    if not kl and not al:
        return NotDrawn(title, _test_values(col, "mean_reverse_kl", False)
                        + _test_values(col, "aligned_divergence", True))
    fig, axes = figure(bool(kl) + bool(al), title)
    if kl:
        a_kl = axes.pop(0)
        for info, d in kl:
            a_kl.plot(d["step"], d["mean_reverse_kl"], marker="o", color=info.color, label=info.name)
        a_kl.set(xlabel="optimizer step", ylabel="mean reverse KL (nats/token)",
                 title="same tokenizer: reverse KL(student || teacher)")
        _legend(a_kl, missing)
    if al:
        a_al = axes.pop(0)
        for info, d in al:
            a_al.plot(d["step"], d["aligned_divergence"], marker="o", color=info.color, label=info.name)
        a_al.set(xlabel="optimizer step", ylabel="aligned span divergence",
                 title="cross-tokenizer (not comparable with reverse KL)")
        _legend(a_al, [])
    return done(fig)


def data_charts(prepared) -> Figure:
    """Question length and answer magnitude, train vs held-out (notebook 01)."""
    stats = length_stats(prepared)
    fig, (a_len, a_mag) = figure(2, "Problems: train vs validation vs test")
    for split, color in (("train", "C0"), ("val", "C2"), ("test", "C1")):
        s = stats[stats["split"] == split]
        a_len.hist(s["question_words"], bins=30, alpha=0.6, color=color, density=True, label=f"{split} (n={len(s)})")
        a_mag.hist(s["answer_log10_abs"], bins=30, alpha=0.6, color=color, density=True, label=split)
    a_len.set(xlabel="question length (words)", ylabel="density", title="question length")
    a_mag.set(xlabel="log10 |answer| (0 for answer 0)", ylabel="density", title="answer magnitude")
    _legend(a_len)
    _legend(a_mag)
    return done(fig)
