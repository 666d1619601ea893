#!/usr/bin/env bash
# The 22x size range of configs/paper/gpu_wide.py on one GPU, in one short
# device session (issue 27): several study workers share the GPU until a
# deadline, then the finished runs come back packed.
#
# Made for the workplace's device tool (a bare GPU image with JAX, flax,
# optax, orbax and sentencepiece, no TensorFlow, no network). Once per
# clone, here (pure-Python wheels the image lacks; .whl/ is git-ignored):
#
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#     ml_collections==1.1.0
#
# then one device call, carrying .whl (and runs/study_gpu_wide, the
# finished runs of earlier sessions, where there are any):
#
#   run(command="bash experiments/gpu_wide.sh", carry=[".whl", "runs/study_gpu_wide"],
#       timeout_s=570)
#
# Back in $OUT: gpu_wide.tgz (the finished runs of runs/study_gpu_wide
# without their checkpoints, which `study reproduce` skips next time),
# versions.txt and one log per worker. Here, from the repository root:
#   tar xzf .../gpu_wide.tgz
#   poisonjax study reproduce --config=configs/paper/gpu_wide.py --partial
# (the report in docs/results/gpu_wide/; commit it with a note of the card).
# Runs cut off at the deadline are lost (their checkpoints stay there).
#
# Environment: DEADLINE_S (training seconds, default 450), WORKERS
# (processes sharing the GPU, default 6), PYTHON (default python3), ROOT
# (default runs/study_gpu_wide), OUT (the device tool sets it).
set -u
DEADLINE_S=${DEADLINE_S:-450}
WORKERS=${WORKERS:-6}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_wide_out}
ROOT=${ROOT:-runs/study_gpu_wide}
CONFIG=configs/paper/gpu_wide.py
mkdir -p "$OUT" "$ROOT"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
# float32 matmuls at full precision, as on the CPU (not TF32), and a share
# of the GPU's memory per worker instead of 75% for the first one.
export JAX_DEFAULT_MATMUL_PRECISION=highest
export XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk "BEGIN {print 0.8 / $WORKERS}")
# One compilation per program shared by the workers and the runs of a size.
export JAX_COMPILATION_CACHE_DIR=/tmp/gpu_wide_jax_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0

{ date -u; nvidia-smi -L 2>/dev/null
  "$PYTHON" -c "import jax, flax, optax, orbax.checkpoint as o, ml_collections
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__,
      'optax', optax.__version__, 'orbax', o.__version__)"
  "$PYTHON" -m poisonjax.cli study status --config=$CONFIG --root=$ROOT
} > "$OUT/versions.txt" 2>&1 || { cat "$OUT/versions.txt"; exit 1; }
cat "$OUT/versions.txt"

start=$(date +%s)
for i in $(seq "$WORKERS"); do
  timeout -s TERM -k 60 "$DEADLINE_S" "$PYTHON" -m poisonjax.cli study reproduce \
    --config=$CONFIG --worker --root=$ROOT --out=/tmp/gpu_wide_report \
    > "$OUT/worker$i.log" 2>&1 &
  sleep 5  # Staggered: each takes the next run in the grid's order.
done
wait
echo "workers stopped after $(( $(date +%s) - start )) s"

# Finished runs only (a cut-off run without its checkpoint would restart
# anyway); the report is made back here, at no device time.
finished=$(cd "$ROOT" && ls -d */summary.json 2>/dev/null | xargs -r -n1 dirname)
if [ -n "$finished" ]; then
  tar czf "$OUT/gpu_wide.tgz" --exclude=checkpoints --exclude=checkpoint_digests \
    $(for r in $finished; do echo "$ROOT/$r"; done)
else
  echo "no run finished: nothing to bring back (see the worker logs)"
fi
ls -l "$OUT"
"$PYTHON" -m poisonjax.cli study status --config=$CONFIG --root=$ROOT | tail -n 3
