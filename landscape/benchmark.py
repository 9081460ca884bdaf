"""The benchmark behind scripts/benchmark.py: the surface loop against plain inference of the same
model on the same data, mode by mode (`MODES`: engine options), taken interleaved in one run.

Plain eager inference is the reference code's way: batch 128, torch.no_grad, fp32, a host sync per
batch. Each mode of our loop evaluates the same grid points; the ratio is its throughput
(image-forwards/s) over plain inference. With `fresh` plain inference is also timed in a new
process of its own each repeat: in the benchmark's process it runs on a heap our loop's allocations
have shaped, which changed its speed (page faults; BENCHMARKS.md). Also reported: the largest
relative loss error of each mode against plain fp32 at the same points, peak memory, and the
hardware (`landscape.engine.hardware`).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from landscape.directions import DirectionSpec, make_directions, target_tensors
from landscape.engine import EngineOptions, fold, prepare_engine
from landscape.engine.evaluate import Evaluator, PointSetter, default_batch_size
from landscape.engine.hardware import describe, device_info, resolve_precision
from landscape.errors import LandscapeError
from landscape.models import get_model
from landscape.sources.checkpoint import build_model, load_checkpoint
from landscape.sources.data import DEFAULT_NORMALIZATION, load_dataset

ROOT = Path(__file__).resolve().parents[1]
MODES = {
    "fp32": EngineOptions(precision="fp32", fold_bn=True),
    "fp32-nofold": EngineOptions(precision="fp32", fold_bn=False),
    "fp32-nofuse": EngineOptions(precision="fp32", fold_bn=True, fuse=False),
    "bf16-nofuse": EngineOptions(precision="bf16", fold_bn=True, fuse=False),
    "fp32-nopack": EngineOptions(precision="fp32", fold_bn=True, prepack=False),
    "bf16-nopack": EngineOptions(precision="bf16", fold_bn=True, prepack=False),
    "tf32": EngineOptions(precision="tf32", fold_bn=True),
    "bf16": EngineOptions(precision="bf16", fold_bn=True),
    # bf16 where the CPU has no bf16 instructions (refused elsewhere): what it would cost
    "bf16-emulated": EngineOptions(precision="bf16", fold_bn=True, allow_emulated=True),
    "fp16": EngineOptions(precision="fp16", fold_bn=True),
    "compile": EngineOptions(precision="fp32", fold_bn=True, compile=True),
    "compile-bf16": EngineOptions(precision="bf16", fold_bn=True, compile=True),
    # CUDA levers, opt-in until measured on a GPU (scripts/gpu_check.sh picks the fastest)
    "fp32-cudafuse": EngineOptions(precision="fp32", fold_bn=True, cuda_fuse=True),
    "bf16-cudafuse": EngineOptions(precision="bf16", fold_bn=True, cuda_fuse=True),
    "bf16-cudnnbench": EngineOptions(precision="bf16", fold_bn=True, cudnn_benchmark=True),
    "bf16-cudafuse-cudnnbench": EngineOptions(precision="bf16", fold_bn=True, cuda_fuse=True, cudnn_benchmark=True),
    "compile-bf16-cudnnbench": EngineOptions(precision="bf16", fold_bn=True, compile=True, cudnn_benchmark=True),
    "compile-bf16-autotune": EngineOptions(precision="bf16", fold_bn=True, compile=True,
                                           compile_mode="max-autotune-no-cudagraphs"),
    "compile-bf16-cudagraphs": EngineOptions(precision="bf16", fold_bn=True, compile=True,
                                             compile_mode="reduce-overhead"),
    # K points per launch (landscape.engine.multipoint; folded, unfused, autocast): benchmark only until it wins
    "fp32-vmap4": EngineOptions(precision="fp32", fold_bn=True, fuse=False),
    "bf16-vmap4": EngineOptions(precision="bf16", fold_bn=True, fuse=False),
    "bf16-vmap8": EngineOptions(precision="bf16", fold_bn=True, fuse=False),
}
PER_LAUNCH = {"fp32-vmap4": 4, "bf16-vmap4": 4, "bf16-vmap8": 8}  # mode -> points per launch
CIFAR_CASES = ("cifar-resnet20", "cifar-resnet56")  # random 3x32x32 images, random BN statistics
CASES = ("digits-resnet20", "digits-resnet56", *CIFAR_CASES)
def surface_flags(opts: EngineOptions, per_launch: int = 1) -> list[str]:
    """The `scripts/plot_surface.py` flags that run a surface with the engine options `opts` and
    `per_launch` points per launch (their defaults give no flag; batch size aside)."""
    flags = ["--precision", opts.precision]
    flags += ["--points-per-launch", str(per_launch)] if per_launch > 1 else []
    flags += ["--no-fold-bn"] if not opts.fold_bn else []
    flags += ["--compile"] if opts.compile and opts.compile_mode is None else []
    flags += ["--compile-mode", opts.compile_mode] if opts.compile_mode is not None else []
    flags += ["--cuda-fuse"] if opts.cuda_fuse else []
    flags += ["--cudnn-benchmark"] if opts.cudnn_benchmark else []
    return flags


def make_case(name: str, device: torch.device, n: int | None):
    """(model, x, y) for a named case: digits-resnet20/56 (bundled checkpoint when present), or a CIFAR
    ResNet on random 3x32x32 images (cifar-resnet20, cifar-resnet56: throughput needs no real data)."""
    if name in ("digits-resnet20", "digits-resnet56"):
        arch = name.removeprefix("digits-")
        ckpt = ROOT / "checkpoints" / f"digits_{arch}.pt"
        if ckpt.is_file():
            model, _, _ = build_model(load_checkpoint(ckpt))
        else:
            model = get_model(arch, num_classes=10, in_channels=1)
        data = load_dataset("digits", "train", n_samples=n)
        x = DEFAULT_NORMALIZATION["digits"].apply(data.x)
        y = data.y
    elif name in CIFAR_CASES:
        torch.manual_seed(0)
        model = get_model(name.removeprefix("cifar-"), num_classes=10, in_channels=3)
        _random_bn_stats(model)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n or 512, 3, 32, 32, generator=g)
        y = torch.randint(0, 10, (len(x),), generator=g)
    else:
        raise LandscapeError(f"case must be one of {', '.join(CASES)}, got {name!r}", "case")
    return model.eval().to(device), x.to(device), y.to(device)


def _random_bn_stats(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)


def plain_eval(model, x, y, batch=128) -> float:
    """The reference code's loop: batch 128, no_grad, one host sync per batch. Returns the mean loss."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            total += F.cross_entropy(out, y[i:i + batch]).item() * len(out)
            (out.argmax(1) == y[i:i + batch]).sum().item()
    return total / len(x)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def plain_setup(case: str, device, n, points: int):
    """(model, x, y, the points' coordinates, the directions, a function that evaluates every point
    the reference code's way and returns the losses) for a case."""
    model, x, y = make_case(case, device, n)
    dirs = make_directions(target_tensors(model, "weights"), DirectionSpec(), seed=0)
    rng = np.random.default_rng(0)
    coords = [tuple(c) for c in rng.uniform(-0.5, 0.5, size=(points, 2))]
    coords[0] = (0.0, 0.0)
    ref_setter = PointSetter([t for _, t in target_tensors(model, "weights")], [dirs.x, dirs.y])

    def plain_points():
        out = []
        for c in coords:
            ref_setter.set(c)
            out.append(plain_eval(model, x, y))
        ref_setter.restore()
        return out

    return model, x, y, coords, dirs, plain_points


