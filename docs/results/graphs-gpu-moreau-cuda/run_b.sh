#!/bin/bash
# Device call B (2026-12-05): assemble cuDSS (its first half kept by call A on this machine),
# install moreau's CUDA build, and time cvxpylayers[moreau] on the GPU against dual.
set -u
START=$(date +%s); DEADLINE=${DEADLINE:-360}
date; uptime
[ -f /tmp/parts/cudss.xz.partaa ] || { echo "part A missing: this is a fresh machine"; exit 3; }
mkdir -p /tmp/cudss /tmp/res
cat /tmp/parts/cudss.xz.partaa .dev_b/cudss.xz.partab | xz -d > /tmp/cudss/libcudss.so.0
echo "51af7b123dfe1834f7aca2d0bde5d9cf416017cf861a496987edb25d45cf87bd  /tmp/cudss/libcudss.so.0" | sha256sum -c || exit 4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .dev_b/*.whl 2>&1 | tail -3
tar -xJf .dev_b/moreau_cuda.tar.xz -C /tmp/site
NV=$(python3 -c "import nvidia, os, glob; print(':'.join(sorted({d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, '*', 'lib'))})))")
export LD_LIBRARY_PATH=/tmp/cudss:$NV${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import moreau, moreau_cuda; print('moreau', moreau.__version__, 'cuda available:', moreau.device_available('cuda'), moreau_cuda.get_device_name(0))" || exit 5
# the installed package maps baselines/ to convex_attention.baselines (setup.cfg); from the checkout, a link does
[ -e convex_attention/baselines ] || ln -s ../baselines convex_attention/baselines
pack() { tar -czf $OUT/results.tar.gz -C /tmp/res . ; }
trap pack EXIT
run() {  # run NAME ARGS...: the speed part at 64², dual at batch 1024 on the GPU, moreau on --cvx-device
  local name=$1; shift
  local left=$(( DEADLINE - ($(date +%s) - START) ))
  if [ $left -lt 60 ]; then echo "== $name skipped: $left s left of the call's budget"; return; fi
  echo "== $name $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg), timeout $left s"
  timeout $left python3 benchmarks/bench_graphs.py --parts speed --size 64 --speed-batch 1024 --repeats 10 \
      --cvx-repeats 1 --backends moreau --device cuda --threads 16 --out /tmp/res/$name "$@" 2>&1 \
      | grep -v -E "SyntaxWarning|Solves a cone program|_show_cuda_hint"
  echo "== $name rc ${PIPESTATUS[0]} $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
}
per_sample() {  # the moreau rows' per-sample ms of a finished run (one number per family)
  python3 -c "import csv,sys; r=[x for x in csv.DictReader(open(sys.argv[1])) if x['method']=='cvxpylayers']; print(' '.join(x['family']+'='+x.get('per_sample_ms','') for x in r))" /tmp/res/$1/speed.csv 2>/dev/null
}
run gpu-b64-seed0 --cvx-device cuda --cvx-batch 64 --seed 0
per_sample gpu-b64-seed0
run gpu-b1024-seed0 --cvx-device cuda --cvx-batch 1024 --seed 0
per_sample gpu-b1024-seed0
BEST=$(python3 - <<'PY'
import csv, math
best = {}
for b in (64, 1024):
    try:
        rows = [r for r in csv.DictReader(open(f"/tmp/res/gpu-b{b}-seed0/speed.csv")) if r["method"] == "cvxpylayers"]
        ms = [float(r["per_sample_ms"]) for r in rows if r.get("status", "ok") in ("ok", "") and r["per_sample_ms"]]
        best[b] = sum(ms) / len(ms) if len(ms) == 3 else math.inf
    except (OSError, KeyError, ValueError):
        best[b] = math.inf
print(min(best, key=best.get))
PY
)
echo "moreau's cheaper batch at seed 0: $BEST"
run gpu-b$BEST-seed1 --cvx-device cuda --cvx-batch $BEST --seed 1
run gpu-b$BEST-seed2 --cvx-device cuda --cvx-batch $BEST --seed 2
run cpu-b16-seed0 --cvx-device cpu --cvx-batch 16 --seed 0
date; uptime
