"""The bad-input catalogue: each case exits 2 with one `error:` line that names the problem and the
fix, prints no traceback, and leaves every file as it was (nothing changed, added or removed).

Cases run in-process (plot_surface.main / merge_surfaces.main) over one shared folder of
prepared inputs; the folder is fingerprinted before and after each case.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import pytest
import torch

from landscape.sources.checkpoint import save_checkpoint
from landscape.directions import DirectionSpec, make_directions, save_directions, target_tensors
from landscape.models import get_model
from landscape.storage import read_surface, write_surface

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class World:
    """The prepared inputs, all under `root`."""

    root: Path
    ckpt: Path  # a good digits ResNet-20 checkpoint (outside root)

    def __getattr__(self, name: str) -> Path:  # w.junk_h5 -> root / "junk.h5"; w.out -> root / "out"
        return self.root / name.replace("_h5", ".h5").replace("_pt", ".pt").replace("_npz", ".npz")

    def base(self, *more: str) -> list[str]:
        return ["--ckpt", str(self.ckpt), "--x=-1:1:3", "--y=-1:1:3", "--n-samples", "16", "--no-progress",
                "--out", str(self.out), *more]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, digits_ckpt: Path, plot_surface: ModuleType) -> World:
    root = tmp_path_factory.mktemp("bad_inputs")
    w = World(root, digits_ckpt)
    torch.manual_seed(0)
    model = get_model("resnet20", num_classes=10, in_channels=1)
    (root / "text.pt").write_text("these are not weights\n")
    raw = digits_ckpt.read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    torch.save(model, root / "whole_model.pt")  # a pickled nn.Module, not a state_dict
    save_checkpoint(root / "five_classes.pt", get_model("resnet20", num_classes=5, in_channels=1),
                    {"arch": "resnet20", "num_classes": 5, "in_channels": 1, "dataset": "digits"})
    save_checkpoint(root / "rgb.pt", get_model("resnet20", num_classes=10, in_channels=3),
                    {"arch": "resnet20", "num_classes": 10, "in_channels": 3, "dataset": "cifar10"})
    save_checkpoint(root / "meta_lies.pt", get_model("resnet20", num_classes=5, in_channels=1),
                    {"arch": "resnet20", "num_classes": 10, "in_channels": 1, "dataset": "digits"})
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    np.savez(root / "labels20.npz", x=x, y=np.arange(20))
    np.savez(root / "negative.npz", x=x, y=np.full(20, -1))
    np.savez(root / "empty.npz", x=x[:0], y=np.zeros(0, dtype=np.int64))
    (root / "cifar" / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar" / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"")  # 2..5 missing
    r32 = get_model("resnet32", num_classes=10, in_channels=1)
    dirs = make_directions(target_tensors(r32, "weights"), DirectionSpec(), seed=0, ndim=2)
    dirs.attrs["arch"] = "resnet32"
    save_directions(root / "dirs_resnet32.h5", dirs)
    (root / "junk.h5").write_bytes(b"junk" * 256)
    (root / "a_file").write_text("a file, not a folder\n")

    # a computed surface, a truncated copy, shards of one job and of another, a tampered shard
    assert plot_surface.main(w.base("--surf_file", str(root / "out" / "s.h5"))) == 0
    good = (root / "out" / "s.h5").read_bytes()
    (root / "truncated.h5").write_bytes(good[: len(good) // 2])
    for i in range(2):
        assert plot_surface.main(w.base("--surf_file", str(root / "sh" / "a.h5"), "--shard", f"{i}/2")) == 0
    other = [*w.base("--surf_file", str(root / "sh" / "b.h5"), "--shard", "1/2"), "--n-samples", "32"]
    assert plot_surface.main(other) == 0
    tampered = read_surface(root / "sh" / "a.shard-0-of-2.h5")
    tampered.metrics["train_loss"].flat[0] += 1e-9
    write_surface(root / "sh" / "tampered.shard-0-of-2.h5", tampered)
    (root / "out" / "locked.h5.lock").write_text(json.dumps(
        {"host": "node042", "pid": 4242, "started": "2030-01-01T00:00:00+00:00"}))
    return w


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[World], list[str]]
    expected: tuple[str, ...]  # substrings of the error line: the problem and the fix
    script: str = "plot"  # or "merge"


CASES = [
    # checkpoints
    Case("ckpt-missing", lambda w: w.base("--ckpt", str(w.root / "nope.pt")),
         ("nope.pt' does not exist", "does not exist; check the path")),
    Case("ckpt-not-a-checkpoint", lambda w: w.base("--ckpt", str(w.text_pt)),
         ("cannot read checkpoint", "text.pt", "check the --ckpt path or copy the file again")),
    Case("ckpt-truncated", lambda w: w.base("--ckpt", str(w.truncated_pt)),
         ("cannot read checkpoint", "truncated.pt", "it is not a torch.save file or it is damaged")),
    Case("ckpt-pickled-model", lambda w: w.base("--ckpt", str(w.whole_model_pt)),
         ("holds Python objects besides tensors", "CifarResNet", "if you trust its source, pass --allow-pickle")),
    Case("ckpt-wrong-architecture", lambda w: w.base("--model", "resnet32"),
         ("does not fit resnet32", "missing keys", "closest architectures")),
    Case("ckpt-metadata-wrong-classes", lambda w: w.base("--ckpt", str(w.meta_lies_pt)),
         ("does not fit resnet20 (num_classes=10", "shape mismatches: linear.weight (5, 64) vs (10, 64)")),
    Case("ckpt-classes-of-other-data", lambda w: w.base("--ckpt", str(w.five_classes_pt)),
         ("digits train has labels up to 9 but the model has 5 outputs", "pass its --dataset")),
    Case("ckpt-channels-of-other-data", lambda w: w.base("--ckpt", str(w.rgb_pt), "--dataset", "digits"),
         ("the model does not take the digits train images, shape (1, 8, 8)", "pass its --dataset")),
    Case("unknown-model", lambda w: w.base("--model", "resnet999"),
         ("unknown model 'resnet999'", "choose one of: resnet110")),
    # the grid
    Case("x-missing-part", lambda w: w.base("--x=-1:1"), ("--x must be min:max:num like -1:1:51, got '-1:1'",)),
    Case("x-not-a-number", lambda w: w.base("--x=a:1:5"), ("--x bounds must be numbers (min:max:num like -1:1:51)",)),
    Case("x-num-zero", lambda w: w.base("--x=-1:1:0"), ("--x '-1:1:0': an axis needs at least 1 point, got num=0",)),
    Case("x-min-above-max", lambda w: w.base("--x=1:-1:5"), ("axis max must be >= min, got 1:-1; swap them",)),
    Case("x-extra-colon", lambda w: w.base("--x=-1:1:5:7"), ("--x must be min:max:num like -1:1:51, got '-1:1:5:7'",)),
    Case("x-negative-without-equals", lambda w: [*w.base(), "--x", "-1:1:5"],
         ("--x -1:1:5: a value starting with '-' is taken for a flag; write --x=-1:1:5",)),
    Case("y-negative-without-equals", lambda w: [*w.base(), "--y", "-.5:1:5"], ("write --y=-.5:1:5",)),
    Case("x-count-not-integer", lambda w: w.base("--x=-1:1:2.5"), ("--x point count must be an integer",)),
    # data
    Case("data-folder-missing", lambda w: w.base("--ckpt", str(w.rgb_pt), "--data-root", str(w.root / "nowhere")),
         ("cifar10 train files not found", "nowhere/data_batch_1", "inside --data-root")),
    Case("data-incomplete", lambda w: w.base("--ckpt", str(w.rgb_pt), "--data-root", str(w.cifar)),
         ("cifar-10-batches-py/data_batch_2", "put the extracted 'cifar-10-batches-py' folder")),
    Case("data-labels-out-of-range", lambda w: w.base("--dataset", "npz", "--data-root", str(w.labels20_npz)),
         ("npz train has labels up to 19 but the model has 10 outputs", "(or fix the labels)")),
    Case("data-negative-label", lambda w: w.base("--dataset", "npz", "--data-root", str(w.negative_npz)),
         ("npz train has label -1", "fix the data file")),
    Case("data-empty-file", lambda w: w.base("--dataset", "npz", "--data-root", str(w.empty_npz)),
         ("the evaluation set is empty", "check --n-samples and the data")),
    Case("data-empty-subset", lambda w: w.base("--n-samples", "0"), ("--n-samples must be >= 1, got 0",)),
    Case("data-unknown-split", lambda w: w.base("--split", "val"), ("--split must be train, test or train,test",)),
    # directions
    Case("dir-file-other-architecture", lambda w: w.base("--dir_file", str(w.dirs_resnet32_h5)),
         ("has 95 tensors but the model has 59 (made for resnet32", "use a direction file made for this architecture")),
    Case("dir-file-corrupt", lambda w: w.base("--dir_file", str(w.junk_h5)),
         ("is not a readable HDF5 direction file", "or omit --dir_file")),
    # the surface file
    Case("surface-other-settings", lambda w: [*w.base("--surf_file", str(w.out / "s.h5")), "--n-samples", "32"],
         ("s.h5 was computed with other settings (data.train.samples: 16 -> 32", "pass --overwrite")),
    Case("surface-corrupt", lambda w: w.base("--surf_file", str(w.junk_h5)),
         ("is not a readable HDF5 surface file", "pass --overwrite to replace it")),
    Case("surface-truncated", lambda w: w.base("--surf_file", str(w.truncated_h5)),
         ("truncated.h5' is not a readable HDF5 surface file", "pass --overwrite to replace it")),
    Case("surface-is-a-folder", lambda w: w.base("--surf_file", str(w.out)),
         ("out is a folder; give --surf_file a file name",)),
    Case("surface-of-a-shard", lambda w: w.base("--surf_file", str(w.sh / "a.shard-0-of-2.h5")),
         ("holds share 0/2, not the whole surface", "pass --shard 0/2 to continue it")),
    Case("surface-locked-elsewhere", lambda w: w.base("--surf_file", str(w.out / "locked.h5")),
         ("locked.h5 is being written by pid 4242 on host node042", "if it is no longer running, delete")),
    Case("out-not-writable", lambda w: w.base("--out", str(w.a_file / "sub")),
         ("cannot write to the folder", "a_file is not a folder", "pass --out with a writable folder")),
    # option names and numbers
    Case("unknown-norm", lambda w: w.base("--xnorm", "filtre"),
         ("argument --xnorm: invalid choice: 'filtre'", "choose from")),
    Case("unknown-ignore", lambda w: w.base("--yignore", "bn"),
         ("argument --yignore: invalid choice: 'bn'", "choose from")),
    Case("unknown-dir-type", lambda w: w.base("--dir_type", "grads"),
         ("argument --dir_type: invalid choice", "choose from")),
    Case("unknown-dataset", lambda w: w.base("--dataset", "imagenet"),
         ("argument --dataset: invalid choice", "choose from")),
    Case("unknown-loss", lambda w: w.base("--loss_name", "hinge"),
         ("argument --loss_name/--loss: invalid choice", "choose from")),
    Case("unknown-device", lambda w: w.base("--device", "tpu"),
         ("--device must be auto, cpu, cuda or cuda:N, got 'tpu'",)),
    Case("unknown-flag", lambda w: w.base("--mpi"), ("unrecognized arguments: --mpi", "see --help")),
    Case("batch-size-zero", lambda w: w.base("--batch-size", "0"), ("--batch-size must be >= 1, got 0",)),
    Case("threads-zero", lambda w: w.base("--threads", "0"), ("--threads must be >= 1, got 0",)),
    Case("max-points-negative", lambda w: w.base("--max-points", "-1"), ("--max-points must be >= 0, got -1",)),
    Case("flush-seconds-negative", lambda w: w.base("--flush-seconds", "-5"),
         ("--flush-seconds must be >= 0, got -5",)),
    # job-array shards
    Case("shard-malformed", lambda w: w.base("--shard", "1"), ("--shard must be INDEX/COUNT like 0/4", "got '1'")),
    Case("shard-not-numbers", lambda w: w.base("--shard", "a/b"), ("--shard must be INDEX/COUNT like 0/4",)),
    Case("shard-index-too-big", lambda w: w.base("--shard", "3/3"),
         ("--shard 3/3: the index must be 0 to 2", "numbered from 0")),
    Case("shard-count-zero", lambda w: w.base("--shard", "0/0"), ("--shard 0/0: the count must be at least 1",)),
    # merging shards
    Case("merge-other-settings", lambda w: [str(w.sh / "a.shard-0-of-2.h5"), str(w.sh / "b.shard-1-of-2.h5"),
                                            "--surf_file", str(w.sh / "m.h5")],
         ("b.shard-1-of-2.h5 was computed with other settings than", "data.train.samples: 16 vs 32",
          "merge only the shards of one job"), "merge"),
    Case("merge-points-disagree", lambda w: [str(w.sh / "a.shard-0-of-2.h5"), str(w.sh / "tampered.shard-0-of-2.h5")],
         ("disagree at 1 point(s) both computed (first at x=-1, y=-1: train_loss", "merge only one of them"), "merge"),
    Case("merge-not-a-surface", lambda w: [str(w.junk_h5), "--surf_file", str(w.sh / "m.h5")],
         ("junk.h5' is not a readable HDF5 surface file",), "merge"),
    Case("merge-missing-file", lambda w: [str(w.sh / "gone.shard-0-of-2.h5")],
         ("gone.shard-0-of-2.h5' does not exist",), "merge"),
    Case("merge-no-out-name", lambda w: [str(w.out / "s.h5")],
         ("s.h5 is not named like a shard (NAME.shard-I-of-N.h5); pass --name STEM or --surf_file FILE",), "merge"),
    Case("merge-into-other-surface",
         lambda w: [str(w.sh / "a.shard-0-of-2.h5"), "--surf_file", str(w.sh / "b.shard-1-of-2.h5")],
         ("other settings", "or pass --overwrite to replace"), "merge"),
    Case("merge-out-is-a-file-name", lambda w: [str(w.sh / "a.shard-0-of-2.h5"), "--out", str(w.sh / "m.h5")],
         ("m.h5 names a file, but --out is the merged file's folder", "pass --surf_file"), "merge"),
    Case("merge-surf-file-and-out", lambda w: [str(w.sh / "a.shard-0-of-2.h5"), "--surf_file", str(w.sh / "m.h5"),
                                               "--out", str(w.sh)],
         ("--surf_file names the merged file itself; drop --out and --name",), "merge"),
    Case("merge-surf-file-is-a-folder", lambda w: [str(w.sh / "a.shard-0-of-2.h5"), "--surf_file", str(w.sh)],
         ("is a folder; give a file name such as", "or pass --out"), "merge"),
]


def fingerprint(root: Path) -> dict[str, str]:
    """Every file and folder under root (hidden ones too) -> its sha256 (or 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, world: World, plot_surface: ModuleType, merge: ModuleType, capsys) -> None:
    before = fingerprint(world.root)
    capsys.readouterr()
    main = plot_surface.main if case.script == "plot" else merge.main
    with pytest.raises(SystemExit) as e:
        main(case.argv(world))
    assert e.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for text in case.expected:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    assert captured.out == ""
    assert fingerprint(world.root) == before  # no file changed, added or removed


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def test_n_samples_above_the_data_size_uses_all_of_it_with_a_note(plot_surface, capsys, digits_ckpt, tmp_path) -> None:
    argv = ["--ckpt", str(digits_ckpt), "--x=-1:1:2", "--split", "test", "--n-samples", "5000", "--no-progress",
            "--out", str(tmp_path)]
    assert plot_surface.main(argv) == 0
    out = capsys.readouterr().out
    assert "note: --n-samples 5000 is more than the 360 samples of digits test; using all 360" in out
    surf = read_surface(next(p for p in tmp_path.glob("*.h5") if "dirs" not in p.name))
    assert surf.attrs["n_samples"] == {"test": 360}


