"""Translate a sentence and see where the model looked: a Gradio page in the layout of a Hugging Face Space.

Usage:
    .venv/bin/python demo/app.py --model runs/bigru-bahdanau/model             # http://127.0.0.1:7860
    .venv/bin/python demo/app.py --model user/rnn-attn-es-en --port 8080       # a Hub id

On a Space, `app.py` runs without arguments: the MODEL variable names the model, requirements.txt lists the
packages, and the `hf_rnn_attn/` folder is copied next to `app.py`. Nothing here reaches the internet except a
model download from a Hub id: Gradio's analytics are off, no share link is made, and its fonts are served locally.
"""

import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported

import gradio as gr  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from hf_rnn_attn import plot_attention  # noqa: E402
from hf_rnn_attn.pipeline_translation import translation_pipeline  # noqa: E402

DEFAULT_MODEL = os.environ.get("MODEL", "runs/bigru-bahdanau/model")
MAX_NEW_TOKENS = 200
_translators = {}  # one loaded pipeline per model folder or Hub id


def load_translator(model):
    if model not in _translators:
        transformers_logging.disable_progress_bar()
        _translators.clear()  # keep one model in memory, whichever was asked for last
        _translators[model] = translation_pipeline(model)
    return _translators[model]


def translate(text, model, num_beams):
    """The page's action: the translation, its attention heatmap and its Pharaoh word alignment."""
    if not text.strip():
        raise gr.Error("Type a sentence to translate.")
    try:
        translator = load_translator(model.strip())
    except (OSError, ValueError, KeyError) as error:
        raise gr.Error(f"Cannot load a model from {model!r}: {error}") from error
    try:
        record = translator(text, return_attention=True, num_beams=int(num_beams), max_new_tokens=MAX_NEW_TOKENS)[0]
    except ValueError as error:  # e.g. a sentence longer than a location-score model reads
        raise gr.Error(str(error)) from error
    figure = plot_attention(record["source_tokens"], record["target_tokens"], record["attention"])
    return record["translation_text"], figure, record["alignment"]


def build_demo(model=DEFAULT_MODEL):
    with gr.Blocks(title="RNN attention translation") as demo:
        gr.Markdown("## Translation with attention\nType a sentence: the heatmap shows, for each word of the "
                    "translation (rows), the model's attention over the source words (columns).")
        with gr.Row():
            with gr.Column():
                source = gr.Textbox(label="Source sentence", lines=3, elem_id="source")
                model_box = gr.Textbox(label="Model folder or Hub id", value=model, elem_id="model")
                num_beams = gr.Slider(1, 10, value=5, step=1, label="Beam size", elem_id="num-beams")
                button = gr.Button("Translate", variant="primary", elem_id="translate")
            with gr.Column():
                translation = gr.Textbox(label="Translation", lines=3, interactive=False, elem_id="translation")
                alignment = gr.Textbox(label="Word alignment (Pharaoh i-j: source word i, translation word j)",
                                       interactive=False, elem_id="alignment")
        heatmap = gr.Plot(label="Attention", format="png", elem_id="heatmap")
        inputs, outputs = [source, model_box, num_beams], [translation, heatmap, alignment]
        button.click(translate, inputs, outputs)
        source.submit(translate, inputs, outputs)
    return demo


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Model folder or Hub id shown on the page "
                                                               f"(default: $MODEL, else {DEFAULT_MODEL}).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 for every interface).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    args = parser.parse_args()
    build_demo(args.model).launch(server_name=args.host, server_port=args.port, share=False)


if __name__ == "__main__":
    main()
