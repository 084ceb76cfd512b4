#!/usr/bin/env bash
# The second, shorter GPU call of 2026-11-30 (after benchmarks/gpu_run.sh):
#   bash benchmarks/gpu_followup.sh OUTDIR
# 1. hidiffusion vs the official package, timed fairly: whole-run warm-ups (the first call of the
#    full-resolution phase is warmed too) and the order reversed every other round;
# 2. composition at 4x the toy model's side (512²) with the issue's n = 64 for direct and hidiffusion;
# 3. elastic at 512² with its default and CLI settings (n = 16).
set -u
OUT_DIR=${1:?usage: gpu_followup.sh OUTDIR}
RES=/tmp/anysize-gpu-followup
. "$(dirname "$0")/gpu_common.sh"
part hidiffusion_fair ${HD_LIMIT:-90} python3 benchmarks/hidiffusion_speed.py --device cuda --dtype bf16 --width-div 1 \
  --steps 20 --repeats 2 --warmup-steps 0 --json "$RES/hidiffusion_fair.json"
part composition_512 ${C_LIMIT:-45} python3 -m anysize eval composition --method direct hidiffusion --size 512x512 --n 64 \
  --device cuda --out "$RES/composition_512_n64.json" -q
part elastic_512 ${E_LIMIT:-35} bash -c "python3 -m anysize eval composition --method elastic --size 512x512 --n 16 \
  --device cuda --out $RES/elastic_512_default.json -q && python3 -m anysize eval composition --method elastic \
  --size 512x512 --n 16 --set preset=cli --device cuda --out $RES/elastic_512_cli.json -q"
echo "=== done $(date +%T)"
