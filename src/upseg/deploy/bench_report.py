"""`upseg bench` results as a markdown table (forward and end to end side by side), CSV,
JSON and the figure of paper Fig. 6."""

from __future__ import annotations

from pathlib import Path

from upseg.io import write_csv, write_json, write_text_atomic, written_together

_MODES = (("forward", "forward"), ("e2e", "end-to-end"))
BENCH_FILES = ("bench.md", "bench.json", "bench.csv", "bench-fig6.png")


def _ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _rate(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def bench_table(result: dict) -> str:
    """One line per method x runtime x input x batch; each mode's median (p90) ms, images/s
    and achieved GFLOP/s with its share of the machine's measured ceiling; the process's peak
    resident memory while the end-to-end case was set up and warmed up."""
    rows = result["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    keys = sorted(
        {(r["batch"], r["input"], r["method"], r["runtime"]) for r in rows},
        key=lambda k: (k[0], k[1], methods.index(k[2]), runtimes.index(k[3])),
    )
    by_key = {(r["batch"], r["input"], r["method"], r["runtime"], r["mode"]): r for r in rows}
    header = ["method", "runtime", "r → R", "batch"]
    for _, title in _MODES:
        header += [f"{title} ms median (p90)", f"{title} images/s", f"{title} GFLOP/s (% peak)"]
    header.append("peak RSS MB")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for batch, size, method, runtime in keys:
        cells = [method, runtime, "", str(batch)]
        for mode, _ in _MODES:
            row = by_key.get((batch, size, method, runtime, mode))
            if row is None:
                cells += ["-", "-", "-"]
                continue
            if mode == "e2e" or not cells[2]:
                cells[2] = f"{size} → {row['output']}"
            cells += [
                f"{_ms(row['median_ms'])} ({_ms(row['p90_ms'])})",
                _rate(row["images_per_s"]),
                f"{row['gflops']:.1f} ({row['pct_peak']:.0f}%)",
            ]
        rss = [
            by_key[(batch, size, method, runtime, mode)].get("rss_peak_mb")
            for mode, _ in _MODES
            if (batch, size, method, runtime, mode) in by_key
        ]
        known = [v for v in rss if v is not None]
        cells.append(f"{max(known):.0f}" if known else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_preamble(result: dict) -> str:
    machine, peak, settings = result["machine"], result["conv_peak"], result["settings"]
    lines = [
        f"Machine: {machine['cpu']} (flags: {', '.join(machine.get('cpu_flags', [])) or 'n/a'}), "
        f"{machine['cores_available']} cores available, torch "
        f"{machine['torch']} ({machine['torch_cpu_capability']}), onnxruntime "
        f"{machine['onnxruntime']}; device {machine['device']}"
        + (f" ({machine['gpu']})" if "gpu" in machine else "")
        + f", {machine['threads']} threads; 1-minute load average before / after: "
        + " / ".join(str(v) for v in machine.get("load_average_before_after", []))
        + ".",
        f"Ceiling (best of large fp32 kernels, median call): {peak['gflops']:.1f} GFLOP/s by "
        f"{peak.get('engine', 'torch conv')} ({peak['shape']}); measured before / after the "
        "cases: "
        + " / ".join(f"{v:.1f}" for v in peak.get("gflops_before_after", []))
        + "; candidates: "
        + ", ".join(f"{c['engine']} {c['gflops']:.1f}" for c in peak.get("candidates", []))
        + ".",
        f"{settings['in_channels']} channels, {settings['classes']} classes, R = "
        f"{settings['output_size']}; {settings['warmup']} warm-up calls, {settings['repeats']} "
        f"timed calls per case in {settings['rounds']} interleaved rounds"
        + (
            f"; memory budget {settings['memory_budget_mb'] / 1e3:.1f} GB."
            if "memory_budget_mb" in settings
            else "."
        ),
    ]
    if "command" in settings:
        lines.insert(0, f"Command: `{settings['command']}`")
    for skip in result["skipped"]:
        where = "" if skip["method"] == "all" else f" for {skip['method']} at {skip['input']}"
        lines.append(f"Skipped {skip['runtime']}{where}: {skip['reason']}")
    return "\n".join(lines)


def write_bench(result: dict, out: str | Path) -> list[Path]:
    """bench.md, bench.json (everything), bench.csv (one row per case and mode) and
    bench-fig6.png under `out` (BENCH_FILES): all four or none. Each is written under a
    temporary name first and the four are renamed into place only once all exist, so a
    failure leaves the files of an earlier bench as they were. A result without rows (every
    case skipped) is a ValueError: there is nothing to write."""
    from upseg.plots import latency_figure

    rows = result["rows"]
    if not rows:
        raise ValueError("the bench measured nothing (every case was skipped); nothing to write")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    final = [out / name for name in BENCH_FILES]
    machine = result["machine"]
    with written_together(final) as staged:
        write_text_atomic(staged[0], bench_preamble(result) + "\n\n" + bench_table(result) + "\n")
        write_json(staged[1], result)
        write_csv(staged[2], rows)
        latency_figure(
            rows,
            staged[3],
            f"Inference time against input resolution ({machine['device']}, "
            f"{machine['threads']} threads)",
        )
    return final
