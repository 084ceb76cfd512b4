#!/usr/bin/env bash
# The GPU benchmark driver: every GPU figure in benchmarks/ comes from one of its parts.
#
#   bash benchmarks/gpu.sh OUTDIR [PART|SET ...]     # default: field
#   bash benchmarks/gpu.sh --list                     # parts, their limits and commands, and the sets
#
# Runs on a machine with one CUDA GPU, torch and transformers installed, from the repository root.
# Wheels for what the machine lacks (diffusers 0.42.1, importlib_metadata, hidiffusion 0.1.10) are
# installed from .whl/ when that folder exists. Each part runs under its own time limit (LIMIT_<part>
# seconds overrides the default, e.g. LIMIT_elastic_vb=240), so one slow part cannot take the others'
# results with it; its log ($RES/<part>.log) and result files go to OUTDIR/results.tgz, re-packed after
# every part. The machine (GPU, driver, library versions) is recorded first, in machine.txt.
# RESUME=DIR copies DIR's *.json results into the fresh results folder first: the field parts run with
# --resume, so a table an earlier session's time limit stopped goes on from its last saved batch (carry
# the unpacked results.tgz of that session, e.g. as DIR=.gpu-resume with run's carry).
# tests/test_gpu_script.py checks on the CPU that every part's command passes its own argument parser
# and that every set names existing parts; --list gives each set's sum of limits.
#
# Sets:
#   run       the first GPU call of 2026-11-30: hidiffusion_2048 elastic arad bench_sd15 hidiffusion_4096
#             bench_sdxl
#   followup  the second, shorter call of 2026-11-30: hidiffusion_fair composition_512 elastic_512
#   next      issue 23's goals 1-3, in order of importance (limits 580 s):
#             1. hidiffusion_fair, hidiffusion_fair_4096: HiDiffusion vs the official package at SD 1.5 and
#                SDXL 2048², and SDXL 4096², whole-run warm-ups and alternating order, after the change
#                that stopped reading the device-side timestep at every U-Net call (SDXL was 3 % slower
#                than the package before it at 2048², 5 % at 4096² in a fixed-order run);
#             2. elastic_vb: Elastic vs the official loop structure at generate_image()'s own
#                view_batch_size 1 as well as the CLI's 16 (issue 7's 3x goal was measured against 16
#                only);
#                -- both also after b398ed3, which removed every per-step host/device wait of the
#                methods (benchmarks/host_syncs/README.md);
#             3. peers_4096: scalediff / demofusion seconds at SDXL 4096² in one run (the paper: 8.9x faster).
#   field     issue 22's comparison table of the field on the toy world: every registered method at n = 64
#             at 4x the side (field_4x; the 2x, 2:1 and 1:2 cells are measured on the CPU,
#             benchmarks/composition/field_2x_cpu_n64.json and field_2to1_cpu_n64.json, so the 2x part
#             field_2x is left out of the set: run it by name as a GPU cross-check), and the speed ratios
#             of the peers on SDXL at 2x the side in one alternating run (bench_peers); limits 580 s: it
#             closes issue 22, so it goes first.
#   perf      issue 23's GPU goals 4, 5 and 7 on the SDXL architecture (random weights, the released VAE
#             layout): the share of wall time inside the denoiser and the VAE for every method at 2048²
#             (network_share), the CUDA allocator peak of an 8192² image with fstd, multidiffusion,
#             scalediff and asd in fp16 (memory_8192), a 16384² fstd upscale (upscale_16384), and the
#             headline: scalediff at 4096², 50 steps (headline); limits 600 s in all, about 5 minutes
#             expected on an H200 (benchmarks/README.md says how that was estimated).
#   compile   issue 23's goal 6 on SDXL at 2048², bf16: --compile vs eager for direct and fstd (compile), the
#             SDPA kernels eager for direct, hidiffusion and fstd (sdpa); limits 600 s.
#   final     the rest of issue 23: ScaleDiff's NPA vs full attention at full depth (scalediff,
#             scalediff_speed.py --gpu; goal 3) and --compile with hidiffusion (compile_hidiffusion, its
#             patches' phases make ~38 graphs; goal 6); limits 510 s.
#
# Each set fits one session's 15 device minutes with the machine's start; run them in the order
# field, next, perf, compile, final.
set -u

# ------------------------------------------------------------------------------------------ the parts
# name, default limit (s), command ("$RES" is where result files go)

PARTS=(hidiffusion_2048 elastic arad bench_sd15 hidiffusion_4096 bench_sdxl hidiffusion_fair composition_512
       elastic_512 elastic_vb scalediff hidiffusion_fair_4096 peers_4096 field_2x field_4x bench_peers network_share memory_8192 upscale_16384 headline
       compile sdpa compile_hidiffusion)
