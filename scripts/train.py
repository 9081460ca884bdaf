#!/usr/bin/env python3
"""Train a registered model and save a checkpoint with metadata (and optional snapshots)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import landscape  # noqa: E402
from landscape.sources.checkpoint import save_checkpoint  # noqa: E402
from landscape.sources.data import DATASETS, DEFAULT_NORMALIZATION, load_dataset  # noqa: E402
from landscape.cli import check_name  # noqa: E402
from landscape.errors import LandscapeError, exit_on_error  # noqa: E402
from landscape.models import get_model  # noqa: E402
from landscape.surface import resolve_device  # noqa: E402
from landscape.train import OPTIMIZERS, TrainConfig, train  # noqa: E402

EXAMPLE = """example:
  python scripts/train.py --model resnet20 --dataset digits --epochs 40 --out checkpoints   # digits_resnet20.pt
  python scripts/train.py --model resnet20 --epochs 20 --save-every 1 --out results/traj_r20 --name final"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered architecture, e.g. resnet20, resnet56_noshort")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--data-root", default=None)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--nesterov", action="store_true")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--optimizer", default="sgd", choices=OPTIMIZERS)
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=None, help="also save model_<epoch>.pt every K epochs")
    p.add_argument("--augment", action="store_true", help="random crop (4-pixel padding) + horizontal flip")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-test", action="store_true", help="skip the test split (e.g. when only the train files are at hand)")
    p.add_argument("--out", required=True, metavar="FOLDER",
                   help="folder for the checkpoint <name>.pt and the --save-every snapshots model_<epoch>.pt")
    p.add_argument("--name", default=None, metavar="STEM",
                   help="the checkpoint's file name stem (default: <dataset>_<model>, e.g. digits_resnet20)")
    p.add_argument("--manifest", default=None,
                   help="record the file (command, seed, wall time, sha256, accuracies) in this MANIFEST.json")
    return p.parse_args(argv)


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".t7")


def checkpoint_path(args: argparse.Namespace) -> Path:
    """`<--out>/<--name>.pt`, --name defaulting to <dataset>_<model>."""
    folder = Path(args.out)
    if folder.is_file() or (folder.suffix in CHECKPOINT_SUFFIXES and not folder.is_dir()):
        raise LandscapeError(f"--out {args.out} names a file, but --out is the checkpoint's folder; pass --out "
                             f"{folder.parent} --name {folder.stem}")
    name = args.name if args.name is not None else f"{args.dataset}_{args.model}"
    check_name(name)
    if Path(name).suffix in CHECKPOINT_SUFFIXES:
        raise LandscapeError(f"--name {name} has the suffix; give the stem: --name {Path(name).stem}")
    return folder / f"{name}.pt"


@exit_on_error
def main(argv=None) -> None:
    args = parse_args(argv)
    out = checkpoint_path(args)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                      nesterov=args.nesterov, weight_decay=args.weight_decay, optimizer=args.optimizer,
                      warmup_epochs=args.warmup_epochs, seed=args.seed, save_every=args.save_every,
                      augment=args.augment)
    tr = load_dataset(args.dataset, "train", args.data_root)
    te = None if args.no_test else load_dataset(args.dataset, "test", args.data_root)
    norm = DEFAULT_NORMALIZATION.get(args.dataset) or _stats(tr.x)
    import torch
    torch.manual_seed(args.seed)
    model = get_model(args.model, num_classes=tr.num_classes, in_channels=tr.in_channels)
    command = "python scripts/train.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    meta = {"arch": args.model, "num_classes": tr.num_classes, "in_channels": tr.in_channels,
            "dataset": args.dataset, "normalization": norm.to_dict(), "seed": args.seed,
            "train": json.dumps(vars(args)), "command": command, "landscape_version": landscape.__version__}

    def snapshot(epoch, m, metrics):
        if epoch != cfg.epochs and cfg.save_every:
            save_checkpoint(out.parent / f"model_{epoch}.pt", m, {**meta, "epoch": epoch, **metrics})

    result = train(model, tr, norm, cfg, te, resolve_device(args.device), snapshot)
    final = result["final"]
    sha = save_checkpoint(out, model, {**meta, "epoch": cfg.epochs, **final})
    entry = {"file": out.name, "arch": args.model, "dataset": args.dataset, "command": command, "seed": args.seed,
             "sha256": sha, "bytes": out.stat().st_size, **final}
    if args.manifest:
        update_manifest(Path(args.manifest), entry)
    print(json.dumps(entry))


def update_manifest(path: Path, entry: dict) -> None:
    """Replace (or add) the entry for entry["file"] in a JSON manifest, keeping the others."""
    data = json.loads(path.read_text()) if path.exists() else {"checkpoints": []}
    data["checkpoints"] = [e for e in data["checkpoints"] if e["file"] != entry["file"]] + [entry]
    data["checkpoints"].sort(key=lambda e: e["file"])
    path.write_text(json.dumps(data, indent=2) + "\n")


def _stats(x):
    from landscape.sources.data import Normalization
    dims = (0, 2, 3)
    return Normalization(tuple(x.mean(dims).tolist()), tuple(x.std(dims).tolist()))


if __name__ == "__main__":
    main()
