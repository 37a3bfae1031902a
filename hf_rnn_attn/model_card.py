"""The model card (`README.md`) of a saved RNNAttn model, rendered from the templates in `model_cards/`.

A card is `huggingface_hub`'s `ModelCard.from_template`: a Jinja template, the closest preset's
(`bigru-bahdanau.md`, `lstm-luong.md`) followed by `_shared.md`, filled with the Hub metadata (`ModelCardData`,
the `{{ card_data }}` front matter) and the values `card_contents` computes from the model, its measured scores
and the facts it is given. Nothing is invented: a missing score reads "not measured", a missing fact
"Not recorded.".
"""

import re
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .configuration_rnn_attn import PRESETS

MODEL_CARDS_DIR = Path(__file__).parent / "model_cards"
NOT_MEASURED = "not measured"
NOT_RECORDED = "Not recorded."
# Metrics that go into the card's `model-index`: key in `metrics` -> (Hub metric type, display name).
INDEXED_METRICS = {"bleu": ("bleu", "BLEU"), "chrf": ("chrf", "chrF")}
SCORE_EQUATIONS = {
    "additive": r"v^\top \tanh(W_1 h_t + W_2 h_i)",
    "dot": r"h_t^\top h_i",
    "general": r"h_t^\top W h_i",
    "location": r"(W_a h_t)_i",
}
# Where step t attends (Luong et al. 2015, section 3.2), in the card's notation (positions count from 1).
ATTENTION_TYPE_TEXTS = {
    "global": "Global attention: every step attends to every real source position.",
    "local-m": (r"Local attention (*local-m*, Luong et al. 2015): step $t$ attends only to the real positions "
                r"$i$ of the window $|i - p_t| \le D$ around $p_t = \min(t, S_{real})$; the softmax above runs over "
                r"them, and every other weight is 0."),
    "local-p": (r"Local attention (*local-p*, Luong et al. 2015): step $t$ predicts an aligned position and "
                r"attends only to the real positions $i$ of the window $|i - p_t| \le D$ around it, favouring "
                r"those near $p_t$ (Luong et al.'s Gaussian factor, renormalised here so that the weights sum to "
                r"1); every other weight is 0:" "\n\n"
                r"$$p_t = S_{real} \cdot \mathrm{sigmoid}(v_p^\top \tanh(W_p h_t)), \qquad "
                r"\alpha_{ti} = \frac{\exp(e_{ti}) \, g_{ti}}{\sum_{|j - p_t| \le D} \exp(e_{tj}) \, g_{tj}}, \qquad "
                r"g_{ti} = \exp\left(-\frac{(i - p_t)^2}{2 \sigma^2}\right), \quad \sigma = D / 2$$"),
}
CONFIG_TABLE_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "encoder_hidden_size", "rnn_cell",
                       "encoder_layers", "decoder_layers", "bidirectional_encoder", "attention_score", "attention_type",
                       "input_feeding", "decoder_state_init", "output_layer", "dropout", "tie_word_embeddings")


def render_model_card(model, metrics=None, dataset_info=None, training_info=None, repo_id="path/to/model"):
    """The `README.md` text for `model`: Hub YAML front matter, then the template of the closest preset.

    `src_lang` / `tgt_lang` are read from `model.config`. See `hub.save_for_hub` for the arguments.
    """
    card_data, values = card_contents(model, metrics, dataset_info, training_info, repo_id)
    card = ModelCard.from_template(card_data, template_str=card_template(closest_preset(model.config)[0]), **values)
    return f"{card}\n"  # Jinja drops the template's final newline


def card_template(preset):
    """The Jinja template of a card for `preset`: its own page, then the sections every card shares."""
    paths = [MODEL_CARDS_DIR / f"{preset}.md", MODEL_CARDS_DIR / "_shared.md"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"Model card template {path} is missing; the templates ship in "
                                    f"hf_rnn_attn/model_cards/.")
    return "".join(path.read_text(encoding="utf-8") for path in paths)


