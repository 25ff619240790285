"""Markdown tables and plots of a suite folder, its headline numbers for ``wavedistill report``, and the
tables that set several runs' suites side by side (``wavedistill report --suite``)."""

from __future__ import annotations

import json
import os

from .harness import paired_difference

SUITE = "suite.json"

LABELS = {"teacher": "teacher", "no_mixing": "no mixing", "student": "student"}


def _pm(e: dict | None, digits: int = 3) -> str:
    """``value ± se`` of an estimate record; — when absent."""
    if not e:
        return "—"
    se = e.get("se")
    return f"{e['value']:.{digits}f}" + (f" ± {se:.{digits}f}" if se == se and se is not None else "")


def recall_markdown(r: dict) -> list[str]:
    ind, cp, rep = r["induction"], r["copy_positions"], r["repeated_passages"]
    Ls = list(ind["lengths"])
    out = [f"### Induction: {ind['sequences']} sequences of L random tokens repeated once",
           f"Top-1 accuracy on tokens 2..L of the second copy (tokens drawn from {ind['tokens_drawn_from']}; chance "
           f"{ind['chance']:.4f})" + (f"; L = {', '.join(map(str, ind['skipped_lengths']))} does not fit the context"
                                      if ind["skipped_lengths"] else "") + ".\n",
           "| model | " + " | ".join(f"L = {L}" for L in Ls) + " |", "|---|" + "---:|" * len(Ls)]
    for n in ind["lengths"][Ls[0]]:
        out.append(f"| {LABELS[n]} | " + " | ".join(_pm(ind["lengths"][L][n]["accuracy"]) for L in Ls) + " |")
    buckets = cp["buckets"]
    out += ["", f"### Copy positions: {cp['windows']} held-out windows of {cp['seq_len']} tokens",
            "Top-1 agreement with the teacher over all positions, and over the positions whose teacher top-1 token "
            f"occurs earlier in the window ({_pm(cp['shares']['copy'])} of all), by the distance back to its last "
            "occurrence"]
    if "needs_context" in cp["shares"]:
        out[-1] += (f"; below them, the copies that need the context: the no-mixing baseline predicts another "
                    f"token ({_pm(cp['shares']['needs_context'])} of all positions)")
    out[-1] += ". Standard errors over windows.\n"
    out += ["| model | selection | all positions | " + " | ".join(f"distance {b}" for b in buckets) + " |",
            "|---|---|" + "---:|" * (1 + len(buckets))]
    for sel in cp["shares"]:
        rows = cp[f"agreement_{sel}"]
        for n, row in rows.items():
            first = _pm(cp["agreement_all"][n]) if sel == "copy" else ""
            out.append(f"| {LABELS[n]} | {sel.replace('_', ' ')} | {first} | "
                       + " | ".join(_pm(row[b]) for b in buckets) + " |")
        out.append(f"| positions | {sel.replace('_', ' ')} | {cp['agreement_all'][n]['n'] if sel == 'copy' else ''} | "
                   + " | ".join(f"{next(iter(rows.values()))[b]['n']:,}" for b in buckets) + " |")
    Ls = list(rep["lengths"])
    n_pass = {L: next(iter(rep["lengths"][L].values()))["gain"]["n"] for L in Ls}
    out += ["", "### Repeated held-out passages",
            "Top-1 accuracy (true next token) on tokens 2..L of the first copy → the second copy, and the gain "
            "(± its standard error over passages)" + (f"; L = {', '.join(map(str, rep['skipped_lengths']))} does not "
                                                       "fit the context" if rep["skipped_lengths"] else "") + ".\n",
            "| model | " + " | ".join(f"L = {L} ({n_pass[L]} passages)" for L in Ls) + " |", "|---|" + "---:|" * len(Ls)]
    for n in rep["lengths"][Ls[0]]:
        cells = [rep["lengths"][L][n] for L in Ls]
        out.append(f"| {LABELS[n]} | " + " | ".join(
            f"{c['first']['value']:.3f} → {c['second']['value']:.3f} ({c['gain']['value']:+.3f} ± {c['gain']['se']:.3f})"
            for c in cells) + " |")
    pk = r["passkey"]
    for form, row in pk["forms"].items():
        Fs = list(row["fillers"])
        out += ["", f"### Passkey ({form} form): {pk['trials']} trials per filler length",
                f"How often the stated key is the likeliest of {round(1 / pk['chance'])} candidates after F held-out "
                f"tokens of filler (chance {pk['chance']:.2f})" + (f"; F = {', '.join(map(str, row['skipped_fillers']))}"
                                                                    " does not fit the context"
                                                                    if row["skipped_fillers"] else "") + ".\n",
                "| model | " + " | ".join(f"F = {F}" for F in Fs) + " |", "|---|" + "---:|" * len(Fs)]
        for n in row["fillers"][Fs[0]]:
            out.append(f"| {LABELS[n]} | " + " | ".join(_pm(row["fillers"][F][n], 2) for F in Fs) + " |")
    return out


