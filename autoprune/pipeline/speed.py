"""How fast a model runs: the median latency of a forward pass, and the MACs of the model as it executes.

``measure_latency`` times forward passes with ``torch.utils.benchmark.Timer`` (which sets the thread count while
it times and, on CUDA, synchronises the device around every timed block). ``SpeedProbe`` is what a trial does with
it: time the dense model before training, then the final model after finetuning, on the same device, and count the
final model's MACs as it executes (``measure.count_macs`` over every operation): a physically smaller structured
model counts fewer, an unstructured masked one runs dense kernels and counts as many as the dense model (its
``flops_effective`` is the "if sparse kernels existed" number).
"""

from __future__ import annotations

import math
import statistics
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from autoprune.config import MeasureConfig
from autoprune.errors import ConfigError, first_line
from autoprune.pipeline.measure import Macs, count_macs

__all__ = ["Speed", "SpeedProbe", "latency_batches", "measure_latency"]

BLOCK_SECONDS = 1e-3  # a timed block lasts at least this: the clock (and a CUDA sync, ~10 us) costs at most 1%
MAX_SECONDS = 2.0  # per batch size: past this a slow model is timed MIN_REPEATS blocks rather than all of `repeats`
MIN_REPEATS = 3


def _device_timer(device: torch.device) -> Callable[[], float]:
    """The clock of a timed block: on CUDA it waits for the device, so a block times the kernels, not their launch."""
    if device.type != "cuda":
        return timeit.default_timer  # a CPU model: no accelerator to wait for (another trial may be using it)

    def synchronised() -> float:
        torch.cuda.synchronize(device)
        return timeit.default_timer()

    return synchronised


def _check(where: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{where} must be a whole number >= {low}, got {value!r}")
    return value


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device | None = None,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 20,
    warmup: int = 3,
    amp: bool = False,
) -> dict[int, float]:
    """Median milliseconds of one forward pass of ``model`` on a batch of each size in ``batch_sizes``.

    The model runs in eval mode under ``torch.inference_mode()`` on random inputs shaped ``(batch, *input_shape)``
    in its own dtype, on ``device`` (default: where its parameters are); on the CPU with 1 thread, so that a
    measurement does not depend on what else the machine runs and compares across trials; with ``amp`` on CUDA
    under bf16 autocast, as a trial evaluates. The mode of every submodule and the process's thread count are
    restored afterwards, and the global random state is left untouched (the inputs come from a generator of
    their own).

    Method: ``warmup`` untimed passes (lazy initialisation, cuDNN's autotuner), one timed pass to size the blocks,
    then ``repeats`` timed blocks of ``n`` passes each with ``Timer.timeit(n)``, ``n`` chosen so that a block lasts
    at least ``BLOCK_SECONDS``; the result is the median block's time per pass. A fixed number of blocks and their
    median, rather than ``blocked_autorange``'s time budget, keeps the cost known (about ``repeats`` x max(pass,
    ``BLOCK_SECONDS``) per batch size, a few tens of milliseconds for a LeNet) and one noisy block from moving
    the result. A model so slow that ``repeats`` blocks take more than ``MAX_SECONDS`` stops after
    ``MIN_REPEATS`` blocks past that time.
    """
    sizes = [_check("latency batch size", b, 1) for b in batch_sizes]
    repeats, warmup = _check("latency repeats", repeats, 1), _check("latency warm-up passes", warmup, 0)
    params = [p for p in model.parameters()]
    dev = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)
    threads = 1 if dev.type == "cpu" else torch.get_num_threads()
    modes = {m: m.training for m in model.modules()}
    before = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    out: dict[int, float] = {}
    try:
        torch.set_num_threads(threads)
        model.eval()
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=amp and dev.type == "cuda"):
            for size in dict.fromkeys(sizes):
                x = torch.randn((size, *input_shape), generator=generator).to(device=dev, dtype=dtype)
                out[size] = _median_ms(model, x, dev, threads, repeats, warmup)
    finally:
        for module, training in modes.items():
            module.training = training
        torch.set_num_threads(before)
    return out


def _median_ms(
    model: nn.Module, x: torch.Tensor, device: torch.device, threads: int, repeats: int, warmup: int
) -> float:
    from torch.utils.benchmark import Timer

    for _ in range(warmup):
        model(x)
    timer = Timer(stmt="model(x)", globals={"model": model, "x": x}, timer=_device_timer(device), num_threads=threads)
    one = timer.timeit(1).median  # Timer.timeit runs 2 untimed passes of its own first
    number = max(1, math.ceil(BLOCK_SECONDS / max(one, 1e-9)))
    started, blocks = time.perf_counter(), []
    while len(blocks) < repeats:
        blocks.append(timer.timeit(number).median)
        if len(blocks) >= MIN_REPEATS and time.perf_counter() - started > MAX_SECONDS:
            break
    return 1e3 * statistics.median(blocks)


