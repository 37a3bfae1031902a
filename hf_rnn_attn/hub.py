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

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError, safe_open
from transformers import AutoModelForSeq2SeqLM
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_rnn_attn import RNNAttnConfig
from .model_card import render_model_card
from .pipeline_translation import RNNAttnTranslationPipeline

logger = logging.getLogger(__name__)

# An upload sends these files, the weight shards and the code files config.json names, nothing else: a model
# folder may also hold checkpoints, optimizer states, `training_args.bin` (which can hold a Hub token), `.env`
# files or links to anywhere on disk.
HUB_FILES = ("README.md", "config.json", "generation_config.json", "model.safetensors",
             "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "added_tokens.json")
_WEIGHT_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
TRAINING_RUN_MARKERS = ("trainer_state.json", "training_args.bin", "optimizer.pt")
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
    (`pipeline_translation.py`) and a `README.md` model card (`model_card.render_model_card`).
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
