"""A divergence every row shares, whatever its tokenizer: the sequence log-ratio to the teacher per
character of the answer.

Per-token divergences of two tokenizers are different quantities (a Qwen token and a Llama token
cover different text), so a same-tokenizer row's reverse KL and a cross-tokenizer row's aligned
span divergence cannot be set side by side. Both models can score the same *string*, though: for the
completion text ``y`` of a prompt ``x``, each model reads ``x`` in its own chat template and ``y`` in
its own tokens, and

    r(y) = (log p_student(y | x) - log p_teacher(y | x)) / len(y)        (nats per character)

Over answers sampled from the student the mean numerator is the sequence-level KL(student ||
teacher); on the evaluator's greedy answers it says how much more likely the student finds its own
answer than the teacher does (0: the teacher would have written it as readily). It is one greedy
answer per problem, not an expectation over answers, and each row is scored on its own text: two
rows' values compare how far each one's own answers sit from the teacher, not the same answers. It
is 0 for a model against itself and does not depend on how either model splits ``y`` into tokens,
since each sums the log-probabilities of its own tokens of the same characters.

**The stop token counts** (rule :data:`VERSION` 2). An answer that finished is the event "``y``,
then stop": each model adds the log-probability of its own stop token after ``y`` (a same-tokenizer
pair scores the one id the student emitted; a cross-tokenizer pair appends each model's end of
turn, the same event). An answer cut at the token budget has no stop token and is scored as the
text it is, so a loop cut at the budget no longer scores like a finished answer: a teacher that
would have stopped, or never looped, now says so in the finished answers' stop term. Rule 1 (before
this) left the stop token out; records and metrics carry ``logratio_version`` so the report can
footnote rows scored under rule 1 rather than mix them with rule 2's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

VERSION = 2  # 1: the stop token left out; 2: a finished answer's stop token counted (module doc)


def sequence_logprob_B(logits_B_C_V: torch.Tensor, targets_B_C: torch.Tensor, mask_B_C: torch.Tensor,
                       vocab_size: int | None = None) -> torch.Tensor:
    """Per row, the sum over unmasked positions of ``log softmax(logits)[target]`` (float32).

    ``logits_B_C_V[:, j]`` is the distribution that predicts ``targets_B_C[:, j]``; ``vocab_size``
    keeps the tokenizer's real tokens only (padding rows of the embedding matrix are no token)."""
    v = vocab_size or logits_B_C_V.shape[-1]
    logp_B_C_V = F.log_softmax(logits_B_C_V[..., :v].float(), dim=-1)
    mask_B_C = mask_B_C.to(logp_B_C_V.device).bool()
    safe_B_C = torch.where(mask_B_C, targets_B_C.to(logp_B_C_V.device), torch.zeros_like(targets_B_C))
    picked_B_C = logp_B_C_V.gather(-1, safe_B_C.long().unsqueeze(-1)).squeeze(-1)
    return torch.where(mask_B_C, picked_B_C, torch.zeros_like(picked_B_C)).sum(-1)


def per_char(logp_student: float, logp_teacher: float, text: str) -> float | None:
    """``(log p_student - log p_teacher) / len(text)``; None for an empty answer."""
    return (logp_student - logp_teacher) / len(text) if text else None