def plain_fresh(case: str, device, n, points: int) -> float:
    """Seconds for plain inference over the points in a new Python process that runs nothing else,
    as the reference code runs: its heap is not shaped by our loop's allocations (in one process
    plain inference was up to 1.9x faster or slower depending on them: BENCHMARKS.md)."""
    code = (f"import torch; torch.set_num_threads({torch.get_num_threads()}); from landscape.benchmark import "
            f"plain_child; plain_child({case!r}, torch.device({str(device)!r}), {n!r}, {points})")
    argv = [sys.executable, "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LandscapeError(f"the plain-inference child process failed: {done.stderr.strip().splitlines()[-1:]}")
    return float(done.stdout.strip().splitlines()[-1])


def seconds(fn, device) -> float:
    """Wall seconds of fn(), the device synchronized before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def plain_child(case: str, device, n, points: int) -> None:
    """The child of `plain_fresh`: one warm-up pass, then one timed pass; prints the seconds."""
    _, _, _, _, _, plain_points = plain_setup(case, device, n, points)
    plain_points()
    print(seconds(plain_points, device))


def point_loop(setter, ev, coords):
    """The surface loop: move to each point, evaluate; returns run(warm_up=False) -> losses."""
    def run(warm_up=False):
        vals = []
        for c in coords[:1] if warm_up else coords:
            setter.set(c)
            vals.append(ev()[0])
        return vals
    return run


def block_loop(multi, setter, coords):
    """K points per launch (`MultiPointEvaluator.block`): run(warm_up=False) -> losses."""
    def run(warm_up=False):
        return [row[0] for row in multi.block(setter, coords[:multi.points_per_pass] if warm_up else coords)]
    return run


def run_case(case: str, modes: list[str], points: int, repeats: int, device, n, batch_size,
             fresh: bool = False) -> dict:
    model, x, y, coords, dirs, plain_points = plain_setup(case, device, n, points)
    # plain eager runs the model as given (NCHW); our loop runs a copy set up as a surface job
    # sets it up (channels_last where it applies), so the layout is part of what is measured
    ours = copy.deepcopy(model)
    nhwc = False

    ref = np.array(plain_points())  # the plain fp32 loss at every point
    engines, compile_s, batches, mode_notes, failed = {}, {}, {}, {}, {}
    for mode in modes:
        opts = MODES[mode]
        if opts.precision == "fp16" and device.type != "cuda":
            print(f"skipping {mode}: fp16 is for CUDA", file=sys.stderr)
            continue
        opts = dataclasses.replace(opts, batch_size=batch_size, points_per_launch=PER_LAUNCH.get(mode, 1))
        setter = None
        try:  # a mode that fails to build or run (or is refused here) is reported, the others still measured
            precision = opts.precision if opts.allow_emulated else resolve_precision(opts.precision, device)
            bs = batch_size or default_batch_size(ours, x, precision)
            engine = prepare_engine(ours, "weights", [dirs.x, dirs.y], opts, example=x[:bs],
                                    check_points=[coords[0], coords[-1]])
            setter, notes = engine.setter, engine.report.notes()
            nhwc = nhwc or engine.report.channels_last
            ev = engine.evaluator(x, y, batch_size=opts.batch_size)  # K points per launch: a MultiPointEvaluator
            run = block_loop(ev, setter, coords) if mode in PER_LAUNCH else point_loop(setter, ev, coords)
            batches[mode] = ev.batch_size
            t0 = time.perf_counter()
            run(warm_up=True)  # the first point or block (and compilation)
            sync(device)
        except Exception as e:  # noqa: BLE001
            failed[mode] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(f"mode {mode} failed, left out: {failed[mode]}", file=sys.stderr)
            if setter is not None:
                setter.restore()
            continue
        compile_s[mode] = time.perf_counter() - t0
        mode_notes[mode] = notes + ([f"{PER_LAUNCH[mode]} points per launch (vmap)"] if mode in PER_LAUNCH else [])
        engines[mode] = (setter, run)

    times = {m: [] for m in ["plain", *engines]}
    fresh_times = []
    losses = {}
    peaks = {}
    for _ in range(repeats):
        times["plain"].append(seconds(plain_points, device))
        if fresh:
            fresh_times.append(plain_fresh(case, device, n, len(coords)))
        for mode, (setter, run) in engines.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            vals = run()
            sync(device)
            times[mode].append(time.perf_counter() - t0)
            setter.restore()
            losses[mode] = np.array(vals)
            peaks[mode] = peak_mb(device)
    forwards = len(coords) * len(x)
    plain_ips = forwards / statistics.median(times["plain"])
    result = {"case": case, "device": str(device), "hardware": device_info(device),
              "threads": torch.get_num_threads(), "samples": len(x),
              "points": len(coords), "repeats": repeats, "plain_ips": plain_ips, "channels_last": nhwc,
              "modes": {}, "failed": failed}
    if fold.CUDNN_FUSION_FAILED:  # the cudafuse modes ran these convolutions unfused
        result["cudnn_fusion_failed"] = {" ".join(map(str, k)): v for k, v in fold.CUDNN_FUSION_FAILED.items()}
    if fresh:
        result["plain_fresh_ips"] = forwards / statistics.median(fresh_times)
    for mode in engines:
        ips = forwards / statistics.median(times[mode])
        err = np.abs(losses[mode] - ref) / np.maximum(np.abs(ref), 1e-12)
        result["modes"][mode] = {"ips": ips, "ratio": ips / plain_ips, "max_rel_err": float(err.max()),
                                 "center_rel_err": float(err[0]), "peak_mem_mb": peaks[mode],
                                 "warmup_s": compile_s[mode], "batch_size": batches[mode],
                                 "notes": mode_notes[mode],
                                 "surface_flags": surface_flags(MODES[mode], PER_LAUNCH.get(mode, 1))}
        if fresh:
            result["modes"][mode]["ratio_fresh"] = ips / result["plain_fresh_ips"]
    return result


class _Timed:
    """An iterable over `loader` that adds the time spent fetching each batch to `seconds`."""

    def __init__(self, loader):
        self.loader, self.seconds = loader, 0.0

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - t0
            yield batch


class _DecodedImages(torch.utils.data.Dataset):
    """Images kept as uint8 and decoded per item (scaled and normalized), as a real input pipeline does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        lo, hi = x.min(), x.max()
        self.scale, self.offset = float(hi - lo) / 255, float(lo)
        self.x = ((x - lo) / (hi - lo) * 255).round().to(torch.uint8).cpu()
        self.y = y.cpu()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i].float() * self.scale + self.offset, self.y[i]


