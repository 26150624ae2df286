"""Plots and a Markdown summary of a training workdir.

    python -m rsclip_jax.report DIR [--out DIR/report]

Reads DIR/metrics.jsonl (training lines and eval/NAME/METRIC lines) and DIR/eval/step_*.json (from
`rsclip_jax.evaluate`); writes training.png, eval.png (when there are evals) and README.md.
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
SCORES = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "top1", "top5")  # plotted; counts are not


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
    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for ax, (key, label) in zip(axes.flat, TRAINING_CURVES):
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
    return "\n".join(lines)


def write_report(workdir: str, out: str | None = None) -> str:
    out = out or os.path.join(workdir, "report")
    training, evals = read_metrics(workdir)
    os.makedirs(out, exist_ok=True)
    plot_training(training, os.path.join(out, "training.png"))
    if evals:
        plot_evals(evals, os.path.join(out, "eval.png"))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(summary_markdown(workdir, training, evals))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", help="output folder (default WORKDIR/report)")
    args = parser.parse_args()
    print(write_report(args.workdir, args.out))


if __name__ == "__main__":
    main()
