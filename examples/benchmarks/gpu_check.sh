#!/bin/bash
# GPU checks in one call of a lent GPU machine (issue 11 item 7, issue 16 items 3 and 6): the CUDA paths of the
# model-based loop, mamba-ssm's kernels against the pure-PyTorch reference, and GPU timings of the MAMBA paper's
# schedule, the dream, the SSM blocks and DRAMA's world model. Results land in $OUT (at most 8 files).
#
# The machine has torch, numpy, einops, safetensors, onnx, ... but not this project's env packages and no network:
# they travel in the git-ignored folder .whl, prepared on this machine with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
#       -d .whl gymnasium farama-notifications pettingzoo mpe2 pygame-ce tyro docstring_parser typeguard \
#       stable_baselines3 ale-py boto3 botocore jmespath s3transfer fastenum importlib_resources msgpack-numpy redis
#   .whl/src/flatland          flatland-rl's sdist's pure-Python package (its Cython modules are optional)
#   .whl/mamba_ssm-*.tar.gz    mamba-ssm's sdist: its selective-scan extension is built there for sm_90 only
# and the call names .whl in `carry`. Usage there:  bash examples/benchmarks/gpu_check.sh
# Times on an H200 (2026-12-04), to plan a 15-minute device budget: machine start ~30 s, the kernel build 150 s,
# the loop's CUDA tests 63 s, the paper-schedule profile ~170 s, each process's first Mamba-2 kernel call 68-89 s
# (Triton compiles and autotunes; with TRITON_F32_DEFAULT=ieee it did not finish in 275 s).
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0)) s] $*" | tee -a "$OUT/log.txt"; }
pin() { if command -v taskset >/dev/null; then taskset -c "$@"; else shift; "$@"; fi; } # pin <cores> <command...>
want() { [[ " ${ONLY:-loop profile paper dream parity ssm drama} " == *" $1 "* ]]; } # ONLY="loop parity": just those steps
run() { # run <seconds> <cores> <command...>: one step, its output appended to log.txt, never fatal
    local limit=$1 cores=$2
    shift 2
    log "start: $*"
    pin "$cores" timeout "$limit" "$@" >>"$OUT/log.txt" 2>&1
    log "rc $? of: $1 ${2:-} ${3:-}"
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
BASE=$PWD:/tmp/site:$PWD/.whl/src
export PYTHONPATH=$BASE
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv | tee -a "$OUT/log.txt"
python3 -c "import torch, numpy; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'numpy', numpy.__version__)" \
    | tee -a "$OUT/log.txt"

# 1. mamba-ssm's selective-scan extension, built for sm_90 only (not its eleven architectures), on 12 of the 16
#    cores, in the background
MAMBA=/tmp/mamba_ssm-2.3.2.post1
(
    tar xzf .whl/mamba_ssm-2.3.2.post1.tar.gz -C /tmp
    cd $MAMBA || exit 1
    python3 -c "
s = open('setup.py').read()
s = s.replace('    # HACK: The compiler flag', '    cc_flag = [\"-gencode\", \"arch=compute_90,code=sm_90\"]\n    # HACK: The compiler flag', 1)
open('setup.py', 'w').write(s)"
    MAMBA_FORCE_BUILD=TRUE MAX_JOBS=10 pin 0-11 timeout 360 python3 setup.py build_ext --inplace >"$OUT/build.log" 2>&1
    echo "build rc $?" >>"$OUT/build.log"
) &
BUILD=$!

# 2. while it builds, on the other 4 cores (no kernels on the path yet): the CUDA tests of the loop and MAPPO, the
#    MAMBA paper's Flatland schedule and sizes for two minutes (a resumable run folder), the dream's throughput; the
#    DRAMA loop's CUDA test (its per-step schedule; not yet run on a GPU) joined them on 2026-12-05
want loop && run 240 12-15 python3 -m pytest -q -p no:cacheprovider -m cuda tests/agents/test_model_based.py \
    tests/agents/test_mappo_math.py tests/agents/test_drama_loop.py
#    the paper schedule's cost per real step, phase by phase, in the background (it overlaps the kernel steps below)
#    (PROFILE_ARGS: more flags, e.g. "--run.fit.compile steps"; on an H200 it took ~170 s with an eager fit)
want profile && run ${PROFILE_S:-200} 12-15 python3 examples/benchmarks/loop_profile.py --schedule mamba-flatland \
    --run.device cuda --warmup 2 ${PROFILE_ARGS:-} --out "$OUT/profile_paper_cuda.json" &
want paper && run ${PAPER_S:-120} 12-15 python3 examples/04_model_based.py --schedule mamba-flatland --device cuda --iterations 40 \
    --run-dir /tmp/runs/paper --no-progress
want paper && python3 -c "
import json
from agents.train import latest_checkpoint
ckpt = latest_checkpoint('/tmp/runs/paper')
meta, loop = (json.loads((ckpt / f).read_text()) for f in ('config.json', 'loop.json'))
print(json.dumps({'counters': meta['counters'], 'eval_returns': loop['eval_returns'], 'real_returns': loop['real_returns']}))
" 2>&1 | tee "$OUT/paper.json"
want dream && run 45 12-15 python3 examples/benchmarks/dream_throughput.py --env-id flatland:5 --env-kwargs dense_reward True \
    --model flatland --batches 64 1024 4096 --seconds 2 --threads 1 --device cuda --out "$OUT/dream_cuda.json"

log "waiting for the kernel build"
wait $BUILD
tail -3 "$OUT/build.log" | tee -a "$OUT/log.txt"
export PYTHONPATH=$BASE:$MAMBA
python3 -c "from wmenv.models.ssm.kernels import HAS_MAMBA_SSM, IMPORT_ERROR; print('kernels', HAS_MAMBA_SSM, IMPORT_ERROR)" \
    2>&1 | tee -a "$OUT/log.txt"

# 3. kernels: parity with the reference (forward and gradients, with and without resets), then speed on the GPU
#    side by side, each process with its own Triton cache: the parity test (each path against float64, bounds for its
#    arithmetic) and the errors of kernels and reference against float64 with Triton's default float32 dots (TF32);
#    PARITY_IEEE=1 adds the same with TRITON_F32_DEFAULT=ieee (on an H200 it did not finish compiling in 275 s)
if want parity; then
    run ${PARITY_S:-220} 0-3 env TRITON_CACHE_DIR=/tmp/triton_test bash -c \
        "python3 -m pytest -v -p no:cacheprovider -m cuda tests/models/ssm/test_ssm_kernels.py >$OUT/parity_pytest.txt 2>&1" &
    run ${PARITY_S:-220} 4-7 python3 examples/benchmarks/ssm_parity.py --out "$OUT/parity_tf32.json" &
    # DRAMA's world model with the kernels beside the parity runs (its own cores and Triton cache; the GPU is shared,
    # so its times are upper bounds), given time for its first Mamba-2 kernel calls to compile
    want drama && run ${DRAMA_S:-200} 8-11 env TRITON_CACHE_DIR=/tmp/triton_drama python3 examples/benchmarks/drama_world_model.py \
        --device cuda --presets xs cpu-small --seq-len 128 --out "$OUT/drama_cuda.json" &
    if [ "${PARITY_IEEE:-0}" = 1 ]; then
        run ${PARITY_S:-220} 12-15 env TRITON_F32_DEFAULT=ieee TRITON_CACHE_DIR=/tmp/triton_ieee \
            python3 examples/benchmarks/ssm_parity.py --out "$OUT/parity_ieee.json" &
    fi
    wait
fi
for backend in ref cuda; do
    want ssm && run 60 0-15 python3 examples/benchmarks/ssm.py --device cuda --backend $backend --lengths 64 256 1024 \
        --d-models 64 256 --batch 16 --seconds 0.5 --models gru mamba mamba2 --no-scan-only --out "$OUT/ssm_$backend.json"
done
# 4. DRAMA's world model on the GPU, alone when the parity step is not asked for
want drama && ! want parity && run ${DRAMA_S:-200} 0-15 python3 examples/benchmarks/drama_world_model.py --device cuda \
    --presets xs cpu-small --seq-len 128 --out "$OUT/drama_cuda.json"
wait
log "done"