SET_run="hidiffusion_2048 elastic arad bench_sd15 hidiffusion_4096 bench_sdxl"
SET_followup="hidiffusion_fair composition_512 elastic_512"
SET_next="hidiffusion_fair hidiffusion_fair_4096 elastic_vb peers_4096"
SET_field="field_4x bench_peers"
SET_perf="network_share memory_8192 upscale_16384 headline"
SET_compile="compile sdpa"
SET_final="scalediff compile_hidiffusion"
SETS=(run followup next field perf compile final)

limit_of() {
  case $1 in
    hidiffusion_2048) echo 110 ;; elastic) echo 170 ;; arad) echo 90 ;; bench_sd15) echo 70 ;;
    hidiffusion_4096) echo 70 ;; bench_sdxl) echo 50 ;; hidiffusion_fair) echo 100 ;; composition_512) echo 45 ;;
    elastic_512) echo 35 ;; elastic_vb) echo 200 ;; scalediff) echo 150 ;; hidiffusion_fair_4096) echo 130 ;; peers_4096) echo 150 ;;
    field_2x) echo 130 ;; field_4x) echo 460 ;; bench_peers) echo 120 ;;
    network_share) echo 130 ;; memory_8192) echo 170 ;; upscale_16384) echo 160 ;; headline) echo 140 ;;
    compile) echo 420 ;; sdpa) echo 180 ;; compile_hidiffusion) echo 360 ;;
  esac
}

