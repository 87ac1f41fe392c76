"""The report's text: a findings paragraph computed from the table.

Findings lead with the answer: which method changed the student's test accuracy, by how much,
as a paired difference on the same problems (95% paired-bootstrap interval, exact McNemar p; with
several seeds a bootstrap over problems with their seeds and the sign test over problems), at what
device time; then each pair of methods against each other on the same problems, and the compute each
needed to reach the final validation accuracy the other reached, where that is defined
(:mod:`atlas_lib.report.efficiency`); then what did not train and why. A difference is called one only when its paired test says so (p < 0.05);
otherwise the text says it is not distinguishable at this n and gives the smallest difference
the run could have detected. Nothing here adds a judgement the numbers do not carry.
"""

from __future__ import annotations

import itertools
import math

import pandas as pd

from atlas_lib.evaluation import stats
from atlas_lib.evaluation.logratio import VERSION as LOGRATIO_VERSION
from atlas_lib.report import controls, efficiency, plateau
from atlas_lib.report.collect import (
    Collected,
    RunInfo,
    further_seed,
    hacking_flag,
    own_student_page,
    own_student_runs,
    paired_vs,
    primary_tests,
    shared_student_runs,
    untrained_row,
)
from atlas_lib.report.table import (
    ALIGNED_COL,
    CUT_COL,
    LOGRATIO_COL,
    LOGRATIO_RULE,
    OBJECTIVE_COL,
    PLAIN_COL,
    RESTATE_COL,
    kl_scored_seeds,
    lora_text,
    own_model,
    pct,
    results_table,
    row_name,
)

ALPHA = 0.05


