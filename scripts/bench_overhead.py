#!/usr/bin/env python
"""Targets 2 and 4: what trainlab's runner costs. `trainlab train` (full metric set, gradient norms,
logging) against a bare loop at identical settings (resnet18, 200 classes, batch 128, the precision and
memory format trainlab's `auto` picks on this machine, the same decoded in-memory data and batched
augmentation); and `trainlab evaluate`'s prediction loop against a bare inference_mode loop. A B A B in
one process, about a minute on 2 cores.

    .venv/bin/python scripts/bench_overhead.py [--steps 8] [--batch-size 128]
"""

import argparse
import time

import torch
import torchvision

from trainlab.augment import Normalize
from trainlab.core.config import component
from trainlab.core.runtime import resolve_runtime
from trainlab.engine.ready import predict_logits as predict

from benchlib import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    alternate,
    bare_eval_ips,
    bare_train_ips,
    report,
    trainlab_train_ips,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="A B rounds per comparison")
    args = parser.parse_args()
    runtime = resolve_runtime("cpu", "auto", "auto", "auto", False)
    precision, cl = runtime.precision, runtime.channels_last
    n, bs = args.steps * args.batch_size, args.batch_size
    data = component("dataset", "fake", num_classes=200, train_size=n, val_size=bs, image_size=64, batch_size=bs)
    data.setup(("train",))
    images, labels = data.splits["train"].images, data.splits["train"].labels
    trainlab = ["dataset=fake", "dataset.num_classes=200", f"dataset.train_size={n}", f"dataset.val_size={bs}",
                "dataset.image_size=64", f"dataset.batch_size={bs}", "model=resnet18", "trainer.epochs=1",
                f"trainer.precision={precision}", f"trainer.channels_last={cl}", "trainer.histogram_every_n_epochs=0",
                "scheduler=none", "optimizer.weight_decay=1e-4"]
    train = alternate({
        "bare loop": lambda: bare_train_ips(images, labels, 200, bs, args.steps, precision, cl),
        "trainlab train (all metrics)": lambda: trainlab_train_ips(trainlab),
    }, rounds=args.rounds)
    setting = f"precision {precision}, channels_last {cl}"
    report(f"training images/s, resnet18/200 classes, batch {bs}, {setting}, {args.steps} steps", train,
           {"train_overhead": ("trainlab train (all metrics)", "bare loop")})

    fmt = torch.channels_last if cl else torch.contiguous_format
    model = torchvision.models.resnet18(num_classes=200).to(memory_format=fmt)
    eval_data = component("dataset", "fake", num_classes=200, train_size=16, val_size=args.eval_batches * bs,
                          image_size=64, batch_size=bs)
    eval_data.setup(("val",))
    eval_images = eval_data.splits["val"].images
    normalize = Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def trainlab_eval() -> float:
        start = time.perf_counter()
        predict(model, eval_data.loader("val"), normalize, runtime)
        return len(eval_images) / (time.perf_counter() - start)

    evaluation = alternate({
        "bare inference_mode loop": lambda: bare_eval_ips(model, eval_images, bs, precision),
        "trainlab evaluate (predict)": trainlab_eval,
    }, rounds=args.rounds + 1, warmup=True)
    report(f"evaluation images/s, batch {bs}, {setting}", evaluation,
           {"eval_overhead": ("trainlab evaluate (predict)", "bare inference_mode loop")})


if __name__ == "__main__":
    main()
