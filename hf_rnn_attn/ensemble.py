"""Ensembles: several models translating as one search, driven by `generate()`.

    from hf_rnn_attn.ensemble import RNNAttnEnsemble, load_ensemble

    ensemble, tokenizer = load_ensemble(["runs/a/model", "runs/b/model"])   # or RNNAttnEnsemble([model_a, model_b])
    ensemble.generate(**tokenizer(sources, return_tensors="pt", padding=True), num_beams=5)

At each step the ensemble scores the next token by the mean of its members' log-probabilities,

    score(y_t) = 1/M sum_m log p_m(y_t | y_<t, x),

as OpenNMT-py and Marian do. These are the `logits` the ensemble returns, and generate() treats them as any
model's: greedy search takes their argmax, beam search and sampling their `log_softmax`, the normalised product
of the members' distributions. Each member keeps its own recurrent state (`EnsembleState` holds them, and beam
search reorders them together); the attention the ensemble reports, and the coverage a coverage penalty reads,
are the members' means. The members may differ in architecture (a `bigru-bahdanau` and an `lstm-luong` model)
but must share the vocabulary and special tokens.

Shapes: B batch, S source length, T target length, V vocabulary size, M members.
"""

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import Seq2SeqLMOutput
from transformers.utils import ModelOutput

from .configuration_rnn_attn import RNNAttnConfig
from .lean_decoding import ActiveRows, LeanGenerationMixin, repeat_rows
from .modeling_rnn_attn import RNNAttnForConditionalGeneration, check_num_beams, with_config_defaults

# Members must agree on these, or the same id would mean different tokens (or none) to different members.
SHARED_CONFIG_FIELDS = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


@dataclass
class EnsembleEncoderOutput(ModelOutput):
    """Each member's encoder output (`RNNAttnEncoderOutput`), in member order."""

    members: tuple[ModelOutput, ...] | None = None

    def repeat_interleave(self, repeats):
        """Each row `repeats` times, as generate() expands encoder outputs for beams and returned sequences."""
        return EnsembleEncoderOutput(members=tuple(repeat_rows(output, repeats) for output in self.members))


@dataclass
class EnsembleState:
    """The members' decoder states (`RNNAttnState`), carried as one `past_key_values` and reordered together."""

    members: tuple

    # Read by generate(): like its members, this state can be neither compiled as a static cache nor cropped.
    is_compileable = False
    is_croppable = False

    def reorder_cache(self, beam_idx):
        for state in self.members:
            state.reorder_cache(beam_idx)

    def get_seq_length(self, layer_idx=0):
        return self.members[0].get_seq_length()

    @property
    def coverage(self):
        """B x S, the members' mean `sum_t alpha_ti` (None unless the states track it)."""
        if self.members[0].coverage is None:
            return None
        return torch.stack([state.coverage for state in self.members]).mean(dim=0)


class EnsembleEncoder(nn.Module):
    """Runs every member's encoder on the source. generate() calls it once per batch."""

    main_input_name = "input_ids"

    def __init__(self, members):
        super().__init__()
        self.encoders = tuple(member.get_encoder() for member in members)  # a tuple: not registered twice

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None, **kwargs):
        return EnsembleEncoderOutput(members=tuple(
            encoder(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                    output_hidden_states=output_hidden_states, return_dict=True)
            for encoder in self.encoders))


class EnsembleRows:
    """The lean loops' rows (`lean_decoding.ActiveRows`) of every member, stepped and shrunk together."""

    def __init__(self, ensemble, model_kwargs, track_coverage=False, rows_per_source=1, share_sources=True):
        self.members = [ActiveRows(member, {**model_kwargs, "encoder_outputs": output}, track_coverage, rows_per_source,
                                   share_sources)
                        for member, output in zip(ensemble.members, model_kwargs["encoder_outputs"].members)]
        self.refillable = all(rows.refillable for rows in self.members)

    def row_mask(self):
        return self.members[0].row_mask()

    @property
    def state(self):
        return EnsembleState(tuple(rows.state for rows in self.members))

    def next_logits(self, tokens):
        return mean_log_probs([rows.next_logits(tokens) for rows in self.members])

    def keep(self, rows):
        for member in self.members:
            member.keep(rows)

    def take(self, rows):
        taken = copy.copy(self)
        taken.members = [member.take(rows) for member in self.members]
        return taken

    def extend(self, other):
        for member, other_member in zip(self.members, other.members):
            member.extend(other_member)


def mean_log_probs(logits):
    """M tensors of logits (... x V) -> the mean of their log-probabilities (float32)."""
    return torch.stack([member.float().log_softmax(dim=-1) for member in logits]).mean(dim=0)


