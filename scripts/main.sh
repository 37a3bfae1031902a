#!/usr/bin/env bash
# Usage: bash scripts/main.sh                      # bigru-bahdanau, 15 minutes of training
#        PRESET=lstm-luong MINUTES=30 bash scripts/main.sh
#        MINUTES=2 MAX_TRAIN_SAMPLES=2000 bash scripts/main.sh   # a quick look
#        OVERWRITE=1 bash scripts/main.sh                         # replace the run already in runs/<preset>
#
# The main job, set-up included: install, export the Spanish->English Bible corpus, train a tokenizer and a
# model within a time budget, score it on the test split (greedy and beam 5), print sample translations and
# write a Hub-ready model folder (config, safetensors, tokenizer, generation config, code, model card).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-bigru-bahdanau}
MINUTES=${MINUTES:-15}
DATA=${DATA:-data/bible-es-en}
RUN=${RUN:-runs/$PRESET}
OVERWRITE=${OVERWRITE:-0}  # 1: replace the run in $RUN
PY=.venv/bin/python

# scripts/train.py refuses to train over an earlier run: say so before the set-up rather than at the training step.
if [ "$OVERWRITE" = 1 ]; then
  rm -rf "$RUN/model"  # else the earlier run's files would stay among the new ones
elif [ -n "$(ls -A "$RUN/trainer" 2>/dev/null)" ]; then
  echo "$RUN already holds a run: set OVERWRITE=1 to replace it or RUN=another/folder" >&2
  exit 1
fi

bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

[ -f "$DATA/train.jsonl" ] || $PY scripts/export_corpus.py --output_dir "$DATA"

$PY scripts/train.py --dataset "$DATA" --source_lang es --target_lang en --preset "$PRESET" \
  --output_dir "$RUN/trainer" --max_train_minutes "$MINUTES" \
  ${MAX_TRAIN_SAMPLES:+--max_train_samples "$MAX_TRAIN_SAMPLES"} \
  $($PY scripts/recipe.py) --logging_steps 25 --report_to tensorboard --dataloader_num_workers 0 \
  --overwrite_output_dir "$OVERWRITE"

for BEAMS in 1 5; do
  $PY scripts/evaluate_model.py --model "$RUN/trainer" --dataset "$DATA" --split test --num_beams "$BEAMS" \
    --output_dir "$RUN/test-beam$BEAMS"
done

$PY scripts/make_hub_folder.py --run_dir "$RUN" --dataset "$DATA" --output_dir "$RUN/model"
echo "Model folder ready for the Hub: $RUN/model"

echo "Sample translations (test split, beam 5):"
$PY - "$DATA" "$RUN" <<'PY'
import json, sys
data, run = sys.argv[1:]
pairs = [json.loads(line)["translation"] for line in open(f"{data}/test.jsonl", encoding="utf-8")][:5]
hypotheses = open(f"{run}/test-beam5/hypotheses.txt", encoding="utf-8").read().splitlines()
for pair, hypothesis in zip(pairs, hypotheses):
    print(f"  es:  {pair['es']}\n  ref: {pair['en']}\n  out: {hypothesis}\n")
PY
