"""The training loop and its pieces: EMA with warm-up, learning-rate schedule, data order, hooks, deferred Ctrl-C."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from diffusers_cli.engine.choices import EmaProfile, LrDecay, listed, names
from diffusers_cli.engine.objectives import Objective


def power_gamma(sigma_rel: float) -> float:
    """EDM2's exponent gamma of the power-function EMA whose profile has relative width ``sigma_rel``.

    The profile t^gamma over [0, T] has std / T = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))); this is
    the largest root of that equation, a cubic in gamma (widths up to 1 / sqrt(12) at gamma = 0).
    """
    s2 = sigma_rel**2
    roots = np.roots([s2, 7 * s2, 16 * s2 - 1, 12 * s2 - 1])
    real = roots[np.abs(roots.imag) < 1e-9].real
    if not 0 < sigma_rel < 12 ** -0.5 or real.size == 0 or real.max() <= -1:
        raise ValueError(f"ema sigma_rel must lie in (0, {12 ** -0.5:.4f}), got {sigma_rel}")
    return float(real.max())


class EMA:
    """Exponential moving average of a module's weights: a fixed decay (warmed up), or EDM2's power profile.

    "exponential": decay min(decay, (1 + n) / (10 + n)) while warming up, then ``decay``.
    "power": after n + 1 updates the decay is (1 - 1 / (n + 1))^(gamma + 1), which weights the weights of
    update i by about i^gamma: an average over the last ``sigma_rel`` of the run, however long it is.
    """

    def __init__(
        self,
        module: nn.Module,  # the online network (its current weights start the average)
        decay: float = 0.999,  # long-run decay per update
        warmup: bool = True,  # smaller decay early, so the average is not stuck at the random init
        profile: str = "exponential",  # or "power"
        sigma_rel: float = 0.10,  # the power profile's relative width
    ) -> None:
        if profile not in names(EmaProfile):
            raise ValueError(f"unknown EMA profile {profile!r}; use {listed(EmaProfile)}")
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.profile = profile
        self.gamma = power_gamma(sigma_rel) if profile == "power" else 0.0
        self.num_updates = 0

    def current_decay(self) -> float:
        """The decay the next update will use."""
        n = self.num_updates
        if self.profile == "power":
            return (1.0 - 1.0 / (n + 1)) ** (self.gamma + 1.0)
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average toward ``module``'s weights; buffers are copied."""
        d = self.current_decay()
        # One fused call for all parameters: on a small CPU net a per-tensor loop is a visible share of a step.
        torch._foreach_lerp_(list(self.module.parameters()), [p.detach() for p in module.parameters()], 1.0 - d)
        for avg_b, cur_b in zip(self.module.buffers(), module.buffers()):
            avg_b.copy_(cur_b)
        self.num_updates += 1


def warmup_lr(step: int, base_lr: float, warmup: int, decay: str = "none", total: int = 0) -> float:
    """Linear warm-up from base_lr / warmup to base_lr over ``warmup`` steps, then constant or decaying.

    ``decay`` "cosine" or "linear" anneals from base_lr after the warm-up to 0 at step ``total``:
    on short runs annealing gives a lower final loss than a constant rate (EMA alone cannot
    remove the noise of a large step). "none" keeps base_lr, for runs that will be resumed longer.
    """
    lr = base_lr if warmup <= 0 else base_lr * min(1.0, (step + 1) / warmup)
    if decay == "none" or total <= warmup or step < warmup:
        return lr
    frac = min(1.0, (step - warmup) / (total - warmup))
    if decay == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * frac))
    if decay == "linear":
        return lr * (1.0 - frac)
    raise ValueError(f"unknown learning-rate decay {decay!r}; use {listed(LrDecay)}")


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> Tensor:
    """Indices of the global batch at ``step``: a fresh seeded permutation each epoch, a pure function of step.

    Being a function of (seed, step) alone is what makes resumption exact and lets every
    rank of a distributed run agree on the global batch without communication.
    """
    start = step * batch_size
    out: list[Tensor] = []
    while sum(len(o) for o in out) < batch_size:
        epoch, offset = divmod(start, num_examples)
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = perm[offset : offset + batch_size - sum(len(o) for o in out)]
        out.append(take)
        start += len(take)
    return torch.cat(out)


