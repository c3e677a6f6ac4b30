"""Data-path benchmark: the on-device batching and augmentation against a ResNet training epoch.

Run:  python benchmarks/bench_data.py [--iterations 30] [--data-dir data]

Times, interleaved in one process, (a) what the training loop does to get one batch
(randperm slice, uint8 -> float, batched random crop) and (b) one ResNet training step
(forward, backward, SGD update) on such a batch, and reports the data path's share of an
epoch. Target: under 5% on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from noderun.data.batching import epoch_batches, random_crop, to_float
from noderun.data.mnist import load_mnist
from noderun.models.resnet import build_resnet
from noderun.profiling import device_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()

    torch.manual_seed(0)
    data = load_mnist(args.data_dir)
    images, labels = data.train_images, data.train_labels
    generator = torch.Generator().manual_seed(0)
    model = build_resnet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    data_times, step_times = [], []
    batches = epoch_batches(len(images), 128, generator)
    for i in range(args.iterations + 2):  # the first two are warm-up
        start = time.perf_counter()
        index = next(batches)
        x = random_crop(to_float(images[index]), 4, generator)
        y = labels[index]
        middle = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        end = time.perf_counter()
        if i >= 2:
            data_times.append(middle - start)
            step_times.append(end - middle)

    data_median, step_median = statistics.median(data_times), statistics.median(step_times)
    share = 100 * data_median / (data_median + step_median)
    print(f"device: {device_name(torch.device('cpu'))}, torch {torch.__version__}, median of {args.iterations}")
    print(f"data path per batch of 128:   {data_median * 1e3:8.3f} ms")
    print(f"ResNet training step:         {step_median * 1e3:8.3f} ms")
    print(f"data share of a ResNet epoch: {share:8.2f} %  (target < 5 %)")


if __name__ == "__main__":
    main()
