"""Plot a compress run: per-group thresholds, deploy MACs vs the annealed budget, and validation top-1
over epochs (from RUN_DIR/metrics.jsonl), plus the kept channels per group (from report.json).

    python benchmarks/plot_lapp_run.py runs/demo            # writes runs/demo/lapp_run.png, keep_ratios.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lappdeploy.io import read_json
from lappdeploy.report import keep_ratio_chart, lapp_run_figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="figure path [default: RUN_DIR/lapp_run.png]")
    args = parser.parse_args()
    if not (args.run_dir / "metrics.jsonl").is_file():
        parser.error(f"{args.run_dir} has no metrics.jsonl; pass a run directory written by `lappdeploy compress`")
    figure = lapp_run_figure(args.run_dir, args.out or args.run_dir / "lapp_run.png")
    print(f"wrote {figure}")
    report_path = args.run_dir / "report.json"
    if report_path.is_file() and read_json(report_path).get("layers"):
        report = read_json(report_path)
        chart = keep_ratio_chart(report["layers"], args.run_dir / "keep_ratios.png", title=f"{report['method']}")
        print(f"wrote {chart}")


if __name__ == "__main__":
    main()