def _decode_cell(dec: dict, who: str, L: str) -> str:
    cell = dec["ms_per_token"].get(who, {}).get(L)
    return f"{cell['median']:.2f} ({cell['min']:.2f}–{cell['max']:.2f})" if cell else "—"


def length_markdown(r: dict) -> list[str]:
    prof, dec = r["profile"], r["decode"]
    ctx = prof["teacher_context"]
    out = [f"Perplexity by position bucket (position p: the prediction from the window's first p tokens); the "
           f"teacher's context is {ctx} tokens, and KL to the teacher is given only inside it. Last column: ms per "
           f"token decoded after a prompt of the window's length (median of {dec['decode_tokens']} steps, min–max, "
           f"{dec['threads']} CPU thread(s)).\n"]
    for L, row in prof["lengths"].items():
        out += [f"**Windows of {L} tokens** ({row['windows']} windows)\n",
                "| model | " + " | ".join(row["buckets"]) + f" | decode ms / token after {L} |",
                "|---|" + "---:|" * (len(row["buckets"]) + 1)]
        for n, cells in row["ppl"].items():
            # ppl = exp(mean loss): its standard error is ppl x the loss's (the delta method)
            out.append(f"| {LABELS[n]} ppl | " + " | ".join(f"{c['value']:.2f} ± {c['value'] * c['se']:.2f}"
                                                           for c in cells) + f" | {_decode_cell(dec, n, L)} |")
        if "kl" in row:
            out.append("| student KL | " + " | ".join(_pm(c) for c in row["kl"]) + " | |")
        out.append("")
    return out


def suite_markdown(suite: dict) -> str:
    ident = suite["identity"]
    held = next(suite[p]["held_out"] for p in ("recall", "length", "lm-eval") if p in suite)
    out = [f"# Evaluation suite: {ident['student']}", "",
           f"Held out: {held['text']}, {held['tokens']:,} tokens"
           + (f"; mixer attributes {ident['mixer_attrs']}" if ident.get("mixer_attrs") else "")
           + ". Every number is on this text; ± is a standard error.", ""]
    if "recall" in suite:
        out += ["## Recall", "", *recall_markdown(suite["recall"]), ""]
    if "length" in suite:
        out += ["## Context length", "", *length_markdown(suite["length"]), ""]
    if "lm-eval" in suite:
        r = suite["lm-eval"]
        counts = ", ".join(f"{k}: {v} examples" for k, v in r["tasks"].items())
        limit = f", lm-eval limit {r['limit']}" if r.get("limit") else ""
        out += ["## lm-eval on tasks from the held-out documents", "",
                f"Tasks made by make-tasks into `tasks/` ({counts}{limit}); lm-eval's JSON per model in `lm_eval/`. "
                f"story_ending chance: {1 / r['choices']:.2f}.", "", r["table"]]
    return "\n".join(out) + "\n"


