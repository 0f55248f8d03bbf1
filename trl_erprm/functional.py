"""The math of trl-erprm, as small pure functions on tensors.

No I/O, no models: trainers, the labeler, the implicit PRM, the PRIME/PRL trainers and evaluation all call these
functions, so that every formula is written exactly once. Shapes are given in each docstring; `B` is the batch size,
`T` the sequence (completion) length, `S` the number of steps and `N` the number of rollouts per step.

References:
    - ER-PRM labels: Zhang et al. 2024, "Entropy-Regularized Process Reward Model", arXiv:2412.11006.
    - Implicit PRM: Yuan et al. 2024, "Free Process Rewards without Process Labels", arXiv:2412.01981.
    - PRIME: Cui et al. 2025, "Process Reinforcement through Implicit Rewards", arXiv:2502.01456.
    - PRL: Yao, Wang, Zhang 2026, "Process Reward Learning", arXiv:2601.10201.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------------------------------
# ER-PRM labels
# ---------------------------------------------------------------------------------------------------------------------

#: Named values of `eta`. `"soft"` is the Math-Shepherd soft label (mean of the rollout rewards), `"hard"` the
#: Math-Shepherd hard label (max: 1 if any rollout reaches the answer), `"pessimistic"` the min (1 only if all do).
ETA_ALIASES: dict[str, float] = {"soft": 0.0, "hard": math.inf, "pessimistic": -math.inf}


def resolve_eta(eta: float | int | str) -> float:
    """Turn an `eta` given as a number or a name into a float, rejecting NaN.

    Args:
        eta (`float`, `int` or `str`):
            A real number (`0` soft, `+inf` hard, `-inf` pessimistic limit), one of the names in [`ETA_ALIASES`]
            (`"soft"`, `"hard"`, `"pessimistic"`), or a string holding a number such as `"2.5"` or `"inf"`.

    Returns:
        `float`: The entropy-regularisation coefficient.

    Raises:
        `TypeError`: If `eta` is `None` or not a number or string. `ValueError`: For NaN or an unknown name.
    """
    if isinstance(eta, bool) or not isinstance(eta, (str, numbers.Real)):
        raise TypeError(
            f"eta must be a number or one of {sorted(ETA_ALIASES)}, got {eta!r} ({type(eta).__name__}). Pass e.g. "
            "eta=2.0, eta='soft' (eta=0) or eta='hard' (eta=+inf)."
        )
    if isinstance(eta, str):
        key = eta.strip().lower()
        if key in ETA_ALIASES:
            return ETA_ALIASES[key]
        try:
            value = float(key)
        except ValueError:
            raise ValueError(
                f"eta={eta!r} is neither a number nor one of {sorted(ETA_ALIASES)}. Pass e.g. eta=2.0, eta='soft' "
                "or eta='hard'."
            ) from None
    else:
        value = float(eta)
    if math.isnan(value):
        raise ValueError("eta is NaN. Pass a real number, +/-inf, 'soft' (eta=0) or 'hard' (eta=+inf).")
    return value


def er_label(
    outcomes: torch.Tensor | np.ndarray | Sequence[float],
    eta: float | int | str = 1.0,
    mask: torch.Tensor | np.ndarray | Sequence[bool] | None = None,
) -> torch.Tensor | np.ndarray | float:
    r"""Entropy-regularised process label of a step from the graded rewards of its rollouts (ER-PRM eq. 1).

    `label = (1/eta) * ln( mean_j exp(eta * r_j) )`, computed as `m + log1p(mean_j expm1(eta * (r_j - m))) / eta`
    with `m` the max (eta > 0) or min (eta < 0) of the rewards, in float64: it never overflows, and it stays exact as
    `eta -> 0` (no catastrophic cancellation). The limits are exact: `eta = 0` gives the mean (soft label),
    `eta = +inf` the max (hard label), `eta = -inf` the min. For binary rewards with success rate `p` this equals
    `(1/eta) * ln(1 - p + p * e^eta)`; real-valued rewards are allowed.

    Args:
        outcomes (`torch.Tensor`, `np.ndarray` or sequence of `float`):
            Rewards of the `N` rollouts of each step, shape `(..., N)`.
        eta (`float`, `int` or `str`, *optional*, defaults to `1.0`):
            Entropy-regularisation coefficient, or a name from [`ETA_ALIASES`] (see [`resolve_eta`]).
        mask (`torch.Tensor`, `np.ndarray` or sequence of `bool`, *optional*):
            Which rollouts count, same shape as `outcomes`, for steps with fewer than `N` graded rollouts. Every step
            needs at least one.

    Returns:
        Labels of shape `(...)`: a `torch.Tensor` (float dtype of the input, or the default dtype) for tensor input, a
        float64 `np.ndarray` for array input, a `float` for a flat sequence.
    """
    eta = resolve_eta(eta)
    is_tensor = isinstance(outcomes, torch.Tensor)
    is_array = isinstance(outcomes, np.ndarray)
    r = outcomes.detach() if is_tensor else torch.as_tensor(np.asarray(outcomes, dtype=np.float64))
    out_dtype = r.dtype if r.is_floating_point() else torch.get_default_dtype()
    r = r.to(torch.float64)
    if r.ndim == 0:
        raise ValueError("outcomes must have a last dimension of rollouts, shape (..., N); got a scalar.")
    if r.shape[-1] == 0:
        raise ValueError("outcomes has no rollouts (last dimension is 0): a step needs at least one graded rollout.")
    if mask is None:
        valid = torch.ones_like(r, dtype=torch.bool)
    else:
        valid = torch.as_tensor(mask.detach() if isinstance(mask, torch.Tensor) else np.asarray(mask, dtype=bool))
        valid = valid.to(device=r.device, dtype=torch.bool).expand_as(r)
    if torch.isnan(r[valid]).any():
        raise ValueError("outcomes contain NaN: grade every rollout (use 0.0 for a failed one) or mask it out.")
    count = valid.sum(-1)
    if (count == 0).any():
        raise ValueError("a step has no valid rollout in `mask`: every step needs at least one graded rollout.")

    if eta == 0.0:
        label = torch.where(valid, r, 0.0).sum(-1) / count
    elif math.isinf(eta):
        fill = -math.inf if eta > 0 else math.inf
        masked = torch.where(valid, r, fill)
        label = masked.amax(-1) if eta > 0 else masked.amin(-1)
    else:
        fill = -math.inf if eta > 0 else math.inf
        masked = torch.where(valid, r, fill)
        m = masked.amax(-1, keepdim=True) if eta > 0 else masked.amin(-1, keepdim=True)
        # eta * (r - m) <= 0 everywhere, so expm1 lies in [-1, 0]: no overflow, and exact for tiny eta.
        shifted = torch.where(valid, torch.expm1(eta * (r - m)), 0.0)
        label = m.squeeze(-1) + torch.log1p(shifted.sum(-1) / count) / eta

    if is_tensor:
        return label.to(out_dtype)
    if is_array or label.ndim > 0:
        return label.numpy()
    return float(label)


# ---------------------------------------------------------------------------------------------------------------------
# PRM training on soft labels
# ---------------------------------------------------------------------------------------------------------------------


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: float = -100.0) -> torch.Tensor:
    r"""Two-class cross-entropy against soft targets, per position.

    `loss = -(v * log p_1 + (1 - v) * log p_0)` with `p = softmax(logits)` and target `[1 - v, v]`. With hard targets
    (`v` in {0, 1}) this is the usual cross-entropy of a token-classification PRM.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(..., 2)`; class 1 is "the step is good".
        targets (`torch.Tensor`):
            Soft labels in [0, 1] of shape `(...)`, `ignore_index` where there is no label.
        ignore_index (`float`, *optional*, defaults to `-100.0`):
            Value of `targets` at unlabelled positions.

    Returns:
        `torch.Tensor`: The loss of shape `(...)`, 0 at unlabelled positions (float32 or the logits' wider dtype).
    """
    if logits.shape[-1] != 2:
        raise ValueError(f"soft_cross_entropy needs 2-class logits, got last dimension {logits.shape[-1]}.")
    logp = F.log_softmax(logits.float(), dim=-1)
    mask = targets != ignore_index
    v = torch.where(mask, targets, 0.0).to(logp.dtype)
    loss = -(v * logp[..., 1] + (1.0 - v) * logp[..., 0])
    return torch.where(mask, loss, 0.0)


def two_token_step_scores(logits: torch.Tensor, good_token_id: int, bad_token_id: int) -> torch.Tensor:
    """Probability that a step is good read off an LM head at the step tags (Math-Shepherd / ER-PRM convention).

    Args:
        logits (`torch.Tensor`):
            LM-head logits at the step-tag positions, shape `(..., vocab_size)`.
        good_token_id (`int`):
            Token id of the "good" candidate (e.g. `"+"`).
        bad_token_id (`int`):
            Token id of the "bad" candidate (e.g. `"-"`).

    Returns:
        `torch.Tensor`: `softmax([l_good, l_bad])[0]` of shape `(...)`.
    """
    pair = torch.stack([logits[..., good_token_id], logits[..., bad_token_id]], dim=-1).float()
    return pair.softmax(-1)[..., 0]


# ---------------------------------------------------------------------------------------------------------------------
# Implicit PRM
# ---------------------------------------------------------------------------------------------------------------------


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Log-probability of the chosen tokens, without materialising the full log-softmax in float32 at once.

    Args:
        logits (`torch.Tensor`):
            Logits of shape `(B, T, vocab_size)`.
        index (`torch.Tensor`):
            Chosen token ids of shape `(B, T)`.

    Returns:
        `torch.Tensor`: `log_softmax(logits)[b, t, index[b, t]]` of shape `(B, T)`, float32.
    """
    rows = []
    for row_logits, row_index in zip(logits, index):  # one row at a time bounds the float32 copy to (T, V)
        row = row_logits.float()
        rows.append(row.gather(-1, row_index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(row, dim=-1))
    return torch.stack(rows)


def implicit_token_rewards(
    logps: torch.Tensor, ref_logps: torch.Tensor | None, beta: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Per-token implicit process rewards `r_t = beta * (log pi_theta(y_t|y<t) - log pi_ref(y_t|y<t))`.

    Args:
        logps (`torch.Tensor`):
            Log-probabilities of the completion tokens under the PRM, shape `(B, T)`.
        ref_logps (`torch.Tensor` or `None`):
            The same under the reference model, shape `(B, T)`; `None` for the reference-free variant
            (`r_t = beta * log pi_theta`).
        beta (`float`):
            Scale of the implicit reward.
        mask (`torch.Tensor`, *optional*):
            Completion mask of shape `(B, T)`; rewards are 0 where it is 0.

    Returns:
        `torch.Tensor`: Rewards of shape `(B, T)`.
    """
    ratio = logps if ref_logps is None else logps - ref_logps
    rewards = beta * ratio
    return rewards if mask is None else rewards * mask.to(rewards.dtype)


def implicit_q_values(token_rewards: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cumulative implicit rewards `q_t = sum_{i <= t} r_i`, the exact Q values of the implicit PRM.

    Args:
        token_rewards (`torch.Tensor`):
            Per-token rewards of shape `(B, T)`.
        mask (`torch.Tensor`, *optional*):
            Completion mask of shape `(B, T)`.

    Returns:
        `torch.Tensor`: `q` of shape `(B, T)` (padding positions carry the last value).
    """
    if mask is not None:
        token_rewards = token_rewards * mask.to(token_rewards.dtype)
    return token_rewards.cumsum(-1)


def gather_step_values(values: torch.Tensor, step_ends: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Values at the last token of each step.

    Args:
        values (`torch.Tensor`):
            Per-token values of shape `(B, T)`, e.g. `q`.
        step_ends (`torch.Tensor`):
            Index of the last token of each step, shape `(B, S)`, long. Entries where `step_mask` is 0 are ignored.
        step_mask (`torch.Tensor`):
            Which steps exist, shape `(B, S)`.

    Returns:
        `torch.Tensor`: Shape `(B, S)`, 0 where `step_mask` is 0.
    """
    step_mask = step_mask.bool()
    index = torch.where(step_mask, step_ends, 0).long()
    return torch.where(step_mask, values.gather(-1, index), 0.0)


def implicit_step_rewards(q_at_step_ends: torch.Tensor, step_mask: torch.Tensor) -> torch.Tensor:
    """Step rewards from q at step ends: `q(end of step k) - q(end of step k-1)`, with `q(end of step 0) = 0`.

    Args:
        q_at_step_ends (`torch.Tensor`):
            `q` at the last token of each step, shape `(B, S)` (see [`gather_step_values`]).
        step_mask (`torch.Tensor`):
            Which steps exist, shape `(B, S)`; steps are left-aligned.

    Returns:
        `torch.Tensor`: Step rewards of shape `(B, S)`, 0 where `step_mask` is 0.
    """
    previous = F.pad(q_at_step_ends[..., :-1], (1, 0), value=0.0)
    return torch.where(step_mask.bool(), q_at_step_ends - previous, 0.0)


def _masked_min(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, math.inf).amin(-1)


def _masked_max(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, -math.inf).amax(-1)


def _masked_sum(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, 0.0).sum(-1)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return _masked_sum(x, m) / m.sum(-1)


def _masked_prod(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.where(m, x, 1.0).prod(-1)


def _masked_last(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    last = (m.sum(-1) - 1).clamp(min=0)
    return x.gather(-1, last.unsqueeze(-1)).squeeze(-1)


#: Step aggregation rules by name: one score per sequence from per-step scores `(B, S)` and a left-aligned mask.
STEP_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "min": _masked_min,
    "max": _masked_max,
    "sum": _masked_sum,
    "mean": _masked_mean,
    "prod": _masked_prod,
    "last": _masked_last,
}


def aggregate_steps(step_scores: torch.Tensor, step_mask: torch.Tensor, how: str = "min") -> torch.Tensor:
    """Aggregate per-step scores into one score per sequence.

    Args:
        step_scores (`torch.Tensor`):
            Scores of shape `(B, S)`: step probabilities of a PRM, or `q` at step ends of an implicit PRM.
        step_mask (`torch.Tensor`):
            Which steps exist, shape `(B, S)`, left-aligned.
        how (`str`, *optional*, defaults to `"min"`):
            One of [`STEP_AGGREGATIONS`]: `"min"`, `"max"`, `"sum"`, `"mean"`, `"prod"`, `"last"`.

    Returns:
        `torch.Tensor`: Shape `(B,)`; NaN for a sequence with no step.
    """
    if how not in STEP_AGGREGATIONS:
        raise ValueError(f"Unknown step aggregation {how!r}; choose one of {sorted(STEP_AGGREGATIONS)}.")
    m = step_mask.bool()
    out = STEP_AGGREGATIONS[how](step_scores, m)
    return torch.where(m.any(-1), out, math.nan)


def sequence_log_ratio(logps: torch.Tensor, ref_logps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the completion of `log pi_theta - log pi_ref`: the implicit outcome reward divided by beta.

    Args:
        logps (`torch.Tensor`):
            Shape `(B, T)`.
        ref_logps (`torch.Tensor` or `None`):
            Shape `(B, T)`, or `None` for the reference-free variant.
        mask (`torch.Tensor`):
            Completion mask of shape `(B, T)`.

    Returns:
        `torch.Tensor`: Shape `(B,)`.
    """
    ratio = logps if ref_logps is None else logps - ref_logps
    return (ratio * mask.to(ratio.dtype)).sum(-1)


def implicit_prm_ce_loss(log_ratio: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """Cross-entropy loss of an implicit PRM on outcome labels: `BCE(sigmoid(beta * log_ratio), y)`, per sequence.

    Args:
        log_ratio (`torch.Tensor`):
            Sequence log-ratios of shape `(B,)` (see [`sequence_log_ratio`]).
        labels (`torch.Tensor`):
            Outcome labels in [0, 1] of shape `(B,)`.
        beta (`float`):
            Scale of the implicit reward.

    Returns:
        `torch.Tensor`: Loss of shape `(B,)`.
    """
    return F.binary_cross_entropy_with_logits(beta * log_ratio, labels.to(log_ratio.dtype), reduction="none")


def log_ratio_tolerance(logps: torch.Tensor, ref_logps: torch.Tensor | None, mask: torch.Tensor) -> torch.Tensor:
    r"""Rounding noise of a [`sequence_log_ratio`]: below it, a log-ratio is arithmetic noise, not a verdict.

    `tol = eps * sum_t mask_t * (max(1, |logps_t|) + max(1, |ref_logps_t|))`, `eps = torch.finfo(logps.dtype).eps`
    (float32 for the log-probs of [`~trl_erprm.implicit_prm.completion_logps`]).

    Why: a log-prob computed in precision `eps` is off by about `eps` times its magnitude, and never by less than `eps`
    (a log-softmax subtracts O(1) numbers). Two computations of the same log-probs (the PRM equal to its reference,
    scored with other batch shapes, chunks or kernels) differ by at most the sum of their two errors per token, and
    the sum over the completion adds those up at most linearly (independent roundings grow like `sqrt(T)`, so the
    bound holds with room). It is ~1e-5 nats for hundreds of tokens. It deliberately follows the precision of the
    log-prob arithmetic, not of the forward pass: a bound in bfloat16's `eps = 2**-7` would be nats wide and would
    read a PRM that already ranks correctly as a tie, so the larger differences between two bfloat16 forward passes
    of identical weights are not absorbed (they can move an untrained PRM's accuracy a little off 1/2).

    Args:
        logps (`torch.Tensor`):
            Shape `(B, T)`.
        ref_logps (`torch.Tensor` or `None`):
            Shape `(B, T)`, or `None` for the reference-free variant (only the PRM's rounding then).
        mask (`torch.Tensor`):
            Completion mask of shape `(B, T)`.

    Returns:
        `torch.Tensor`: Shape `(B,)`, float32, >= 0.
    """
    eps = torch.finfo(logps.dtype).eps
    scale = logps.detach().float().abs().clamp(min=1.0)
    if ref_logps is not None:
        scale = scale + ref_logps.detach().float().abs().clamp(min=1.0)
    return eps * (scale * mask.to(scale.dtype)).sum(-1)


def sign_accuracy(margin: torch.Tensor, labels: torch.Tensor, tolerance: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Per-sample accuracy of a verdict read from the sign of a margin, a tie counting one half.

    1 when the margin has the label's sign (`margin > tolerance` for a label `>= 0.5`, `margin < -tolerance` for one
    below), 0 for the opposite sign, 1/2 for a tie `|margin| <= tolerance`: no verdict, chance level (a PRM equal to
    its reference reads 0.5, not the share of one class). The accuracy of an implicit PRM is that of its log-ratio
    ([`sequence_log_ratio`], CE loss), of `log-ratio - z_0` (KTO) or of `log-ratio(chosen) - log-ratio(rejected)` with
    labels 1 (DPO, NCA); [`log_ratio_tolerance`] gives the tolerance.

    Args:
        margin (`torch.Tensor`):
            Shape `(B,)`.
        labels (`torch.Tensor`):
            Labels in [0, 1] of shape `(B,)`; `>= 0.5` is the positive class.
        tolerance (`torch.Tensor` or `float`, *optional*, defaults to `0.0`):
            Shape `(B,)` or a scalar, `>= 0`; only an exact 0 is a tie with `0.0`.

    Returns:
        `torch.Tensor`: Shape `(B,)`, float32, values in {0, 1/2, 1}.
    """
    margin = margin.detach().float()
    tolerance = torch.as_tensor(tolerance, dtype=margin.dtype, device=margin.device)
    hit = ((margin > 0) == (labels.to(margin.device) >= 0.5)).float()
    return torch.where(margin.abs() <= tolerance, 0.5, hit)


def implicit_prm_dpo_loss(
    chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta: float
) -> torch.Tensor:
    """DPO loss of an implicit PRM on (correct, incorrect) pairs: `-log sigmoid(beta * (lr_w - lr_l))`.

    Args:
        chosen_log_ratio (`torch.Tensor`):
            Sequence log-ratios of the correct completions, shape `(P,)`.
        rejected_log_ratio (`torch.Tensor`):
            Sequence log-ratios of the incorrect completions of the same prompts, shape `(P,)`.
        beta (`float`):
            Scale of the implicit reward.

    Returns:
        `torch.Tensor`: Loss of shape `(P,)`.
    """
    return -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio))


# ---------------------------------------------------------------------------------------------------------------------
# PRIME and PRL advantages
# ---------------------------------------------------------------------------------------------------------------------


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2:
        raise ValueError(f"Leave-one-out baselines need at least 2 samples per prompt, got group_size={group_size}.")
    if x.shape[0] % group_size:
        raise ValueError(f"Batch of {x.shape[0]} samples is not a whole number of groups of {group_size}.")
    return x.view(-1, group_size, *x.shape[1:])


def leave_one_out_baseline(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean of the other samples of the same prompt: `b_i = mean_{j != i} v_j` (RLOO baseline).

    Samples of one prompt are contiguous: rows `[k * group_size, (k + 1) * group_size)` form group `k`.

    Args:
        values (`torch.Tensor`):
            One value per sample, shape `(B,)`.
        group_size (`int`):
            Samples per prompt `K >= 2`.

    Returns:
        `torch.Tensor`: Baselines of shape `(B,)`.
    """
    g = _grouped(values, group_size)
    return ((g.sum(1, keepdim=True) - g) / (group_size - 1)).reshape(values.shape)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Return over the remaining tokens: `G_t = sum_{s >= t} gamma^(s - t) r_s` within the mask.

    Args:
        rewards (`torch.Tensor`):
            Per-token rewards of shape `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask of shape `(B, T)`.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount factor in (0, 1].

    Returns:
        `torch.Tensor`: Returns of shape `(B, T)`, 0 outside the mask.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}.")
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    if gamma == 1.0:
        returns = rewards.flip(-1).cumsum(-1).flip(-1)
    else:
        returns = torch.zeros_like(rewards)
        running = torch.zeros_like(rewards[:, 0])
        for t in range(rewards.shape[1] - 1, -1, -1):
            running = rewards[:, t] + gamma * running
            returns[:, t] = running
    return returns * mask


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise to zero mean and unit variance over the positions where `mask` is 1.

    Args:
        values (`torch.Tensor`):
            Shape `(B, T)`.
        mask (`torch.Tensor`):
            Shape `(B, T)`.
        eps (`float`, *optional*, defaults to `1e-8`):
            Added to the standard deviation.

    Returns:
        `torch.Tensor`: Shape `(B, T)`, 0 outside the mask.
    """
    m = mask.to(values.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (values * m).sum() / n
    var = (((values - mean) * m) ** 2).sum() / (n - 1).clamp(min=1.0)
    return (values - mean) / (var.sqrt() + eps) * m


def last_token_mask(mask: torch.Tensor) -> torch.Tensor:
    """Mark the last position where `mask` is 1 in each row (nothing in a row with no valid position).

    Args:
        mask (`torch.Tensor`):
            Completion (loss) mask of shape `(B, T)`; it may have holes (e.g. tool-output tokens).

    Returns:
        `torch.Tensor`: Float tensor of shape `(B, T)` with one 1 per non-empty row.
    """
    m = mask.bool()
    positions = torch.arange(1, m.shape[1] + 1, device=m.device).expand_as(m)
    last = torch.where(m, positions, 0).argmax(-1)
    out = torch.zeros(m.shape, dtype=torch.float32, device=m.device)
    rows = m.any(-1).nonzero().squeeze(-1)
    out[rows, last[rows]] = 1.0
    return out


def weighted_outcome(rewards_per_func: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine the rewards of several reward functions into one outcome per completion, as GRPOTrainer does.

    A function that returned `None` for a completion gives NaN, which is left out of the weighted sum; a completion
    every function returned `None` for is *unscorable*: its outcome is 0 and it is flagged.

    Args:
        rewards_per_func (`torch.Tensor`):
            Shape `(B, F)`, NaN where a reward function returned `None`.
        weights (`torch.Tensor`):
            Shape `(F,)`: the weight of each function.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: The outcomes `(B,)` (float32) and the unscorable flags `(B,)` (bool).
    """
    rewards = rewards_per_func.float()
    unscorable = torch.isnan(rewards).all(dim=1)
    outcome = (rewards * weights.to(rewards.device, torch.float32).unsqueeze(0)).nansum(dim=1)
    return torch.where(unscorable, 0.0, outcome), unscorable