def card_contents(model, metrics=None, dataset_info=None, training_info=None, repo_id="path/to/model"):
    """The card's Hub metadata (`ModelCardData`) and the values of its template's slots."""
    config = model.config
    src_lang, tgt_lang = getattr(config, "src_lang", None), getattr(config, "tgt_lang", None)
    preset, deviations = closest_preset(config)
    scores, extra_numbers, signatures = _split_metrics(metrics)
    dataset_info = dict(dataset_info or {})
    model_name = repo_id.rstrip("/").split("/")[-1] or f"rnn-attn-{preset}"
    card_data = _card_data(config, preset, model_name, scores, dataset_info, src_lang, tgt_lang)
    values = {
        "model_name": model_name,
        "direction": (f"from `{src_lang}` to `{tgt_lang}`" if src_lang and tgt_lang else
                      "in the one direction it was trained for (source and target language not recorded)"),
        "deviations": _deviations_text(preset, deviations),
        "initial_state": _initial_state_equation(config),
        "score_equation": SCORE_EQUATIONS[config.attention_score],
        "attention_score": config.attention_score,
        "attention_type": _attention_type_text(config),
        "encoder_layers": str(config.encoder_layers),
        "decoder_layers": str(config.decoder_layers),
        "config_table": _config_table(model),
        "vocab_size": str(config.vocab_size),
        "results_table": _results_text(scores, extra_numbers, signatures, dataset_info),
        "training_data": _facts_text(dataset_info, _dataset_lines(dataset_info),
                                     handled=("name", "id", "config", "url", "split")),
        "training_budget": _facts_text(training_info, []),
        "repo_id": repo_id,
    }
    return card_data, values


def closest_preset(config):
    """The preset whose fields `config` matches most (first in `PRESETS` on a tie), and the fields that differ.

    Returns `(name, {field: (checkpoint value, preset value)})`.
    """
    def differences(name):
        return {field: (getattr(config, field), value) for field, value in PRESETS[name].items()
                if getattr(config, field) != value}

    name = min(PRESETS, key=lambda candidate: len(differences(candidate)))
    return name, differences(name)


def _split_metrics(metrics):
    """Scores for the model-index (`{"bleu": 21.3}`), other numbers, and `*_signature` strings."""
    scores, extra_numbers, signatures = {}, {}, {}
    for key, value in (metrics or {}).items():
        name = re.sub(r"^(eval|test|predict)_", "", str(key)).lower()
        if name in INDEXED_METRICS:
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"Metric {key!r} must be a number, got {value!r}.")
            scores[name] = value
        elif name.endswith("_signature") and isinstance(value, str):
            signatures[name.removesuffix("_signature")] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            extra_numbers[name] = value
    return scores, extra_numbers, signatures


def _card_data(config, preset, model_name, scores, dataset_info, src_lang, tgt_lang):
    # The Hub reads `datasets` and the model-index dataset `type` as Hub dataset ids: a free-form name goes
    # only into the human-readable `name`.
    dataset_id = dataset_info.get("id")
    dataset_name = dataset_info.get("name") or dataset_id
    pair = f"{src_lang}-{tgt_lang}" if src_lang and tgt_lang else None
    eval_results = [
        EvalResult(task_type="translation", task_name=f"Translation {pair}" if pair else "Translation",
                   dataset_type=dataset_id or "custom", dataset_name=dataset_name or "unspecified",
                   dataset_config=dataset_info.get("config"), dataset_split=dataset_info.get("split", "test"),
                   metric_type=metric_type, metric_name=display_name, metric_value=scores[key])
        for key, (metric_type, display_name) in INDEXED_METRICS.items() if key in scores
    ]
    languages = list(dict.fromkeys(lang for lang in (src_lang, tgt_lang) if lang))
    return ModelCardData(
        language=languages or None,
        license="apache-2.0",
        library_name="transformers",
        tags=["translation", "seq2seq", "rnn", "attention", config.rnn_cell, preset, "custom_code"],
        datasets=[dataset_id] if dataset_id else None,
        metrics=[INDEXED_METRICS[key][0] for key in INDEXED_METRICS if key in scores] or None,
        pipeline_tag="translation",
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )


def _deviations_text(preset, deviations):
    if not deviations:
        return f"The checkpoint uses the `{preset}` preset as published."
    changes = ", ".join(f"`{field}={value!r}` (preset: `{preset_value!r}`)"
                        for field, (value, preset_value) in deviations.items())
    return (f"**This checkpoint departs from the `{preset}` preset:** {changes}. The equations below describe the "
            f"preset; the score and the initial state are this checkpoint's, and `config.json` has every field.")


