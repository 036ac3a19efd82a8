"""A fine-tuning method inside the shared training loop: the methods' command-line options, AdaLoRA's controller
wired into `charformer.train.fit`, and what a run keeps.

    base checkpoint ──load──► body ──apply_method──► adapted body + head ──fit──► trained
          ▲                    │ fingerprint, taken                   │  loss + AdaLoRA's orthogonality penalty;
          │                    │ before training                      │  after each step, AdaLoRA's budget
          │                    ▼                                      ▼
          └──── bound by ──── OUT/best: adapter (the trained tensors and the head, kilobytes)
                              OUT/last: the whole adapted model + optimizer, RNG and controller state (--resume)

Only "full" writes a complete checkpoint to OUT/best: its training changes every body weight. Every other
method writes an adapter (`charformer.peft.common`): what it trained and the head, the base's fingerprint and
path; the prediction tools put it back on the base. OUT/last stays a complete checkpoint because resuming needs
what an adapter leaves out (a prefix's reparameterisation MLP, the optimizer's moments); it is rewritten in
place, so it costs its disk space once per run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn

from ..cli import option
from ..errors import CharformerError
from .adalora import AdaLoRAController, SVDUpdate
from .common import METHODS, apply_method, base_fingerprint, save_adapter, trainable_parameters
from .inject import resolve_targets

DEFAULT_TARGETS = {"lora": "query,value", "adalora": "all"}  # Hu et al. 2021; Zhang et al. 2023


def _option(default, text: str, methods: tuple[str, ...] = ()):
    return option(default, text, methods=methods)


@dataclass
class MethodConfig:
    """--method and its options; each option names the methods it applies to (`check_options_apply`)."""

    method: str = _option("full", "what trains: full (every weight), freeze (the head alone), lora, adapter, "
                          "prefix or adalora (charformer/peft), or cloze (every weight, classifying through the masked-LM head: "
                          "charformer/finetuning/cloze.py)")
    lora_r: int = _option(8, "lora: rank r of each update B·A", ("lora",))
    lora_alpha: float = _option(16.0, "lora, adalora: updates are scaled by alpha / r", ("lora", "adalora"))
    lora_dropout: float = _option(0.0, "lora, adalora: dropout on the update's input", ("lora", "adalora"))
    lora_targets: str = _option("auto", "lora, adalora: layers adapted in every block, comma-separated from query, "
                                "key, value, output, mlp_in, mlp_out, mlp, all (auto: query,value for lora, all for "
                                "adalora, as in their papers)", ("lora", "adalora"))
    adapter_bottleneck: int = _option(16, "adapter: width of each bottleneck", ("adapter",))
    prefix_len: int = _option(16, "prefix: learned key/value positions per layer", ("prefix",))
    prefix_reparam_hidden: int | None = _option(None, "prefix: train the prefix through an MLP of this hidden width "
                                                "(Li & Liang 2021; None: train it directly)", ("prefix",))
    adalora_r: int = _option(12, "adalora: initial rank of every adapted layer", ("adalora",))
    adalora_target_rank: int = _option(4, "adalora: average rank per layer at the end (budget: this x layers)",
                                       ("adalora",))
    adalora_init_warmup: int | None = _option(None, "adalora: first steps at the full budget (None: 10%% of the "
                                              "steps)", ("adalora",))
    adalora_final_warmup: int | None = _option(None, "adalora: last steps at the final budget, mask frozen (None: "
                                               "20%% of the steps)", ("adalora",))
    adalora_orth_reg: float = _option(0.1, "adalora: weight of the orthogonality penalty on P and Q", ("adalora",))

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")


def check_options_apply(given: Iterable[str], method: str) -> None:
    """Refuse method options `given` (field names of `MethodConfig` set on the command line or in the config
    file) that `method` does not use, e.g. --lora-r with --method adapter: silently ignoring them would make a
    run look like something it was not."""
    given = set(given)
    stray = [f"--{f.name.replace('_', '-')}" for f in fields(MethodConfig)
             if f.metadata["methods"] and method not in f.metadata["methods"] and f.name in given]
    if stray:
        raise CharformerError(f"{', '.join(stray)}: not used by --method {method}")


def method_options(cfg: MethodConfig) -> dict:
    """The keyword arguments of `apply_method` that `cfg` asks for."""
    targets = DEFAULT_TARGETS.get(cfg.method) if cfg.lora_targets == "auto" else cfg.lora_targets
    try:
        targets = resolve_targets(targets) if cfg.method in DEFAULT_TARGETS else None
    except ValueError as e:
        raise CharformerError(f"--lora-targets: {e}") from None
    if cfg.method == "lora":
        return {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": targets}
    if cfg.method == "adalora":
        return {"r": cfg.adalora_r, "alpha": cfg.lora_alpha, "dropout": cfg.lora_dropout, "targets": targets}
    if cfg.method == "adapter":
        return {"bottleneck": cfg.adapter_bottleneck}
    if cfg.method == "prefix":
        return {"n_prefix": cfg.prefix_len, "reparam_hidden": cfg.prefix_reparam_hidden}
    return {}


class _Penalised:
    """An objective whose training loss carries an extra penalty; everything else is the objective's own."""

    def __init__(self, objective, penalty):
        self.objective, self.penalty = objective, penalty

    def __getattr__(self, name):  # metric, higher_is_better, batch, evaluate, report, ...
        return getattr(self.objective, name)

    def loss(self, model, batch):
        loss, n_chars = self.objective.loss(model, batch)
        return loss + self.penalty(), n_chars


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


