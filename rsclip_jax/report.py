"""Plots and a Markdown summary of a training workdir.

    python -m rsclip_jax.report DIR [--out DIR/report]

Writes training.png, eval.png (when there are evals) and README.md (rsclip_jax/evals/report.py), prints the paper's
table when any of its evals ran, then the output folder. DIR and the output folder may be buckets.
"""

import argparse

from rsclip_jax.evals.report import write_report


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir")
    parser.add_argument("--out", help="output folder (default WORKDIR/report)")
    args = parser.parse_args()
    out, table = write_report(args.workdir, args.out)
    print("\n".join([*table, out]))  # the folder last: scripts read it from the last line


if __name__ == "__main__":
    main()
