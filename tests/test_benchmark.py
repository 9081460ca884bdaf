"""scripts/benchmark.py end to end on a tiny case: the JSON keys the speed issue names, and plain
inference timed in a process of its own."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import benchmark  # noqa: E402  (the script: its command line)

from landscape import benchmark as bench  # noqa: E402  (the package: the modes and their flags)


def test_benchmark_writes_ratios_against_plain_inference_in_and_out_of_process(tmp_path) -> None:
    out = tmp_path / "bench.json"
    benchmark.main(["--case", "digits-resnet20", "--modes", "fp32,fp32-nopack", "--points", "2", "--repeats", "1",
                    "--n-samples", "64", "--threads", "1", "--plain-fresh", "--json", str(out)])
    d = json.loads(out.read_text())
    case = d["cases"][0]
    assert d["plain_ips"] == case["plain_ips"] > 0 and case["plain_fresh_ips"] > 0
    assert d["keep_freed_memory"] in (True, False)  # True on glibc
    for mode in ("fp32", "fp32-nopack"):
        m = d[mode]
        assert m["ips"] > 0 and m["peak_mem_mb"] > 0
        assert m["ratio"] == pytest.approx(m["ips"] / case["plain_ips"])
        assert m["ratio_fresh"] == pytest.approx(m["ips"] / case["plain_fresh_ips"])
        assert m["max_rel_err"] < 1e-5  # exact modes agree with the plain fp32 loop


def test_benchmark_rejects_an_unknown_mode(capsys) -> None:
    with pytest.raises(SystemExit):
        benchmark.main(["--modes", "fp64"])
    assert "unknown mode 'fp64'" in capsys.readouterr().err


@pytest.mark.parametrize("mode", sorted(bench.MODES))
def test_each_mode_has_the_surface_flags_that_reproduce_it(mode) -> None:
    """scripts/gpu_check.sh runs the surface with the fastest mode's `surface_flags`: parsed by
    plot_surface.py they must give a job with the mode's engine options."""
    import plot_surface

    opts, k = bench.MODES[mode], bench.PER_LAUNCH.get(mode, 1)
    job = plot_surface.build_job(plot_surface.parse_args(["--ckpt", "m.pt", *bench.surface_flags(opts, k)]))
    e = job.engine
    assert (e.precision, e.fold_bn, e.compile, e.compile_mode, e.cuda_fuse, e.cudnn_benchmark,
            e.points_per_launch) == (opts.precision, opts.fold_bn, opts.compile, opts.compile_mode, opts.cuda_fuse,
                                     opts.cudnn_benchmark, k)
