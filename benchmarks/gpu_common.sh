# Sourced by benchmarks/gpu_run.sh and gpu_followup.sh, with OUT_DIR and RES set: installs the
# carried wheels, and defines `part NAME SECONDS COMMAND...` (run with a time limit, log to
# $RES/NAME.log, show its tail) and `pack` (re-pack $RES into OUT_DIR/results.tgz after every
# part, so a later part running out of time loses nothing already measured).
rm -rf "$RES"; mkdir -p "$RES"
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