def _initial_state_equation(config):
    """The decoder's start state `s_0` (and LSTM cell `m_0`) as configured, LaTeX."""
    layer = "^{(l)}" if config.decoder_layers > 1 else ""
    lstm = config.rnn_cell == "lstm"
    lhs = f"(s_0{layer}, m_0{layer})" if lstm else f"s_0{layer}"
    if config.decoder_state_init == "zeros":
        return f"{lhs} = 0"
    if config.decoder_state_init == "backward":
        sources = [r"\overleftarrow{h}_1", r"\overleftarrow{m}_1"]
    else:
        enc_layer = "^{(l)}" if config.encoder_layers > 1 else ""
        if config.bidirectional_encoder:
            sources = [rf"[\overrightarrow{{{v}}}_S{enc_layer} ; \overleftarrow{{{v}}}_1{enc_layer}]" for v in "hm"]
        else:
            sources = [f"{v}_S{enc_layer}" for v in "hm"]
    if config.uses_bridge:
        sources = [rf"\tanh(W_s {source} + b_s)" for source in sources]
    rhs = f"({sources[0]}, {sources[1]})" if lstm else sources[0]
    return f"{lhs} = {rhs}"


def _attention_type_text(config):
    """Which source positions each step attends to, and the window D of local attention."""
    text = ATTENTION_TYPE_TEXTS[config.attention_type]
    if config.attention_type == "global":
        return text
    window = config.local_window
    return f"{text}\n\nThe window: $D = {window}$ (`local_window`), at most {2 * window + 1} source positions."


def _config_table(model):
    config = model.config
    fields = CONFIG_TABLE_FIELDS + (("local_window",) if config.attention_type != "global" else ())
    rows = [f"| `{field}` | `{getattr(config, field)}` |" for field in fields]
    parameters = sum(parameter.numel() for parameter in model.parameters())
    return "\n".join(["| Configuration | Value |", "|---|---|", *rows, f"| parameters | {parameters:,} |"])


def _results_text(scores, extra_numbers, signatures, dataset_info):
    data = dataset_info.get("name") or dataset_info.get("id")
    split = dataset_info.get("split", "test")
    rows = [f"| {display_name} | {_format_number(scores[key]) if key in scores else NOT_MEASURED} |"
            for key, (_, display_name) in INDEXED_METRICS.items()]
    rows += [f"| {name} | {_format_number(value)} |" for name, value in extra_numbers.items()]
    intro = (f"Corpus-level scores on the {split} split of {data}." if scores and data else
             "Corpus-level scores on held-out data (the data set was not recorded)." if scores else
             "This checkpoint has not been evaluated; no score is reported.")
    lines = [intro, "", "| Metric | Value |", "|---|---|", *rows]
    if signatures:
        lines += ["", "sacreBLEU signatures:", ""]
        lines += [f"- {name}: `{signature}`" for name, signature in signatures.items()]
    return "\n".join(lines)


def _format_number(value):
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _dataset_lines(dataset_info):
    lines = []
    name, dataset_id = dataset_info.get("name"), dataset_info.get("id")
    if dataset_id:
        lines.append(f"- Data set: {name or dataset_id} ([`{dataset_id}`](https://huggingface.co/datasets/{dataset_id}))")
    elif name:
        lines.append(f"- Data set: {name}")
    for key, label in (("config", "Configuration"), ("url", "Source"), ("split", "Evaluation split")):
        if dataset_info.get(key):
            lines.append(f"- {label}: {dataset_info[key]}")
    return lines


def _facts_text(info, lines, handled=()):
    """`lines`, then the other keys of `info` as bullets, then its `description`; "Not recorded." if empty."""
    info = dict(info or {})
    handled = {*handled, "description"}
    lines = lines + [f"- {str(key).replace('_', ' ').capitalize()}: {value}"
                     for key, value in info.items() if key not in handled and value is not None]
    if info.get("description"):
        lines = lines + ["", str(info["description"])]
    return "\n".join(lines) if lines else NOT_RECORDED
