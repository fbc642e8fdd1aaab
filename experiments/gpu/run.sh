#!/usr/bin/env bash
# The prepared GPU run: the study's gpu preset, the layer benchmark in bf16 and fp32, and a training-step
# throughput/memory table at Llama-3-8B shapes; everything lands in one folder (8 files).
#
# Prepare (on a machine with the package's extras installed), then run where only torch, transformers,
# peft, accelerate, matplotlib, typer, rich, sympy and hypothesis exist, offline:
#   .venv/bin/python -m moelora_experiments.gpu.prepare --out runs/gpu-assets          # ~45 MiB
#   experiments/gpu/run.sh [--device cuda|cpu] [--preset gpu|tiny] [--assets runs/gpu-assets] \
#                          [--out runs/gpu-results] [--study-seconds 330]
# Files: report.md metrics.json forest.png amp_vs_talk_norm.png routing_dynamics.png (study),
#        layers.json (benchmark, both dtypes), llm_step.json (8B shapes), run.log (everything printed).
# The study stops after --study-seconds (finished cells are kept and reported; a rerun continues).
set -uo pipefail
DEVICE=cuda PRESET=gpu ASSETS=runs/gpu-assets OUT=runs/gpu-results STUDY_SECONDS=330
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;; --preset) PRESET=$2; shift 2 ;;
    --assets) ASSETS=$2; shift 2 ;; --out) OUT=$2; shift 2 ;;
    --study-seconds) STUDY_SECONDS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/../.." || exit 2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the folder experiments/ is the package moelora_experiments (setup.py); without an install, a link does it
mkdir -p "$WORK/path" && ln -s "$PWD/experiments" "$WORK/path/moelora_experiments"
export PYTHONPATH=".:$WORK/path" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
[ "$DEVICE" = cpu ] && export CUDA_VISIBLE_DEVICES=""
PY=${PYTHON:-python}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
echo "== $(date -u) device=$DEVICE preset=$PRESET"
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
if [ "$PRESET" = tiny ]; then
  OLD_BENCH="--n 32 --m 32 --rank 4 --experts 2 --tokens 64 --batch 2 --repeats 2 --warmup 1 --threads 1"
  LLM="--hidden 64 --intermediate 128 --heads 4 --kv-heads 2 --seq 32 --batch 1 --rank 4 --experts 2 --steps 1 --warmup 1"
  LLM_DTYPE=float32  # bf16 matmuls are emulated (slow) on most CPUs
  THREADS=1 SHARDS=2
else
  THREADS=4 SHARDS=4
  OLD_BENCH="--n 4096 --m 4096 --rank 16 --experts 8 --tokens 8192 --batch 4 --repeats 20 --warmup 3"
  LLM=""
  LLM_DTYPE=bfloat16
fi

echo "== study ($PRESET preset, at most ${STUDY_SECONDS}s)"
PIDS=()
for I in $(seq 0 $((SHARDS - 1))); do  # shards share the GPU; their CPU measurements run in parallel
  timeout "$STUDY_SECONDS" $PY -m moelora_experiments.study.cli --preset "$PRESET" --model "$ASSETS/minilm" --data "$ASSETS/tasks.json" --out "$WORK/study" --threads $THREADS --shard "$I/$SHARDS" > "$WORK/shard$I.log" 2>&1 &
  PIDS+=($!)
done
for P in "${PIDS[@]}"; do wait "$P" || echo "a study shard stopped (rc=$?): reporting the finished cells"; done
cat "$WORK"/shard*.log
$PY -m moelora_experiments.study.cli --preset "$PRESET" --model "$ASSETS/minilm" --data "$ASSETS/tasks.json" --out "$WORK/study" --report-only || echo "study report failed (rc=$?)"
for f in report.md metrics.json forest.png amp_vs_talk_norm.png routing_dynamics.png; do cp "$WORK/study/$f" "$OUT/" 2>/dev/null || echo "no $f"; done

echo "== layer benchmark (bf16, fp32)"
if $PY benchmarks/layers.py --help | grep -q -- "--gpu"; then  # round-robin benchmark: --gpu runs bf16 then fp32
  if [ "$DEVICE" = cuda ]; then BENCH="--gpu --main-only"; else BENCH="--quick --main-only --device cpu"; fi
  timeout 200 $PY benchmarks/layers.py $BENCH --json "$OUT/layers.json" || echo "layers failed (rc=$?)"
else  # the older benchmark: one dtype per call, CPU only
  for DT in bfloat16 float32; do
    timeout 120 $PY benchmarks/layers.py --dtype $DT $OLD_BENCH --json "$WORK/layers_$DT.json" || echo "layers $DT failed (rc=$?)"
  done
  $PY -c "import json,sys,pathlib as p; w=p.Path(sys.argv[1]); json.dump({d: json.loads((w/f'layers_{d}.json').read_text()) for d in ('bfloat16','float32') if (w/f'layers_{d}.json').exists()}, open(sys.argv[2],'w'), indent=1)" "$WORK" "$OUT/layers.json"
fi

echo "== training step at Llama-3-8B shapes ($LLM_DTYPE)"
timeout 150 $PY -m moelora_experiments.gpu.llm_step --device "$([ "$DEVICE" = cuda ] && echo cuda || echo cpu)" --dtype $LLM_DTYPE $LLM --json "$OUT/llm_step.json" || echo "llm_step failed (rc=$?)"
echo "== done $(date -u); files: $(ls "$OUT" | tr '\n' ' ')"
