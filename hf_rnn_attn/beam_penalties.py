"""GNMT's coverage penalty for beam search, as the `generate(coverage_penalty=beta)` option.

Wu et al. 2016 (arXiv:1609.08144, section 7) score a finished hypothesis Y of a source X as

    s(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y),      cp(X; Y) = beta * sum_i log(min(sum_t alpha_ti, 1.0)),

where alpha_ti is the attention of target step t on source token i: a translation that leaves source tokens
unattended (sum_t alpha_ti < 1) loses score, one that attends to every token at least once in total loses none.
`lp(Y)` is generate()'s own length normalisation, `|Y| ** length_penalty` (`length_penalty=1.0`, the default, is
the average log-probability per token: OpenNMT-py's `-length_penalty avg`). As in OpenNMT-py's
`-coverage_penalty wu` (without `-stepwise_penalty`), the penalty ranks finished hypotheses only; the beams still
running are chosen by their log-probabilities.

transformers 5's beam search takes no custom beam scorer, so the penalty enters where finished hypotheses get
their score, `GenerationMixin._update_finished_beams`, which both transformers' loop and the lean loop
(`lean_decoding.beam_search`) call. The attention sums travel in the decoder state (`RNNAttnState.coverage`,
B x S), which beam search reorders with the beams like the rest of the state. Off by default: without
`coverage_penalty` the state carries no coverage and the scores are generate()'s own.

Shapes: R rows (sentences x beams), S source length, K candidates per sentence (2 x beams).
"""

from contextlib import contextmanager

import torch


class CoveragePenalty:
    """`cp = beta * sum_i log(min(sum_t alpha_ti, 1.0))` over the real (unpadded) source tokens, for each row.

    One object per beam search: after each decoder step it is shown the rows' coverage (`observe`), and the
    hypotheses that end at that step get their row's penalty (`add_to_finished`).
    """

    def __init__(self, beta):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"`coverage_penalty` must be a number >= 0 (beta of Wu et al. 2016; 0.2 is typical), "
                             f"got {beta!r}.")
        self.beta = float(beta)
        self.row_penalty = None  # R, the penalty of each row after the latest step

    def __call__(self, coverage, attention_mask=None):
        """Args: coverage R x S (`sum_t alpha_ti`), attention_mask R x S (1 = real token; None: all real).
        Returns R."""
        # A token no step attended to at all would give log(0) = -inf: tiny keeps the score finite and ordered.
        logs = coverage.float().clamp(min=torch.finfo(torch.float32).tiny, max=1.0).log()
        if attention_mask is not None:
            logs = logs.masked_fill(attention_mask == 0, 0.0)
        return self.beta * logs.sum(dim=-1)

    def observe(self, coverage, attention_mask):
        self.row_penalty = self(coverage, attention_mask)

    def add_to_finished(self, topk_log_probs, parent_rows, length, length_penalty):
        """`topk_log_probs` (sum log P, B x K) plus `cp * length ** length_penalty`, so that generate()'s division
        by `length ** length_penalty` leaves `log P / lp + cp`. `parent_rows` (B x K): the row each candidate
        continues."""
        return topk_log_probs + self.row_penalty[parent_rows] * length ** length_penalty


class CoveragePenaltyMixin:
    """The generate() hooks of the coverage penalty, for a model whose decoder state has a `coverage` (B x S).

    `lean_decoding.LeanGenerationMixin._beam_search` runs inside `_scoring_coverage(beta)`; transformers' loop shows
    each step's state through `_update_model_kwargs_for_generation`, the lean loop calls `observe` itself.
    """

    _coverage_penalty = None  # the CoveragePenalty of the beam search running now, if it has one

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`; `coverage_penalty` needs beam search, which alone ranks finished hypotheses."""
        beams = kwargs.get("num_beams", (generation_config or self.generation_config).num_beams)
        if kwargs.get("coverage_penalty") is not None and (beams or 1) == 1:
            raise ValueError("`coverage_penalty` works with beam search only: pass num_beams > 1.")
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    @contextmanager
    def _scoring_coverage(self, beta):
        """`self._coverage_penalty` is `CoveragePenalty(beta)` (None when beta is None) for the search inside."""
        self._coverage_penalty = None if beta is None else CoveragePenalty(beta)
        try:
            yield
        finally:
            self._coverage_penalty = None

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        if self._coverage_penalty is not None:
            self._coverage_penalty.observe(outputs.past_key_values.coverage, model_kwargs.get("attention_mask"))
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    def _update_finished_beams(self, *, topk_log_probs, topk_running_beam_indices, cur_len, decoder_prompt_len,
                               length_penalty, **kwargs):
        if self._coverage_penalty is not None:
            parent_rows = topk_running_beam_indices[..., cur_len - decoder_prompt_len].long()  # B x K
            topk_log_probs = self._coverage_penalty.add_to_finished(
                topk_log_probs, parent_rows, cur_len + 1 - decoder_prompt_len, length_penalty)
        return super()._update_finished_beams(
            topk_log_probs=topk_log_probs, topk_running_beam_indices=topk_running_beam_indices, cur_len=cur_len,
            decoder_prompt_len=decoder_prompt_len, length_penalty=length_penalty, **kwargs)