def run_stream(case: str, ks: list[int], points: int, repeats: int, device, n, batch_size, workers: int) -> dict:
    """Streaming evaluation: seconds per point for each K (points per pass over a DataLoader).

    The data-loading time per point is the time spent fetching batches from the DataLoader
    (reading and decoding, measured around each fetch) over the points; it falls like 1/K. The
    resident loop on the same decoded samples gives the compute alone.
    """
    from landscape.engine.stream import StreamEvaluator

    model, x, y = make_case(case, device, n)
    ds = _DecodedImages(x, y)
    bs = batch_size or 128
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda", persistent_workers=workers > 0)
    tensors = target_tensors(model, "weights")
    dirs = make_directions(tensors, DirectionSpec(), seed=0)
    setter = PointSetter([t for _, t in tensors], [dirs.x, dirs.y])
    coords = [tuple(c) for c in np.random.default_rng(0).uniform(-0.5, 0.5, size=(points, 2))]
    xs, ys = zip(*(ds[i] for i in range(len(ds))))
    resident = Evaluator(model, torch.stack(xs).to(device), torch.stack(ys).to(device), batch_size=bs)
    timed_loaders = {k: _Timed(loader) for k in ks}
    streams = {k: StreamEvaluator(model, timed_loaders[k], device=device, points_per_pass=k) for k in ks}

    def timed(run) -> float:
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        return time.perf_counter() - t0

    def run_resident():
        for c in coords:
            setter.set(c)
            resident()

    def run_stream(k):
        for i in range(0, points, k):
            streams[k].block(setter, coords[i:i + k])

    def read_only():
        for _ in loader:
            pass

    resident()  # warm-up
    times: dict = {"resident": [], "load": [], **{k: [] for k in ks}, **{("load", k): [] for k in ks}}
    for _ in range(repeats):  # interleaved, medians taken: machine load affects all alike
        times["resident"].append(timed(run_resident) / points)
        times["load"].append(timed(read_only))  # one pass of reading and decoding alone
        for k in ks:
            timed_loaders[k].seconds = 0.0
            times[k].append(timed(lambda: run_stream(k)) / points)
            times[("load", k)].append(timed_loaders[k].seconds / points)
    setter.restore()
    resident_s, load_s = statistics.median(times["resident"]), statistics.median(times["load"])
    rows = [{"k": k, "s_per_point": statistics.median(times[k]),
             "loading_s_per_point": statistics.median(times[("load", k)])} for k in ks]
    return {"case": case, "device": str(device), "threads": torch.get_num_threads(), "samples": len(ds),
            "points": points, "repeats": repeats, "batch_size": bs, "workers": workers, "resident_s_per_point": resident_s,
            "one_pass_loading_s": load_s, "stream": rows}


