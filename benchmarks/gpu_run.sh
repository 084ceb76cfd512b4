#!/usr/bin/env bash
# The GPU benchmark session, as one script: every GPU figure in benchmarks/*_gpu.md comes from it.
#
# Runs on a machine with one CUDA GPU, torch and transformers installed, from the repository root:
#   bash benchmarks/gpu_run.sh OUTDIR
# Wheels for what the machine lacks (diffusers 0.42.1, importlib_metadata, hidiffusion 0.1.10) are
# installed from .whl/ when that folder exists. Each part has its own time limit so one slow part
# cannot take the others' results with it; logs and result files go to OUTDIR/results.tgz, re-packed
# after every part, and the console log to OUTDIR/all.log.
set -u
OUT_DIR=${1:?usage: gpu_run.sh OUTDIR}
RES=/tmp/anysize-gpu-results
. "$(dirname "$0")/gpu_common.sh"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RES/machine.txt" 2>&1
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())" >> "$RES/machine.txt" 2>&1
cat "$RES/machine.txt"

# the ARAD toy dataset is written on the CPU while the GPU runs the first parts
ARAD_WORK=/tmp/arad-gpu
python3 -c "
from anysize.buckets import scaled_buckets
from anysize.toy.data import write_aspect_dataset
write_aspect_dataset('$ARAD_WORK/data', 4500, [(b.height, b.width) for b in scaled_buckets(128, 4)], seed=100)
" > "$RES/arad_data.log" 2>&1 &
DATA_PID=$!

# issue 6: direct vs anysize hidiffusion vs the official package, real SD 1.5 and SDXL widths, 2048²
part hidiffusion_2048 ${HD_LIMIT:-110} python3 benchmarks/hidiffusion_speed.py --device cuda --dtype bf16 \
  --width-div 1 --steps 10 --repeats 2 --json "$RES/hidiffusion_2048.json"

# issue 7: elastic vs its official loop structure, direct, MultiDiffusion; real SD 2.1 (2048x1024), SDXL (2048²)
part elastic ${EL_LIMIT:-170} python3 benchmarks/elastic_speed.py --width-div 1 --full --device cuda --dtype bf16 \
  --steps 4 --repeats 1 --json "$RES/elastic.json"

# issue 9: ARAD in miniature with mixed precision on the GPU (same data and settings as the CPU run)
wait $DATA_PID
part arad ${ARAD_LIMIT:-90} python3 benchmarks/arad_toy.py --work "$ARAD_WORK" --device cuda --mixed-precision fp16 \
  --steps 400 --batch 8 --lr 1e-3 --rank 8 --n 32 --out "$RES/arad_toy_gpu.json"

# issue 4: every registered method on the full SD 1.5 U-Net, native and 2x
part bench_sd15 ${B15_LIMIT:-70} python3 -m anysize bench --arch sd1.5 --size native 2x --steps 5 --repeats 2 \
  --device cuda --dtype bf16 --out "$RES/bench_gpu_sd15.json"
# issue 6: SDXL at 4096² (the package's 4096 profile)
part hidiffusion_4096 ${HD4_LIMIT:-70} python3 benchmarks/hidiffusion_speed.py --device cuda --dtype bf16 \
  --width-div 1 --archs sdxl --sdxl-scale 4 --steps 10 --repeats 1 --json "$RES/hidiffusion_4096.json"
# issue 4: SDXL 2x with the methods that support it, if time is left
part bench_sdxl ${BXL_LIMIT:-50} python3 -m anysize bench --arch sdxl --size 2x --steps 5 --repeats 2 --device cuda \
  --dtype bf16 --methods direct fstd hidiffusion scalediff asd --out "$RES/bench_gpu_sdxl.json"
echo "=== done $(date +%T)"
