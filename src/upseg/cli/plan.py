"""`upseg plan`: the best measured model inside a latency budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upseg.cli.common import markdown_table


def run(args: argparse.Namespace) -> int:
    from upseg.deploy.outputs import check_output_folder
    from upseg.deploy.plan import PLAN_FILES, plan, read_bench, read_sweep, write_plan

    if args.out:
        check_output_folder(args.out, "--out", PLAN_FILES)
    result = plan(
        read_sweep(args.sweep),
        read_bench(args.bench),
        args.budget_ms,
        batch=args.batch,
        mode=args.mode,
        stat=args.stat,
        metric=args.metric,
        include_int8=args.include_int8,
    )
    rows, pick, stat, metric = result["rows"], result["pick"], args.stat, args.metric
    if rows:
        table = [
            {
                "method": r["method"],
                "input": r["input"],
                "runtime": r["runtime"],
                stat: f"{r[stat]:.2f}",
                metric: f"{100 * r[metric]:.1f}",
                "runs": int(r["runs"]) if r["runs"] == r["runs"] else "-",
                f"within {args.budget_ms:g} ms": "yes" if r["fits"] else "no",
            }
            for r in rows
        ]
        print(
            f"{args.mode} latency ({stat.removesuffix('_ms')}, batch {args.batch}) against "
            f"{metric} (%), fastest measured runtime per model:\n"
        )
        print(markdown_table(table, list(table[0])))
    for line in result["missing"]:
        print(f"not judged: {line}")
    if not rows:
        print(
            "error: no swept model has a measured latency; run upseg bench on this device "
            "with the sweep's methods and input sizes"
            + (f" (nothing written to {args.out})" if args.out else ""),
            file=sys.stderr,
        )
        return 1
    if args.out:
        for path in write_plan(result, args.out, args.budget_ms):
            print(f"wrote {path}")
    if pick is None:
        fastest = rows[0]
        print(
            f"\nnothing fits {args.budget_ms:g} ms: the fastest measured is "
            f"{fastest['method']} @ {fastest['input']} ({fastest['runtime']}) at "
            f"{fastest[stat]:.2f} ms",
        )
        return 1
    print(
        f"\npick: {pick['method']} at input {pick['input']} on {pick['runtime']}: "
        f"{metric} {100 * pick[metric]:.1f}%, {stat.removesuffix('_ms')} {pick[stat]:.2f} ms "
        f"(budget {args.budget_ms:g} ms)"
    )
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    plan = commands.add_parser(
        "plan",
        help="the best model and input size inside a latency budget, from measured results",
        description="Join a sweep's quality (sweep.csv) with latency measured by upseg bench "
        "on this device (bench.json) and pick the best score whose latency fits the budget. "
        "Nothing is estimated: models missing from either side are listed, not guessed.",
        epilog="example: upseg plan --budget-ms 33 --sweep sweeps/brats --bench bench/cpu",
    )
    plan.add_argument("--budget-ms", type=float, required=True, help="latency budget per image")
    plan.add_argument("--sweep", type=Path, required=True, help="sweep folder or sweep.csv")
    plan.add_argument("--bench", type=Path, required=True, help="bench folder or bench.json")
    plan.add_argument("--batch", type=int, default=1, help="bench batch size to use (default 1)")
    plan.add_argument(
        "--mode",
        choices=("e2e", "forward"),
        default="e2e",
        help="e2e: image at r in, label mask at R out (default); forward: network only",
    )
    plan.add_argument(
        "--stat",
        choices=("p90_ms", "median_ms"),
        default="p90_ms",
        help="latency statistic held against the budget (default p90_ms)",
    )
    plan.add_argument(
        "--metric",
        default="foreground_dice",
        help="a score column of sweep.csv (default foreground_dice)",
    )
    plan.add_argument(
        "--include-int8",
        action="store_true",
        help="also use int8 runtimes' timings (the sweep's scores are those of the fp32 models)",
    )
    plan.add_argument(
        "--out",
        type=Path,
        help="folder for plan.csv and plan.json (written together, only when some model "
        "was judged)",
    )
    plan.set_defaults(func=run, parser=plan)