def check_members(members):
    """Members must be RNNAttn models with one vocabulary and the same special tokens."""
    if not members:
        raise ValueError("An ensemble needs at least one model.")
    for member in members:
        if not isinstance(member, RNNAttnForConditionalGeneration):
            raise TypeError(f"Ensemble members must be RNNAttnForConditionalGeneration models, got "
                            f"{type(member).__name__}.")
    first = members[0].config
    for number, member in enumerate(members[1:], 2):
        differences = [f"{name} {getattr(member.config, name)!r} vs {getattr(first, name)!r}"
                       for name in SHARED_CONFIG_FIELDS if getattr(member.config, name) != getattr(first, name)]
        if differences:
            raise ValueError(f"Member {number} does not share member 1's vocabulary ({', '.join(differences)}): "
                             f"ensemble models trained with one tokenizer.")


class RNNAttnEnsemble(LeanGenerationMixin, PreTrainedModel, GenerationMixin):
    """Several `RNNAttnForConditionalGeneration` models decoding as one (see the module docstring).

    `generate()` works as for one model, greedy, beam search (with the lean loops, `source_length_cap`,
    `coverage_penalty`) and sampling alike; the generation config is the first member's. The ensemble is for
    decoding only: it is not saved, loaded or trained as one model.
    """

    config_class = RNNAttnConfig
    main_input_name = "input_ids"
    _is_stateful = True
    _rows_class = EnsembleRows

    def __init__(self, members):
        members = list(members)
        check_members(members)
        super().__init__(copy.deepcopy(members[0].config))
        # Not `post_init()`: it would initialise weights, and the members are trained models.
        self.members = nn.ModuleList(members)
        self.generation_config = copy.deepcopy(members[0].generation_config)

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False  # the decoder state is an EnsembleState, not a key/value cache

    def get_encoder(self):
        return EnsembleEncoder(self.members)

    @staticmethod
    def _repeat_encoder_outputs(encoder_outputs, repeats):
        return encoder_outputs.repeat_interleave(repeats)  # the members' outputs are one level down

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, with a clear error for a beam count below 1."""
        check_num_beams(kwargs.get("num_beams", (generation_config or self.generation_config).num_beams))
        return super().generate(inputs, generation_config=generation_config, **kwargs)

    def _coverage_tracking_state(self, encoder_outputs):
        return EnsembleState(tuple(member.get_decoder().initial_state(output, track_coverage=True)
                                   for member, output in zip(self.members, encoder_outputs.members)))

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None,
                past_key_values=None, use_cache=None, output_attentions=None, return_dict=None,
                source_length_cap=None, max_active_rows=None, coverage_penalty=None, **kwargs):
        """One decoding step (or a teacher-forced pass) of every member: `logits` are the mean of their
        log-probabilities (B x T x V), `cross_attentions` the mean of their attention, `past_key_values` an
        `EnsembleState`. `source_length_cap`, `max_active_rows` and `coverage_penalty` are read by generate(),
        as for one model."""
        if encoder_outputs is None:
            encoder_outputs = self.get_encoder()(input_ids=input_ids, attention_mask=attention_mask)
        states = past_key_values.members if past_key_values is not None else (None,) * len(self.members)
        outputs = [member(attention_mask=attention_mask, decoder_input_ids=decoder_input_ids, encoder_outputs=output,
                          past_key_values=state, use_cache=use_cache, output_attentions=output_attentions,
                          return_dict=True)
                   for member, output, state in zip(self.members, encoder_outputs.members, states)]
        output = Seq2SeqLMOutput(
            logits=mean_log_probs([member_output.logits for member_output in outputs]),
            past_key_values=EnsembleState(tuple(o.past_key_values for o in outputs)) if outputs[0].past_key_values
            is not None else None,
            cross_attentions=(torch.stack([o.cross_attentions[0] for o in outputs]).mean(dim=0),)
            if output_attentions else None,  # B x 1 head x T x S
        )
        (return_dict,) = with_config_defaults(self.config, return_dict=return_dict)
        return output if return_dict else output.to_tuple()


def load_ensemble(folders, **kwargs):
    """An `RNNAttnEnsemble` of the models saved in `folders`, and their tokenizer (the first folder's).

    Raises `ValueError` unless the tokenizers have the same vocabulary: the members must read and write the same
    token ids. `kwargs` go to each `from_pretrained` (e.g. `dtype`).
    """
    folders = list(folders)
    tokenizers = [AutoTokenizer.from_pretrained(folder) for folder in folders]
    for folder, tokenizer in zip(folders[1:], tokenizers[1:]):
        if tokenizer.get_vocab() != tokenizers[0].get_vocab():
            raise ValueError(f"The tokenizer of {folder} has another vocabulary than that of {folders[0]}: ensemble "
                             f"models trained with one tokenizer.")
    members = [RNNAttnForConditionalGeneration.from_pretrained(folder, **kwargs) for folder in folders]
    return RNNAttnEnsemble(members), tokenizers[0]
