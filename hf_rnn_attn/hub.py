"""Save an RNNAttn model as a self-contained Hugging Face Hub repository, and upload it.

    from hf_rnn_attn.hub import push_to_hub, save_for_hub

    save_for_hub(model, tokenizer, "outputs/es-en", metrics=metric.compute(...),
                 dataset_info={"name": "Bible RV1909/WEB", "split": "test", "train_pairs": 19686},
                 src_lang="es", tgt_lang="en", training_info={"steps": 20000, "hardware": "1 x H100"})
    push_to_hub("outputs/es-en", "user/rnn-attn-es-en", dry_run=True)   # the files it would upload
    push_to_hub("outputs/es-en", "user/rnn-attn-es-en")                 # needs the network and a token

The folder loads anywhere with `trust_remote_code=True`, with or without `hf_rnn_attn` installed: `config.json`
names the model code (`auto_map`) and the translation pipeline (`custom_pipelines`), and the code files sit
next to the weights.
"""

import json
import logging
import re
from pathlib import Path

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCardData
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForSeq2SeqLM
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_rnn_attn import PRESETS, RNNAttnConfig
from .pipeline_translation import RNNAttnTranslationPipeline

logger = logging.getLogger(__name__)

MODEL_CARDS_DIR = Path(__file__).parent / "model_cards"
# An upload sends these files, the weight shards and the code files config.json names, nothing else: a model
# folder may also hold checkpoints, optimizer states, `training_args.bin` (which can hold a Hub token), `.env`
# files or links to anywhere on disk.
HUB_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json")
_WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
TRAINING_RUN_MARKERS = ("trainer_state.json", "training_args.bin", "optimizer.pt")
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
CONFIG_TABLE_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "encoder_hidden_size", "rnn_cell",
                       "encoder_layers", "decoder_layers", "bidirectional_encoder", "attention_score", "input_feeding",
                       "decoder_state_init", "output_layer", "dropout", "tie_word_embeddings")
_PLACEHOLDER = re.compile(r"\{\{\s*(>\s*)?([\w.-]+)\s*\}\}")
_MISSING = object()


class HubUploadError(RuntimeError):
    """The upload to the Hub failed (no network, no token or no rights, bad repository id...)."""


# ----------------------------------------------------------------------------------------------------- saving

