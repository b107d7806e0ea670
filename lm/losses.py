"""The prefix LM's losses, read off its output positions only: the cross-entropy of each output token,
the KL to a teacher (distillation), A-GEM's projection of one task group's gradient off another's,
and the held-out loss per task. Algorithms over ids and logits; the training loop lives in
`videolm.train.lm_module`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from videolm.lm.data import TaskBatch
from videolm.lm.masks import IGNORE, PackedBatch, attention_bias
from videolm.lm.model import VideoLM


def output_logits(model: VideoLM, rows: PackedBatch) -> torch.Tensor:
    """Logits ``(N, V)`` at the positions that predict an output token, in row-major order (the
    order of ``rows.labels[:, 1:]``'s kept entries).

    The head runs on those positions only, so prefix tokens (often most of a sequence: the input
    video of v2a) cost no vocabulary projection.
    """
    bias = attention_bias(rows.attention_mask(), model.dtype)  # (R, 1, L, L)
    hidden = model.model(input_ids=rows.ids, attention_mask=bias, position_ids=rows.positions,
                         use_cache=False).last_hidden_state  # (R, L, D)
    return model.lm_head(hidden[:, :-1][rows.labels[:, 1:] != IGNORE])  # (N, V)


def output_losses(model: VideoLM, batch: TaskBatch, logits: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of every output token ``(N,)`` and the task of each ``(N,)`` (from
    ``logits``, `output_logits`' result, when given)."""
    rows = batch.rows
    keep = rows.labels[:, 1:] != IGNORE  # (R, L-1): the positions that predict an output token
    logits = output_logits(model, rows) if logits is None else logits  # (N, V)
    nll = F.cross_entropy(logits.float(), rows.labels[:, 1:][keep], reduction="none")  # (N,)
    return nll, batch.tasks[rows.example[:, 1:][keep]]  # (N,), (N,)


def distill_losses(teacher: VideoLM, rows: PackedBatch, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) ``(S,)`` at the output positions where ``soft (N,)`` is true, from
    the student's ``logits (N, V)`` (`output_logits`' order). The teacher, without gradient, reads
    only the rows that hold such a position. Its distribution is the target in place of the true
    token (distillation against forgetting: Li & Hoiem, "Learning without Forgetting", 2016)."""
    keep = rows.labels[:, 1:] != IGNORE  # (R, L-1)
    row_of = keep.nonzero()[:, 0]  # (N,): the row of each output position
    need = torch.zeros(keep.shape[0], dtype=torch.bool, device=keep.device)  # (R,)
    need[row_of[soft]] = True
    part = PackedBatch(rows.ids[need], rows.example[need], rows.positions[need], rows.is_prefix[need])
    with torch.no_grad():
        target = output_logits(teacher, part)[soft[need[row_of]]].float().log_softmax(-1)  # (S, V)
    log_p = logits[soft].float().log_softmax(-1)  # (S, V)
    return (target.exp() * (target - log_p)).sum(-1)  # (S,)


def project_conflict(grads: Sequence[torch.Tensor | None], protected: Sequence[torch.Tensor | None],
                     per_tensor: bool = False) -> tuple[list, float]:
    """The step's gradient when the ``protected`` tasks' gradient must not be opposed: ``grads``
    (the other tasks', one tensor or None per parameter) loses its component along ``protected``
    when the two point against each other (negative dot product), and ``protected`` is added.

    This is A-GEM (Chaudhry et al., 2019, "Efficient Lifelong Learning with A-GEM"), with the
    mixed-in old tasks of the same batch as the episodic memory: to first order the step then
    raises none of their loss. ``per_tensor`` tests and projects each parameter on its own (as
    PCGrad's surgery, Yu et al. 2020, but layer by layer), which also catches a conflict inside one
    matrix that agreement elsewhere outweighs. Returns the gradient per parameter and the share
    of the tested pairs that were projected."""
    both = [(g, m) for g, m in zip(grads, protected) if g is not None and m is not None]
    none = torch.zeros(0, dtype=torch.float64)
    dots = torch.stack([(g * m).sum(dtype=torch.float64) for g, m in both]) if both else none  # (P,)
    norms = torch.stack([(m * m).sum(dtype=torch.float64) for _, m in both]) if both else none
    if not per_tensor:  # one test over the whole model
        dots, norms = dots.sum(0, keepdim=True), norms.sum(0, keepdim=True)
    conflict = (dots < 0) & (norms > 0)
    scales = iter(torch.where(conflict, dots / norms.clamp(min=1e-30), 0.0).expand(len(both)).tolist())
    out = []
    for g, m in zip(grads, protected):
        if g is not None and m is not None:
            out.append(g + (1 - next(scales)) * m)
        else:  # one side has no gradient for this parameter: the other as it is
            out.append(g if m is None else m.clone())
    return out, float(conflict.sum()) / max(1, conflict.numel())


@torch.no_grad()
def held_out_losses(model: VideoLM, batches: list[TaskBatch], num_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed output-token loss and output tokens per task ``(K,), (K,)`` over ``batches``, in
    eval mode and float32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss = torch.zeros(num_tasks, dtype=torch.float64)
    count = torch.zeros(num_tasks, dtype=torch.float64)
    with torch.autocast(device.type, enabled=False):
        for batch in batches:
            nll, tasks = output_losses(model, batch.to(device))
            loss += torch.bincount(tasks, weights=nll.float(), minlength=num_tasks).double().cpu()
            count += torch.bincount(tasks, minlength=num_tasks).double().cpu()
    model.train(was_training)
    return loss, count


def weights_fingerprint(model: torch.nn.Module) -> torch.Tensor:
    """``(3,)`` float64: sum, sum of squares and a position-weighted sum of every parameter.
    Equal weights give equal fingerprints (the same reduction over the same numbers)."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])  # (P,)
    ramp = torch.linspace(-1, 1, len(flat), dtype=torch.float64, device=flat.device)  # (P,)
    return torch.stack([flat.sum(), flat.square().sum(), (flat * ramp).sum()])  # (3,)


__all__ = ["distill_losses", "held_out_losses", "output_logits", "output_losses", "project_conflict",
           "weights_fingerprint"]