command_of() {
  case $1 in
    # issue 6: direct vs anysize hidiffusion vs the official package, real SD 1.5 and SDXL widths, 2048²
    hidiffusion_2048) echo "python3 benchmarks/hidiffusion_speed/hidiffusion_speed.py --device cuda --dtype bf16 \
--width-div 1 --steps 10 --repeats 2 --json $RES/hidiffusion_2048.json" ;;
    # issue 7: elastic vs its official loop structure, direct, MultiDiffusion; real SD 2.1 (2048x1024), SDXL (2048²)
    elastic) echo "python3 benchmarks/elastic_speed/elastic_speed.py --width-div 1 --full --device cuda --dtype bf16 \
--steps 4 --repeats 1 --json $RES/elastic.json" ;;
    # issue 9: ARAD in miniature with mixed precision on the GPU (same data and settings as the CPU run)
    arad) echo "python3 benchmarks/arad_toy/arad_toy.py --work $ARAD_WORK --device cuda --mixed-precision fp16 \
--steps 400 --batch 8 --lr 1e-3 --rank 8 --n 32 --out $RES/arad_toy_gpu.json" ;;
    # issue 4: every registered method on the full SD 1.5 U-Net, native and 2x
    bench_sd15) echo "python3 -m anysize bench --arch sd1.5 --size native 2x --steps 5 --repeats 2 --device cuda \
--dtype bf16 --out $RES/bench_gpu_sd15.json" ;;
    # issue 6: SDXL at 4096² (the package's 4096 profile)
    hidiffusion_4096) echo "python3 benchmarks/hidiffusion_speed/hidiffusion_speed.py --device cuda --dtype bf16 \
--width-div 1 --archs sdxl --sdxl-scale 4 --steps 10 --repeats 1 --json $RES/hidiffusion_4096.json" ;;
    # issue 4: SDXL 2x with the methods that support it
    bench_sdxl) echo "python3 -m anysize bench --arch sdxl --size 2x --steps 5 --repeats 2 --device cuda --dtype bf16 \
--methods direct fstd hidiffusion scalediff asd --out $RES/bench_gpu_sdxl.json" ;;
    # hidiffusion vs the official package, timed fairly: whole-run warm-ups (the first call of the
    # full-resolution phase is warmed too) and the order reversed every other round
    hidiffusion_fair) echo "python3 benchmarks/hidiffusion_speed/hidiffusion_speed.py --device cuda --dtype bf16 \
--width-div 1 --steps 20 --repeats 2 --warmup-steps 0 --json $RES/hidiffusion_fair.json" ;;
    # composition at 4x the toy model's side (512²) with the issue's n = 64 for direct and hidiffusion
    composition_512) echo "python3 -m anysize eval composition --method direct hidiffusion --size 512x512 --n 64 \
--device cuda --out $RES/composition_512_n64.json -q" ;;
    # elastic at 512² with its default and CLI settings (n = 16)
    elastic_512) echo "python3 -m anysize eval composition --method elastic --size 512x512 --n 16 --device cuda \
--out $RES/elastic_512_default.json -q && python3 -m anysize eval composition --method elastic --size 512x512 \
--n 16 --set preset=cli --device cuda --out $RES/elastic_512_cli.json -q" ;;
    # elastic vs the official loop at view_batch_size 1 and 16, without MultiDiffusion
    elastic_vb) echo "python3 benchmarks/elastic_speed/elastic_speed.py --width-div 1 --full --device cuda --dtype bf16 \
--steps 4 --repeats 1 --no-multidiffusion --official-vb 1 16 --json $RES/elastic_vb.json" ;;
    # ScaleDiff's NPA vs full attention vs MultiDiffusion windows at full depth, 2048² and 4096²
    scalediff) echo "python3 benchmarks/scalediff_speed/scalediff_speed.py --gpu --out $RES/scalediff_speed_gpu.md" ;;
    # issue 23.1 at SDXL 4096², the fair way (whole-run warm-ups, alternating order; 2026-11-30's 4096² run was not)
    hidiffusion_fair_4096) echo "python3 benchmarks/hidiffusion_speed/hidiffusion_speed.py --device cuda --dtype bf16 \
--width-div 1 --archs sdxl --sdxl-scale 4 --steps 10 --repeats 2 --warmup-steps 0 --json $RES/hidiffusion_fair_4096.json" ;;
    # issue 23.3: scalediff / demofusion seconds at SDXL 4096² in one alternating run (ScaleDiff's paper: 8.9x
    # faster); 10 steps a stage, the released VAE layout (scalediff decodes and re-encodes between stages,
    # demofusion upsamples latents and decodes once)
    peers_4096) echo "python3 -m anysize bench --arch sdxl --size 4096x4096 --no-baseline --versus scalediff:demofusion \
--steps 10 --repeats 1 --warmup 1 --warmup-steps 2 --vae released --device cuda --dtype bf16 \
--out $RES/bench_gpu_sdxl_4096_peers.json" ;;
    # issue 22: every registered method on the toy world, n = 64 per cell (the field's comparison table)
    # (--resume: the cells of an earlier, stopped run that RESUME=DIR brought along are kept)
    # (2:1 and 1:2 are not here: they are measured at n = 64 on the CPU, benchmarks/composition/field_2to1_cpu_n64.json)
    field_2x) echo "python3 -m anysize eval composition --method all --size 256x256 --n 64 --batch 16 \
--device cuda --out $RES/field_2x_n64.json --resume -q" ;;
    field_4x) echo "python3 -m anysize eval composition --method all --size 512x512 --n 64 --batch 16 --device cuda \
--out $RES/field_4x_n64.json --resume -q" ;;
    # issue 22: the peers against each other on SDXL at 2x the side, one alternating run
    bench_peers) echo "python3 -m anysize bench --arch sdxl --size 2x --steps 5 --repeats 2 --device cuda --dtype bf16 \
--methods direct --versus scalediff:demofusion rectifiedhr:demofusion --out $RES/bench_gpu_sdxl_peers.json" ;;
    # issue 23.4: time inside the denoiser and the VAE vs the whole call, every method that runs on SDXL, 2048²
    network_share) echo "python3 benchmarks/network_share/network_share.py --arch sdxl --size 2048x2048 --steps 5 \
--warmup 1 --repeats 1 --device cuda --dtype bf16 --vae released --out $RES/network_share_sdxl_2048.json" ;;
    # issue 23.5: CUDA allocator peak of one 8192² image per method, fp16, decode included (fast tiled VAE: the
    # same one-tile working set as the default exact statistics, ~16x fewer decoder passes; MultiDiffusion at
    # stride = window: its peak does not depend on the stride, its default would make 3249 calls per step), with
    # the allocator capped at 24 GB as on a card of that size (activation_peak.py: scalediff's whole-canvas CFG call
    # needs ~25 GiB batched, ~15 GiB as two halves, which predict_guided falls back to)
    memory_8192) echo "python3 benchmarks/gpu_memory/gpu_memory.py --arch sdxl --size 8192x8192 --methods fstd \
multidiffusion scalediff asd --steps 2 --dtype fp16 --vae released --tiled-vae fast --set multidiffusion.stride=128 \
--memory-limit 24 --device cuda --out $RES/memory_8192.json" ;;
    # issue 23.5: a 16384² fstd upscale of a random 2048² image, fp16: peak and time
    upscale_16384) echo "python3 benchmarks/gpu_memory/gpu_memory.py --arch sdxl --methods --upscale-to 16384x16384 \
--upscale-from 2048 --upscale-steps 4 --upscale-strength 0.4 --dtype fp16 --vae released --tiled-vae fast \
--device cuda --out $RES/upscale_16384.json" ;;
    # issue 23.7: the headline, SDXL 4096² with scalediff, 50 steps (warm-up of 5 steps: every stage's shapes)
    headline) echo "python3 -m anysize bench --arch sdxl --size 4096x4096 --methods scalediff --no-baseline \
--steps 50 --repeats 1 --warmup 1 --warmup-steps 5 --vae released --device cuda --dtype bf16 \
--out $RES/headline_scalediff_4096.json" ;;
    # issue 23.6: --compile vs eager for direct and fstd, SDXL 2048², bf16 (compile time apart from steady state)
    compile) echo "python3 benchmarks/compile_speed/compile_speed.py --arch sdxl --size 2x --methods direct fstd \
--steps 5 --repeats 3 --device cuda --dtype bf16 --variants compiled/auto --out $RES/compile_sdxl_2048.json" ;;
    # issue 23.6: the SDPA kernels, eager, for direct, hidiffusion and fstd, SDXL 2048², bf16
    sdpa) echo "python3 benchmarks/compile_speed/compile_speed.py --arch sdxl --size 2x --methods direct hidiffusion \
fstd --steps 5 --repeats 3 --device cuda --dtype bf16 --variants eager/flash eager/efficient eager/cudnn \
--out $RES/sdpa_sdxl_2048.json" ;;
    # issue 23.6: --compile with hidiffusion (its patches' phases split the U-Net into ~38 graphs: compiles longest)
    compile_hidiffusion) echo "python3 benchmarks/compile_speed/compile_speed.py --arch sdxl --size 2x --methods \
hidiffusion --steps 5 --repeats 3 --device cuda --dtype bf16 --variants compiled/auto \
--out $RES/compile_sdxl_2048_hidiffusion.json" ;;
  esac
}