def headline(suite: dict) -> dict:
    """The few numbers ``wavedistill report`` shows: student (and teacher) on each part's key measure."""
    h = {}
    if "recall" in suite:
        ind = suite["recall"]["induction"]["lengths"]
        L = "64" if "64" in ind else list(ind)[-1]
        h[f"induction acc L={L}"] = ind[L]["student"]["accuracy"]["value"]
        cp = suite["recall"]["copy_positions"]
        far = cp["buckets"][-1]
        h["top-1 all"] = cp["agreement_all"]["student"]["value"]
        sel = "needs_context" if "needs_context" in cp["shares"] else "copy"
        h[f"top-1 {sel.replace('_', ' ')} {far}"] = cp[f"agreement_{sel}"]["student"][far]["value"]
        rep = suite["recall"]["repeated_passages"]["lengths"]
        L = "64" if "64" in rep else list(rep)[0]
        h[f"repeat gain L={L} (teacher)"] = (rep[L]["student"]["gain"]["value"], rep[L]["teacher"]["gain"]["value"])
        name = suite["recall"]["passkey"]["forms"]["name"]["fillers"]
        F = "64" if "64" in name else list(name)[-1]
        h[f"passkey name F={F} (teacher)"] = (name[F]["student"]["value"], name[F]["teacher"]["value"])
    if "length" in suite:
        prof = suite["length"]["profile"]["lengths"]
        L = list(prof)[-1]
        h[f"ppl last bucket L={L} (teacher)"] = (prof[L]["ppl"]["student"][-1]["value"],
                                                  prof[L]["ppl"]["teacher"][-1]["value"])
    if "lm-eval" in suite:
        lm = suite["lm-eval"]["headline"]
        for task, metric in (("story_ending", "acc_norm"), ("final_word", "acc")):
            if task in lm["student"]:
                h[f"{task} {metric} (teacher)"] = (lm["student"][task][metric], lm["teacher"][task][metric])
    return h