def stream_markdown(results: list[dict], command: str) -> str:
    lines = [f"### {dt.date.today().isoformat()}: `{command}`", "",
             f"{describe(device_info(results[0]['device']))}, torch {torch.__version__}, "
             f"{results[0]['threads']} threads, device {results[0]['device']}; streamed from a DataLoader "
             "(uint8 images decoded per item) vs the same samples resident on the device", "",
             "| case | samples × points | workers | one pass of loading s | resident s/pt | K | streamed s/pt | "
             "loading s/pt |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for row in r["stream"]:
            lines.append(f"| {r['case']} | {r['samples']} × {r['points']} | {r['workers']} | "
                         f"{r['one_pass_loading_s']:.3f} | {r['resident_s_per_point']:.3f} | {row['k']} | "
                         f"{row['s_per_point']:.3f} | {row['loading_s_per_point']:.3f} |")
    return "\n".join(lines) + "\n"


def markdown(results: list[dict], command: str, kept: bool = False) -> str:
    lines = [f"### {dt.date.today().isoformat()}: `{command}`", "",
             f"{describe(device_info(results[0]['device']))}, torch {torch.__version__}, "
             f"{results[0]['threads']} threads, device {results[0]['device']}, "
             f"{'freed memory kept (glibc)' if kept else 'the allocator as it is'}"
             + (f", {results[0]['busy_cores']} cores kept busy by other processes" if results[0].get("busy_cores")
                else ""), ""]
    fresh = all("plain_fresh_ips" in r for r in results)  # plain inference also in a process of its own
    own = " | plain ips, own process" if fresh else ""
    own_ratio, own_col = (" | ratio, own process", "---:|") if fresh else ("", "")
    lines += [f"| case | samples × points | plain ips{own} | mode | batch | ips | ratio{own_ratio} | max rel err | "
              "warm-up s | peak MB |", f"|---|---|---:|{own_col}---|---:|---:|---:|{own_col}---:|---:|---:|"]
    for r in results:
        for mode, m in r["modes"].items():
            batch = f"{m['batch_size']}{' NHWC' if r.get('channels_last') else ''}"
            plain = f"{r['plain_ips']:.0f} | {r['plain_fresh_ips']:.0f}" if fresh else f"{r['plain_ips']:.0f}"
            ratio = f"{m['ratio']:.2f}× | {m['ratio_fresh']:.2f}×" if fresh else f"{m['ratio']:.2f}×"
            lines.append(f"| {r['case']} | {r['samples']} × {r['points']} | {plain} | {mode} | {batch} | "
                         f"{m['ips']:.0f} | {ratio} | {m['max_rel_err']:.1e} | {m['warmup_s']:.1f} | "
                         f"{m['peak_mem_mb']:.0f} |")
    return "\n".join(lines) + "\n"