def prime_advantages(
    outcome_rewards: torch.Tensor,
    token_rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    gamma: float = 1.0,
    process_coef: float = 1.0,
    outcome_coef: float = 1.0,
    baseline: str = "paper",
    whiten: bool = True,
) -> torch.Tensor:
    r"""PRIME advantages (arXiv:2502.01456): leave-one-out baselines for outcome and process rewards.

    `baseline="paper"` is Algorithm 1 of the paper, the outcome term undiscounted:
    `A_i^t = [o_i - mean_{j != i} o_j] + sum_{s >= t} gamma^(s - t) [r(y_i^s) - mean_{j != i} (r(y_j) / |y_j|)]`,
    where `r(y_j) / |y_j|` is the mean per-token process reward of sample `j`; then whitened over the batch.

    `baseline="reference"` is `compute_rloo_returns` of the PRIME reference code (PRIME-RL/PRIME,
    `verl/trainer/ppo/core_algos.py`) with its two discounts `reward_model_gamma` and `verifier_gamma` both equal
    to `gamma`. Its process term has a small self term,
    `r_t * K / (K - 1) - sum_{j in group} (r(y_j) / |y_j|) / (K - 1)`
    `= [r_t - mean_{j != i} (r(y_j)/|y_j|)] + (r_t - r(y_i)/|y_i|) / (K - 1)`,
    and the outcome advantage `o_i - mean_{j != i} o_j` is a reward on the last valid token, so the return discounts
    it too: `gamma^(last - t) [o_i - mean_{j != i} o_j]`. With `gamma = 1` both baselines give the same outcome term
    and the same advantage at the first token (the self term sums to zero over a completion).

    Args:
        outcome_rewards (`torch.Tensor`):
            Verifier rewards `o_i`, shape `(B,)`, groups of `group_size` contiguous samples.
        token_rewards (`torch.Tensor`):
            Implicit process rewards `r_t`, shape `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask, shape `(B, T)`.
        group_size (`int`):
            Samples per prompt `K >= 2`.
        gamma (`float`, *optional*, defaults to `1.0`):
            Discount of the return, in (0, 1]: of the process term only (`"paper"`), or of both terms
            (`"reference"`).
        process_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the process term.
        outcome_coef (`float`, *optional*, defaults to `1.0`):
            Weight of the outcome term.
        baseline (`str`, *optional*, defaults to `"paper"`):
            `"paper"` (Algorithm 1) or `"reference"` (the reference code, see above).
        whiten (`bool`, *optional*, defaults to `True`):
            Whether to whiten the advantages over all valid tokens of the batch.

    Returns:
        `torch.Tensor`: Advantages of shape `(B, T)`, 0 outside the mask.
    """
    if torch.isnan(outcome_rewards).any() or torch.isnan(token_rewards[mask.bool()]).any():
        raise ValueError("prime_advantages got NaN rewards: replace or filter them before computing advantages.")
    m = mask.to(token_rewards.dtype)
    lengths = m.sum(-1).clamp(min=1.0)
    per_token_mean = (token_rewards * m).sum(-1) / lengths  # r(y_j) / |y_j|, (B,)
    outcome = outcome_rewards.to(token_rewards.dtype)
    outcome_adv = outcome - leave_one_out_baseline(outcome, group_size)
    if baseline == "paper":
        process = token_rewards - leave_one_out_baseline(per_token_mean, group_size).unsqueeze(-1)
        advantages = outcome_coef * outcome_adv.unsqueeze(-1) * m + process_coef * discounted_returns(
            process, m, gamma
        )
    elif baseline == "reference":
        group_sum = _grouped(per_token_mean, group_size).sum(1, keepdim=True).expand(-1, group_size).reshape(-1)
        process = token_rewards * group_size / (group_size - 1) - (group_sum / (group_size - 1)).unsqueeze(-1)
        outcome_at_end = outcome_adv.unsqueeze(-1) * last_token_mask(m).to(token_rewards.dtype)
        advantages = discounted_returns(outcome_coef * outcome_at_end + process_coef * process, m, gamma)
    else:
        raise ValueError(f"baseline must be 'paper' or 'reference', got {baseline!r}.")
    return masked_whiten(advantages, m) if whiten else advantages * m