# ------------------------------------------------------------------------------------------ arguments

RES=${RES:-/tmp/anysize-gpu}
ARAD_WORK=${ARAD_WORK:-/tmp/arad-gpu}
if [ "${1:-}" = "--list" ]; then
  for p in "${PARTS[@]}"; do echo "$p (limit $(limit_of "$p") s): $(command_of "$p")"; done
  echo
  for name in "${SETS[@]}"; do  # with the sum of its parts' limits: what it may take of a session's device time
    set_var="SET_$name"; total=0
    for p in ${!set_var}; do total=$((total + $(limit_of "$p"))); done
    echo "$name (limits $total s): ${!set_var}"
  done
  exit 0
fi
OUT_DIR=${1:?usage: gpu.sh OUTDIR [PART|SET ...] (default: field), or gpu.sh --list}
shift
selected=()
for name in "${@:-field}"; do
  set_var="SET_$name"
  if [ -n "${!set_var:-}" ]; then
    selected+=(${!set_var})
  elif [ -n "$(limit_of "$name")" ]; then
    selected+=("$name")
  else
    echo "unknown part or set '$name'; parts: ${PARTS[*]}; sets: ${SETS[*]}" >&2
    exit 2
  fi
done

# ------------------------------------------------------------------------------------------ setup

rm -rf "$RES"; mkdir -p "$RES" "$OUT_DIR"
if [ -n "${RESUME:-}" ]; then
  cp "$RESUME"/*.json "$RES"/ || exit 1
  echo "resuming from $RESUME: $(cd "$RES" && ls -- *.json | tr '\n' ' ')"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi

pack() { tar czf "$OUT_DIR/results.tmp" -C "$RES" . && mv "$OUT_DIR/results.tmp" "$OUT_DIR/results.tgz"; }
part() {
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s) $(date +%T)"
  local t0=$SECONDS
  timeout -k 5 "$limit" "$@" > "$RES/$name.log" 2>&1
  local rc=$?
  grep -v -e "should be kept in float32" -e "requires torchvision" "$RES/$name.log" | tail -n 40
  echo "=== $name: rc $rc in $((SECONDS - t0)) s"
  pack
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RES/machine.txt" 2>&1
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__, torch.cuda.get_device_name())" >> "$RES/machine.txt" 2>&1
cat "$RES/machine.txt"
echo "parts: ${selected[*]}"

# the ARAD toy dataset is written on the CPU while the GPU runs the parts before arad
DATA_PID=
if [[ " ${selected[*]} " == *" arad "* ]]; then
  python3 -c "
from anysize.buckets import scaled_buckets
from anysize.toy.data import write_aspect_dataset
write_aspect_dataset('$ARAD_WORK/data', 4500, [(b.height, b.width) for b in scaled_buckets(128, 4)], seed=100)
" > "$RES/arad_data.log" 2>&1 &
  DATA_PID=$!
fi

# ------------------------------------------------------------------------------------------ run

for p in "${selected[@]}"; do
  if [ "$p" = arad ] && [ -n "$DATA_PID" ]; then wait "$DATA_PID"; fi
  limit_var="LIMIT_$p"
  part "$p" "${!limit_var:-$(limit_of "$p")}" bash -c "$(command_of "$p")"
done
pack
echo "=== done $(date +%T)"
