#!/usr/bin/env bash
# The GPU checks still pending after 2026-11-30, in order of importance, for the next session that
# is lent a GPU (about 8 minutes on an H200, plus the machine's start):
#   bash benchmarks/gpu_next.sh OUTDIR
# 1. hidiffusion vs the official package after the change that stopped reading the device-side
#    timestep at every U-Net call (SDXL was 3 % slower than the package before it; issue 6);
# 2. elastic vs the official loop structure at generate_image()'s own view_batch_size 1 as well as
#    the CLI's 16 (issue 7's 3x goal was measured against 16 only);
#    -- both also after b398ed3, which removed every per-step host/device wait of the methods
#    (benchmarks/host_syncs.md);
# 3. ScaleDiff's NPA vs full attention at full depth (benchmarks/scalediff_speed.py --gpu).
set -u
OUT_DIR=${1:?usage: gpu_next.sh OUTDIR}
RES=/tmp/anysize-gpu-next
. "$(dirname "$0")/gpu_common.sh"
part hidiffusion_fair ${HD_LIMIT:-100} python3 benchmarks/hidiffusion_speed.py --device cuda --dtype bf16 --width-div 1 \
  --steps 20 --repeats 2 --warmup-steps 0 --json "$RES/hidiffusion_fair.json"
part elastic_vb ${EL_LIMIT:-200} python3 benchmarks/elastic_speed.py --width-div 1 --full --device cuda --dtype bf16 \
  --steps 4 --repeats 1 --no-multidiffusion --official-vb 1 16 --json "$RES/elastic_vb.json"
part scalediff ${SD_LIMIT:-150} python3 benchmarks/scalediff_speed.py --gpu --out "$RES/scalediff_speed_gpu.md"
echo "=== done $(date +%T)"
