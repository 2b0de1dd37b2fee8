#!/usr/bin/env python3
"""Log a Jetson's power rails (tegrastats) while a command runs, and print mean power and energy.

    python tools/jetson_power.py --out power.jsonl -- bash trtexec.sh
    python tools/jetson_power.py --from-log tegrastats.log --interval-ms 100

The JSONL has one line per sample: {"t": seconds since the start, "rails": {name: [instant mW,
average mW]}, "gpu_load": percent}. Total power is the module's input rail (VDD_IN / POM_5V_IN), or
the sum of the rails on AGX Orin (no input rail). Exits with the command's exit code; 2 on bad input.
Needs lappdeploy installed (no extras: the parser is lappdeploy.bench.jetson, standard library only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lappdeploy.bench.jetson import (
    PowerSampler,
    energy_joules,
    parse_tegrastats_line,
    tegrastats_path,
)


def _fail(message: str) -> int:
    print(f"Error: {message}", file=sys.stderr)
    return 2


def _write_jsonl(path: Path, samples, start: float) -> None:
    """Atomically: a temp file in the same directory, then rename."""
    lines = [
        json.dumps({"t": round(s.time_s - start, 4), "rails": s.rails, "gpu_load": s.gpu_load}) + "\n" for s in samples
    ]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    with os.fdopen(fd, "w") as handle:
        handle.writelines(lines)
    os.replace(tmp, path)


def _summary(samples) -> str:
    if len(samples) < 2:
        return f"{len(samples)} tegrastats samples: too few to integrate (run longer)"
    start, end = samples[0].time_s, samples[-1].time_s
    energy = energy_joules(samples, start, end)
    return (
        f"{len(samples)} samples over {end - start:.2f} s: mean power {energy['mean_power_w']:.2f} W, "
        f"energy {energy['energy_j']:.2f} J (rail {energy['rail']})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="JSONL file of the samples (written when the command ends)")
    parser.add_argument("--interval-ms", type=int, default=100, help="tegrastats interval (ms)")
    parser.add_argument("--from-log", type=Path, help="parse a recorded tegrastats log instead of sampling")
    parser.add_argument(
        "--tegrastats-command", help=argparse.SUPPRESS
    )  # tests: a command line printing tegrastats lines, instead of tegrastats
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... to run while sampling")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    if args.from_log is not None:
        if not args.from_log.is_file():
            return _fail(f"{args.from_log} does not exist; give a tegrastats log file")
        samples = []
        for line in args.from_log.read_text(errors="replace").splitlines():
            sample = parse_tegrastats_line(line, len(samples) * args.interval_ms / 1e3)
            if sample is not None:
                samples.append(sample)
        if not samples:
            return _fail(f"{args.from_log} holds no tegrastats lines")
        print(_summary(samples))
        if args.out:
            _write_jsonl(args.out, samples, samples[0].time_s)
        return 0

    if not command:
        return _fail("give the command to run after --, e.g. `-- bash trtexec.sh` (or --from-log FILE)")
    if args.out is None:
        return _fail("--out FILE is needed to keep the samples")
    sampler_command = args.tegrastats_command.split() if args.tegrastats_command else None
    if sampler_command is None and tegrastats_path() is None:
        return _fail("tegrastats not found: run this on a Jetson, or use --from-log with a recorded log")
    start = time.perf_counter()
    with PowerSampler(args.interval_ms, command=sampler_command) as sampler:
        try:
            code = subprocess.call(command)
        except OSError as exc:
            return _fail(f"cannot run {command[0]!r}: {exc.strerror}")
        sampler.wait_for_samples(len(sampler.samples) + 1, timeout_s=2 * args.interval_ms / 1e3)
    samples = sampler.samples
    _write_jsonl(args.out, samples, start)
    print(_summary(samples), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