def accuracy_band_mask(
    outcome_rewards: torch.Tensor,
    group_size: int,
    low: float = 0.2,
    high: float = 0.8,
    truncated: torch.Tensor | None = None,
) -> torch.Tensor:
    """PRIME's online prompt filter: keep the groups whose mean accuracy lies in `[low, high]`.

    Args:
        outcome_rewards (`torch.Tensor`):
            Verifier rewards of shape `(B,)`, groups of `group_size` contiguous samples.
        group_size (`int`):
            Samples per prompt.
        low (`float`, *optional*, defaults to `0.2`):
            Lowest mean accuracy kept.
        high (`float`, *optional*, defaults to `0.8`):
            Highest mean accuracy kept.
        truncated (`torch.Tensor`, *optional*):
            Shape `(B,)`, True for completions cut at the length limit; a group with one is dropped.

    Returns:
        `torch.Tensor`: Bool keep-mask of shape `(B,)`, constant within each group.
    """
    g = outcome_rewards.float().view(-1, group_size)
    acc = g.mean(1)
    keep = (acc >= low - 1e-6) & (acc <= high + 1e-6)
    if truncated is not None:
        keep &= ~truncated.bool().view(-1, group_size).any(1)
    return keep.repeat_interleave(group_size)


def step_end_mask_from_token_ids(
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    separator_token_ids: Sequence[int] = (),
    step_len: int | None = None,
) -> torch.Tensor:
    """Mark the last token of each step: tokens in `separator_token_ids`, every `step_len`-th token, and the last
    valid token of each sequence.

    Pass only separator ids proper (for example the ids of `"\\n"` tokens), never a BOS id: with tokenizers that add
    a BOS token, `tokenizer.encode("\\n")[0]` is the BOS.

    Args:
        completion_ids (`torch.Tensor`):
            Completion token ids of shape `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask of shape `(B, T)`, right-padded.
        separator_token_ids (sequence of `int`, *optional*, defaults to `()`):
            Token ids that end a step.
        step_len (`int`, *optional*):
            If given, also end a step every `step_len` tokens.

    Returns:
        `torch.Tensor`: Bool tensor of shape `(B, T)`.
    """
    valid = mask.bool()
    ends = torch.zeros_like(valid)
    if len(separator_token_ids):
        ends |= torch.isin(completion_ids, torch.as_tensor(list(separator_token_ids), device=completion_ids.device))
    if step_len is not None:
        if step_len < 1:
            raise ValueError(f"step_len must be >= 1, got {step_len}.")
        positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        ends |= ((positions + 1) % step_len == 0).unsqueeze(0)
    lengths = valid.sum(-1)
    last = torch.zeros_like(valid)
    has_tokens = lengths > 0
    last[has_tokens, (lengths[has_tokens] - 1)] = True
    return (ends | last) & valid


