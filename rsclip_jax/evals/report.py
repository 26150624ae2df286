"""Plots and a Markdown summary of a training workdir (`python -m rsclip_jax.report`).

Reads DIR/metrics.jsonl (training lines and eval/NAME/METRIC lines) and DIR/eval/step_*.json (from
`rsclip_jax.evaluate`); writes training.png, eval.png (when there are evals) and README.md, and prints the
paper's table (`paper_table`) when any of its evals ran, then the output folder. DIR and the output folder may be
buckets, as the workdir of a run may be: paths go through etils.epath (gs:// with gcsfs installed).
"""

import json

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from etils import epath  # noqa: E402

TRAINING_CURVES = (
    ("loss", "loss"),
    ("learning_rate", "learning rate"),
    ("logit_scale", "logit scale"),
    ("examples_per_sec", "examples/s"),
)
# Plotted too where the run logged them: the parts of a CLIPS run's loss.
LOSS_PARTS = (("contrastive_loss", "contrastive loss"), ("generator_loss", "caption generator loss"))
SCORES = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "top1", "top5")  # plotted; counts are not
# The Role-SynthCLIP README's two tables side by side: (header, the (eval as `rsclip_jax.config.paper_evals` names
# it, metric) pairs whose mean the column shows). Its retrieval Avg is docs/method.md's "6-number avg": R@1 both ways on
# COCO, Flickr30k and Urban-1k. Its zero-shot Avg also covers sets its table does not name (OpenAI CLIP's 70.30
# is above the mean of its three, 58.47); here it is the mean of the three.
_RETRIEVAL_SIX = tuple((name, metric) for name in ("coco", "flickr30k", "urban1k") for metric in ("i2t_r1", "t2i_r1"))
_ZEROSHOT_THREE = (("imagenet", "top1"), ("imagenet_o", "top1"), ("cifar100", "top1"))
PAPER_COLUMNS = (
    ("COCO I->T", (("coco", "i2t_r1"),)),
    ("COCO T->I", (("coco", "t2i_r1"),)),
    ("Retrieval Avg", _RETRIEVAL_SIX),
    *((header, (source,)) for header, source in zip(("ImageNet-1k", "ImageNet-O", "CIFAR-100"), _ZEROSHOT_THREE)),
    ("Zero-shot Avg", _ZEROSHOT_THREE),
)
# Its two published rows (ViT-B/16, docs/method.md section 5), their Avg columns as published.
PAPER_ROWS = (
    ("OpenAI CLIP B/16 (paper)", (53.1, 32.7, 58.87, 68.3, 40.4, 66.7, 70.30)),
    ("Role-SynthCLIP B/16 (paper)", (64.1, 43.2, 77.01, 64.8, 44.5, 68.2, 69.62)),
)


def read_metrics(workdir: str) -> tuple[dict, dict]:
    """(training: {metric: [(step, value)]}, evals: {name: {metric: [(step, value)]}})."""
    training, evals = {}, {}

    def add_eval(step, name, metrics):
        for metric, value in metrics.items():
            evals.setdefault(name, {}).setdefault(metric, {})[step] = value

    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a workdir that `rsclip_jax.train` wrote")
    for line in filter(str.strip, path.read_text().splitlines()):
        record = json.loads(line)
        step = record.pop("step")
        for key, value in record.items():
            if key.startswith("eval/"):
                _, name, metric = key.split("/", 2)
                add_eval(step, name, {metric: value})
            else:
                training.setdefault(key, []).append((step, value))
    for result_path in (epath.Path(workdir) / "eval").glob("step_*.json"):
        result = json.loads(result_path.read_text())
        for name, metrics in result["evals"].items():
            add_eval(result["step"], name, metrics)
    evals = {
        name: {metric: sorted(points.items()) for metric, points in metrics.items()} for name, metrics in evals.items()
    }
    return training, evals


def plot_training(training: dict, path: epath.Path):
    curves = TRAINING_CURVES + tuple(curve for curve in LOSS_PARTS if curve[0] in training)
    rows = (len(curves) + 1) // 2
    figure, axes = plt.subplots(rows, 2, figsize=(10, 3.5 * rows))
    for ax, (key, label) in zip(axes.flat, curves):
        points = training.get(key, [])
        if points:
            ax.plot(*zip(*points))
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    _save(figure, path)