def latency_batches(settings: MeasureConfig) -> tuple[int, ...]:
    """The batch sizes a trial times: 1 (one request at a time) and ``measure.latency_batch``."""
    return tuple(dict.fromkeys((1, settings.latency_batch)))


@dataclass(frozen=True)
class Speed:
    """What a trial records about the speed of its final model; None where the measurement could not run."""

    macs: int | None = None  # MACs per sample of the final model as it executes (dense kernels for masked weights)
    macs_dense: int | None = None  # the same for the dense model
    latency_batch: int | None = None  # the batch size of latency_ms, latency_dense_ms and speedup
    latency_ms: float | None = None  # median ms per forward pass of the final model at latency_batch
    latency_dense_ms: float | None = None  # the same for the dense model, timed in the same trial before training
    latency_by_batch_ms: dict[str, float] | None = None  # every timed batch size -> median ms, final model
    latency_dense_by_batch_ms: dict[str, float] | None = None  # the same, dense model
    speedup: float | None = None  # latency_dense_ms / latency_ms

    def record(self) -> dict[str, Any]:
        """The trial record's speed keys, in order."""
        return {
            "macs": self.macs,
            "macs_dense": self.macs_dense,
            "latency_batch": self.latency_batch,
            "latency_ms": self.latency_ms,
            "latency_dense_ms": self.latency_dense_ms,
            "latency_by_batch_ms": None if self.latency_by_batch_ms is None else dict(self.latency_by_batch_ms),
            "latency_dense_by_batch_ms": (
                None if self.latency_dense_by_batch_ms is None else dict(self.latency_dense_by_batch_ms)
            ),
            "speedup": self.speedup,
        }


def _fmt_ms(ms: float) -> str:
    return f"{ms:.3g} ms"


class SpeedProbe:
    """A trial's speed measurements: ``SpeedProbe(...)`` times the dense model (call it before training),
    ``finish(model, dense_macs)`` the final one and returns the ``Speed``; ``seconds`` is what both cost.

    A measurement that fails (a model that cannot run a batch that large, a forward the MAC count cannot follow)
    leaves its fields None and says why in ``log``: it is a measurement, not the pipeline.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: Sequence[int],
        device: torch.device,
        settings: MeasureConfig,
        *,
        amp: bool = False,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.input_shape, self.device, self.settings = tuple(input_shape), device, settings
        self.amp, self.say = amp, log or (lambda _msg: None)
        self.seconds = 0.0
        self.dense = self._time(model, "dense model")
        if self.dense is not None:
            self.say(f"latency of the dense model: {self._describe(self.dense)}")

    def _time(self, model: nn.Module, what: str) -> dict[int, float] | None:
        if not self.settings.latency:
            return None
        t0 = time.perf_counter()
        try:
            return measure_latency(
                model,
                self.input_shape,
                self.device,
                batch_sizes=latency_batches(self.settings),
                repeats=self.settings.latency_repeats,
                amp=self.amp,
            )
        except Exception as exc:  # user code, or a batch the device has no memory for: one line, then go on
            self.say(f"latency not measured ({what}): {first_line(exc)}")
            return None
        finally:
            self.seconds += time.perf_counter() - t0

    def _describe(self, ms: dict[int, float]) -> str:
        return ", ".join(f"{_fmt_ms(v)} at batch {b}" for b, v in ms.items()) + f" on {self.device}"

    def finish(self, model: nn.Module, dense_macs: Macs | None) -> Speed:
        """The ``Speed`` of the final ``model``; ``dense_macs``: the dense model's count (None when it failed)."""
        final = self._time(model, "final model")
        t0 = time.perf_counter()
        try:
            macs: int | None = count_macs(model, {}, self.input_shape).other  # no weight named: every MAC is `other`
        except Exception as exc:
            self.say(f"MACs of the final model not counted: {first_line(exc)}")
            macs = None
        self.seconds += time.perf_counter() - t0
        batch = self.settings.latency_batch
        at = final.get(batch) if final else None
        dense_at = self.dense.get(batch) if self.dense else None
        speedup = dense_at / at if at and dense_at else None
        if final is not None:
            gain = f"; {speedup:.2f}x the dense model's speed at batch {batch}" if speedup else ""
            self.say(f"latency of the final model: {self._describe(final)}{gain}")
        return Speed(
            macs=macs,
            macs_dense=dense_macs.dense + dense_macs.other if dense_macs is not None else None,
            latency_batch=batch if self.settings.latency else None,
            latency_ms=at,
            latency_dense_ms=dense_at,
            latency_by_batch_ms={str(b): v for b, v in final.items()} if final else None,
            latency_dense_by_batch_ms={str(b): v for b, v in self.dense.items()} if self.dense else None,
            speedup=speedup,
        )
