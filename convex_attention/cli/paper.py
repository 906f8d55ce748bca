"""Subcommands of the paper's experiment: ``train``, ``explain`` and ``experiment``."""
from __future__ import annotations

import argparse
import json
import os

from ._common import add_output_options, info, show_progress

__all__ = ["add_experiment_commands", "EXPERIMENT_HANDLERS"]


def add_experiment_commands(sub) -> None:
    from ..methods import METHODS

    fmt = argparse.ArgumentDefaultsHelpFormatter
    t = sub.add_parser(
        "train", help="train the attention CNN on weakly annotated images (labels only)", formatter_class=fmt,
        description="Adam + cross-entropy (+ alpha * consistency_loss for learned_dual), flips and small affine "
                    "augmentation. Writes OUT/metrics.csv (loss, accuracy, balanced accuracy, attention violation "
                    "on validation), OUT/best.pt (by validation balanced accuracy) and OUT/last.pt. Runs unchanged "
                    "under torchrun (DistributedDataParallel; gloo on CPU, nccl on GPU).")
    t.add_argument("--method", default="learned_dual", choices=list(METHODS))
    t.add_argument("--data", default="synthetic", choices=["synthetic", "brats", "folder"],
                   help="synthetic lesions (offline), BraTS 2018 (--data-root), or a folder (--data-root)")
    t.add_argument("--data-root", default=None)
    t.add_argument("--image-size", type=int, default=128, help="a multiple of 16")
    t.add_argument("--channels", type=int, default=4)
    t.add_argument("--n-train", type=int, default=2000, help="synthetic training images")
    t.add_argument("--n-val", type=int, default=500, help="synthetic validation images")
    t.add_argument("--difficulty", type=float, default=0.5, help="synthetic difficulty in [0, 1]")
    t.add_argument("--width", type=int, default=32, help="channels of the first block (32 in the paper)")
    t.add_argument("--attention-blocks", type=int, nargs="+", default=[3, 4],
                   help="2 or 3 consecutive blocks (1-4, 5 = bottleneck)")
    t.add_argument("--temperature", type=float, default=1.0)
    t.add_argument("--alpha", type=float, default=10.0, help="weight of the consistency loss (learned_dual)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--workers", type=int, default=0, help="data loader workers")
    t.add_argument("--device", default="auto", help="auto, cpu or cuda")
    t.add_argument("--resume", default=None, help="checkpoint to continue from (e.g. OUT/last.pt)")
    t.add_argument("--out", default="runs/model")
    add_output_options(t)

    e = sub.add_parser(
        "explain", help="score attention maps and post-hoc baselines against lesion masks", formatter_class=fmt,
        description="On validation images with a lesion: each model's attention maps at every level, and on the "
                    "model named by --baseline-model (softmax) GradCAM (at each attention level's resolution), "
                    "DeepLIFT, LRP, Input x Gradient and Integrated Gradients. Maps are upsampled to the image by "
                    "nearest neighbour and scored: ap, qiou@0.9/0.95/0.975, pointing, mass. Writes "
                    "explain.csv, explain_summary.csv, explain.md and explain_examples.png.")
    e.add_argument("--checkpoints", nargs="+", required=True, metavar="NAME=PATH",
                   help="models to explain, e.g. softmax=runs/softmax/best.pt exact=runs/exact/best.pt")
    e.add_argument("--baseline-model", default="softmax", help="the NAME the post-hoc baselines explain")
    e.add_argument("--target", default="true", choices=["true", "predicted"],
                   help="class explained by the baselines: the true class (1, lesion) or the prediction")
    e.add_argument("--n-images", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--device", default="cpu")
    e.add_argument("--out", default="results/explain")
    add_output_options(e)

    x = sub.add_parser(
        "experiment", help="the paper's experiment: train softmax/learned_dual/exact x 3 seeds, then explain",
        formatter_class=fmt,
        description="Trains softmax, learned_dual and exact models on the synthetic dataset with 3 seeds each, "
                    "explains them, and reports per method: validation balanced accuracy, every explanation "
                    "metric, the attention violation on held-out images and the training time per epoch "
                    "(experiment.md, experiment.csv, experiment_summary.csv).")
    x.add_argument("--quick", action="store_true", help="small images and few epochs: under 10 minutes on 2 CPU cores")
    x.add_argument("--seeds", type=int, nargs="+", default=None)
    x.add_argument("--epochs", type=int, default=None)
    x.add_argument("--image-size", type=int, default=None)
    x.add_argument("--width", type=int, default=None)
    x.add_argument("--n-train", type=int, default=None)
    x.add_argument("--device", default="auto")
    x.add_argument("--out", default="results/experiment")
    add_output_options(x)


def cmd_train(args) -> int:
    from ..paper.train import TrainConfig, train

    if args.image_size % 16:
        raise _usage(f"--image-size {args.image_size} is not divisible through the pooling stack (a multiple of 16)")
    config = TrainConfig(out=args.out, method=args.method, data=args.data, data_root=args.data_root,
                         image_size=args.image_size, channels=args.channels, n_train=args.n_train, n_val=args.n_val,
                         difficulty=args.difficulty, width=args.width, attention_blocks=tuple(args.attention_blocks),
                         temperature=args.temperature, alpha=args.alpha, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, augment=not args.no_augment, seed=args.seed,
                         workers=args.workers, device=args.device, resume=args.resume,
                         progress=show_progress(args))
    result = train(config)
    if result["metrics"]:
        last = result["metrics"][-1]
        print(f"train: {args.out}/metrics.csv, best.pt, last.pt (last val balanced acc "
              f"{last['val_balanced_acc']:.3f})")
    return 0


def _usage(message: str):
    from ._common import UsageError

    return UsageError(message)


def cmd_explain(args) -> int:
    from ..paper.data import build_datasets
    from ..paper.explain import explain_models, write_outputs
    from ..paper.models import load_model

    models, run_config = {}, None
    for spec in args.checkpoints:
        if "=" not in spec:
            raise _usage(f"--checkpoints takes NAME=PATH, got {spec!r}")
        name, path = spec.split("=", 1)
        if not os.path.exists(path):
            raise _usage(f"checkpoint {path!r} does not exist")
        models[name], _ = load_model(path)
        cfg_path = os.path.join(os.path.dirname(path), "config.json")
        if run_config is None and os.path.exists(cfg_path):
            with open(cfg_path) as f:
                run_config = json.load(f)
    if run_config is None:
        raise _usage("no config.json next to the checkpoints: cannot rebuild the validation data")
    _, val = build_datasets(run_config["data"], run_config.get("data_root"), run_config["image_size"],
                            run_config["channels"], run_config["n_train"], run_config["n_val"],
                            run_config["difficulty"], run_config.get("seed", 0))
    rows, examples = explain_models(models, val, n_images=args.n_images,
                                    baseline_model=args.baseline_model if args.baseline_model in models else None,
                                    target=args.target, batch_size=args.batch_size, device=args.device,
                                    progress=show_progress(args))
    paths = write_outputs(rows, examples, args.out)
    with open(paths["markdown"]) as f:
        print(f.read())
    print("explain: " + ", ".join(paths.values()))
    return 0


def cmd_experiment(args) -> int:
    from dataclasses import replace

    from ..paper.experiment import FULL, QUICK, run_experiment

    config = QUICK if args.quick else FULL
    overrides = {k: v for k, v in {"seeds": tuple(args.seeds) if args.seeds else None, "epochs": args.epochs,
                                   "image_size": args.image_size, "width": args.width, "n_train": args.n_train,
                                   "device": args.device}.items() if v is not None}
    config = replace(config, **overrides)
    if config.image_size % 16:
        raise _usage(f"--image-size {config.image_size} is not divisible through the pooling stack")
    result = run_experiment(config, args.out, progress=show_progress(args))
    print(result["report"])
    print(f"experiment: {args.out}/experiment.md")
    return 0


EXPERIMENT_HANDLERS = {"train": cmd_train, "explain": cmd_explain, "experiment": cmd_experiment}