def save_for_hub(model, tokenizer, output_dir, metrics=None, dataset_info=None, src_lang=None, tgt_lang=None,
                 training_info=None, repo_id=None):
    """Write everything a Hub model repository needs into `output_dir`; returns the files it holds.

    Writes `config.json` (with `auto_map`, `custom_pipelines` and, when given or already on the config, `src_lang`
    and `tgt_lang`), `generation_config.json`, `model.safetensors`, the tokenizer files, the model code
    (`configuration_rnn_attn.py`, `modeling_rnn_attn.py` and the sibling files they import), the pipeline code
    (`pipeline_translation.py`) and a `README.md` model card rendered from the template of the model's preset.
    The model object itself is left unchanged.

    Args:
        model (`RNNAttnForConditionalGeneration`): the trained model.
        tokenizer: its tokenizer (saved alongside; the pipeline needs it).
        output_dir (`str` or `os.PathLike`): the folder to write; created if missing.
        metrics (`dict`, *optional*): measured scores, e.g. the output of
            `hf_rnn_attn.metrics.load_translation_metric().compute(...)`. `bleu` and `chrf` (also with an `eval_`,
            `test_` or `predict_` prefix) go into the card's `model-index`; other numbers are listed in the card,
            `*_signature` strings are printed under the scores. Missing scores read "not measured".
        dataset_info (`dict`, *optional*): the data: `name`, `id` (a Hub dataset id; only an id goes into the
            card's `datasets`), `config`, `split` (evaluation split, default "test"), `url`, `description`; any
            other key is listed as a fact (e.g. `train_pairs`).
        src_lang, tgt_lang (`str`, *optional*): language codes (ISO 639-1, e.g. "es", "en").
        training_info (`dict`, *optional*): the training budget and procedure, listed as given (e.g. `steps`,
            `epochs`, `batch_size`, `hardware`, `train_time`).
        repo_id (`str`, *optional*): the Hub id the card's code examples load from; defaults to a placeholder.

    Returns:
        `list[str]`: every file in `output_dir` that `push_to_hub` would upload, as sorted relative paths.

    Raises:
        `FileExistsError`: `output_dir` holds a training run (checkpoints, `trainer_state.json`...), whose weights
            and config this would overwrite.
    """
    if not isinstance(getattr(model, "config", None), RNNAttnConfig):
        raise TypeError(f"save_for_hub needs an RNNAttn model (config RNNAttnConfig), got {type(model).__name__}.")
    if tokenizer is None:
        raise ValueError("save_for_hub needs the model's tokenizer: the Hub repository must be able to translate text.")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"`output_dir` {output_dir} exists and is not a folder.")
    run_files = sorted(path.name for path in output_dir.glob("*")
                       if path.name in TRAINING_RUN_MARKERS or path.name.startswith("checkpoint-"))
    if run_files:
        raise FileExistsError(f"`output_dir` {output_dir} holds a training run ({', '.join(run_files)}); saving "
                              f"there would overwrite its weights and config. Choose another folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier_files = {path: (output_dir / path).stat().st_mtime_ns for path in hub_files(output_dir)}

    _register_translation_pipeline()
    config = model.config
    saved_attributes = {name: config.__dict__.get(name, _MISSING) for name in ("src_lang", "tgt_lang", "custom_pipelines")}
    try:
        if src_lang is not None:
            config.src_lang = src_lang
        if tgt_lang is not None:
            config.tgt_lang = tgt_lang
        # `Pipeline.save_pretrained` writes `custom_pipelines` into the config and copies this pipeline's file,
        # then saves the model (which copies the model code and writes `auto_map`) and the tokenizer.
        pipeline = RNNAttnTranslationPipeline(model=model, tokenizer=tokenizer, task="translation", device=model.device)
        pipeline.save_pretrained(output_dir)
        card = render_model_card(model, metrics=metrics, dataset_info=dataset_info, training_info=training_info,
                                 repo_id=repo_id or f"path/to/{output_dir.resolve().name}")
    finally:
        for name, value in saved_attributes.items():
            if value is _MISSING:
                config.__dict__.pop(name, None)
            else:
                setattr(config, name, value)
    (output_dir / "README.md").write_text(card, encoding="utf-8")

    files = hub_files(output_dir)
    stale = [path for path in files if earlier_files.get(path) == (output_dir / path).stat().st_mtime_ns]
    if stale:
        logger.warning(f"{output_dir} still holds files from an earlier save, which push_to_hub would upload too: "
                       f"{stale}. Save into an empty folder to avoid that.")
    return files


def _register_translation_pipeline():
    """The documented way to ship a custom pipeline: register it, then `Pipeline.save_pretrained` records it."""
    if getattr(RNNAttnTranslationPipeline, "_registered_impl", None) is None:
        PIPELINE_REGISTRY.register_pipeline("translation", pipeline_class=RNNAttnTranslationPipeline,
                                            pt_model=AutoModelForSeq2SeqLM, type="text")


# ----------------------------------------------------------------------------------------------- model card

def render_model_card(model, metrics=None, dataset_info=None, training_info=None, repo_id="path/to/model"):
    """The `README.md` text for `model`: Hub YAML front matter, then the template of the closest preset.

    `src_lang` / `tgt_lang` are read from `model.config`. See `save_for_hub` for the arguments.
    """
    config = model.config
    src_lang, tgt_lang = getattr(config, "src_lang", None), getattr(config, "tgt_lang", None)
    preset, deviations = closest_preset(config)
    scores, extra_numbers, signatures = _split_metrics(metrics)
    dataset_info = dict(dataset_info or {})
    model_name = repo_id.rstrip("/").split("/")[-1] or f"rnn-attn-{preset}"
    values = {
        "front_matter": _front_matter(config, preset, model_name, scores, dataset_info, src_lang, tgt_lang),
        "model_name": model_name,
        "direction": (f"from `{src_lang}` to `{tgt_lang}`" if src_lang and tgt_lang else
                      "in the one direction it was trained for (source and target language not recorded)"),
        "deviations": _deviations_text(preset, deviations),
        "initial_state": _initial_state_equation(config),
        "score_equation": SCORE_EQUATIONS[config.attention_score],
        "attention_score": config.attention_score,
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
    return _fill(_read_template(f"{preset}.md"), values)


def closest_preset(config):
    """The preset whose fields `config` matches most (first in `PRESETS` on a tie), and the fields that differ.

    Returns `(name, {field: (checkpoint value, preset value)})`.
    """
    def differences(name):
        return {field: (getattr(config, field), value) for field, value in PRESETS[name].items()
                if getattr(config, field) != value}

    name = min(PRESETS, key=lambda candidate: len(differences(candidate)))
    return name, differences(name)


def _read_template(name):
    path = MODEL_CARDS_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"Model card template {path} is missing; the templates ship in hf_rnn_attn/model_cards/.")
    return path.read_text(encoding="utf-8")


def _fill(template, values):
    """Replaces `{{ name }}` with `values[name]` and `{{> file.md }}` with that template, filled the same way."""
    def replace(match):
        is_partial, name = match.group(1), match.group(2)
        if is_partial:
            return _fill(_read_template(name), values)
        if name not in values:
            raise KeyError(f"Model card template slot {{{{ {name} }}}} has no value; known slots: {sorted(values)}.")
        return values[name]

    return _PLACEHOLDER.sub(replace, template)


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


def _front_matter(config, preset, model_name, scores, dataset_info, src_lang, tgt_lang):
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
    card_data = ModelCardData(
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
    return card_data.to_yaml()


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


def _config_table(model):
    config = model.config
    rows = [f"| `{field}` | `{getattr(config, field)}` |" for field in CONFIG_TABLE_FIELDS]
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


# --------------------------------------------------------------------------------------------------- upload

def check_model_folder(folder):
    """Raises a clear error unless `folder` holds a whole saved model: config.json, weights and tokenizer.json.

    Their headers are read, so that a truncated or corrupted file is named here rather than failing deep
    inside loading. Returns the folder as a `Path`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"Model folder {folder} does not exist.")
    if not folder.is_dir():
        raise NotADirectoryError(f"Model folder {folder} is not a folder.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json, so it is not a saved model; write one with "
                                f"hf_rnn_attn.hub.save_for_hub.")
    _read_json(folder / "config.json")
    for path in weight_files(folder):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as error:
            raise ValueError(f"{path} is not a readable safetensors file ({error}): it is corrupted or truncated; "
                             f"save or download the model again.") from error
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{folder} has no tokenizer.json; save the tokenizer with the model "
                                f"(tokenizer.save_pretrained, or hf_rnn_attn.hub.save_for_hub).")
    _read_json(folder / "tokenizer.json")
    return folder


def weight_files(folder):
    """The safetensors files holding the weights: model.safetensors, or the shards its index names."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} has no model weights (model.safetensors); save the model with "
                                f"save_pretrained or hf_rnn_attn.hub.save_for_hub.")
    shards = [folder / name for name in sorted(set(_read_json(index).get("weight_map", {}).values()))]
    missing = [path.name for path in shards if not path.is_file()]
    if not shards or missing:
        raise FileNotFoundError(f"{index} names weight shards that are missing: {missing or 'none listed'}.")
    return shards


def _read_json(path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): it is corrupted or truncated; save or download the "
                         f"model again.") from error