class Tuning:
    """`cfg.method` applied to `body` (in place) for a run of `total_steps` optimizer steps.

    head_params: for "freeze", body parameter-name prefixes that are the head and keep training (a language
    model's output layer, tied to its input embedding: ``("tok_emb.",)``).
    """

    def __init__(self, body: nn.Module, cfg: MethodConfig, *, total_steps: int, head_params: tuple[str, ...] = ()):
        self.method = cfg.method
        requested = method_options(cfg)
        if self.method == "freeze" and head_params:
            requested["train"] = list(head_params)
        # Taken before training: "full", and "freeze" with head_params, change the base's own weights.
        self.fingerprint = None if self.method == "full" else base_fingerprint(body.cfg, body)
        self.options = apply_method(body, self.method, **requested)  # as saved (a prefix's MLP is folded away)
        self.settings = dict(requested)  # as asked, for results.json
        self.controller = None
        if self.method == "adalora":
            init = int(0.1 * total_steps) if cfg.adalora_init_warmup is None else cfg.adalora_init_warmup
            final = int(0.2 * total_steps) if cfg.adalora_final_warmup is None else cfg.adalora_final_warmup
            try:
                self.controller = AdaLoRAController(body, target_rank=cfg.adalora_target_rank, total_steps=total_steps,
                                                    init_warmup=init, final_warmup=final, orth_reg=cfg.adalora_orth_reg)
            except ValueError as e:
                raise CharformerError(f"adalora: {e}") from None
            self.settings.update(target_rank=cfg.adalora_target_rank, init_warmup=init, final_warmup=final,
                                 orth_reg=cfg.adalora_orth_reg)

    @property
    def saves_adapter(self) -> bool:
        return self.method != "full"

    @property
    def record(self) -> dict:
        """What a checkpoint records of the method, so that --resume can check it is continuing the same one."""
        return {"method": self.method, "method_options": self.options}

    def check_resume(self, meta: dict, where: Path) -> None:
        """Raise CharformerError unless checkpoint config `meta` (at `where`) was trained with this method."""
        saved = {"method": meta.get("method", "full"), "method_options": meta.get("method_options", {})}
        if saved != self.record:
            raise CharformerError(f"{where} was trained with {saved}, not {self.record}: resume with the same "
                                  "--method and method options")

    def objective(self, objective):
        """`objective` as `fit` should see it: AdaLoRA adds its orthogonality penalty to every training loss."""
        return objective if self.controller is None else _Penalised(objective, self.controller.regularizer)

    @property
    def after_step(self):
        """For `fit`: AdaLoRA's importance update and pruning after each optimizer step, else None."""
        return None if self.controller is None else self.controller.update_and_mask

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The controller's state, to checkpoint with the trainer state."""
        return {} if self.controller is None else {f"adalora.{k}": v for k, v in self.controller.state_dict().items()}

    def restore(self, trainer_tensors: dict[str, torch.Tensor]) -> None:
        """Resume the controller from a checkpoint's trainer tensors (`state_tensors`)."""
        if self.controller is not None:
            self.controller.load_state_dict({k.removeprefix("adalora."): v for k, v in trainer_tensors.items()
                                             if k.startswith("adalora.")})

    def save(self, path: Path, body: nn.Module, *, heads: dict[str, nn.Module], extra: dict, base_path: Path) -> None:
        """Write the adapter: the method's tensors of `body`, `heads` whole, bound to the base at `base_path`."""
        save_adapter(path, body, body.cfg, self.fingerprint, self.method, self.options, modules=heads,
                     extra=extra, base_path=base_path)

    def summary(self, *modules: nn.Module, best: Path, best_model: nn.Module) -> dict:
        """results.json entries: the method, its options, the parameter counts over `modules` (body and head),
        and ``adapter_bytes``, what OUT/best (`best`) takes on disk (for "full", the whole checkpoint).

        AdaLoRA also reports the kept ranks at the end of training (the budget schedule ends at the target) and
        in `best_model`, the model reloaded from OUT/best: when the best dev score came before the budget had
        shrunk to the target, that adapter keeps more."""
        trainable, total = trainable_parameters(*modules)
        out = {"method": self.method, "method_options": self.settings, "trainable_params": trainable,
               "total_params": total, "trainable_share": trainable / total, "adapter_bytes": _dir_bytes(best)}
        if self.controller is not None:
            out["adalora_final_ranks"] = self.controller.ranks()
            out["adalora_final_total_rank"] = self.controller.total_rank()
            out["adalora_target_total_rank"] = self.controller.target_budget
            out["adalora_best_total_rank"] = sum(int(m.rank_mask.sum()) for m in best_model.modules()
                                                 if isinstance(m, SVDUpdate))
        return out
