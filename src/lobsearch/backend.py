"""How one run uses its device: precision, channels-last, cuDNN autotune, TF32, compile, CUDA graphs.

``device_setup`` decides each setting per model from the registry's ``Backend`` flags (chosen by
measurement, ``docs/benchmarks.md``) and the run's choices (``auto`` or a forced value), applies
the process-wide switches, and returns the decisions with a note saying why each was made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

COMPILE_MIN_STEPS = 20_000
"""``compile: auto`` compiles only a run of at least this many optimizer steps.

``torch.compile`` costs about 30 s (mode "default") to minutes (max-autotune) before the first
step and saved about 10 % of the step time of DeepLOB on an H100 (60,800 -> 67,300 samples/s at
batch 1024, about 60 steps/s). A 10 % saving repays 30 s after 300 s of training, about 18,000
steps at that rate; shorter trials (most of a search, which ASHA stops early) run eagerly.
"""


@dataclass(frozen=True)
class Backend:
    """How one run uses its device; made by ``device_setup``.

    autocast_dtype: ``torch.bfloat16`` to run forward and loss under autocast, None for fp32.
    compile_mode: the ``torch.compile`` mode, None to run eagerly. ``notes`` say why.
    """

    device: torch.device
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    cudnn_benchmark: bool = False
    tf32: bool = False
    compile_mode: str | None = None
    cuda_graphs: bool = False
    num_threads: int | None = None
    notes: tuple[str, ...] = ()

    def autocast(self, *, cache: bool = True) -> torch.autocast:
        """The autocast context of the forward pass (disabled for fp32). ``cache=False`` for a
        CUDA graph capture, which must not keep autocast's casted weights across replays."""
        dtype = self.autocast_dtype or torch.float32
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None,
                              cache_enabled=cache and self.autocast_dtype is not None)

    def describe(self) -> str:
        """One line for logs: ``cuda bf16 channels_last cudnn_benchmark tf32 cuda_graphs compile=off``."""
        flags = ["bf16" if self.autocast_dtype else "fp32"]
        flags += [n for n in ("channels_last", "cudnn_benchmark", "tf32", "cuda_graphs") if getattr(self, n)]
        flags.append(f"compile={self.compile_mode or 'off'}")
        return f"{self.device} " + " ".join(flags)



def device_setup(
    spec_backend: Any,
    device: str | torch.device,
    *,
    precision: str = "auto",
    compile: str = "auto",
    cuda_graphs: str = "auto",
    num_threads: int | None = None,
    planned_steps: int | None = None,
) -> Backend:
    """Decide and apply the backend settings of one run; returns the decisions.

    ``spec_backend`` is the model's ``ModelSpec.backend`` (channels_last, bf16, cudnn_benchmark,
    compile flags; None means all off). ``precision``: fp32 / bf16 force, auto = bf16 only on
    CUDA for models that gain from it. ``compile``: off / a mode forces, auto = "default" only
    on CUDA for models flagged for it and runs of >= COMPILE_MIN_STEPS ``planned_steps``.
    ``cuda_graphs``: on / off force (on is ignored off CUDA), auto = on for CUDA runs of models
    flagged for it that are not compiled (a compiled model's graphs are the compiler's business:
    its "reduce-overhead" mode). The CUDA switches are set only when ``device`` is CUDA, and set
    both ways (a previous trial in the same process must not leak into this one);
    ``num_threads`` sets torch's CPU threads.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    bf16, bf16_note = _choose_bf16(precision, _flag(spec_backend, "bf16"), cuda)
    mode, mode_note = _choose_compile(compile, _flag(spec_backend, "compile"), cuda, planned_steps)
    graphs, graphs_note = _choose_graphs(cuda_graphs, _flag(spec_backend, "cuda_graphs"), cuda, mode)
    backend = Backend(
        device=device,
        autocast_dtype=torch.bfloat16 if bf16 else None,
        channels_last=cuda and _flag(spec_backend, "channels_last"),
        cudnn_benchmark=cuda and _flag(spec_backend, "cudnn_benchmark"),
        tf32=cuda,
        compile_mode=mode,
        cuda_graphs=graphs,
        num_threads=num_threads,
        notes=(bf16_note, mode_note, graphs_note),
    )
    apply_backend(backend)
    return backend


def _flag(spec_backend: Any, name: str) -> bool:
    if spec_backend is None:
        return False
    if isinstance(spec_backend, Mapping):
        return bool(spec_backend.get(name, False))
    return bool(getattr(spec_backend, name, False))


def _choose_bf16(precision: str, model_gains: bool, cuda: bool) -> tuple[bool, str]:
    if precision != "auto":
        return precision == "bf16", f"precision {precision} (set in train.precision)"
    if cuda and model_gains:
        return True, "precision auto -> bf16 (CUDA, the model gains from it)"
    why = "the model does not gain from bf16" if cuda else "not on CUDA"
    return False, f"precision auto -> fp32 ({why})"


def _choose_compile(
    choice: str, model_gains: bool, cuda: bool, planned_steps: int | None
) -> tuple[str | None, str]:
    if choice != "auto":
        mode = None if choice == "off" else choice
        return mode, f"compile {choice} (set in train.compile)"
    if not (cuda and model_gains):
        why = "not flagged for this model" if cuda else "not on CUDA"
        return None, f"compile auto -> off ({why})"
    if planned_steps is None or planned_steps < COMPILE_MIN_STEPS:
        return None, f"compile auto -> off ({planned_steps} steps < {COMPILE_MIN_STEPS})"
    return "default", f"compile auto -> default ({planned_steps} steps >= {COMPILE_MIN_STEPS})"


def _choose_graphs(choice: str, model_gains: bool, cuda: bool, compile_mode: str | None) -> tuple[bool, str]:
    if not cuda:
        return False, f"cuda_graphs {choice} -> off (not on CUDA)"
    if compile_mode is not None:
        # measured on an H100: capturing a compiled DeepLOB step left the CUDA generator's
        # state unusable for the next eager random draw; the compiler's own graphs are
        # compile: reduce-overhead
        return False, f"cuda_graphs {choice} -> off (compiled; use compile: reduce-overhead)"
    if choice != "auto":
        return choice == "on", f"cuda_graphs {choice} (set in train.cuda_graphs)"
    if not model_gains:
        return False, "cuda_graphs auto -> off (not flagged for this model)"
    return True, "cuda_graphs auto -> on (CUDA, the model gains from it)"


def apply_backend(backend: Backend) -> None:
    """Set the process-wide switches the decisions need (CUDA ones only on CUDA)."""
    if backend.num_threads is not None:
        torch.set_num_threads(backend.num_threads)
    if backend.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = backend.cudnn_benchmark
    torch.backends.cudnn.allow_tf32 = backend.tf32
    torch.set_float32_matmul_precision("high" if backend.tf32 else "highest")


def place_model(model: nn.Module, backend: Backend) -> nn.Module:
    """Move ``model`` to the backend's device (channels-last when chosen); returns it."""
    model = model.to(backend.device)
    if backend.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