def hub_files(folder):
    """The files of `folder` that an upload sends, sorted: the model files (`HUB_FILES`, weight shards) and the
    model and pipeline code that config.json names in `auto_map` and `custom_pipelines`, with the sibling files
    it imports. Symbolic links are never sent: their targets could be anything."""
    folder = Path(folder)
    names = {path.name for path in folder.glob("*") if path.is_file() and not path.is_symlink()
             and (path.name in HUB_FILES or _WEIGHT_SHARD.fullmatch(path.name))}
    for path in _code_files(folder):
        if path.is_file() and not path.is_symlink():
            names.add(path.name)
    return sorted(names)


def _code_files(folder):
    """The code files that config.json points at (`"module.Class"` references), and those they import."""
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    references = list((config.get("auto_map") or {}).values())
    references += [task.get("impl", "") for task in (config.get("custom_pipelines") or {}).values()]
    # A reference may name another repository ("user/repo--module.Class") or a list (tokenizers).
    references = [reference for entry in references for reference in (entry if isinstance(entry, list) else [entry])]
    modules = {reference.split("--")[-1].rpartition(".")[0] for reference in references if reference}
    files = [folder / f"{module}.py" for module in modules if module and (folder / f"{module}.py").is_file()]
    return files + [Path(path) for file in files for path in get_relative_import_files(file)]


def push_to_hub(folder, repo_id, dry_run=False, token=None, private=False, commit_message="Upload RNNAttn model"):
    """Upload a folder written by `save_for_hub` to the Hub model repository `repo_id` (created if missing).

    Only the model files listed by `hub_files` are sent, never the rest of the folder. With `dry_run=True`
    nothing is contacted or uploaded: the return value lists the files that would be. Otherwise uses
    `HfApi().create_repo` and one `create_commit`; `token` defaults to the saved login or `HF_TOKEN`.

    Returns:
        `list[str]`: the uploaded (or, in a dry run, to-be-uploaded) files, as sorted relative paths.

    Raises:
        `FileNotFoundError` / `NotADirectoryError`: `folder` is not a saved model (config.json, weights and
            tokenizer.json).
        `ValueError`: one of those files is corrupted or a symbolic link.
        `huggingface_hub.errors.HFValidationError`: `repo_id` is not a valid repository id.
        `HubUploadError`: the upload failed (no network, no token or rights, ...), with the reason.
    """
    folder = check_model_folder(folder)
    validate_repo_id(repo_id)
    files = hub_files(folder)
    linked = sorted({"config.json", "tokenizer.json", *(path.name for path in weight_files(folder))} - set(files))
    if linked:
        raise ValueError(f"{folder}: {linked} are symbolic links, which are never uploaded (their targets could be "
                         f"anything); copy the files into the folder.")
    if dry_run:
        return files
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.create_commit(repo_id=repo_id, repo_type="model", commit_message=commit_message,
                          operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=folder / name)
                                      for name in files])
    except Exception as error:  # network, auth and server errors come in many classes; all end the same way
        raise HubUploadError(
            f"Could not upload {folder} to the Hub repository {repo_id!r}: {type(error).__name__}: "
            f"{str(error).rstrip('. ')}. "
            f"Check the network connection, that HF_HUB_OFFLINE is not set, and the token (`hf auth login`, "
            f"HF_TOKEN or token=...)."
        ) from error
    logger.info(f"Uploaded {len(files)} files to {repo_url}.")
    return files
