#!/usr/bin/env python3
"""Measure the surface loop against plain inference of the same model on the same data.

Plain eager inference is the reference code's way: batch 128, torch.no_grad, fp32, a host
sync per batch. Each mode of our loop evaluates the same grid points; the ratio is its
throughput (image-forwards/s) over plain inference, taken interleaved in one run on one
machine, so machine load affects both alike. With --plain-fresh plain inference is also timed
in a new process of its own each repeat: in the benchmark's process it runs on a heap our loop's
allocations have shaped, and on this CPU that changed its speed by up to 1.9x (page faults;
BENCHMARKS.md). Also reported: the largest relative loss error of each mode against plain fp32
at the same points, and peak memory.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from landscape.benchmark import (CASES, MODES, PER_LAUNCH, ROOT, markdown, plain_child, run_case,  # noqa: E402
                                 run_stream, stream_markdown, surface_flags)
from landscape.engine.evaluate import keep_freed_memory  # noqa: E402
from landscape.engine.threads import set_threads  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.surface import resolve_device  # noqa: E402

__all__ = ["MODES", "PER_LAUNCH", "surface_flags", "main"]

EXAMPLE = """examples:
  python scripts/benchmark.py                                  # both default cases, modes fp32,fp32-nofold,bf16
  python scripts/benchmark.py --case digits-resnet56 --modes fp32,bf16,compile --json results/bench.json --record
  python scripts/benchmark.py --case cifar-resnet56 --modes fp32,bf16 --plain-fresh   # also plain in its own process
  python scripts/benchmark.py --stream-k 1,2,4,8,16 --points 16      # streamed data: loading cost per point vs K
"""


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LandscapeError(f"{flag} must be comma-separated integers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise LandscapeError(f"{flag} must be integers >= 1 like 1,4,16, got {text!r}")
    return values


@exit_on_error
def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", default=None, help=f"{', '.join(CASES)} (repeatable; default the first two)")
    p.add_argument("--modes", default="fp32,fp32-nofold,bf16", help=f"comma-separated, from {', '.join(MODES)}")
    p.add_argument("--points", type=int, default=8, help="grid points per timing")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median taken)")
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--threads", default=None, metavar="N|auto",
                   help="torch CPU threads (default: torch's, one per core); auto: what plot_surface.py chooses "
                        "(landscape.engine.threads: the idle cores)")
    p.add_argument("--busy", type=int, default=0, metavar="N",
                   help="keep N cores busy with other processes during the run (busy loops), as other jobs would")
    p.add_argument("--device", default="auto")
    p.add_argument("--stream-k", default=None, metavar="K1,K2,...",
                   help="instead of the modes: streaming evaluation with K points per pass over a DataLoader, "
                        "seconds per point and the data-loading share for each K (e.g. 1,4,16)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for --stream-k")
    p.add_argument("--plain-fresh", action="store_true",
                   help="also time plain inference in a new process of its own each repeat (the reference code's "
                        "heap, not shaped by our loop's allocations); adds plain_fresh_ips and per mode ratio_fresh")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc's allocator as it is (plot_surface.py keeps freed memory by default; so does this "
                        "process, plain inference in it included; --plain-fresh's process never does)")
    p.add_argument("--plain-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--record", action="store_true", help="append the table to BENCHMARKS.md")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise LandscapeError(f"--modes: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    device = resolve_device(args.device)
    if args.threads not in (None, "auto") and not (args.threads.isdigit() and int(args.threads) >= 1):
        raise LandscapeError(f"--threads must be an integer >= 1 or auto, got {args.threads!r}")
    if args.busy < 0:
        raise LandscapeError(f"--busy must be >= 0, got {args.busy}")
    requested = None if args.threads in (None, "auto") else int(args.threads)  # None: torch's, or auto
    if args.plain_child:  # the reference code's process: glibc's defaults
        if requested:
            set_threads(requested, device)
        plain_child(args.plain_child, device, args.n_samples, args.points)
        return
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        if busy:
            time.sleep(0.5)  # running before the threads are chosen
        if args.threads is not None:
            note = set_threads(requested, device)
            print(f"threads: {torch.get_num_threads()}" + (f" ({note})" if note else ""), file=sys.stderr)
        _measure(args, argv, modes, device)
    finally:
        for b in busy:
            b.kill()
            b.wait()


def _measure(args, argv, modes, device) -> None:
    kept = False if args.default_malloc else keep_freed_memory()
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in argv)
    if args.stream_k:
        ks = _ints(args.stream_k, "--stream-k")
        points = math.lcm(*ks) * max(1, args.points // math.lcm(*ks))  # every K divides the points
        results = [run_stream(c, ks, points, args.repeats, device, args.n_samples, args.batch_size, args.workers)
                   for c in (args.case or ["digits-resnet20"])]
        table = stream_markdown(results, command)
    else:
        results = [run_case(c, modes, args.points, args.repeats, device, args.n_samples, args.batch_size,
                            args.plain_fresh)
                   for c in (args.case or ["digits-resnet56", "cifar-resnet20"])]
        for r in results:
            r["busy_cores"] = args.busy
        table = markdown(results, command, kept)
    print(table)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        flat = ({"cases": results, "command": command} if args.stream_k else
                {"plain_ips": results[0]["plain_ips"], **results[0]["modes"], "cases": results, "command": command,
                 "keep_freed_memory": kept})
        Path(args.json).write_text(json.dumps(flat, indent=2) + "\n")
    if args.record:
        path = ROOT / "BENCHMARKS.md"
        if not path.exists():
            path.write_text("# Benchmarks\n\nEach section is appended by `scripts/benchmark.py --record`; "
                            "ratios are taken in one run on one machine.\n\n")
        with open(path, "a") as f:
            f.write("\n" + table)


if __name__ == "__main__":
    main()
