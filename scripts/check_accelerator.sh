#!/usr/bin/env bash
# The GPU check: run it from a clone on a machine with a CUDA GPU.
#
#   bash scripts/check_accelerator.sh             # on the first visible CUDA GPU
#   bash scripts/check_accelerator.sh --dry-run   # the same steps on the CPU, tiny sizes (CI)
#
# Steps (each announced):
#   1. device facts; without a usable CUDA device (and no --dry-run) it stops here at once
#   2. the test suite's device subset: python -m pytest tests -m device --device cuda
#   3. data: the bundled Shakespeare plays (LM) and a copy-task parallel corpus (translation),
#      binarised with fairseq-preprocess
#   4. fairseq-train --user-dir mega_fairseq, 50 updates each, of mega_lm_tiny (language
#      modelling) and mega_tiny (translation) in float32 and with --fp16, --bf16 and --amp
#   5. the benchmark's layer section: python scripts/benchmark.py --sections layer --device cuda
#   6. the report: OUT_DIR/accelerator_check.json and .md (device, pytest counts, the training
#      table with every loss against the float32 run's, the layer ratios at 4096 tokens against
#      the paper's 5.5x faster / 0.13x memory); exit status 1 when anything failed
#
# --dry-run: device cpu (pytest -m device --device cpu, fairseq-train --cpu, benchmark --quick),
# 3 updates per run on tiny batches: about 4 minutes on 2 CPU cores, half of it the device tests.
#
# Environment: OUT_DIR (default work-dirs/accelerator_check, relative to the repository
# root); MEGA_FAIRSEQ_PYTHON, a python with mega-fairseq installed (default: .venv, set up
# by scripts/setup_env.sh); MAX_UPDATE (default 50, dry run 3); ACCELERATOR_CHECK_TESTS,
# the pytest selection of step 2 (default "tests"); LOSS_TOLERANCE (default 0.15), the
# largest relative difference of a run's final loss from the float32 run's. Pick the GPU
# with CUDA_VISIBLE_DEVICES.
set -euo pipefail
PY=""
if [ -n "${MEGA_FAIRSEQ_PYTHON:-}" ]; then  # resolved before the cd, relative to where it was started
    PY=$(command -v "$MEGA_FAIRSEQ_PYTHON") || { echo "MEGA_FAIRSEQ_PYTHON=$MEGA_FAIRSEQ_PYTHON: not found" >&2; exit 2; }
    case "$PY" in /*) ;; *) PY="$PWD/$PY" ;; esac
fi
cd "$(dirname "$0")/.."

DRY_RUN=0
for argument in "$@"; do
    case "$argument" in
        --dry-run) DRY_RUN=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "check_accelerator.sh: unknown argument '$argument' (use --dry-run or --help)" >&2; exit 2 ;;
    esac
done

if [ -z "$PY" ]; then
    bash scripts/setup_env.sh
    PY=${MEGA_FAIRSEQ_VENV:-.venv}/bin/python
fi
BIN=$(dirname "$PY")
CHECK=("$PY" scripts/accelerator_check.py)
OUT=${OUT_DIR:-work-dirs/accelerator_check}
export PYTHONUNBUFFERED=1

if [ "$DRY_RUN" = 1 ]; then
    MODE="dry-run (cpu)"; DEVICE=cpu; CPU=(--cpu)
    MAX_UPDATE=${MAX_UPDATE:-3}; LOG_INTERVAL=1; EXTRA=(--max-valid-steps 1 --num-workers 0)
    LM_SIZES=(--tokens-per-sample 64 --decoder-chunk-size 32 --batch-size 2)
    MT_SIZES=(--max-tokens 256); MT_PAIRS=200; MT_VALID=20
    BENCH=(--quick)
else
    MODE="cuda"; DEVICE=cuda; CPU=()
    MAX_UPDATE=${MAX_UPDATE:-50}; LOG_INTERVAL=10; EXTRA=()
    LM_SIZES=(--tokens-per-sample 512 --decoder-chunk-size 128 --batch-size 16)
    MT_SIZES=(--max-tokens 4096); MT_PAIRS=4000; MT_VALID=100
    BENCH=()
fi

now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "$EPOCHREALTIME"; else date +%s.%N; fi; }
elapsed() { "$PY" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
CHECK_STARTED=$(now)

mkdir -p "$OUT"
rm -rf "$OUT/data" "$OUT/train" "$OUT/benchmark"
rm -f "$OUT"/device.json "$OUT"/pytest.* "$OUT"/benchmark.* "$OUT"/accelerator_check.*

echo "== 1/6 device ($MODE)"
"${CHECK[@]}" device-info --device "$DEVICE" --out "$OUT/device.json" || {
    echo "check_accelerator.sh: stopped: device '$DEVICE' is not usable (see above)" >&2; exit 2; }

echo "== 2/6 device tests: pytest -m device --device $DEVICE"
read -r -a TESTS <<< "${ACCELERATOR_CHECK_TESTS:-tests}"
PYTEST=("$PY" -m pytest "${TESTS[@]}" -m device --device "$DEVICE" -q -rfEs -p no:cacheprovider
        --junitxml "$OUT/pytest.xml")
echo "${PYTEST[*]}" > "$OUT/pytest.cmd"
set +e
"${PYTEST[@]}" 2>&1 | tee "$OUT/pytest.log"
echo "${PIPESTATUS[0]}" > "$OUT/pytest.rc"
set -e
echo "   pytest exit code $(cat "$OUT/pytest.rc")"

echo "== 3/6 data: Shakespeare (language modelling) and a copy-task corpus (translation)"
"$PY" scripts/prepare_lm_text.py --inputs examples/language_model/data/*.txt --out-dir "$OUT/data/lm_text"
"$BIN/fairseq-preprocess" --only-source --trainpref "$OUT/data/lm_text/train.txt" \
    --validpref "$OUT/data/lm_text/valid.txt" --destdir "$OUT/data/lm_bin" --workers 2 \
    > "$OUT/data/preprocess_lm.log" 2>&1 || { tail -n 20 "$OUT/data/preprocess_lm.log" >&2; exit 1; }
"${CHECK[@]}" copy-corpus --out-dir "$OUT/data/mt_text" --train-pairs "$MT_PAIRS" --valid-pairs "$MT_VALID"
"$BIN/fairseq-preprocess" --source-lang src --target-lang tgt --trainpref "$OUT/data/mt_text/train" \
    --validpref "$OUT/data/mt_text/valid" --destdir "$OUT/data/mt_bin" --joined-dictionary --workers 2 \
    > "$OUT/data/preprocess_mt.log" 2>&1 || { tail -n 20 "$OUT/data/preprocess_mt.log" >&2; exit 1; }
echo "   binarised: $OUT/data/lm_bin, $OUT/data/mt_bin"

echo "== 4/6 training: fairseq-train, $MAX_UPDATE updates per run, float32 / --fp16 / --bf16 / --amp"
mkdir -p "$OUT/train"
# one device (fairseq would otherwise train on every visible GPU), no checkpoints
COMMON=(--user-dir mega_fairseq --optimizer adam --adam-betas '(0.9, 0.98)' --lr-scheduler inverse_sqrt
        --clip-norm 1.0 --max-update "$MAX_UPDATE" --seed 1 --distributed-world-size 1
        --log-format json --log-interval "$LOG_INTERVAL" --no-save --save-dir "$OUT/train/checkpoints"
        "${CPU[@]}" "${EXTRA[@]}")
RUN=0
for TASK in lm mt; do
    for PRECISION in fp32 fp16 bf16 amp; do
        RUN=$((RUN + 1))
        if [ "$TASK" = lm ]; then
            ARCH=mega_lm_tiny
            COMMAND=("$BIN/fairseq-train" "$OUT/data/lm_bin" --task language_modeling --arch "$ARCH"
                     --sample-break-mode none "${LM_SIZES[@]}" --lr 3e-3 --warmup-updates 10 --dropout 0.1)
        else
            ARCH=mega_tiny
            COMMAND=("$BIN/fairseq-train" "$OUT/data/mt_bin" --task translation --source-lang src --target-lang tgt
                     --arch "$ARCH" --share-all-embeddings --criterion label_smoothed_cross_entropy
                     --label-smoothing 0.1 "${MT_SIZES[@]}" --lr 5e-3 --warmup-updates 10 --dropout 0.1)
        fi
        COMMAND+=("${COMMON[@]}")
        case "$PRECISION" in fp16) COMMAND+=(--fp16) ;; bf16) COMMAND+=(--bf16) ;; amp) COMMAND+=(--amp) ;; esac
        LOG="$OUT/train/${TASK}_${PRECISION}.log"
        echo "-- run $RUN/8: $ARCH ${TASK} ${PRECISION} (log: $LOG)"
        STARTED=$(now)
        set +e
        "${COMMAND[@]}" 2>&1 | tee "$LOG" | grep --line-buffered -E '\| (train_inner|valid) \|'
        RC=${PIPESTATUS[0]}
        set -e
        WALL=$(elapsed "$STARTED" "$(now)")
        if [ "$RC" != 0 ]; then
            echo "   fairseq-train failed ($RC); the end of $LOG:" >&2
            tail -n 8 "$LOG" >&2
        fi
        "${CHECK[@]}" record-run --log "$LOG" --rc "$RC" --task "$TASK" --precision "$PRECISION" \
            --arch "$ARCH" --max-update "$MAX_UPDATE" --wall-s "$WALL" --command "${COMMAND[*]}" \
            --out "$OUT/train/${TASK}_${PRECISION}.json"
    done
done

echo "== 5/6 layer benchmark: benchmark.py --sections layer --device $DEVICE ${BENCH[*]}"
BENCHMARK=("$PY" scripts/benchmark.py --sections layer --device "$DEVICE" "${BENCH[@]}" --out-dir "$OUT/benchmark")
echo "${BENCHMARK[*]}" > "$OUT/benchmark.cmd"
set +e
"${BENCHMARK[@]}" 2>&1 | tee "$OUT/benchmark.log"
echo "${PIPESTATUS[0]}" > "$OUT/benchmark.rc"
set -e

echo "== 6/6 report ($(elapsed "$CHECK_STARTED" "$(now)") s so far)"
"${CHECK[@]}" report --out-dir "$OUT" --mode "$MODE" --loss-tolerance "${LOSS_TOLERANCE:-0.15}"
