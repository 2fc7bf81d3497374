#!/usr/bin/env bash
# The main job: set up .venv if needed, then train a tiny Mega language model on the
# bundled Shakespeare plays with the unmodified fairseq console scripts
# (`fairseq-train --user-dir mega_fairseq`), evaluate it with `fairseq-eval-lm`, and
# compare the test perplexity with a context-free unigram model of the training split
# (mega_fairseq/evaluation/count_baselines.py) and with the uniform one (the vocabulary size).
# Output goes to ${WORK_DIR:-work-dirs/main_job}; MAX_UPDATE (default 400) sets the length.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
VENV=${MEGA_FAIRSEQ_VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/main_job}
MAX_UPDATE=${MAX_UPDATE:-400}
rm -rf "$WORK"
mkdir -p "$WORK"

echo "== 1/4 tokenise the bundled plays into train/valid/test"
python scripts/prepare_lm_text.py --inputs examples/language_model/data/*.txt --out-dir "$WORK/text"

echo "== 2/4 binarise with fairseq-preprocess"
fairseq-preprocess --only-source --trainpref "$WORK/text/train.txt" --validpref "$WORK/text/valid.txt" \
    --testpref "$WORK/text/test.txt" --destdir "$WORK/bin" --workers 2 > "$WORK/preprocess.log" 2>&1
tail -n 1 "$WORK/preprocess.log"

echo "== 3/4 train mega_lm_tiny ($MAX_UPDATE updates) with fairseq-train --user-dir mega_fairseq"
fairseq-train "$WORK/bin" --user-dir mega_fairseq --task language_modeling --arch mega_lm_tiny \
    --tokens-per-sample 128 --decoder-chunk-size 32 --sample-break-mode none \
    --optimizer adam --adam-betas '(0.9, 0.98)' --lr 3e-3 --lr-scheduler inverse_sqrt --warmup-updates 100 \
    --weight-decay 0.01 --clip-norm 1.0 --dropout 0.1 \
    --batch-size 16 --max-update "$MAX_UPDATE" --cpu --seed 1 \
    --save-dir "$WORK/checkpoints" --no-epoch-checkpoints --log-format simple --log-interval 50 \
    2>&1 | tee "$WORK/train.log" | grep -E "\| (train|valid) \|" || true
test -f "$WORK/checkpoints/checkpoint_best.pt"

echo "== 4/4 evaluate test perplexity with fairseq-eval-lm"
fairseq-eval-lm "$WORK/bin" --user-dir mega_fairseq --path "$WORK/checkpoints/checkpoint_best.pt" \
    --gen-subset test --tokens-per-sample 128 --batch-size 16 --cpu 2>&1 | tee "$WORK/eval.log" | grep -E "Loss|Perplexity"
python - "$WORK" <<'PY'
import logging, re, sys
from pathlib import Path
logging.disable(logging.INFO)  # fairseq's data loading logs each split it reads
from mega_fairseq.evaluation.count_baselines import unigram_perplexity
work = Path(sys.argv[1])
vocab = sum(1 for _ in open(work / "bin" / "dict.txt")) + 4
unigram = unigram_perplexity(work / "bin", "test")
ppl = float(re.search(r"Perplexity: ([0-9.]+)", (work / "eval.log").read_text()).group(1))
print(f"test perplexity {ppl:.1f} vs {unigram:.1f} for a unigram model of the training split "
      f"and {vocab} for a uniform one (the vocabulary size)")
if not ppl < 0.8 * unigram:
    sys.exit("the model did not learn: its perplexity is not well below the unigram model's")
PY