def test_a_bad_flag_in_a_shell_is_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_surface.py"), "--x", "-1:1:5", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: --x -1:1:5: a value starting with '-' is taken for a flag; write --x=-1:1:5\n")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the library's words
# The library names its own arguments; only a script's exit_on_error turns them into flags.


def _library_cases():
    from landscape.benchmark import make_case
    from landscape.distributed import Shard
    from landscape.hessian.operator import HessianOperator
    from landscape.losses import get_loss
    from landscape.sources.data import load_dataset
    from landscape.train import TrainConfig
    from landscape.trajectory import covering_axes, snapshot_paths

    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    return [  # (call, the library's message starts with, its arguments, the script's flags, the script's message starts with)
        (lambda: HessianOperator(model, x, y, method="fast"), "method must be one of", "method", {"method": "--hvp"},
         "--hvp must be one of"),
        (lambda: HessianOperator(model, x, y, batch_size=0), "batch_size must be >= 1", "batch_size", None,
         "--batch-size must be >= 1"),
        (lambda: HessianOperator(model, x, y[:5]), "x has 6 samples but y has 5", None, None, "x has 6 samples"),
        (lambda: snapshot_paths("/nonexistent/snaps"), "folder '/nonexistent/snaps' is not a folder", "folder",
         {"folder": "--model_folder"}, "--model_folder '/nonexistent/snaps' is not a folder"),
        (lambda: covering_axes(np.zeros((3, 2)) + [[0, 1], [1, 0], [1, 1]], margin=-1), "margin must be >= 0",
         "margin", None, "--margin must be >= 0"),
        (lambda: Shard(3, 3), "shard 3/3: the index must be 0 to 2", "shard", None, "--shard 3/3: the index"),
        (lambda: Shard.parse("a/b"), "shard must be INDEX/COUNT", "shard", None, "--shard must be INDEX/COUNT"),
        (lambda: get_loss("hinge"), "loss must be one of", "loss", None, "--loss_name must be one of"),
        (lambda: load_dataset("imagenet"), "dataset must be one of", "dataset", None, "--dataset must be one of"),
        (lambda: TrainConfig(optimizer="lbfgs"), "optimizer must be one of", "optimizer", None,
         "--optimizer must be one of"),
        (lambda: make_case("nope", torch.device("cpu"), 8), "case must be one of", "case", None, "--case must be one of"),
    ]


@pytest.mark.parametrize("i", range(11))
def test_library_errors_name_arguments_and_scripts_name_flags(i: int) -> None:
    from landscape.errors import LandscapeError, as_flags

    call, starts, argument, flags, flagged = _library_cases()[i]
    with pytest.raises(LandscapeError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(starts) and "\n" not in msg, msg
    assert not flagged.startswith("--") or flagged.split()[0] not in msg, msg  # the library does not speak in flags
    assert e.value.argument == argument
    assert as_flags(e.value, flags).startswith(flagged), as_flags(e.value, flags)


def test_a_script_with_its_own_flag_names_translates_them(script, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        script("plot_trajectory").main(["--model_folder", "/nonexistent/snaps", "--final", "/nonexistent/final.pt"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --model_folder '/nonexistent/snaps' is not a folder; point it at the snapshots of "
                   "scripts/train.py --save-every K"], err
