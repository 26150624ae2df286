"""Plots and a Markdown summary of a training workdir.

    python -m rsclip_jax.report DIR [--out DIR/report]

Reads DIR/metrics.jsonl (training lines and eval/NAME/METRIC lines) and DIR/eval/step_*.json (from
`rsclip_jax.evaluate`); writes training.png, eval.png (when there are evals) and README.md, and prints the
paper's table (`paper_table`) when any of its evals ran, then the output folder.
"""

import argparse
import glob
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

TRAINING_CURVES = (("loss", "loss"), ("learning_rate", "learning rate"), ("logit_scale", "logit scale"),
                   ("examples_per_sec", "examples/s"))
# Plotted too where the run logged them: the parts of a CLIPS run's loss.
LOSS_PARTS = (("contrastive_loss", "contrastive loss"), ("generator_loss", "caption generator loss"))
SCORES = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "top1", "top5")  # plotted; counts are not
# The Role-SynthCLIP README's columns: (header, eval name as `rsclip_jax.config.paper_evals` names it, metric).
PAPER_COLUMNS = (("COCO I->T", "coco", "i2t_r1"), ("COCO T->I", "coco", "t2i_r1"), ("ImageNet-1k", "imagenet", "top1"),
                 ("ImageNet-O", "imagenet_o", "top1"), ("CIFAR-100", "cifar100", "top1"))
# Its two published rows (ViT-B/16, METHOD.md section 5), for comparison.
PAPER_ROWS = (("OpenAI CLIP B/16 (paper)", (53.1, 32.7, 68.3, 40.4, 66.7)),
              ("Role-SynthCLIP B/16 (paper)", (64.1, 43.2, 64.8, 44.5, 68.2)))


def read_metrics(workdir: str) -> tuple[dict, dict]:
    """(training: {metric: [(step, value)]}, evals: {name: {metric: [(step, value)]}})."""
    training, evals = {}, {}

    def add_eval(step, name, metrics):
        for metric, value in metrics.items():
            evals.setdefault(name, {}).setdefault(metric, {})[step] = value

    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: give a workdir that `rsclip_jax.train` wrote")
    with open(path) as f:
        for line in filter(str.strip, f):
            record = json.loads(line)
            step = record.pop("step")
            for key, value in record.items():
                if key.startswith("eval/"):
                    _, name, metric = key.split("/", 2)
                    add_eval(step, name, {metric: value})
                else:
                    training.setdefault(key, []).append((step, value))
    for result_path in glob.glob(os.path.join(workdir, "eval", "step_*.json")):
        with open(result_path) as f:
            result = json.load(f)
        for name, metrics in result["evals"].items():
            add_eval(result["step"], name, metrics)
    evals = {name: {metric: sorted(points.items()) for metric, points in metrics.items()} for name, metrics in evals.items()}
    return training, evals


def plot_training(training: dict, path: str):
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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_evals(evals: dict, path: str):
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
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def paper_table(evals: dict) -> list[str]:
    """Markdown lines of the paper's table: a row per step at which any of its evals ran, then the paper's rows.

    Avg is the mean of the five numbers in its row (COCO I->T R@1, COCO T->I R@1, ImageNet-1k, ImageNet-O and
    CIFAR-100 top-1), "-" when one is missing; the paper's rows get the same mean of their five. The
    Role-SynthCLIP README shows these numbers in two tables, retrieval and classification, whose Avg columns
    average numbers it does not show (OpenAI CLIP: COCO 53.1 / 32.7 with Avg 58.87; 68.3 / 40.4 / 66.7 with
    Avg 70.30), so this Avg compares only within this table.
    """
    values: dict[int, dict[str, float]] = {}
    for header, name, metric in PAPER_COLUMNS:
        for step, value in evals.get(name, {}).get(metric, []):
            values.setdefault(step, {})[header] = value
    if not values:
        return []
    headers = [header for header, _, _ in PAPER_COLUMNS]

    def row(label, numbers):
        cells = [*numbers, sum(numbers) / len(numbers) if None not in numbers else None]
        return f"| {label} | " + " | ".join("-" if x is None else f"{x:.2f}" for x in cells) + " |"

    measured = [row(f"step {step}", [by_header.get(h) for h in headers]) for step, by_header in sorted(values.items())]
    return [f"| model | {' | '.join(headers)} | Avg |", "|---" * (len(headers) + 2) + "|", *measured,
            *(row(label, list(numbers)) for label, numbers in PAPER_ROWS)]


def summary_markdown(workdir: str, training: dict, evals: dict) -> str:
    lines = [f"# Training report: {os.path.abspath(workdir)}", "", "![training curves](training.png)", ""]
    if training.get("loss"):
        last_step, last_loss = training["loss"][-1]
        throughput = [value for _, value in training.get("examples_per_sec", [])]
        lines += [f"- steps logged: up to {last_step}; last loss {last_loss:.4f}"]
        if throughput:
            lines += [f"- examples/s: median {sorted(throughput)[len(throughput) // 2]:.1f} over {len(throughput)} log lines"]
        lines.append("")
    if evals:
        lines += ["## Evaluations", "", "![eval metrics](eval.png)", "", "| eval | step | metric | value | best (step) |",
                  "|---|---|---|---|---|"]
        for name, metrics in sorted(evals.items()):
            for metric in (m for m in SCORES if m in metrics):
                step, value = metrics[metric][-1]
                best_step, best = max(metrics[metric], key=lambda point: point[1])
                lines.append(f"| {name} | {step} | {metric} | {value:.2f} | {best:.2f} ({best_step}) |")
        lines.append("")
    table = paper_table(evals)
    if table:
        lines += ["## The paper's table", "", "Recall@1 and zero-shot top-1 (%); Avg: the mean of the five in its row.",
                  "", *table, ""]
    return "\n".join(lines)


def write_report(workdir: str, out: str | None = None) -> tuple[str, list[str]]:
    """(the output folder, the paper's table as Markdown lines)."""
    out = out or os.path.join(workdir, "report")
    training, evals = read_metrics(workdir)
    os.makedirs(out, exist_ok=True)
    plot_training(training, os.path.join(out, "training.png"))
    if evals:
        plot_evals(evals, os.path.join(out, "eval.png"))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(summary_markdown(workdir, training, evals))
    return out, paper_table(evals)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", help="output folder (default WORKDIR/report)")
    args = parser.parse_args()
    out, table = write_report(args.workdir, args.out)
    print("\n".join([*table, out]))  # the folder last: scripts read it from the last line


if __name__ == "__main__":
    main()