def _ok(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _acc(r: pd.Series) -> str:
    extra = []
    if _ok(r["CI low"]) and _ok(r["CI high"]):
        extra.append(f"95% CI {pct(r['CI low'])}–{pct(r['CI high'])}")
    if _ok(r["n"]):
        extra.append(f"n={r['n']:.0f}")
    return pct(r["Accuracy"]) + (f" ({', '.join(extra)})" if extra else "")


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _seed_tests(pr: stats.Paired) -> str:
    return "per-seed McNemar p " + ", ".join(f"{p:.2g}" for p in pr.seed_p_values)


def paired_text(pr: stats.Paired) -> str:
    """'+4.0 points (paired 95% CI +1.0 to +7.0, exact McNemar p = 0.012, n = 200; 12 problems gained, 4 lost)';
    with several seeds the interval, test and counts are over problems, each seed's McNemar beside."""
    if pr.seeds > 1:
        return (f"{100 * pr.diff:+.1f} points (95% CI {100 * pr.ci_low:+.1f} to {100 * pr.ci_high:+.1f} resampling "
                f"problems with their {pr.seeds} seeds, exact sign test over problems {_p(pr.p_value)}, n = {pr.n}; "
                f"{_count(pr.a_only, 'problem')} gained on a majority of seeds, {pr.b_only} lost; {_seed_tests(pr)})")
    return (f"{100 * pr.diff:+.1f} points (paired 95% CI {100 * pr.ci_low:+.1f} to {100 * pr.ci_high:+.1f}, exact "
            f"McNemar {_p(pr.p_value)}, n = {pr.n}; {_count(pr.a_only, 'problem')} gained, {pr.b_only} lost)")


def _unit(r: pd.Series) -> str:
    return f"{r['Device kind']}-hours" if isinstance(r["Device kind"], str) else "device-hours"


def steps_text(t: pd.DataFrame, key: str) -> str | None:
    """A row's optimizer steps as a sentence states them: one run's count, or for a method's mean of seeds the
    seeds' range ("32-37"; a mean of 34.5 steps is no run's count); None when not recorded."""
    seeds = [v for k in t.index if k.startswith(f"{key}-seed") and _ok(v := t.loc[k, "Steps"])]
    if len(seeds) > 1 and min(seeds) != max(seeds):
        return f"{min(seeds):.0f}-{max(seeds):.0f}"
    value = seeds[0] if seeds else t.loc[key, "Steps"] if key in t.index else None
    return f"{value:.0f}" if _ok(value) else None


def _hours(t: pd.DataFrame, key: str) -> str:
    r = t.loc[key]
    steps = f" over {n} steps" if (n := steps_text(t, key)) else ""
    return f"{r['Device hours']:.3g} {_unit(r)}{steps}" if _ok(r["Device hours"]) else "device time not recorded"


def _status_line(info: RunInfo) -> str | None:
    name = info.name
    if info.status == "not run":
        return f"{name} was not run."
    if info.status == "failed":
        return f"{name} failed ({info.summary.get('error', 'no error recorded')}); its row shows its last eval point."
    if info.status in ("incomplete", "unreadable"):
        return f"{name} is {info.status} (no usable summary.json); its row shows its last eval point."
    s = info.summary
    if s.get("did_not_train"):
        return f"{name} did not train: {s['did_not_train']}; its row is the untrained model, not a result."
    if s.get("flags"):
        return f"{name}: " + "; ".join(s["flags"]) + "."
    return None


def short_paired(pr: stats.Paired) -> str:
    """'+4.0 points (p = 0.012; 12 gained, 4 lost)': a paired difference in a sentence that lists several
    (with seeds: the sign test over problems, problems gained / lost on a majority of seeds)."""
    if pr.seeds > 1:
        return (f"{100 * pr.diff:+.1f} points (95% CI {100 * pr.ci_low:+.1f} to {100 * pr.ci_high:+.1f}, sign test "
                f"over problems {_p(pr.p_value)}; {pr.a_only} problems gained on a majority of seeds, {pr.b_only} "
                f"lost; {_seed_tests(pr)})")
    return f"{100 * pr.diff:+.1f} points ({_p(pr.p_value)}; {pr.a_only} gained, {pr.b_only} lost)"


DECISION_RULE = ("How to read it: a difference counts only when the exact McNemar test on the problems where exactly "
                 f"one of the two models is right gives p < {ALPHA} (exact at any number of problems); for the primary "
                 "comparisons declared in the params (evaluation.comparisons) that p is Holm-adjusted for their number. "
                 "With several training seeds the problem stays the unit (a problem's seeds are not independent "
                 "draws): the test is the exact sign test over problems on each problem's mean difference over the "
                 "seeds, the difference must also keep its sign over the 95% interval of a bootstrap that resamples "
                 "problems with all their seeds, counts are problems gained or lost on a majority of seeds, and each "
                 "seed's own McNemar p is given beside. The paired-bootstrap "
                 "interval otherwise shows the size only: with few discordant problems it can exclude zero while the "
                 "exact test cannot tell the difference from noise.")


def _decisive(col: Collected, primary: dict, key: str, base: str, pr: stats.Paired) -> bool:
    """Whether a paired difference counts: (Holm-adjusted, if primary: ``primary`` is
    :func:`primary_tests`) p < alpha, and with several seeds a cluster-bootstrap interval (problems
    resampled with their seeds) that excludes zero."""
    p = primary.get((key, base), (None, pr.p_value))[1]
    seeded = key in col.seeds or base in col.seeds
    return p < ALPHA and (not seeded or pr.ci_low > 0 or pr.ci_high < 0)


def answer_runs(col: Collected) -> tuple[list[str], bool]:
    """The runs the answer is about, and whether they train their own student: those that train the shared
    student, where any has a test result paired with it; else (every method that trained brings its own
    student, as params/study_cross.yaml's two cross-tokenizer arms do) those, each against its own untrained
    row. The title, the lead, the baseline sentence and the power sentence all name this student. A profile
    where a shared-student method ran stays about the shared student even if that run failed."""
    own = own_student_page(col)
    runs = [k for k in (own_student_runs(col) if own else shared_student_runs(col)) if paired_vs(col, k) is not None]
    return runs, own and bool(runs)


def own_students(col: Collected, keys: list[str], role: str = "student") -> list[str]:
    """The distinct models (``role``: student or teacher) the runs ``keys`` train with their own student."""
    return list(dict.fromkeys(m for k in keys if (m := own_model(col.runs[k], role))))


def _whose(col: Collected, runs: list[str], own: bool) -> str:
    """Whose test accuracy the lead is about: the shared student, or the one model the methods train."""
    if not own:
        return "the student's"
    models = own_students(col, runs)
    return f"{models[0]}'s" if len(models) == 1 else "its own student's"


def _ordered(primary: dict, a: str, b: str) -> tuple[str, str]:
    """A pair of methods in the order the params declare it (evaluation.comparisons; ``primary`` is
    :func:`primary_tests`), else as given."""
    return (b, a) if (b, a) in primary and (a, b) not in primary else (a, b)


def _lead(col: Collected, t: pd.DataFrame) -> list[str]:
    """The answer: the method that changed the student's test accuracy most (or that none did), the other
    methods against the untrained student in one sentence, the methods against each other (and compute to
    match) in one sentence, every comparison paired on the same test problems; then one sentence per
    method on whether its validation curve flattened (report/plateau.py)."""
    runs, own = answer_runs(col)
    results = [(k, pr) for k in runs if (pr := paired_vs(col, k)) is not None]
    if not results:
        return ["No trained method has a test evaluation paired with the untrained student's yet."]
    whose = _whose(col, runs, own)
    hacked = {k for k, _ in results if hacking_flag(col, k)}  # its accuracy is not presented as a gain
    primary = primary_tests(col)
    decisive = {k for k, pr in results if _decisive(col, primary, k, untrained_row(col, k), pr)}  # own row's Holm p
    sig = [(k, pr) for k, pr in results if k in decisive and pr.diff > 0 and k not in hacked]
    worse = [(k, pr) for k, pr in results if k in decisive and pr.diff < 0]
    lead = max(sig, key=lambda kp: kp[1].diff)[0] if sig else None
    out = []
    if lead is not None:
        pr = dict(results)[lead]
        out.append(f"**{col.runs[lead].name} improved {whose} test accuracy by {paired_text(pr)}**, from "
                   f"{pct(pr.acc_b)} to {pct(pr.acc_a)}, at {_hours(t, lead)}.")
    else:
        out.append(f"**No method changed {whose} test accuracy by more than this run can distinguish "
                   f"from noise** (paired, exact McNemar p >= {ALPHA}).")
    others = []
    for k, pr in results:
        if k == lead:
            continue
        name = col.runs[k].name
        if k in hacked:
            others.append(f"**{name}: {hacking_flag(col, k)}**, so its accuracy change ({100 * pr.diff:+.1f} points) "
                          "is not a gain")
            continue
        verdict = "improved it by" if (k, pr) in sig else "lowered it by" if (k, pr) in worse else "changed it by"
        others.append(f"{name} {verdict} {short_paired(pr)} at {_hours(t, k)}")
    if others:  # the verdicts read as one paragraph
        out[0] += " " + "; ".join(others) + "."
    methods = [k for k, _ in results if col.runs[k].key == col.runs[k].method]
    pairs = [f"{col.runs[a].name} minus {col.runs[b].name} on the same test problems: {short_paired(pr)}"
             + ("" if _decisive(col, primary, a, b, pr) else ", not distinguishable")
             for a, b in (_ordered(primary, *ab) for ab in itertools.combinations(methods, 2))
             if (pr := paired_vs(col, a, b)) is not None]
    unit = _unit(t.loc[methods[0]]) if methods else "device-hours"
    matches = [efficiency.match_text(col, m, unit) for a, b in itertools.permutations(methods, 2)
               if (m := efficiency.compute_to_match(col, a, b)) is not None]
    if pairs:
        out.append("; ".join(pairs) + ".")
    if matches:  # a paragraph of its own, one sentence per ordered pair of methods
        out.append("Compute to match: " + " ".join(f"{x[0].upper()}{x[1:]}." for x in matches))
    if flat := plateau.plateau_sentences(col, methods):  # whether each curve flattened, said either way
        out.append(" ".join(f"{x}." for x in flat))
    return out


def _answer_pair(col: Collected) -> tuple[str, str, stats.Paired, float, bool] | None:
    """The comparison that answers the question: the first primary method-vs-method comparison declared in
    the params (evaluation.comparisons, Holm-adjusted p), else the first two methods on one student."""
    primary = primary_tests(col)
    for (a, b), (pr, p) in primary.items():
        if b != untrained_row(col, a) and a in col.runs and b in col.runs:
            return a, b, pr, p, _decisive(col, primary, a, b, pr)
    methods = shared_student_runs(col, methods_only=True)
    for a, b in itertools.combinations(methods, 2):
        if (pr := paired_vs(col, a, b)) is not None:
            return a, b, pr, pr.p_value, _decisive(col, primary, a, b, pr)
    return None


def first_screen(col: Collected) -> str:
    """What a reader sees before the key table, in at most ~40 words (the title and the page links take
    the rest of the first screen's 60): each method's test accuracy untrained -> trained with its 95%
    interval, the comparison that answers the question, and the decision rule; the detail follows the table.
    Names are the registry's short ``name`` (:func:`atlas_lib.report.table.row_name`), numbers the table's."""
    t = results_table(col)
    parts, seeded = [], False
    for k, info in col.runs.items():
        if info.key != info.method or k not in t.index or not _ok(t.loc[k, "Accuracy"]):
            continue
        r, base = t.loc[k], untrained_row(col, k)
        if base not in t.index or not _ok(t.loc[base, "Accuracy"]):
            continue
        seeded |= k in col.seeds
        ci = f" [{100 * r['CI low']:.1f}–{100 * r['CI high']:.1f}]" if _ok(r["CI low"]) and _ok(r["CI high"]) else ""
        flag = (" (flagged below)" if isinstance(r.get("Hacking flag"), str) else
                " (did not train)" if str(r["Status"]).startswith("did not train") else "")
        parts.append(f"{info.name} {pct(t.loc[base, 'Accuracy'])} → {pct(r['Accuracy'])}{ci}{flag}")
    if not parts:
        return "No trained method has a test evaluation yet: the table shows what ran."
    out = [("Test accuracy" + (", mean of seeds" if seeded else "") + ", untrained → trained [95% CI]: "
            + "; ".join(parts) + ".")]
    if (pair := _answer_pair(col)) is not None:
        a, b, pr, p, decisive = pair
        out.append(f"**{col.runs[a].name} − {col.runs[b].name}: {100 * pr.diff:+.1f} points [{100 * pr.ci_low:+.1f}, "
                   f"{100 * pr.ci_high:+.1f}], {_p(p)}**" + (" (Holm)" if (a, b) in primary_tests(col) else "")
                   + (": a difference." if decisive else ": not a difference."))
    out.append(f"Rule: a difference counts if p < {ALPHA}.")
    return " ".join(out)


def same_as_first(col: Collected, key: str) -> bool:
    """Whether a further seed's run trained with the same LoRA settings as its method's first seed."""
    first = col.runs.get(col.runs[key].method)
    return first is not None and lora_text(first.summary, first.method) == lora_text(col.runs[key].summary,
                                                                                      col.runs[key].method)


def shared_settings(col: Collected) -> list[str]:
    """How the runs trained, one line per distinct setting (the seeds and methods that share LoRA settings
    share a line, instead of one identical line each)."""
    by_text: dict[str, list[str]] = {}
    for k, info in col.runs.items():
        text = lora_text(info.summary, info.method)
        seeds = [run for _, run in col.seeds.get(k, [])]
        same = all(lora_text(col.runs[r].summary, col.runs[r].method) == text for r in seeds if r in col.runs)
        if text is None or (further_seed(col, k) and same_as_first(col, k)):
            continue  # a further seed that trained like its method's first seed is in that line
        by_text.setdefault(text, []).append(info.name + (f" (all {len(seeds)} seeds)" if len(seeds) > 1 and same else ""))
    return [f"{', '.join(names[:-1]) + ' and ' + names[-1] if len(names) > 1 else names[0]} trained {text}."
            for text, names in by_text.items()]


def headline(col: Collected, params, subtitle: bool = True) -> str:
    """The report's title, naming the comparison: methods, student, teacher; with ``subtitle`` the setting
    (task, profile, steps, device) as a second line (the report shows it below the key table)."""
    t = results_table(col)
    names = [i.name for k, i in col.runs.items() if i.key == i.method and i.status != "not run"]
    what = ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else (names[0] if names else "No method")
    task = params.data.task if params.data.source == "reasoning_gym" else params.data.source
    steps = "; ".join(f"{i.name} {n} steps" for k, i in col.runs.items()
                      if k in t.index and i.key == i.method and (n := steps_text(t, k)))
    n = t.loc["student", "n"] if "student" in t.index and _ok(t.loc["student", "n"]) else None
    sub = [f"{n:.0f} held-out test problems" if n else None, steps or None,
           f"device: {t['Device kind'].dropna().iloc[0]}" if t["Device kind"].notna().any() else None]
    runs, own = answer_runs(col)
    student = (", ".join(own_students(col, runs)) or "each method's own") if own else params.models.student
    teacher = ", ".join(own_students(col, runs, "teacher")) if own else params.models.teacher
    title = f"# {what}: student {student}, teacher {teacher or params.models.teacher}"
    return title + (f"\n\n*Task {task}, profile `{params.name}`: " + "; ".join(x for x in sub if x) + ".*"
                    if subtitle else "")


def setting(col: Collected, params) -> str:
    """The headline's second line alone (task, profile, problems, steps, device), for below the key table."""
    return headline(col, params).split("\n\n", 1)[1]


def mde_sentence(col: Collected) -> str | None:
    """The smallest paired difference this run's n can detect (80% power, two-sided 5%), from one seed's
    discordance (a seed pair's discordant share of problems, the mean over seeds: pooling the seeds would
    count a problem once per seed) at one seed's n."""
    runs, own = answer_runs(col)
    base = col.correct.get(untrained_row(col, runs[0]) if own else "student")
    if not base:
        return None
    n = len(base)
    found = [pr for k in runs if (pr := paired_vs(col, k)) is not None]
    discord = [pr.discordance for pr in found if math.isfinite(pr.discordance)]
    if discord and max(discord) > 0:
        q = max(discord)
        seeded = any(pr.seeds > 1 for pr in found)
        how = (f"the discordance one seed shows here ({100 * q:.0f}% of problems" + (", the mean over seeds)"
                                                                                     if seeded else ")"))
    else:
        acc = sum(base.values()) / n
        q = 2 * acc * (1 - acc)
        how = (f"independent errors at the untrained accuracy of {own_model(col.runs[runs[0]]) or 'its student'}"
               if own else "independent errors at the student's accuracy")
    mde = stats.min_detectable_difference(n, q)
    # 80% power is not the significance threshold: a smaller observed difference can reach p < 0.05, so the
    # sentence says what is usually missed, not what cannot be significant
    return (f"Power: with n = {n} test problems and {how}, the smallest paired difference detectable with 80% "
            f"power at 5% is about {100 * mde:.1f} points" + (" for one seed (the test over problems averages the "
            "seeds)" if any(pr.seeds > 1 for pr in found) else "") + "; a smaller true difference can reach "
            "p < 0.05 but is more often missed.")


def audit_sentence(col: Collected, t: pd.DataFrame) -> str | None:
    """The answer-form audit of every row that has one (evaluation.audit)."""
    def share(k, c):
        return pct(t.loc[k, c]) if c in t.columns and _ok(t.loc[k, c]) else "—"

    parts = [f"{row_name(col, k, t.loc[k])} {share(k, PLAIN_COL)} / {share(k, CUT_COL)}"
             f" / {pct(t.loc[k, RESTATE_COL])}" for k in t.index
             if (k in col.audits or k in col.seeds) and _ok(t.loc[k, RESTATE_COL]) and t.loc[k, "Row kind"] != "seed"]
    if not parts:
        return None
    return ("Answer-form audit on the test split (credited answers that state a plain value / credited answers "
            "cut at the token budget, credited only from a complete final-answer marker / completions whose "
            "final answer restates the question's arithmetic): " + "; ".join(parts) + ".")


def run_name(col: Collected, key: str) -> str:
    """One run's own name in a sentence about that run alone: the first seed of a method trained at several
    seeds keeps the method's key and plain name (which the table gives its mean row), so it is named
    with its seed here, like the others ("GRPO (seed 42)")."""
    name = col.runs[key].name
    pairs = col.seeds.get(key, ())
    first = [s for s, k in pairs if k == key]
    return f"{name} (seed {first[0]})" if len(pairs) > 1 and first else name


def signal_sentence(info: RunInfo, name: str | None = None) -> str | None:
    """How many GRPO steps and groups carried a learning signal (reward variance within the group); ``name``:
    the run's name where it differs from ``info.name`` (the first seed of several, see :func:`run_name`)."""
    tr = info.train
    if info.status != "complete" or not len(tr) or "frac_zero_std" not in tr:
        return None
    z = tr["frac_zero_std"].dropna()
    if not len(z):
        return None
    dead = int((z >= 1.0).sum())
    return (f"{name or info.name}: {dead} of {len(z)} logged steps ({100 * dead / len(z):.0f}%) and {100 * z.mean():.0f}% of "
            "groups carried no learning signal (every rollout of the group equally rewarded).")


def _compute_sentence(col: Collected) -> str:
    """What the compute column counts (training alone, evaluation measured apart), how compute to match is
    read, and that every test row is the final model."""
    n_val = efficiency.validation_n(col)
    text = ("Compute is training compute (the ledger: sampling, teacher scoring and optimisation; evaluation "
            "measured apart). Compute to match reads each method's validation curve (n = "
            f"{n_val:.0f}) against the other's final validation accuracy, only where the other improved on the "
            "untrained student by more than the validation split's 95% resolution between two eval points "
            "(1.96 x sqrt((p0(1-p0) + p1(1-p1))/n)). " if n_val else "Compute is training "
            "compute (sampling, teacher scoring and optimisation; evaluation measured apart). ")
    return text + ("Every test row is the final model: no peak checkpoint is reported" + (
        f" (the validation split, n = {n_val:.0f}, is too small to choose one)." if n_val and n_val < 100 else "."))


def _baseline_sentence(col: Collected, t: pd.DataFrame) -> str:
    """The untrained student's and the teacher's test accuracy, or that they were not evaluated. Where the
    methods train their own student (:func:`answer_runs`), that student is named with its untrained row, and
    the shared student row is said to be a reference that no method trains."""
    s, te = t.loc["student"], t.loc["teacher"]
    runs, own = answer_runs(col)
    if own:
        groups: dict[tuple, list[str]] = {}  # runs whose untrained rows are one model at one accuracy share a clause
        for k in runs:
            pre = untrained_row(col, k)
            if pre in t.index and _ok(t.loc[pre, "Accuracy"]):
                groups.setdefault((own_model(col.runs[k]), t.loc[pre, "Accuracy"], t.loc[pre, "n"]), []).append(k)
        parts = []
        for (model, _, _), (k, *also) in groups.items():
            pre = untrained_row(col, k)
            parts.append(f"{row_name(col, pre, t.loc[pre])}, {model or 'its own student'}"
                         + (f" (also {' and '.join(col.runs[r].name for r in also)}'s student)" if also else "")
                         + f", scored {_acc(t.loc[pre])}")
        if _ok(te["Accuracy"]):
            parts.insert(0, f"the teacher scored {_acc(te)}")
        shared = str(s["Model / Method"]).split(": ", 1)[-1]
        ref = (f" The untrained student row ({shared}, {_acc(s)}) is the shared student, which no method here "
               "trains." if _ok(s["Accuracy"]) else "")
        return "Before training, " + "; ".join(parts) + ", all on the test split." + ref
    if _ok(s["Accuracy"]) and _ok(te["Accuracy"]):
        return f"Before training, the student scored {_acc(s)} and the teacher {_acc(te)} on the test split."
    return "The pre-distillation student and teacher baselines were not run (notebook 01)."


def _own_student_sentences(col: Collected, seed_runs: set[str]) -> list[str]:
    """Each method that trains its own student, against that student untrained."""
    return [f"{info.name} changed its own student's test accuracy by {paired_text(pr)}."
            for k, info in col.runs.items()
            if info.spec is not None and info.spec.own_student and k not in seed_runs
            and (pr := paired_vs(col, k)) is not None]


def _kl_seeds(col: Collected, t: pd.DataFrame, key: str) -> str:
    """" (seed 42 only)" where the teacher scored some of a method's seeds only (evaluation.kl_seeds)."""
    seeds = [s for s, _ in col.seeds.get(key, [])]
    kls = [t.loc[r, "Mean Reverse KL"] if (r := f"{key}-seed{s}") in t.index else float("nan") for s in seeds]
    scored = kl_scored_seeds(seeds, kls)
    return f" (seed {', '.join(map(str, scored))} only)" if scored else ""


def _move_sentences(col: Collected, t: pd.DataFrame, seed_runs: set[str]) -> list[str]:
    """Mean generated tokens and mean reverse KL, untrained student -> trained, for the methods that train
    the shared student (same tokenizer as the teacher)."""
    runs, s = col.runs, t.loc["student"]
    shared = [k for k in runs if (runs[k].spec is None or not runs[k].spec.own_student) and k not in seed_runs]
    out = []
    moves = [f"{runs[k].name} {s['Avg Generated Tokens']:.1f} → {t.loc[k, 'Avg Generated Tokens']:.1f}"
             for k in shared if k in t.index and _ok(s["Avg Generated Tokens"])
             and _ok(t.loc[k, "Avg Generated Tokens"])]
    if moves:
        out.append("Mean generated tokens on the test split (untrained student → trained): " + "; ".join(moves) + ".")
    kls = [f"{runs[k].name} {s['Mean Reverse KL']:.3f} → {t.loc[k, 'Mean Reverse KL']:.3f}{_kl_seeds(col, t, k)}"
           for k in shared if k in t.index and _ok(s["Mean Reverse KL"]) and _ok(t.loc[k, "Mean Reverse KL"])]
    if kls:
        out.append("Mean reverse KL to the teacher on the test split (nats/token, same tokenizer): "
                   + "; ".join(kls) + ".")
    return out


def _old_logratio_rule(t: pd.DataFrame, k: str) -> bool:
    """Whether row ``k`` was scored before the stop token counted (table.OLD_LOGRATIO): never mixed in silently."""
    rule = t.loc[k, LOGRATIO_RULE] if LOGRATIO_RULE in t.columns else 1
    return _ok(rule) and rule < LOGRATIO_VERSION and t.loc[k, LOGRATIO_COL] != 0


def _logratio_sentence(col: Collected, t: pd.DataFrame) -> str | None:
    """The sequence log-ratio to the teacher, the divergence every row shares whatever its tokenizer."""
    ratios = [f"{row_name(col, k, t.loc[k])} {t.loc[k, LOGRATIO_COL]:.3f}"
              + (" (old rule: stop token left out)" if _old_logratio_rule(t, k) else "") for k in t.index
              if t.loc[k, "Row kind"] != "seed" and _ok(t.loc[k, LOGRATIO_COL])]
    if not ratios:
        return None
    return ("Divergence to the teacher that every row shares, whatever its tokenizer (the sequence log-ratio "
            "log p_student(answer) - log p_teacher(answer) per character of the test answer, its stop token "
            "counted when it finished; 0 = the teacher would write it as readily). It is one greedy answer "
            "per problem, not an expectation, and each row is scored on its own text: "
            + "; ".join(ratios) + ".")


def _aligned_sentences(col: Collected, t: pd.DataFrame) -> list[str]:
    """Each own-student method's aligned span divergence, its untrained student -> trained."""
    out = []
    for k, info in col.runs.items():
        pre = f"{k}_pre"
        if pre in t.index and _ok(t.loc[pre, ALIGNED_COL]) and _ok(t.loc[k, ALIGNED_COL]):
            out.append(f"{info.name}: its student's aligned span divergence went {t.loc[pre, ALIGNED_COL]:.3f} → "
                       f"{t.loc[k, ALIGNED_COL]:.3f} (a different quantity from reverse KL; not comparable).")
    return out


def _objective_answers(col: Collected, key: str) -> str:
    """'50 of the 200 ' where a row's own objective was computed on part of its test answers (GOLD's, whose
    held-out scoring runs TRL's loss an answer at a time), else 'the '."""
    scored, n = col.objective_n.get(key, (0, 0))
    return f"{scored} of the {n} " if 0 < scored < n else "the "


def _objective_sentences(col: Collected, t: pd.DataFrame) -> list[str]:
    """What each distilling method minimised, on the test answers, before -> after training."""
    out = []
    for k, info in col.runs.items():
        pre = f"{k}_pre"
        o0 = t.loc[pre, OBJECTIVE_COL] if pre in t.index else (info.summary.get("initial") or {}).get("heldout_objective")
        o1 = t.loc[k, OBJECTIVE_COL] if k in t.index else None
        if _ok(o0) and _ok(o1):
            out.append(f"{info.name}: its own objective ({info.spec.loss_title if info.spec else 'its loss'}) on "
                       f"{_objective_answers(col, k)}test answers went {o0:.4f} → {o1:.4f}"
                       + (" (it went up: training did not lower what it minimises on held-out answers)." if o1 > o0
                          else "."))
    return out


def split_findings(md: str) -> tuple[str, list[str]]:
    """:func:`findings`' Markdown as (the answer's paragraphs, the context list's items)."""
    answer, _, context = md.partition("\n\n- ")
    return answer, [x.removeprefix("- ") for x in ("- " + context).split("\n")] if context else []


def findings(col: Collected) -> str:
    """Markdown that states what the collected numbers show: the answer as paragraphs (each method against
    the untrained student, the methods against each other, the compute to match, whether the curves
    flattened), then the context as a list (what did not train, baselines, tokens, KL, power, which split
    is which); :func:`split_findings` separates the two."""
    t = results_table(col)
    runs = col.runs
    lines = _lead(col, t)
    n_answer = len(lines)  # the answer reads as one paragraph (_lead's sentences); the context as a list
    lines.append(DECISION_RULE)
    lines.append(_compute_sentence(col))
    lines += [line for info in runs.values() if (line := _status_line(info))]
    lines += shared_settings(col)
    lines.append(_baseline_sentence(col, t))
    lines += controls.control_sentences(col, t)
    seed_runs = {k for k in runs if further_seed(col, k)}  # in their method's mean row
    if not own_student_page(col):  # where the answer is about the methods' own student, it holds these
        lines += _own_student_sentences(col, seed_runs)
    lines += _move_sentences(col, t, seed_runs)
    if (ratios := _logratio_sentence(col, t)) is not None:
        lines.append(ratios)
    lines += _aligned_sentences(col, t)
    lines += _objective_sentences(col, t)
    if (a := audit_sentence(col, t)) is not None:
        lines.append(a)
    lines += [text for key, info in runs.items() if (text := signal_sentence(info, run_name(col, key)))]
    if (m := mde_sentence(col)) is not None:
        lines.append(m)
    lines.append("Table rows are the test split; training curves are the validation split and end at the trained "
                 "model's test point.")
    # the answer: a paragraph each for the verdicts, the methods against each other, compute to match and the curves
    return "\n\n".join(lines[:n_answer]) + "\n\n" + "\n".join(f"- {line}" for line in lines[n_answer:])
