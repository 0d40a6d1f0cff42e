"""The PyTorch peer for `make bench`: the seed's networks written the way PyTorch's tutorials
write a training loop (nn.Module, DataLoader-free tensor slicing, zero_grad/backward/step), on
the CPU. Benchmark-only: torch is never a dependency of dlrun (`pip install torch==2.13.0`).

Each network mirrors its radford_* preset: same layers, no biases, batch 128 in order, the same
optimizer family (torch's RMSprop adds eps outside the square root; the cost is the same).
"""
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def logreg() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10, bias=False))


def net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 625, bias=False), nn.Sigmoid(),
                         nn.Linear(625, 10, bias=False))


def modern_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(784, 625, bias=False), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(625, 625, bias=False), nn.ReLU(),
                         nn.Dropout(0.5), nn.Linear(625, 10, bias=False))


def convnet() -> nn.Module:
    block = lambda cin, cout, pad: [nn.Conv2d(cin, cout, 3, padding=pad, bias=False), nn.ReLU(),
                                    nn.MaxPool2d(2, ceil_mode=True), nn.Dropout(0.2)]
    return nn.Sequential(*block(1, 32, 2), *block(32, 64, 0), *block(64, 128, 0), nn.Flatten(),
                         nn.Linear(128 * 3 * 3, 625, bias=False), nn.ReLU(), nn.Dropout(0.5),
                         nn.Linear(625, 10, bias=False))


NETWORKS = {  # preset -> (model, optimizer)
    "radford_logreg": (logreg, lambda p: torch.optim.SGD(p, lr=0.05)),
    "radford_net": (net, lambda p: torch.optim.SGD(p, lr=0.05)),
    "radford_modern_net": (modern_net, lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6)),
    "radford_convnet": (convnet, lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6)),
}


def ms_per_step(preset: str, x: np.ndarray, y: np.ndarray, steps: int, batch: int = 128,
                device: str = "cpu") -> float:
    """Steady state: warm up 5 steps, then time `steps` steps in data order."""
    torch.manual_seed(0)
    make_model, make_opt = NETWORKS[preset]
    model = make_model().to(device)
    for p in model.parameters():
        nn.init.normal_(p, std=0.01)
    opt = make_opt(model.parameters())
    xt = torch.from_numpy(np.array(x.transpose(0, 3, 1, 2))).to(device)  # NCHW, on the device
    yt = torch.from_numpy(y.astype(np.int64)).to(device)
    model.train()

    def step(i: int) -> None:
        s = (i * batch) % (len(xt) - batch)
        opt.zero_grad()
        loss = F.cross_entropy(model(xt[s:s + batch]), yt[s:s + batch])
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for i in range(5):
        step(i)
    sync()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync()
    return 1000 * (time.perf_counter() - t0) / steps


def load_images() -> tuple[np.ndarray, np.ndarray]:
    """The benchmark's 60,000 training images: Fashion-MNIST if found offline, else random."""
    from dlrun.data.sources import load_raw  # numpy only; no JAX in this process
    from dlrun.errors import DataError
    try:
        x, y, _, _ = load_raw("fashion_mnist", download=False)
        return (x[..., None] / np.float32(255)).astype(np.float32), y
    except DataError:
        r = np.random.default_rng(0)
        return r.random((60000, 28, 28, 1), dtype=np.float32), r.integers(0, 10, 60000)


if __name__ == "__main__":
    # Run by bench_epoch.py in a subprocess: torch's OpenMP threads, once started, halve the
    # speed of JAX in the same process on 2 cores (measured: 188 -> 100 GFLOP/s matmul).
    import json
    import sys
    preset, steps = sys.argv[1], int(sys.argv[2])
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"  # "cuda" when dlrun runs on a GPU
    x, y = load_images()
    print(json.dumps({"torch": torch.__version__, "device": device,
                      "ms_per_step": ms_per_step(preset, x, y, steps, device=device)}))
