"""The demo's teacher: a timm classifier trained on scikit-learn's digits, cached on disk.

The first ``slimforge demo`` trains it (a minute or two on 2 CPU cores); later runs load it.
The cache key is a hash of every setting that changes the weights (model spec, epochs, lr,
seed, image size, torch and timm versions), so a changed setting never loads stale weights.
Cache directory: ``$SLIMFORGE_CACHE`` or the platform's user cache dir (``~/.cache/slimforge``).
Weights are stored as safetensors (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from compress.data import TaskData
from compress.exporters.atomic import write_bytes_atomic, write_text_atomic
from compress.models import load_model
from compress.training import FinetuneSettings, Runtime, evaluate, finetune
from compress.training.checkpoint import loader_generators

__all__ = ["TeacherRecipe", "cache_dir", "get_or_train_teacher"]


@dataclass(frozen=True)
class TeacherRecipe:
    model_spec: str = "timm:resnet18"
    epochs: int = 12
    lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    image_size: int = 32

    def key(self) -> str:
        import timm
        import torch

        blob = json.dumps({**asdict(self), "torch": torch.__version__, "timm": timm.__version__}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    env = os.environ.get("SLIMFORGE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("slimforge"))


def get_or_train_teacher(
    recipe: TeacherRecipe,
    task: TaskData,
    *,
    on_epoch: Callable[[int, dict], None] | None = None,
    runtime: Runtime | None = None,
) -> tuple[nn.Module, dict]:
    """Load the cached teacher for ``recipe`` or train it on ``task`` and cache it.

    ``runtime``: where the teacher trains (:class:`compress.training.Runtime`; default CPU fp32).
    A teacher trained on another device type or precision is cached under its own key.

    Returns:
        ``(model, meta)``; ``meta`` has ``cached`` (bool), ``path``, ``val_acc`` and the recipe.
    """
    import torch
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    runtime = runtime or Runtime()
    key = recipe.key()
    if not runtime.is_default:  # the numbers differ by device type and precision: never share a cache entry
        key = hashlib.sha256(f"{key}|{runtime.device.type}|{runtime.precision}".encode()).hexdigest()[:16]
    path = cache_dir() / "teachers" / f"digits-{key}.safetensors"
    model = load_model(recipe.model_spec, num_classes=task.spec.num_classes)
    meta = {"recipe": asdict(recipe), "path": str(path)}
    if path.is_file():
        model.load_state_dict(load_file(str(path)), strict=True)
        model.eval()
        meta_path = path.with_suffix(".json")
        if meta_path.is_file():
            meta.update(json.loads(meta_path.read_text()))
        meta["cached"] = True
        return model, meta
    torch.manual_seed(recipe.seed)
    model = load_model(recipe.model_spec, num_classes=task.spec.num_classes)
    settings = FinetuneSettings(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay, kd_alpha=0.0)
    # the teacher's batch order comes from its recipe's seed, and the task's shuffling generators
    # are handed back as found: training here changes nothing a later compress() of the task sees
    gens = loader_generators(train=task.train, val=task.val)
    states = {k: g.get_state() for k, g in gens.items()}
    for g in gens.values():
        g.manual_seed(recipe.seed)
    try:
        history = finetune(model, task.train, task.val, settings, teacher=None, on_epoch=on_epoch, runtime=runtime)
    finally:
        for k, g in gens.items():
            g.set_state(states[k])
    model.zero_grad(set_to_none=True)  # the trained teacher holds what a loaded one holds: weights and buffers
    val_acc = evaluate(model, task.val)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, st_save({k: v.contiguous() for k, v in model.state_dict().items()}))
    info = {"val_acc": val_acc, "history": history}
    write_text_atomic(path.with_suffix(".json"), json.dumps(info, indent=2))
    meta.update(info)
    meta["cached"] = False
    return model.eval(), meta
