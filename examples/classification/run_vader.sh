#!/usr/bin/env bash
# Binary sentiment classification on CPU with real data: the ~19k human-rated sentences
# (tweets, movie reviews, Amazon reviews, NYT editorials) shipped in the vaderSentiment
# 3.3.2 source distribution. Prepares positive/negative splits, binarizes them as fairseq's
# RoBERTa GLUE recipe does (bin/input0, bin/label), then trains a small `mega_encoder` and a
# fairseq `roberta` with the same number of used parameters for the same wall-clock budget,
# one after the other, with `--task sentence_prediction`, and reports test accuracy and
# validation speed. Writes $WORK/results.{json,md} and curves.png.
#
#   bash examples/classification/run_vader.sh
#   TIME_BUDGET_HOURS=0.02 VADER_LIMIT=2000 bash examples/classification/run_vader.sh   # a quick look
#
# Run from anywhere after `bash scripts/setup_env.sh`; output in ${WORK_DIR:-work-dirs/classification_vader}.
# Environment: TIME_BUDGET_HOURS (per model, default 0.1), VADER_LIMIT (use a random slice of
# that many sentences), SDIST_DIR (where the vaderSentiment sdist is or goes), LAYERS (2),
# VALIDATE_EVERY (updates between validations, 200), OMP_NUM_THREADS (torch CPU threads).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/${MEGA_FAIRSEQ_VENV:-.venv}/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/classification_vader}
TIME_BUDGET_HOURS=${TIME_BUDGET_HOURS:-0.1}   # per model
LAYERS=${LAYERS:-2}
VALIDATE_EVERY=${VALIDATE_EVERY:-200}
mkdir -p "$WORK"

echo "== data"
if [ ! -f "$WORK/text/train.input0" ]; then
    python scripts/prepare_vader_sentiment.py --out-dir "$WORK/text" \
        --sdist-dir "${SDIST_DIR:-$WORK/sdist}" ${VADER_LIMIT:+--limit "$VADER_LIMIT"}
fi
wc -l "$WORK/text/train.input0" "$WORK/text/valid.input0" "$WORK/text/test.input0"

# words seen at least twice in training (~12.7k); the rest map to <unk>
if [ ! -f "$WORK/bin/input0/dict.txt" ]; then
    fairseq-preprocess --only-source --trainpref "$WORK/text/train.input0" \
        --validpref "$WORK/text/valid.input0" --testpref "$WORK/text/test.input0" \
        --destdir "$WORK/bin/input0" --thresholdsrc 2 --workers 2 > "$WORK/preprocess.log" 2>&1
    fairseq-preprocess --only-source --trainpref "$WORK/text/train.label" \
        --validpref "$WORK/text/valid.label" --testpref "$WORK/text/test.label" \
        --destdir "$WORK/bin/label" --workers 2 >> "$WORK/preprocess.log" 2>&1
fi

# mega_encoder_tiny's shapes widened to 128; roberta of the same depth and width
MEGA=(--arch mega_encoder_tiny --encoder-layers "$LAYERS" --encoder-embed-dim 128
      --encoder-hidden-dim 256 --encoder-ffn-embed-dim 256 --encoder-z-dim 64)
ROBERTA=(--arch roberta --encoder-layers "$LAYERS" --encoder-embed-dim 128 --encoder-attention-heads 4)
TASK=(--task sentence_prediction --criterion sentence_prediction --num-classes 2
      --init-token 0 --separator-token 2 --max-positions 256)
echo "== matching roberta's FFN width to Mega's parameter count"
if [ ! -f "$WORK/parameters.log" ]; then
    python scripts/count_parameters.py "$WORK/bin" "${TASK[@]}" \
        --model "${MEGA[@]}" --match "${ROBERTA[@]}" > "$WORK/parameters.log.tmp"
    mv "$WORK/parameters.log.tmp" "$WORK/parameters.log"
fi
cat "$WORK/parameters.log"
FFN=$(tail -1 "$WORK/parameters.log" | python -c "import json,sys; print(json.load(sys.stdin)['match']['ffn_embed_dim'])")
ROBERTA+=(--encoder-ffn-embed-dim "$FFN")

COMMON=(--user-dir mega_fairseq "${TASK[@]}"
        --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-6 --lr 1e-3
        --lr-scheduler inverse_sqrt --warmup-updates 300 --clip-norm 1.0 --weight-decay 0.01
        --dropout 0.1 --batch-size 32 --required-batch-size-multiple 1
        --stop-time-hours "$TIME_BUDGET_HOURS" --max-epoch 100 --cpu --seed 1 --num-workers 0
        --validate-interval-updates "$VALIDATE_EVERY" --save-interval-updates "$VALIDATE_EVERY"
        --keep-interval-updates 1 --no-epoch-checkpoints
        --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric
        --log-format simple --log-interval 50)

for model in mega roberta; do
    if [ "$model" = mega ]; then ARGS=("${MEGA[@]}"); else ARGS=("${ROBERTA[@]}"); fi
    if [ ! -f "$WORK/$model/checkpoint_best.pt" ] || ! grep -q "done training" "$WORK/train_$model.log" 2>/dev/null; then
        echo "== training $model for $TIME_BUDGET_HOURS h"
        rm -rf "$WORK/$model"
        fairseq-train "$WORK/bin" "${COMMON[@]}" "${ARGS[@]}" --save-dir "$WORK/$model" 2>&1 \
            | tee "$WORK/train_$model.log" | grep -E "\| valid \||done training"
    fi
    echo "== test accuracy of $model (best checkpoint by validation accuracy)"
    fairseq-validate "$WORK/bin" --user-dir mega_fairseq "${TASK[@]}" --path "$WORK/$model/checkpoint_best.pt" \
        --valid-subset test --batch-size 64 --cpu --num-workers 0 --log-format simple \
        > "$WORK/test_$model.log" 2>&1
    grep -E "valid on 'test' subset" "$WORK/test_$model.log"
    rm -f "$WORK/$model"/checkpoint_*_*.pt   # interval checkpoints: only needed to resume
done

python scripts/plot_training_curves.py --log "mega=$WORK/train_mega.log" \
    --log "roberta=$WORK/train_roberta.log" --metric accuracy --out "$WORK/curves.png" \
    --json "$WORK/curves.json" --title "VADER sentences, positive / negative: equal parameters and training time"
python examples/classification/summarize_results.py --work "$WORK" --models mega roberta \
    --labels "$WORK/text" --title "VADER sentiment (binary), test split"
