"""``orbitfl model``: list the zoo, build training artifacts, train and evaluate on a data set.

    orbitfl model list
    orbitfl model build NAME|FILE.onnx --out DIR [--optimizer adamw|sgd] [--trainable NAME ...]
                        [--backend onnxruntime|onnxruntime-training]
                        [--input 8x8|28x28|N] [--loss ce|mse] [--hidden N[,N]] [--classes N]
                        [--experts N] [--seed N]
    orbitfl model train DIR [--data digits|mnist1d|mnist|hyperspectral] [--epochs N] [--lr X]
                        [--checkpoint-dir D] [--save-weights FILE.npz]

Other parts of the package add subcommands to this group: a module ``orbitfl.models.tflite.cli``
with ``register(subparsers)`` is picked up when present (``export-tflite``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from orbitfl import data
from orbitfl.agent.backends import open_trainer
from orbitfl.models import artifacts, zoo
from orbitfl.models.manifest import read_manifest

EXTENSIONS = ("orbitfl.models.tflite.cli",)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("model", help="model zoo: build training artifacts, train, export")
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")

    p = sub.add_parser("list", help="the zoo's models and their parameters")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("build", help="write the inference model and the training graphs")
    p.add_argument("name", help="a zoo model (see `orbitfl model list`) or the path of your own .onnx file")
    p.add_argument("--out", required=True, type=Path, help="artifact directory to write")
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    p.add_argument(
        "--backend",
        default="onnxruntime",
        choices=["onnxruntime", "onnxruntime-training"],
        help="onnxruntime (default): standard-op graphs for stock ONNX Runtime >= 1.20; "
        "onnxruntime-training: ORT training artifacts (onnxruntime-training 1.19.2, onnx <= 1.17)",
    )
    p.add_argument(
        "--trainable",
        nargs="+",
        metavar="NAME",
        help="parameters to train: names, globs (expert.1.*) or prefixes (fc3); default all",
    )
    p.add_argument("--loss", choices=["ce", "mse"], help="default: ce for classifiers, mse for regressors")
    p.add_argument("--input", help="input size: 8x8, 28x28 or a feature count such as 64 or 40")
    p.add_argument("--hidden", type=_ints, help="hidden width(s), e.g. 128 or 256,128")
    p.add_argument("--classes", type=int)
    p.add_argument("--experts", type=int, help="moe: number of experts")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    p.add_argument("--task", choices=["classification", "regression"], help="for your own .onnx model")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("train", help="train an artifact directory on a data set and report accuracy")
    p.add_argument("artifacts", type=Path)
    p.add_argument("--data", default="digits", choices=["digits", "mnist1d", "mnist", "hyperspectral"])
    p.add_argument("--mnist-path", type=Path, help="folder with the four MNIST IDX files")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-dir", type=Path, help="resume from / checkpoint into this folder")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N batches")
    p.add_argument("--save-weights", type=Path, help="write the trained weights to this .npz")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    for module in EXTENSIONS:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its parent package is not there either
            found = False
        if found:
            importlib.import_module(module).register(sub)
    parser.set_defaults(func=lambda _args: parser.print_help() or 2)


def _fail(msg: str) -> int:
    print(f"orbitfl model: error: {msg}", file=sys.stderr)
    return 2


def cmd_list(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    for name in zoo.MODEL_NAMES:
        spec = zoo.build(name)
        shapes = zoo.parameter_shapes(spec.model)
        rows.append(
            {
                "name": name,
                "input": list(spec.input_shape),
                "task": spec.task,
                "outputs": spec.num_outputs,
                "parameters": {k: list(v) for k, v in shapes.items()},
                "size": int(sum(int(_prod(v)) for v in shapes.values())),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(
            f"{r['name']:<13} input {r['input']!s:<12} {r['task']:<15} {r['size']:>7} params: "
            + ", ".join(r["parameters"])
        )
    return 0


def _prod(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def cmd_build(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {"input": args.input, "classes": args.classes, "seed": args.seed}
    if args.hidden is not None:
        options["hidden"] = args.hidden if args.name == "mlp" else args.hidden[0]
    if args.experts is not None:
        options["experts"] = args.experts
    try:
        if args.name.endswith(".onnx") or "/" in args.name:
            spec = artifacts.resolve_model(args.name, task=args.task)
        else:
            if args.task is not None:
                return _fail("--task applies to your own .onnx models only")
            spec = artifacts.resolve_model(args.name, **options)
        manifest = artifacts.build_artifacts(
            spec,
            args.out,
            optimizer=args.optimizer,
            trainable=args.trainable,
            loss=args.loss,
            backend=args.backend,
        )
    except (ValueError, ImportError) as exc:
        return _fail(str(exc))
    frozen = len(manifest.parameters) - len(manifest.trainable)
    print(
        f"built {manifest.model} ({manifest.task}, loss {manifest.loss}, optimizer {manifest.optimizer}, "
        f"backend {manifest.backend}) in "
        f"{args.out}: {len(manifest.trainable)} trainable, {frozen} frozen parameters"
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import numpy as np

    try:
        trainer = open_trainer(args.artifacts, learning_rate=args.lr)
        if args.data == "mnist":
            if args.mnist_path is None:
                return _fail("--data mnist needs --mnist-path FOLDER (the four standard IDX files)")
            ds = data.load_mnist(args.mnist_path)
        else:
            ds = data.load(args.data)
        metrics = trainer.train(
            ds.x_train,
            ds.y_train,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_every=args.checkpoint_every,
        )
        ev = trainer.evaluate(ds.x_test, ds.y_test)
    except (TypeError, ValueError, ImportError) as exc:  # ImportError: no ORT training build here
        return _fail(f"{args.artifacts}: {exc}")
    if args.save_weights is not None:
        np.savez(args.save_weights, **trainer.get_weights())  # type: ignore[arg-type]
    out = {
        "model": read_manifest(args.artifacts).model,
        "data": ds.name,
        "epochs": args.epochs,
        "resumed_from": metrics.resumed_from,
        "train_loss": metrics.loss,
        "sec_per_epoch": metrics.seconds / max(metrics.epochs, 1e-9),
        "test_loss": ev.loss,
        "test_accuracy": ev.accuracy,
    }
    if args.json:
        print(json.dumps(out))
    else:
        acc = "n/a (regression)" if ev.accuracy is None else f"{ev.accuracy:.4f}"
        print(
            f"{out['model']} on {ds.name}: {args.epochs} epochs, {out['sec_per_epoch']:.4f} s/epoch, "
            f"test loss {ev.loss:.4f}, test accuracy {acc}"
            + (f" (resumed from epoch {metrics.resumed_from[0]})" if metrics.resumed_from else "")
        )
    return 0