def plot_suite(suite: dict, directory: str) -> None:
    """``copy_distance.png`` (agreement vs copy distance) and ``length_ppl.png`` (perplexity vs position)."""
    import matplotlib  # lazy: ~0.8 s of every command's start, only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "recall" in suite:
        cp = suite["recall"]["copy_positions"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        x = range(len(cp["buckets"]))
        for sel, style in zip(cp["shares"], ("-", "--")):
            for n, row in cp[f"agreement_{sel}"].items():
                ax.errorbar(x, [row[b]["value"] for b in cp["buckets"]], yerr=[row[b]["se"] for b in cp["buckets"]],
                            marker="o", capsize=3, linestyle=style, color="C7" if n == "no_mixing" else "C3",
                            label=f"{LABELS[n]}, {sel.replace('_', ' ')}")
        ax.set_xticks(x, [f"distance {b}" for b in cp["buckets"]], fontsize=8)
        ax.set_ylabel("top-1 agreement with the teacher")
        ax.set_title("copy positions by distance to the last occurrence")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "copy_distance.png"), dpi=120)
        plt.close(fig)
    if "length" in suite:
        prof = suite["length"]["profile"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        colors = {"teacher": "C0", "no_mixing": "C7", "student": "C3"}  # colour: the model; line: the window
        styles = ["-", "--", ":", "-."]
        for i, (L, row) in enumerate(prof["lengths"].items()):
            mids = [(int(b.split("-")[0]) + int(b.split("-")[1])) / 2 for b in row["buckets"]]
            for n, cells in row["ppl"].items():
                ax.plot(mids, [c["value"] for c in cells], styles[i % len(styles)], marker="o", color=colors[n],
                        label=f"{LABELS[n]}, windows of {L}")
        if prof["teacher_context"]:
            ax.axvline(prof["teacher_context"], color="gray", alpha=0.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("position in the window (tokens seen)")
        ax.set_ylabel("perplexity")
        ax.set_title("held-out perplexity by position (grey: the teacher's context)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(directory, "length_ppl.png"), dpi=120)
        plt.close(fig)


def load_suite(directory: str) -> dict:
    """{"identity": ..., part: result} of a suite folder (the parts it holds)."""
    with open(os.path.join(directory, SUITE)) as f:
        suite = json.load(f)
    out = {"identity": suite["identity"], "directory": directory}
    for part in suite["parts"]:
        with open(os.path.join(directory, f"{part.replace('-', '_')}.json")) as f:
            out[part] = json.load(f)
    return out


def _fmt(v) -> str:
    if isinstance(v, (tuple, list)):
        return f"{v[0]:.3f} ({v[1]:.3f})"
    return f"{v:.3f}"


def suite_table(run_dirs: list[str]) -> str:
    """One row per run with a suite (``RUN/suite``) or lm-eval results (``RUN/lm_eval``): headline numbers and links."""
    rows = []
    for d in run_dirs:
        folder = os.path.join(d, "suite")
        head = headline(load_suite(folder)) if os.path.isfile(os.path.join(folder, SUITE)) else {}
        links = [p for p in (os.path.join(folder, "suite.md"), os.path.join(d, "lm_eval", "table.md"))
                 if os.path.isfile(p)]
        if links:
            rows.append((os.path.basename(os.path.normpath(d)), head, links))
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for _, head, _ in rows for k in head))
    out = ["Held-out suite, student (teacher):\n", "| run | " + " | ".join(keys) + " | details |",
           "|---|" + "---:|" * len(keys) + "---|"]
    for name, head, links in rows:
        cells = [_fmt(head[k]) if k in head else "—" for k in keys]
        out.append(f"| {name} | " + " | ".join(cells) + " | " + ", ".join(links) + " |")
    return "\n".join(out) + "\n"


def _v(e, digits: int = 3) -> str:
    return "—" if not e else f"{e['value']:.{digits}f}"


def _paired(suite: dict, who: str, task: str, metric: str) -> str:
    """``who`` − teacher on the examples both scored, ± its standard error, from the suite's per-example records."""
    if who == "teacher":
        return "—"
    samples = {}
    for name in ("teacher", who):
        path = os.path.join(suite["directory"], "lm_eval", f"{name}_samples.jsonl")
        with open(path) as f:
            samples[name] = [r for r in map(json.loads, f) if r["task"] == task]
    d = paired_difference(samples["teacher"], samples[who], metric)
    return f"{d[0]:+.3f} ± {d[1]:.3f}" if d else "—"


def suite_comparison(runs: list[tuple[str, dict]]) -> str:
    """Side-by-side tables of several runs' suites: the teacher and no-mixing rows from the first, one student
    row per run (``name``). Each run's suite must have scored the same held-out text."""
    first = runs[0][1]
    out = [f"Held out: {next(first[p]['held_out']['text'] for p in ('recall', 'length', 'lm-eval') if p in first)}."
           " Teacher and no-mixing rows from the first run's suite; ± in each run's suite.md.\n"]
    refs = [("teacher", "teacher", first), ("no mixing", "no_mixing", first)]
    rows = refs + [(name, "student", suite) for name, suite in runs]
    if all("recall" in s for _, s in runs):
        ind, rep = first["recall"]["induction"], first["recall"]["repeated_passages"]
        Li, Lr, buckets = list(ind["lengths"]), list(rep["lengths"]), first["recall"]["copy_positions"]["buckets"]
        what = ("the copies that need the context (teacher's top-1 earlier in the window, the no-mixing baseline "
                "predicting another)" if "needs_context" in first["recall"]["copy_positions"]["shares"]
                else "positions whose teacher top-1 occurs earlier in the window")
        out += [f"**Recall** — induction: top-1 accuracy on the repeated random tokens (chance {ind['chance']:.4f}); "
                f"top-1: agreement with the teacher over all positions, and over {what}, by distance to the last "
                "occurrence; repeat: accuracy gain of the second copy of a held-out passage over the first.\n",
                "| model | " + " | ".join(f"induction L={L}" for L in Li) + " | top-1 all | "
                + " | ".join(f"copy d {b}" for b in buckets) + " | " + " | ".join(f"repeat L={L}" for L in Lr) + " |",
                "|---|" + "---:|" * (len(Li) + 1 + len(buckets) + len(Lr))]
        sel = "needs_context" if "needs_context" in first["recall"]["copy_positions"]["shares"] else "copy"
        for label, who, suite in rows:
            r = suite["recall"]
            cp = r["copy_positions"]
            cells = [_v(r["induction"]["lengths"][L][who]["accuracy"]) for L in Li]
            if who == "teacher":
                cells += ["1"] * (1 + len(buckets))
            else:
                cells += [_v(cp["agreement_all"][who]), *(_v(cp[f"agreement_{sel}"][who][b]) for b in buckets)]
            cells += [f"{r['repeated_passages']['lengths'][L][who]['gain']['value']:+.3f}" for L in Lr]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        pk = first["recall"]["passkey"]
        for form, row in pk["forms"].items():
            Fs = list(row["fillers"])
            out += ["", f"**Passkey, {form} form** ({pk['trials']} trials per filler length F; chance "
                    f"{pk['chance']:.2f})\n", "| model | " + " | ".join(f"F={F}" for F in Fs) + " |",
                    "|---|" + "---:|" * len(Fs)]
            for label, who, suite in rows:
                cells = suite["recall"]["passkey"]["forms"][form]["fillers"]
                out.append(f"| {label} | " + " | ".join(_pm(cells[F][who], 2) for F in Fs) + " |")
        out.append("")
    if all("length" in s for _, s in runs):
        prof = first["length"]["profile"]
        dec = first["length"]["decode"]
        for L, row in prof["lengths"].items():
            out += [f"**Perplexity by position, windows of {L} tokens** (teacher's context {prof['teacher_context']}; "
                    "KL to the teacher in brackets where the teacher is inside its context; last column: ms per token "
                    f"decoded after a prompt of {L}, median of {dec['decode_tokens']} steps, {dec['threads']} "
                    "thread(s))\n",
                    "| model | " + " | ".join(row["buckets"]) + " | decode ms |", "|---|" + "---:|" * (len(row["buckets"]) + 1)]
            for label, who, suite in rows:
                r = suite["length"]["profile"]["lengths"][L]
                cells = [f"{c['value']:.2f}" for c in r["ppl"][who]]
                if who == "student":
                    cells = [c + (f" ({k['value']:.3f})" if k else "") for c, k in zip(cells, r["kl"])]
                cell = suite["length"]["decode"]["ms_per_token"].get(who, {}).get(L)
                cells.append(f"{cell['median']:.2f}" if cell else "—")
                out.append(f"| {label} | " + " | ".join(cells) + " |")
            out.append("")
    if all("lm-eval" in s for _, s in runs):
        keys = [("story_ending", "acc"), ("story_ending", "acc_norm"), ("final_word", "acc"),
                ("final_word", "perplexity")]
        n = {t: first["lm-eval"]["headline"]["teacher"][t]["n"] for t, _ in keys}
        out += [f"**lm-eval** on tasks from the held-out documents (story_ending: {n['story_ending']} examples, "
                f"chance {1 / first['lm-eval']['choices']:.2f}; final_word: {n['final_word']}); ± lm-eval's "
                "standard error\n",
                "| model | " + " | ".join(f"{t} {m}" for t, m in keys) + " |", "|---|" + "---:|" * len(keys)]
        paired = [("story_ending", "acc_norm"), ("final_word", "acc")]
        out[-2] += "".join(f" {t} {m} − teacher (paired) |" for t, m in paired)
        out[-1] += "---:|" * len(paired)
        for label, who, suite in rows:
            h = suite["lm-eval"]["headline"][who]
            cells = [f"{h[t][m]:.3f} ± {h[t][m + '_stderr']:.3f}" if m != "perplexity" else f"{h[t][m]:.2f}"
                     for t, m in keys]
            cells += [_paired(suite, who, t, m) for t, m in paired]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)