def fill_from_step_ends(values: torch.Tensor, step_end_mask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Give every token the value at the last token of its step.

    Args:
        values (`torch.Tensor`):
            Per-token values of shape `(B, T)`.
        step_end_mask (`torch.Tensor`):
            Bool mask of step-final tokens, shape `(B, T)` (see [`step_end_mask_from_token_ids`]); the last valid
            token of each row must be marked.
        mask (`torch.Tensor`):
            Completion mask of shape `(B, T)`.

    Returns:
        `torch.Tensor`: Shape `(B, T)`, 0 outside the mask.
    """
    T = values.shape[1]
    positions = torch.arange(T, device=values.device).expand_as(values)
    end_index = torch.where(step_end_mask.bool(), positions, T - 1)
    # Index of the next step end at or after t: a reverse running minimum.
    next_end = end_index.flip(-1).cummin(-1).values.flip(-1)
    return torch.where(mask.bool(), values.gather(-1, next_end), 0.0)


def prl_advantages(
    outcome_advantages: torch.Tensor,
    old_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    step_end_mask: torch.Tensor,
    eta: float,
) -> torch.Tensor:
    r"""PRL process advantages (arXiv:2601.10201): `R_t = A_i - (1/eta) * S_t`, constant within each step.

    `S_t = sum_{j >= t} (log pi_old(a_j) - log pi_ref(a_j))` over the remaining completion tokens; every token of a
    step gets the value of `R` at the step's last token.

    Args:
        outcome_advantages (`torch.Tensor`):
            Group-normalised outcome advantages `A_i` (GRPO's), shape `(B,)`.
        old_logps (`torch.Tensor`):
            Log-probabilities of the sampled tokens under the sampling policy, shape `(B, T)`.
        ref_logps (`torch.Tensor`):
            The same under the reference model, shape `(B, T)`.
        mask (`torch.Tensor`):
            Completion mask, shape `(B, T)`.
        step_end_mask (`torch.Tensor`):
            Bool mask of step-final tokens, shape `(B, T)`.
        eta (`float`):
            Entropy-regularisation coefficient (the paper uses 100-200); larger means a smaller KL correction.

    Returns:
        `torch.Tensor`: Advantages of shape `(B, T)`, 0 outside the mask.
    """
    eta = resolve_eta(eta)
    if eta == 0:
        raise ValueError("PRL needs eta != 0 (the KL term is scaled by 1/eta).")
    m = mask.to(old_logps.dtype)
    kl_to_go = discounted_returns((old_logps - ref_logps) * m, m, 1.0)
    r = outcome_advantages.unsqueeze(-1).to(old_logps.dtype) - kl_to_go / eta
    return fill_from_step_ends(r, step_end_mask, mask)


# ---------------------------------------------------------------------------------------------------------------------
# Process-supervised GRPO (DeepSeekMath, section 4.1.3)
# ---------------------------------------------------------------------------------------------------------------------


def process_supervision_advantages(
    step_rewards: torch.Tensor,
    step_ends: torch.Tensor,
    step_mask: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    outcome_advantages: torch.Tensor | None = None,
    outcome_coef: float = 0.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    r"""Process-supervised GRPO advantages (DeepSeekMath, arXiv:2402.03300, section 4.1.3).

    For the `G = group_size` completions of one prompt, the PRM gives a reward `r_i^(j)` at the last token of step `j`
    of completion `i`. All step rewards of the group, `R`, are normalised together:
    `r~_i^(j) = (r_i^(j) - mean(R)) / (std(R) + eps)` (`std` with Bessel's correction, and `eps` added to it, as
    GRPOTrainer normalises outcome rewards; a group with a single step reward has `std = 0`). The advantage of token
    `t` of completion `i` is the sum of the normalised rewards of its steps that end at or after `t`:
    `A_i^t = sum_{j: end(j) >= t} r~_i^(j)`. With one step per completion, ending at its last token, this is GRPO's
    outcome advantage. Optionally `outcome_coef * outcome_advantages[i]` is added to every token of completion `i`.

    Args:
        step_rewards (`torch.Tensor`):
            PRM rewards of each step, shape `(B, S)`; rows are `B / group_size` groups of `group_size` contiguous
            completions.
        step_ends (`torch.Tensor`):
            Index of the last token of each step in the completion, shape `(B, S)`, long, in `[0, T)`; two steps may
            end at the same token. Entries where `step_mask` is 0 are ignored.
        step_mask (`torch.Tensor`):
            Which steps exist, shape `(B, S)`.
        mask (`torch.Tensor`):
            Completion (loss) mask, shape `(B, T)`.
        group_size (`int`):
            Completions per prompt `G >= 1`.
        outcome_advantages (`torch.Tensor`, *optional*):
            Group-normalised outcome advantages, shape `(B,)` (GRPO's own); needed when `outcome_coef != 0`.
        outcome_coef (`float`, *optional*, defaults to `0.0`):
            Weight of the outcome advantage added to every token.
        eps (`float`, *optional*, defaults to `1e-4`):
            Added to the standard deviation (GRPOTrainer's value).

    Returns:
        `torch.Tensor`: Advantages of shape `(B, T)`, float32, 0 outside `mask`.

    Raises:
        `ValueError`: NaN step rewards, a step end outside `[0, T)`, a batch that is not whole groups, or
            `outcome_coef != 0` without `outcome_advantages`.
    """
    if group_size < 1 or step_rewards.shape[0] % group_size:
        raise ValueError(
            f"Batch of {step_rewards.shape[0]} completions is not a whole number of groups of {group_size}."
        )
    valid = step_mask.bool()
    rewards = step_rewards.float()
    if torch.isnan(rewards[valid]).any():
        raise ValueError("process_supervision_advantages got NaN step rewards: score every step or mask it out.")
    T = mask.shape[1]
    ends = step_ends.long()
    if ((ends < 0) | (ends >= T))[valid].any():
        raise ValueError(f"A step ends outside the completion: step_ends must lie in [0, {T}).")
    g_rewards = torch.where(valid, rewards, 0.0).view(-1, group_size * rewards.shape[1])
    g_valid = valid.view(-1, group_size * rewards.shape[1]).float()
    count = g_valid.sum(-1, keepdim=True)
    mean = g_rewards.sum(-1, keepdim=True) / count.clamp(min=1.0)
    var = (((g_rewards - mean) * g_valid) ** 2).sum(-1, keepdim=True) / (count - 1).clamp(min=1.0)
    normalised = ((g_rewards - mean) / (var.sqrt() + eps) * g_valid).view_as(rewards)
    at_ends = torch.zeros(rewards.shape[0], T, dtype=torch.float32, device=rewards.device)
    at_ends.scatter_add_(1, torch.where(valid, ends, 0), normalised)
    advantages = at_ends.flip(-1).cumsum(-1).flip(-1)  # sum over the steps ending at or after each token
    if outcome_coef:
        if outcome_advantages is None:
            raise ValueError("outcome_coef != 0 needs the outcome_advantages.")
        advantages = advantages + outcome_coef * outcome_advantages.float().to(advantages.device).unsqueeze(-1)
    return advantages * mask.to(advantages.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# LM-head PRMs (Math-Shepherd / ER-PRM convention) and the KTO / NCA losses of implicit PRMs
# ---------------------------------------------------------------------------------------------------------------------


def two_token_logits(logits: torch.Tensor, good_token_id: int, bad_token_id: int) -> torch.Tensor:
    """The two candidate logits of an LM-head PRM as two-class logits `[l_bad, l_good]` (class 1 = "good step").

    The order matches a token-classification PRM, so [`soft_cross_entropy`] and the soft-label metrics apply as they
    are; `two_token_logits(...).softmax(-1)[..., 1]` is [`two_token_step_scores`].

    Args:
        logits (`torch.Tensor`):
            LM-head logits of shape `(..., vocab_size)`.
        good_token_id (`int`):
            Token id of the "good" candidate (e.g. `"+"`).
        bad_token_id (`int`):
            Token id of the "bad" candidate (e.g. `"-"`).

    Returns:
        `torch.Tensor`: Shape `(..., 2)`, in the dtype of `logits`.
    """
    return torch.stack([logits[..., bad_token_id], logits[..., good_token_id]], dim=-1)


def lm_head_soft_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    good_token_id: int,
    bad_token_id: int,
    ignore_index: float = -100.0,
) -> torch.Tensor:
    r"""Soft two-class cross-entropy of an LM-head PRM over its two candidate logits, per position (ER-PRM training).

    At a step tag with soft label `v`: `p = softmax([l_good, l_bad])` and `loss = -(v * log p_good + (1 - v) * log
    p_bad)`, the target being `[v, 1 - v]` over `[good, bad]` (ER-PRM, arXiv:2412.11006, section 3; the reference code
    `prm/kl_math_reward_ce.py`). The other logits of the vocabulary play no part. Labels are never rounded.

    Args:
        logits (`torch.Tensor`):
            LM-head logits of shape `(B, T, vocab_size)` (or any `(..., vocab_size)`).
        targets (`torch.Tensor`):
            Soft labels in [0, 1] of shape `(B, T)`: at the token of each step tag, `ignore_index` elsewhere.
        good_token_id (`int`):
            Token id of the "good" candidate.
        bad_token_id (`int`):
            Token id of the "bad" candidate.
        ignore_index (`float`, *optional*, defaults to `-100.0`):
            Value of `targets` at positions without a label.

    Returns:
        `torch.Tensor`: The loss of shape `(B, T)`, 0 at unlabelled positions (float32 or wider).
    """
    return soft_cross_entropy(two_token_logits(logits, good_token_id, bad_token_id), targets, ignore_index)


def kto_reference_point(mismatched_log_ratio: torch.Tensor) -> torch.Tensor:
    r"""KTO's reference point `z_0`: the estimate of `KL(pi_theta || pi_ref)` from mismatched pairs, clamped at 0.

    KTO (Ethayarajh et al. 2024, arXiv:2402.01306) estimates `z_0 = KL(pi_theta(y'|x) || pi_ref(y'|x))`
    with the sequence log-ratios of completions `y'` paired with prompts `x` they do not answer (the mismatched pairs
    of a batch), averaged and clamped at 0; no gradient flows through it.

    Args:
        mismatched_log_ratio (`torch.Tensor`):
            `log pi_theta(y'|x) - log pi_ref(y'|x)` summed over each mismatched completion, shape `(M,)`, `M >= 1`.

    Returns:
        `torch.Tensor`: A detached scalar `>= 0`.
    """
    if mismatched_log_ratio.numel() == 0:
        raise ValueError("kto_reference_point needs at least one mismatched (prompt, completion) pair.")
    return mismatched_log_ratio.detach().float().mean().clamp(min=0.0)


def implicit_prm_kto_loss(
    log_ratio: torch.Tensor,
    labels: torch.Tensor,
    beta: float,
    reference_point: torch.Tensor | float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    r"""KTO loss of an implicit PRM on unpaired outcome labels (Ethayarajh et al. 2024, arXiv:2402.01306).

    With `r = beta * log_ratio` the implicit outcome reward and `z = beta * reference_point`:
    a correct completion (label 1) costs `lambda_D * (1 - sigmoid(r - z))`, an incorrect one (label 0) costs
    `lambda_U * (1 - sigmoid(z - r))`. The implicit-PRM paper (arXiv:2412.01981) trains its KTO variant with this
    objective on the same response-level labels as CE.

    Args:
        log_ratio (`torch.Tensor`):
            Sequence log-ratios `log pi_theta(y) - log pi_ref(y)`, shape `(B,)` (see [`sequence_log_ratio`]).
        labels (`torch.Tensor`):
            Outcome labels of shape `(B,)`: 1 correct ("desirable"), 0 incorrect ("undesirable").
        beta (`float`):
            Scale of the implicit reward.
        reference_point (`torch.Tensor` or `float`):
            The KL estimate `z_0` in log-ratio units (see [`kto_reference_point`]); `0` for no reference point.
        desirable_weight (`float`, *optional*, defaults to `1.0`):
            `lambda_D`, the weight of correct completions.
        undesirable_weight (`float`, *optional*, defaults to `1.0`):
            `lambda_U`, the weight of incorrect completions.

    Returns:
        `torch.Tensor`: Loss of shape `(B,)`.
    """
    reference = torch.as_tensor(reference_point, dtype=log_ratio.dtype, device=log_ratio.device)
    margin = beta * (log_ratio - reference)
    desirable = labels.to(log_ratio.dtype) >= 0.5
    return torch.where(
        desirable,
        desirable_weight * (1.0 - torch.sigmoid(margin)),
        undesirable_weight * (1.0 - torch.sigmoid(-margin)),
    )


def implicit_prm_nca_loss(
    chosen_log_ratio: torch.Tensor, rejected_log_ratio: torch.Tensor, beta: float
) -> torch.Tensor:
    r"""NCA loss of an implicit PRM on (correct, incorrect) pairs (Chen et al. 2024, "Noise Contrastive Alignment of
    Language Models with Explicit Rewards", arXiv:2402.05369, the pairwise NCA objective).

    `loss = -log sigmoid(r_w) - 1/2 * [log sigmoid(-r_w) + log sigmoid(-r_l)]` with `r = beta * log_ratio`: unlike
    DPO, which sees only the margin `r_w - r_l`, it acts on each reward itself (the correct one is pulled towards
    `log 2`, the incorrect one down), so rewards do not drift together.

    Args:
        chosen_log_ratio (`torch.Tensor`):
            Sequence log-ratios of the correct completions, shape `(P,)`.
        rejected_log_ratio (`torch.Tensor`):
            Sequence log-ratios of the incorrect completions of the same prompts, shape `(P,)`.
        beta (`float`):
            Scale of the implicit reward.

    Returns:
        `torch.Tensor`: Loss of shape `(P,)`.
    """
    chosen, rejected = beta * chosen_log_ratio, beta * rejected_log_ratio
    return -F.logsigmoid(chosen) - 0.5 * (F.logsigmoid(-chosen) + F.logsigmoid(-rejected))