@dataclass(frozen=True)
class Hook:
    """Something to do between training steps every ``every`` steps: a sample grid, a checkpoint, an evaluation."""

    every: int  # steps between calls, counted from step 0 (a resumed run keeps the cadence); 0: never
    fn: Callable[[int], None]  # called with the number of steps done
    final: bool = False  # also (with every=0: only) after the run's last step; else the caller ends the run itself

    def due(self, done: int, steps: int) -> bool:
        """Whether to call ``fn`` once ``done`` of ``steps`` steps are done."""
        if done == steps and self.final:
            return True
        return self.every > 0 and done % self.every == 0 and done != steps


@dataclass
class LoopResult:
    """How far a training loop got."""

    step: int  # steps done (the start step if there was nothing to do)
    loss: float  # the last step's mean loss (nan if none ran)
    interrupted: bool  # stopped by Ctrl-C before the last step


class DeferredInterrupt:
    """Defers the first Ctrl-C to the end of the current step, so the saved state is consistent; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """The autocast context of ``precision`` ("fp32", "bf16" or "fp16") on ``device``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class NonFiniteError(FloatingPointError):
    """A step's loss or gradient was not finite (and the run stops): the message names the step and the value."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def _grad_norm(net: nn.Module, grad_clip: float) -> Tensor:
    """The global gradient norm, clipping to ``grad_clip`` on the way when it is > 0 (non-finite norms pass through)."""
    params = [p for p in net.parameters() if p.grad is not None]
    if grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(params, grad_clip)
    return torch.nn.utils.get_total_norm([p.grad for p in params])


def step_seed(seed: int, step: int, first: int) -> int:
    """The seed of the dropout draws of the examples from ``first`` of the global batch at ``step``: a pure function."""
    return ((seed * 1_000_003 + step) * 1_000_033 + first) % (2**63 - 1)


@contextlib.contextmanager
def default_generators(seed: int | None, device: torch.device) -> Iterator[None]:
    """Torch's default generators (CPU, and ``device``'s) seeded by ``seed`` inside, restored as they were after.

    nn.Dropout and the layers' default initialisers take no generator; forking the default ones around a forward
    pass (or a network's construction) makes their draws a pure function of the seed, e.g. of (run seed, step,
    examples), so a resumed run drops what the uninterrupted one dropped, and nothing outside sees the default
    generators change. None: leave the default generators alone.
    """
    if seed is None:
        yield
        return
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()].manual_seed(seed)
        yield


def chunks(n: int, size: int | None) -> list[slice]:
    """Slices of ``size`` rows (the last may be shorter) covering ``n`` rows; None: one slice of all."""
    size = n if size is None else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def divisors_down(n: int, start: int) -> Iterator[int]:
    """``start`` (if it divides n), then by halving: the largest divisor of n at most half the last, down to 1."""
    m = start
    while m >= 1:
        while n % m:
            m -= 1
        yield m
        if m == 1:
            return
        m //= 2


def train_loop(
    net: nn.Module,  # the online network: its parameters are clipped, stepped and averaged
    ema: EMA,  # the average updated after every step
    opt: torch.optim.Optimizer,  # over net's parameters; its learning rate is set each step
    objective: Objective,  # draws each global batch's randomness and (un-wrapped) accumulates statistics
    batches: Iterable[tuple[Tensor, Tensor]],  # (images, labels) of steps start, start + 1, ...: global, or this rank's slice
    generator: torch.Generator | None,  # the run's generator: augmentation, then the objective's draws
    *,
    steps: int,  # the step the run ends at
    start: int = 0,  # the step of the first batch
    lr: Callable[[int], float],  # learning rate of a step (e.g. ``warmup_lr``)
    device: torch.device,  # where the batches go
    grad_clip: float = 0.0,  # max global gradient norm; 0 disables
    precision: str = "fp32",  # "fp32", "bf16" or "fp16" (autocast; fp16 with a GradScaler)
    channels_last: bool = False,  # 4-D inputs in channels-last memory format
    local: slice = slice(None),  # this rank's share of the global batch
    global_batch: int | None = None,  # set when ``batches`` are this rank's slices: the global batch size they come from
    micro_batch: int | None = None,  # run the share in chunks of this many, gradients accumulated; None: at once
    dropout_seed: int | None = None,  # dropout a pure function of (this, step, examples); None: torch's default generator
    forward: Callable[..., tuple[Tensor, dict[str, Tensor]]] | None = None,  # objective as DDP / compile wrap it
    augment: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,  # e.g. random flips, drawn first
    log_every: int = 50,  # steps per log record (and one after the last step)
    on_log: Callable[[int, dict[str, Any]], None] | None = None,  # (step, record) of the steps since the last
    on_step: Callable[[int, float], None] | None = None,  # (step, loss) after every step: progress bars
    hooks: Sequence[Hook] = (),  # grids, checkpoints, evaluations, in this order after the log
    on_nonfinite: str = "stop",  # a non-finite loss or gradient: "stop" (NonFiniteError) or "skip" the step
    max_skips: int = 10,  # with "skip": NonFiniteError after this many consecutive skipped steps
    scaler: torch.amp.GradScaler | None = None,  # fp16's loss scaler; the job's own, so that a resumed run keeps its scale
) -> LoopResult:
    """Run steps ``start`` .. ``steps`` - 1 (fewer if Ctrl-C stops it); NonFiniteError on a non-finite loss or gradient.

    Each step draws on the global batch (augmentation, then the objective's times, noise,
    labels), slices it to ``local``, and takes one optimizer step on the mean per-example loss,
    its gradient accumulated over micro-batches (under DDP synchronised once, after the last).
    The check comes before the optimizer step, so neither the weights nor the EMA ever take a non-finite
    update; a skipped step still consumes its batch and draws, so a resumed run skips the same steps.
    """
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    forward = objective if forward is None else forward
    # DDP (also under torch.compile, which forwards attributes) syncs gradients in every backward but inside no_sync().
    no_sync = getattr(forward, "no_sync", None)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16") if scaler is None else scaler
    log_hook = Hook(log_every, lambda s: None, final=True)
    window: list[float] = []
    t0 = time.perf_counter()
    t_log, step, last_loss = t0, start, math.nan
    skipped, consecutive = 0, 0  # non-finite steps skipped since the last record, and in a row
    first = local.start or 0  # the global index of this rank's first example
    with DeferredInterrupt() as stop:
        for step, (x, y) in enumerate(batches, start=start):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if global_batch is not None and x.shape[0] != global_batch:
                # This rank read only its slice; the draws still span the global batch (they depend only on its shape).
                x, y = _in_global(x, global_batch, local), _in_global(y, global_batch, local)
            # One global draw, sliced per rank: any world size sees the same examples and noise.
            if augment is not None:
                x = augment(x, generator)
            batch = {k: v[local] for k, v in objective.draw(x, y, generator).items()}
            del x, y
            if channels_last:
                batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
            for g in opt.param_groups:
                g["lr"] = lr(step)
            opt.zero_grad(set_to_none=True)
            n = batch["x"].shape[0]
            parts = chunks(n, micro_batch)
            total = torch.zeros((), device=device)
            pieces: list[dict[str, Tensor]] = []
            for i, part in enumerate(parts):
                sync = no_sync is None or i == len(parts) - 1
                with contextlib.nullcontext() if sync else no_sync(), \
                        default_generators(None if dropout_seed is None else step_seed(dropout_seed, step, first + part.start), device):
                    with autocast(device, precision):
                        per_example, stats = forward(**{k: v[part] for k, v in batch.items()})
                    # One chunk: the mean as it always was; several: each adds its share of the mean over the slice.
                    loss = per_example.float().mean() if len(parts) == 1 else per_example.float().sum() / n
                    scaler.scale(loss).backward()
                total += loss.detach()
                pieces.append({k: v.detach() for k, v in stats.items()})
                del per_example, loss
            scaler.unscale_(opt)
            # One host sync per step for both checks (a non-finite loss only makes non-finite gradients, never applied).
            value, norm = torch.stack([total, _grad_norm(net, grad_clip).float().to(total.device)]).tolist()
            bad = None
            if not math.isfinite(value):
                bad = f"the loss became {value} at step {step + 1}"
            elif not math.isfinite(norm) and precision != "fp16":
                # Under fp16 the scaler itself skips steps with inf gradients and lowers its scale: that is its job.
                bad = f"the gradient norm became {norm} at step {step + 1}"
            if bad is not None:
                skipped, consecutive = skipped + 1, consecutive + 1
                if on_nonfinite == "stop":
                    raise NonFiniteError(bad, step + 1)
                if consecutive > max_skips:
                    raise NonFiniteError(f"{bad} ({consecutive} non-finite steps in a row; max_skips {max_skips})", step + 1)
                opt.zero_grad(set_to_none=True)
            else:
                consecutive = 0
                scaler.step(opt)
                scaler.update()
                ema.update(net)
                last_loss = value
                window.append(last_loss)
                objective.observe(batch, {k: torch.cat([p[k] for p in pieces]) for k in pieces[0]})
            done = step + 1
            if on_step is not None:
                on_step(done, last_loss)
            if log_hook.due(done, steps):
                now = time.perf_counter()
                taken = len(window) + skipped  # steps since the last record
                # No loss when every step since the last record was skipped.
                record: dict[str, Any] = {"step": done, **({"loss": sum(window) / len(window)} if window else {}),
                                          "lr": opt.param_groups[0]["lr"], "it_per_s": taken / max(now - t_log, 1e-9),
                                          "time": round(now - t0, 3)}
                if on_nonfinite == "skip":
                    record["skipped"] = skipped  # non-finite steps skipped since the last record
                record.update(objective.report())
                if on_log is not None:
                    on_log(done, record)
                window, t_log, skipped = [], now, 0
            for hook in hooks:
                if hook.due(done, steps):
                    hook.fn(done)
            step = done
            if stop.requested:
                break
    return LoopResult(step, last_loss, stop.requested and step < steps)


def _in_global(part: Tensor, size: int, local: slice) -> Tensor:
    """``part`` placed at ``local`` in zeros of the global batch's size: the draws see the global shape, the slice its rows."""
    out = part.new_zeros((size, *part.shape[1:]))
    out[local] = part
    return out


