#!/usr/bin/env bash
# ListOps (the Long Range Arena's hierarchical-structure task) at CPU scale: generates a
# small ListOps set with scripts/generate_listops.py (depth <= 6, 20-500 tokens instead of
# LRA's depth 10 and 500-2000 tokens), binarizes it, trains a small Mega of the
# `mega_lra_listop` shape (post-scalenorm blocks, mean pooling; 2 layers instead of 6)
# with `--task lra-text --criterion lra_cross_entropy` for a wall-clock budget, and reports
# test accuracy (best checkpoint by validation accuracy) against the majority class.
# Writes $WORK/results.{json,md} and curves.png.
#
#   bash examples/classification/run_listops.sh
#   TIME_BUDGET_HOURS=0.01 LISTOPS_TRAIN=2000 bash examples/classification/run_listops.sh   # a quick look
#
# Run from anywhere after `bash scripts/setup_env.sh`; output in ${WORK_DIR:-work-dirs/classification_listops}.
# Environment: TIME_BUDGET_HOURS (default 0.15), LISTOPS_TRAIN / LISTOPS_VALID / LISTOPS_TEST
# (20000 / 1000 / 1000 examples), LISTOPS_MAX_DEPTH (6), LISTOPS_MIN_LENGTH (20),
# LISTOPS_MAX_LENGTH (500), LAYERS (2), VALIDATE_EVERY (updates, 250), OMP_NUM_THREADS.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/${MEGA_FAIRSEQ_VENV:-.venv}/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/classification_listops}
TIME_BUDGET_HOURS=${TIME_BUDGET_HOURS:-0.15}
MAX_LENGTH=${LISTOPS_MAX_LENGTH:-500}
LAYERS=${LAYERS:-2}
VALIDATE_EVERY=${VALIDATE_EVERY:-250}
mkdir -p "$WORK"

echo "== data"
if [ ! -f "$WORK/text/test.label" ]; then
    python scripts/generate_listops.py --out-dir "$WORK/text" --no-progress \
        --train-size "${LISTOPS_TRAIN:-20000}" --valid-size "${LISTOPS_VALID:-1000}" \
        --test-size "${LISTOPS_TEST:-1000}" --max-depth "${LISTOPS_MAX_DEPTH:-6}" \
        --min-length "${LISTOPS_MIN_LENGTH:-20}" --max-length "$MAX_LENGTH" --seed 1
fi
wc -l "$WORK/text/train.input" "$WORK/text/valid.input" "$WORK/text/test.input"
if [ ! -f "$WORK/bin/label/dict.txt" ]; then
    for key in input label; do
        dest=$([ "$key" = input ] && echo input0 || echo label)
        fairseq-preprocess --only-source --trainpref "$WORK/text/train.$key" \
            --validpref "$WORK/text/valid.$key" --testpref "$WORK/text/test.$key" \
            --destdir "$WORK/bin/$dest" --workers 2 >> "$WORK/preprocess.log" 2>&1
    done
fi

# the ListOps preset's block (embed 80, hidden/FFN 160, z 64, EMA ndim 16, post-scalenorm,
# mean pooling, softmax attention), fewer layers; positions: the longest input + </s>
MEGA=(--arch mega_lra_listop --encoder-layers "$LAYERS" --max-positions $((MAX_LENGTH + 1)))
TASK=(--task lra-text --criterion lra_cross_entropy --num-classes 10)
if [ ! -f "$WORK/parameters.log" ]; then
    python scripts/count_parameters.py "$WORK/bin" "${TASK[@]}" --model "${MEGA[@]}" \
        > "$WORK/parameters.log.tmp"
    mv "$WORK/parameters.log.tmp" "$WORK/parameters.log"
fi
cat "$WORK/parameters.log"

if [ ! -f "$WORK/mega/checkpoint_best.pt" ] || ! grep -q "done training" "$WORK/train_mega.log" 2>/dev/null; then
    echo "== training mega for $TIME_BUDGET_HOURS h"
    rm -rf "$WORK/mega"
    fairseq-train "$WORK/bin" --user-dir mega_fairseq "${TASK[@]}" "${MEGA[@]}" \
        --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --lr 2e-3 \
        --lr-scheduler inverse_sqrt --warmup-updates 500 --clip-norm 1.0 --weight-decay 0.01 \
        --max-tokens 6000 --batch-size 64 --required-batch-size-multiple 1 \
        --stop-time-hours "$TIME_BUDGET_HOURS" --max-epoch 200 --cpu --seed 1 --num-workers 0 \
        --validate-interval-updates "$VALIDATE_EVERY" --save-interval-updates "$VALIDATE_EVERY" \
        --keep-interval-updates 1 --no-epoch-checkpoints \
        --best-checkpoint-metric accuracy --maximize-best-checkpoint-metric \
        --log-format simple --log-interval 50 --save-dir "$WORK/mega" 2>&1 \
        | tee "$WORK/train_mega.log" | grep -E "\| valid \||done training"
fi
echo "== test accuracy (best checkpoint by validation accuracy)"
fairseq-validate "$WORK/bin" --user-dir mega_fairseq "${TASK[@]}" --path "$WORK/mega/checkpoint_best.pt" \
    --valid-subset test --max-tokens 12000 --cpu --num-workers 0 --log-format simple \
    > "$WORK/test_mega.log" 2>&1
grep -E "valid on 'test' subset" "$WORK/test_mega.log"
rm -f "$WORK/mega"/checkpoint_*_*.pt   # interval checkpoints: only needed to resume

python scripts/plot_training_curves.py --log "mega=$WORK/train_mega.log" --metric accuracy \
    --out "$WORK/curves.png" --json "$WORK/curves.json" \
    --title "ListOps (depth <= ${LISTOPS_MAX_DEPTH:-6}, <= $MAX_LENGTH tokens)"
python examples/classification/summarize_results.py --work "$WORK" --models mega \
    --labels "$WORK/text" --title "ListOps, test split"