def plot_evals(evals: dict, path: epath.Path):
    figure, axes = plt.subplots(1, len(evals), figsize=(5 * len(evals), 4), squeeze=False)
    for ax, (name, metrics) in zip(axes.flat, sorted(evals.items())):
        for metric in SCORES:
            if metric in metrics:
                ax.plot(*zip(*metrics[metric]), marker="o", label=metric)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(figure, path)


def paper_table(evals: dict) -> list[str]:
    """Markdown lines of the paper's table (PAPER_COLUMNS): a row per step at which any of its evals ran, each
    cell the mean of its column's numbers at that step ("-" when one is missing), then the paper's rows."""
    values: dict[int, dict[tuple[str, str], float]] = {}
    for source in {source for _, sources in PAPER_COLUMNS for source in sources}:
        name, metric = source
        for step, value in evals.get(name, {}).get(metric, []):
            values.setdefault(step, {})[source] = value
    if not values:
        return []

    def cell(at_step, sources):
        numbers = [at_step.get(source) for source in sources]
        return None if None in numbers else sum(numbers) / len(numbers)

    def row(label, cells):
        return f"| {label} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in cells) + " |"

    headers = [header for header, _ in PAPER_COLUMNS]
    measured = [
        row(f"step {step}", [cell(at_step, sources) for _, sources in PAPER_COLUMNS])
        for step, at_step in sorted(values.items())
    ]
    return [
        f"| model | {' | '.join(headers)} |",
        "|---" * (len(headers) + 1) + "|",
        *measured,
        *(row(label, numbers) for label, numbers in PAPER_ROWS),
    ]


def summary_markdown(workdir: str, training: dict, evals: dict) -> str:
    shown = epath.Path(workdir)
    shown = shown if shown.is_absolute() else shown.resolve()  # resolve() would make gs://B/x a local path
    lines = [f"# Training report: {shown}", "", "![training curves](training.png)", ""]
    if training.get("loss"):
        last_step, last_loss = training["loss"][-1]
        throughput = [value for _, value in training.get("examples_per_sec", [])]
        lines += [f"- steps logged: up to {last_step}; last loss {last_loss:.4f}"]
        if throughput:
            lines += [
                f"- examples/s: median {sorted(throughput)[len(throughput) // 2]:.1f} over {len(throughput)} log lines"
            ]
        lines.append("")
    if evals:
        lines += [
            "## Evaluations",
            "",
            "![eval metrics](eval.png)",
            "",
            "| eval | step | metric | value | best (step) |",
            "|---|---|---|---|---|",
        ]
        for name, metrics in sorted(evals.items()):
            for metric in (m for m in SCORES if m in metrics):
                step, value = metrics[metric][-1]
                best_step, best = max(metrics[metric], key=lambda point: point[1])
                lines.append(f"| {name} | {step} | {metric} | {value:.2f} | {best:.2f} ({best_step}) |")
        lines.append("")
    table = paper_table(evals)
    if table:
        lines += [
            "## The paper's table",
            "",
            "Recall@1 and zero-shot top-1 (%); Retrieval Avg: R@1 both ways on COCO, "
            "Flickr30k and Urban-1k; Zero-shot Avg: the three zero-shot sets (the paper's covers more).",
            "",
            *table,
            "",
        ]
    return "\n".join(lines)


def write_report(workdir: str, out: str | None = None) -> tuple[str, list[str]]:
    """(the output folder, the paper's table as Markdown lines)."""
    out = epath.Path(out or epath.Path(workdir) / "report")
    training, evals = read_metrics(workdir)
    out.mkdir(parents=True, exist_ok=True)
    plot_training(training, out / "training.png")
    if evals:
        plot_evals(evals, out / "eval.png")
    (out / "README.md").write_text(summary_markdown(workdir, training, evals))
    return str(out), paper_table(evals)


def _save(figure, path: epath.Path):
    figure.tight_layout()
    with path.open("wb") as f:  # a file object: matplotlib writes only local paths itself
        figure.savefig(f, format="png", dpi=100)
    plt.close(figure)
