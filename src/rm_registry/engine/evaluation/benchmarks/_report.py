"""What a benchmark run leaves behind: the terminal table, ``results.json``, ``per_example.jsonl``
and ``report.html`` (one self-contained page, charts embedded as PNG, readable offline), and the
side-by-side comparison of several results folders (``evaluate --compare``)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Sequence

from ...._errors import ConfigError
from ...checkpoint._fs import check_output_dir, publish_folder
from .. import finite_for_json
from ._spec import BenchmarkRun

__all__ = ["check_results_dir", "compare_results", "format_table", "write_results"]

RESULTS, PER_EXAMPLE, REPORT, COMPARISON = "results.json", "per_example.jsonl", "report.html", "comparison.json"


def check_results_dir(path: Path) -> None:
    """Refuse an output folder that exists and is not empty, or cannot be created (before scoring)."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(f"--output {path}: exists and is not an empty folder; give a new folder for the results")
    check_output_dir(path)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_table(results: dict[str, Any]) -> str:
    """The terminal table: section, subset, n, score; then the headline score, notes and flags."""
    rows = results["table"]
    w1 = max([len("section")] + [len(str(r["section"])) for r in rows])
    w2 = max([len("subset")] + [len(str(r["subset"])) for r in rows])
    lines = [f"{'section':<{w1}}  {'subset':<{w2}}  {'n':>6}  score", "-" * (w1 + w2 + 17)]
    for r in rows:
        lines.append(f"{r['section']:<{w1}}  {r['subset']:<{w2}}  {r['n']:>6}  {_fmt(r['score'])}")
    lines.append(f"{results['score_name']}: {_fmt(results['score'])}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    probes = results.get("probes", {})
    swap = probes.get("swap", {})
    if swap.get("flagged"):
        for reason in swap.get("reasons", []):
            lines.append(f"WARNING (swap probe): {reason}")
    lb = probes.get("length_bias", {})
    if lb:
        lines.append(f"length bias: Spearman(reward, length) {_fmt(lb.get('spearman'))}; accuracy when chosen is "
                     f"shorter {_fmt(lb['chosen_shorter']['accuracy'])} (n={lb['chosen_shorter']['n']}), longer "
                     f"{_fmt(lb['chosen_longer']['accuracy'])} (n={lb['chosen_longer']['n']})")
    dist = probes.get("rewards", {}).get("all", {})
    if dist.get("n"):
        lines.append(f"rewards: mean {_fmt(dist['mean'])}, std {_fmt(dist['std'])}, median {_fmt(dist['q50'])}, "
                     f"5%-95% {_fmt(dist['q05'])} to {_fmt(dist['q95'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- charts

def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _bars(labels: Sequence[str], series: dict[str, Sequence[float | None]], title: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 1.1 * len(labels) * max(1, len(series)) ** 0.5 + 2), 3.4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    for n, (name, values) in enumerate(series.items()):
        xs = [i + (n - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width=width, label=name)
        for b, v in zip(bars, values):
            ax.annotate(_fmt(v)[:5] if v is not None else "n/a", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score")
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def _histograms(chosen: list[float], rejected: list[float]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    values = chosen + rejected
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    bins = [lo + (hi - lo) * i / 40 for i in range(41)] if hi > lo else 10
    ax.hist(chosen, bins=bins, alpha=0.55, label=f"chosen (n={len(chosen)})")
    ax.hist(rejected, bins=bins, alpha=0.55, label=f"rejected (n={len(rejected)})")
    ax.set_xlabel("reward")
    ax.set_ylabel("responses")
    ax.set_title("rewards of chosen and rejected responses")
    ax.legend(fontsize=8)
    return _png(fig)


def _length_plot(points: dict[str, tuple[list[int], list[float]]]) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2))
    ax = fig.add_subplot()
    for name, (xs, ys) in points.items():
        ax.scatter(xs, ys, s=6, alpha=0.5, label=name)
    ax.set_xscale("symlog")
    ax.set_xlabel("response length (characters)")
    ax.set_ylabel("reward")
    ax.set_title("reward against response length")
    ax.legend(fontsize=8)
    return _png(fig)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.flag{color:#b00;font-weight:bold}
img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4;padding:1px 4px}"""

_CHECK = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-rendered', String(ok));
});
</script>"""


def _page(title: str, body: list[str]) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + f"\n{_CHECK}\n</body></html>\n")


def _img(data: str, alt: str, ident: str) -> str:
    return f'<img id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], ident: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{html.escape(_fmt(v))}</td>' if isinstance(v, (int, float)) or v is None
        else f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table id="{ident}"><tr>{head}</tr>{body}</table>'


def render_report(run: BenchmarkRun) -> str:
    """``report.html`` of one run."""
    res = run.results
    labels = list(res["sections"])
    body = [f"<h1>{html.escape(res['benchmark'])}: {html.escape(_fmt(res['score']))}</h1>",
            f"<p>{html.escape(res['score_name'])}. Model <code>{html.escape(res['model']['checkpoint'])}</code> "
            f"({html.escape(res['model']['architecture'])}); data <code>{html.escape(res['data']['path'])}</code>, "
            f"{res['data']['rows']} rows, sha256 {res['data']['sha256'][:16]}...</p>"]
    for note in res.get("notes", []):
        body.append(f"<p>Note: {html.escape(note)}</p>")
    swap = res["probes"]["swap"]
    for reason in swap.get("reasons", []):
        body.append(f'<p class="flag">Swap probe: {html.escape(reason)}</p>')
    body.append("<h2>Scores</h2>")
    body.append(_img(_bars(labels, {"score": [res["sections"][s] for s in labels]}, f"{res['benchmark']} sections"),
                     "section scores", "chart-sections"))
    body.append(_table(["section", "subset", "n", "score"],
                       [[r["section"], r["subset"], r["n"], r["score"]] for r in res["table"]], "table-subsets"))
    chosen = [v for e in run.per_example for v in e["rewards_chosen"]]
    rejected = [v for e in run.per_example for v in e["rewards_rejected"]]
    body.append("<h2>Rewards</h2>")
    body.append(_img(_histograms(chosen, rejected), "reward histograms", "chart-histogram"))
    dist = res["probes"]["rewards"]
    keys = [k for k in dist["all"] if k != "n"]
    body.append(_table(["responses", "n", *keys], [[name, d.get("n"), *[d.get(k) for k in keys]]
                                                    for name, d in dist.items()], "table-distribution"))
    body.append("<h2>Length</h2>")
    points = {side: ([n for row in run.lengths.get(side, []) for n in row], values)
              for side, values in (("chosen", chosen), ("rejected", rejected))}
    body.append(_img(_length_plot(points), "reward against length", "chart-length"))
    lb = res["probes"]["length_bias"]
    body.append(_table(["probe", "value"], [
        ["Pearson(reward, length)", lb["pearson"]], ["Spearman(reward, length)", lb["spearman"]],
        ["accuracy, chosen shorter", lb["chosen_shorter"]["accuracy"]], ["pairs, chosen shorter", lb["chosen_shorter"]["n"]],
        ["accuracy, chosen longer", lb["chosen_longer"]["accuracy"]], ["pairs, chosen longer", lb["chosen_longer"]["n"]],
        ["swap: pairs", swap.get("pairs")], ["swap: accuracy", swap.get("accuracy")],
        ["swap: accuracy swapped", swap.get("swapped_accuracy")], ["swap: expected", swap.get("expected")],
        ["swap: flagged", str(swap.get("flagged"))]], "table-probes"))
    body.append(f"<p>Formulas: {html.escape(res['settings']['formulas'])}.</p>")
    return _page(f"{res['benchmark']} - {res['model']['checkpoint']}", body)


def _write_folder(out: Path, files: dict[str, str]) -> None:
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")

    publish_folder(out, fill)


def write_results(run: BenchmarkRun, out: Path) -> None:
    """``results.json``, ``per_example.jsonl`` and ``report.html`` into ``out``, all or nothing."""
    _write_folder(out, {
        RESULTS: json.dumps(finite_for_json(run.results), indent=2, allow_nan=False) + "\n",
        PER_EXAMPLE: "".join(json.dumps(finite_for_json(e), allow_nan=False) + "\n" for e in run.per_example),
        REPORT: render_report(run),
    })


def _load(folder: Path) -> dict[str, Any]:
    path = folder / RESULTS
    if not path.is_file():
        raise ConfigError(f"--compare {folder}: no {RESULTS} there (a folder written by evaluate --benchmark ... "
                          "--output)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "table" not in data or "benchmark" not in data:
        raise ConfigError(f"{path}: not a results file of evaluate --benchmark (no 'benchmark' and 'table')")
    return data


def compare_results(folders: Sequence[str | Path], output: str | Path | None = None) -> dict[str, Any]:
    """Several runs of one benchmark side by side: ``{"benchmark", "models", "rows", "scores"}``;
    with ``output``, also ``comparison.json`` and ``report.html`` there."""
    if len(folders) < 1:
        raise ConfigError("--compare needs at least one results folder")
    loaded = [(Path(f), _load(Path(f))) for f in folders]
    kinds = {r["benchmark"] for _, r in loaded}
    if len(kinds) > 1:
        raise ConfigError("--compare: the folders hold different benchmarks ("
                          + ", ".join(f"{f}: {r['benchmark']}" for f, r in loaded) + "); compare one benchmark at a time")
    names = []
    for f, r in loaded:
        name = f.name or str(f)
        names.append(name if name not in names else str(f))
    keys: list[tuple[str, str]] = []
    for _, r in loaded:
        for row in r["table"]:
            if (row["section"], row["subset"]) not in keys:
                keys.append((row["section"], row["subset"]))
    rows = []
    for section, subset in keys:
        values = []
        for _, r in loaded:
            match = next((x for x in r["table"] if (x["section"], x["subset"]) == (section, subset)), None)
            values.append(match["score"] if match else None)
        rows.append({"section": section, "subset": subset, "scores": values})
    comparison = {"benchmark": kinds.pop(), "models": [{"name": n, "folder": str(f), "checkpoint": r["model"]["checkpoint"],
                                                        "score": r["score"]} for n, (f, r) in zip(names, loaded)],
                  "rows": rows, "score_name": loaded[0][1]["score_name"]}
    if output is not None:
        out = Path(output)
        check_results_dir(out)
        sections = list(dict.fromkeys(s for _, r in loaded for s in r["sections"]))
        series = {n: [r["sections"].get(s) for s in sections] for n, (_, r) in zip(names, loaded)}
        body = [f"<h1>{html.escape(comparison['benchmark'])}: {len(loaded)} models</h1>",
                _table(["model", "folder", "checkpoint", comparison["score_name"]],
                       [[m["name"], m["folder"], m["checkpoint"], m["score"]] for m in comparison["models"]], "table-models"),
                _img(_bars(sections, series, "sections"), "section scores by model", "chart-sections"),
                _table(["section", "subset", *names], [[r["section"], r["subset"], *r["scores"]] for r in rows],
                       "table-subsets")]
        _write_folder(out, {COMPARISON: json.dumps(finite_for_json(comparison), indent=2) + "\n",
                            REPORT: _page(f"{comparison['benchmark']} comparison", body)})
    return comparison


def format_comparison(comparison: dict[str, Any]) -> str:
    names = [m["name"] for m in comparison["models"]]
    w1 = max([7] + [len(r["section"]) for r in comparison["rows"]])
    w2 = max([6] + [len(r["subset"]) for r in comparison["rows"]])
    widths = [max(8, len(n)) for n in names]
    lines = [f"{'section':<{w1}}  {'subset':<{w2}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for r in comparison["rows"]:
        lines.append(f"{r['section']:<{w1}}  {r['subset']:<{w2}}  "
                     + "  ".join(f"{_fmt(v):>{w}}" for v, w in zip(r["scores"], widths)))
    lines.append(f"{'score':<{w1}}  {'':<{w2}}  " + "  ".join(f"{_fmt(m['score']):>{w}}"
                                                          for m, w in zip(comparison["models"], widths)))
    return "\n".join(lines)
