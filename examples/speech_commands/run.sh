#!/usr/bin/env bash
# Spoken digits from raw 16 kHz waveforms: synthesises "zero".."nine" with espeak-ng over
# many voice variants, speeds and pitches (scripts/prepare_spoken_digits.py; the valid and
# test splits are voice variants never heard in training), trains `mega_sc_raw_tiny` and
# the same-size convolutional baseline `raw_audio_cnn` for the same wall-clock budget each
# (and the baseline once more for as many updates as Mega made) with `--task
# speech_commands --criterion lra_cross_entropy`, and reports the accuracy of each model's
# last checkpoint on the valid and test splits against the majority class.
# Writes $WORK/results.{json,md}.
#
#   bash examples/speech_commands/run.sh
#   TIME_BUDGET_MINUTES=1 bash examples/speech_commands/run.sh     # a quick look
#
# Needs espeak-ng (Debian: apt-get install espeak-ng). Run from anywhere after
# `bash scripts/setup_env.sh`; output in ${WORK_DIR:-work-dirs/speech_commands}.
# Environment: TIME_BUDGET_MINUTES (per model, default 8), CLIP_LENGTH (samples, 9600 =
# 0.6 s), BATCH_SIZE (8), OMP_NUM_THREADS (torch's CPU threads; the results used 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/${MEGA_FAIRSEQ_VENV:-.venv}/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/speech_commands}
MINUTES=${TIME_BUDGET_MINUTES:-8}
HOURS=$(python -c "print($MINUTES / 60)")
CLIP_LENGTH=${CLIP_LENGTH:-9600}
BATCH_SIZE=${BATCH_SIZE:-8}
mkdir -p "$WORK"

echo "== data"
if [ ! -f "$WORK/data/summary.json" ]; then
    python scripts/prepare_spoken_digits.py --out-dir "$WORK/data" > "$WORK/prepare.log"
fi
cat "$WORK/data/summary.json" | python -c "import json,sys; s=json.load(sys.stdin); print(s['clips'], s['duration_seconds'])"

TASK=(--task speech_commands --clip-length "$CLIP_LENGTH" --criterion lra_cross_entropy)
COMMON=(--optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps 1e-8 --lr 3e-3 --clip-norm 1.0
        --weight-decay 0.01 --lr-scheduler inverse_sqrt --warmup-updates 50
        --batch-size "$BATCH_SIZE" --required-batch-size-multiple 1 --stop-time-hours "$HOURS"
        --max-epoch 100 --disable-validation --cpu --seed 1 --num-workers 0 --no-epoch-checkpoints
        --log-format simple --log-interval 25)
# cnn: the same wall-clock budget as mega; cnn_updates: as many updates as mega made
declare -A ARCH=([mega]="--arch mega_sc_raw_tiny" [cnn]="--arch raw_audio_cnn" [cnn_updates]="--arch raw_audio_cnn")

for model in mega cnn cnn_updates; do
    if ! grep -q "done training" "$WORK/train_$model.log" 2>/dev/null; then
        LIMIT=()
        if [ "$model" = cnn_updates ]; then
            LIMIT=(--max-update "$(grep -o 'num_updates [0-9]*' "$WORK/train_mega.log" | tail -1 | cut -d' ' -f2)")
        fi
        echo "== training $model for $MINUTES min ${LIMIT[*]}"
        rm -rf "$WORK/$model"
        # shellcheck disable=SC2086
        fairseq-train "$WORK/data" --user-dir mega_fairseq "${TASK[@]}" ${ARCH[$model]} "${COMMON[@]}" \
            "${LIMIT[@]}" --save-dir "$WORK/$model" > "$WORK/train_$model.log" 2>&1
    fi
    grep -E "done training" "$WORK/train_$model.log"
    for split in valid test; do
        if ! grep -q "valid on '$split' subset" "$WORK/${split}_$model.log" 2>/dev/null; then
            fairseq-validate "$WORK/data" --user-dir mega_fairseq "${TASK[@]}" \
                --path "$WORK/$model/checkpoint_last.pt" --valid-subset "$split" --batch-size 16 \
                --cpu --num-workers 0 --log-format simple > "$WORK/${split}_$model.log" 2>&1
        fi
        grep -E "valid on '$split' subset" "$WORK/${split}_$model.log"
    done
done
python examples/speech_commands/summarize.py --work "$WORK" --batch-size "$BATCH_SIZE"
