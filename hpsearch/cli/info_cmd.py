"""`hpsearch info`: the device, the CPU features that matter, and what precision "auto" picks."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated

import typer

from hpsearch.cli.app import MAX_THREADS, DeviceOption, app

InfoFormat = StrEnum("InfoFormat", "text json")


@app.command()
def info(
    device: DeviceOption = "auto",
    threads: Annotated[int | None, typer.Option(
        help="CPU threads to measure with (default: every available core, as `train` uses; "
        "each of `run --workers N` gets cores/N).", min=1, max=MAX_THREADS)] = None,
    remeasure: Annotated[bool, typer.Option(
        "--remeasure", help="Time fp32 against bf16 again instead of using the cached "
        "decision, and cache the new one.")] = False,
    fmt: Annotated[InfoFormat, typer.Option(
        "--format", "-f", help="text, or json (for scripts).")] = InfoFormat.text,
) -> None:
    """Show the device, the CPU's flags that decide bf16 speed, torch, the measured fp32/bf16
    training-step rates, and the precision `precision = "auto"` uses here.

    On a CPU, "auto" is decided by timing a few training steps in both precisions on the first
    run per machine (CPU, torch version, thread count); the decision is cached in the user's
    cache folder ($XDG_CACHE_HOME/hpsearch, else ~/.cache/hpsearch) and shown with its path.
    The answer itself is kept there too, so the next `info` (same CPU, threads, torch and
    GPUs) shows it without loading torch.

    Examples:

        hpsearch info

        hpsearch info --threads 2 --remeasure

        hpsearch info -f json
    """
    from hpsearch.params import check_device
    from hpsearch.trainer.machine import cache_info, cached_info, info_key

    key = info_key(check_device(device), threads)
    report = None if remeasure else cached_info(key)
    if report is None:  # torch answers, and the answer is kept for the next time
        from hpsearch.trainer.runtime import configure_threads, machine_report, resolve_device

        dev = resolve_device(device)
        configure_threads(threads)
        report = machine_report(dev, remeasure=remeasure)
        cache_info(key, report)
    if fmt == InfoFormat.json:
        typer.echo(json.dumps(report, indent=2))
        return
    flags = report["cpu_flags"]
    assert isinstance(flags, dict)
    lines = [
        f"device:      {report['device']}" + (f" ({report['gpu']})" if "gpu" in report else ""),
        f"CPU:         {report['cpu']}",
        "CPU flags:   " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()),
        f"torch:       {report['torch']}, CPU capability {report['cpu_capability']}",
        f"threads:     {report['threads']}",
    ]
    m = report.get("measurement")
    if isinstance(m, dict):
        how = "cached" if m["from_cache"] else "measured now"
        lines.append(f"measured:    fp32 {m['fp32_steps_per_s']:.1f} steps/s, bf16 "
                     f"{m['bf16_steps_per_s']:.1f} steps/s (default Mixer, batch {m['batch']}; "
                     f"{how}, {m['measured_at']})")
        lines.append(f"cached in:   {report['cache']}")
    lines.append(f"precision:   {report['precision']} ({report['reason']})")
    typer.echo("\n".join(lines))