def largest_micro_batch(
    objective: Objective,  # the un-wrapped objective: trials must not reach DDP's collectives
    example: tuple[Tensor, Tensor],  # one (images, labels) pair of the run's shape, on the device
    share: int,  # examples per process per step: the micro-batch divides it
    device: torch.device,
    precision: str = "fp32",
    reserve: int = 0,  # bytes held during the trials for what the first step allocates later (the optimizer's state)
) -> int:
    """A micro-batch that fits: ``share`` if its forward and backward fit, else half the largest that does (halving on out of memory).

    Each trial runs on copies of ``example``, under its own generators and dropout seed, and leaves no
    gradient behind, so the run's first step is what it would have been without the search.
    """
    from diffusers_cli.support.memory import is_out_of_memory

    params = [p for p in objective.parameters() if p.requires_grad]
    sizes = list(divisors_down(share, share))
    for i, m in enumerate(sizes):
        try:
            _trial(objective, example, m, device, precision, reserve)
            failed = False
        except Exception as err:  # noqa: BLE001 - allocation failures only; anything else is re-raised
            if not is_out_of_memory(err):
                raise
            failed = True  # the trial's tensors went with its frame; what the allocator kept is given back below
        for p in params:
            p.grad = None
        if not failed:
            # Below the whole share, one more halving: a real step also holds the global batch, its draws and what
            # the allocators keep between chunks, and a trial at the edge of memory measured too little for it.
            return m if i == 0 else sizes[min(i + 1, len(sizes) - 1)]
        _release(device)
    return 1  # 1 failed too: the run's first step will say so in its out-of-memory line


def _trial(objective: Objective, example: tuple[Tensor, Tensor], m: int, device: torch.device, precision: str,
           reserve: int) -> None:
    """One forward and backward of ``m`` copies of the example, with ``reserve`` bytes held aside."""
    ballast = torch.empty(reserve // 4, dtype=torch.float32, device=device) if reserve else None
    x1, y1 = example
    with default_generators(0, device):
        x = x1[:1].expand(m, *x1.shape[1:]).contiguous()
        batch = objective.draw(x, y1[:1].expand(m).contiguous(), torch.Generator(device=device).manual_seed(0))
        with autocast(device, precision):
            per_example, _ = objective(**batch)
        per_example.float().mean().backward()
    del ballast


def _release(device: torch.device) -> None:
    """Give what a failed trial left back to the system (its tensors are gone once its exception is)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # glibc keeps freed heap memory mapped (it counts against a memory limit); malloc_trim hands it back.
    libc = ctypes.util.find_library("c")
    if libc is not None:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)
