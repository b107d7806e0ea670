#!/usr/bin/env bash
# The GPU recipe for issue 34's shipped multi-size model: continue the shipped shapes-64 LM with grid
# positions (configs/lm/sizes-grid-gpu.yaml) on five sizes and lengths, in ONE call of about nine
# minutes on a lent H100, so that it fits a session's 15 minutes of device time with the machine's start.
#
# Here, once per checkout (downloads the few wheels the GPU image lacks into .whl/, which git ignores):
#   bash configs/lm/gpu-wheels.sh
# Then the device call (run from the repo root; $OUT is the tool's folder of files to bring back):
#   run(command="bash configs/lm/sizes-grid-gpu.sh", carry=[".whl"], timeout_s=600)
# and here, with the files it brought back in DIR:
#   bash configs/lm/sizes-grid-gpu.sh --unpack DIR runs/bundle-gpu   # a copy of models/shapes-64 with the new LM
#   videolm eval --model runs/bundle-gpu --tasks t2v --num 128 --size 48x80     # and 80x48, --frames 33, ...
#
# A dry run on this CPU (1/64 of the clips, a five-minute budget, small batches) checks every step before
# GPU time is spent:
#   VIDEOLM_GPU_SCALE=64 VIDEOLM_GPU_DEVICE=cpu VIDEOLM_GPU_SECONDS=300 VIDEOLM_GPU_RUN=runs/gpu-dry \
#   VIDEOLM_GPU_FIT_ARGS="--train.batch-size 8 --train.workers 0 --train.val-every 20 --train.val-sequences 16" \
#       bash configs/lm/sizes-grid-gpu.sh
#
# Time: everything counts from this script's start against VIDEOLM_GPU_SECONDS (default 540); the tokenizing
# runs first (all parts at once on the GPU machine's 16 cores), and `lm fit` gets what is left, less the
# minute that bundling and copying out need.
set -euo pipefail

if [ "${1:-}" = "--unpack" ]; then  # here: join the parts the device call brought back into a model folder
    src=${2:?--unpack DIR OUT}; dst=${3:?--unpack DIR OUT}
    [ -e "$dst" ] && { echo "sizes-grid-gpu.sh: $dst exists; choose a new folder" >&2; exit 2; }
    tmp=$(mktemp -d)
    cat "$src"/lm.tar.part-* | tar -x -C "$tmp"
    mkdir -p "$(dirname "$dst")" && cp -r models/shapes-64 "$tmp/model" && rm -rf "$tmp/model/lm"
    mv "$tmp/lm" "$tmp/model/lm" && mv "$tmp/model" "$dst" && rm -rf "$tmp"
    echo "model folder with the GPU-trained LM: $dst"
    exit 0
fi

T0=$(date +%s)
TOTAL=${VIDEOLM_GPU_SECONDS:-540}
SCALE=${VIDEOLM_GPU_SCALE:-1}          # divides every clip count (a dry run)
DEVICE=${VIDEOLM_GPU_DEVICE:-cuda}
RUN=${VIDEOLM_GPU_RUN:-runs/lm-sizes-grid-gpu}
OUT=${OUT:-$RUN-out}
TOK=$RUN-tokens
mkdir -p "$OUT"
LOG=$OUT/log.txt
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

# The GPU image has torch, transformers, lightning, sentencepiece ...; the wheels in .whl add the rest.
# It has no PyAV, whose wheel (36 MB) would not fit the 64 MiB the call may carry; nothing in this run
# reads or writes a media file, so a stand-in module answers `import av` and fails if it is ever used.
if [ -d .whl ] && ! python3 -c "import vector_quantize_pytorch" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import av" 2>/dev/null; then
    mkdir -p /tmp/avstub/av
    cat >/tmp/avstub/av/__init__.py <<'EOF'
"""Stand-in for PyAV in a GPU run that reads and writes no media files (configs/lm/sizes-grid-gpu.sh)."""


class _Absent:
    def __init__(self, path):
        self.path = path

    def __getattr__(self, name):
        return _Absent(f"{self.path}.{name}")

    def __call__(self, *args, **kwargs):
        if self.path != "av.logging.set_level":  # what importing videolm.data.media calls
            raise RuntimeError(f"PyAV is not installed on this machine ({self.path} was called)")


def __getattr__(name):
    return _Absent(f"av.{name}")
EOF
    export PYTHONPATH=/tmp/avstub${PYTHONPATH:+:$PYTHONPATH}
fi
if ! python3 -c "import videolm" 2>/dev/null; then  # not installed: the checkout is the package
    mkdir -p /tmp/vlpkg && ln -sfn "$PWD" /tmp/vlpkg/videolm
    export PYTHONPATH=/tmp/vlpkg${PYTHONPATH:+:$PYTHONPATH}
fi
V() { python3 -m videolm.cli.main "$@"; }
python3 -c "import torch, transformers, lightning, videolm.train.lm as m; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
[ "$DEVICE" = cpu ] || python3 -c "import torch; assert torch.cuda.is_available(), 'no GPU'"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee -a "$LOG" || true

# Token shards: new Shapes clips (seeds never used for the shipped LM, which saw 0-114,687) of five
# sizes, each bucket in parts of 4,096 so that all parts encode at once, and held-out clips for the loss.
n() { echo $(( $1 / SCALE > 0 ? $1 / SCALE : 1 )); }
say "tokenizing"
pids=()
part() {  # name size frames seed num [--split eval]; a part written by an earlier call (a rerun) is kept
    [ -f "$TOK/$1/index.json" ] && return
    OMP_NUM_THREADS=1 V tokenize --num "$(n "$5")" --seed "$4" --size "$2" --frames "$3" --device "$DEVICE" \
        --batch-size 128 --out "$TOK/$1" --overwrite "${@:6}" >"$TOK/$1.log" 2>&1 &
    pids+=($!)
}
mkdir -p "$TOK"
part b64x64x17_0 64x64 17 300000 4096
part b64x64x17_1 64x64 17 304096 4096
part b48x80x17_0 48x80 17 310000 4096
part b48x80x17_1 48x80 17 314096 4096
part b80x48x17_0 80x48 17 320000 4096
part b80x48x17_1 80x48 17 324096 4096
part b64x64x33_0 64x64 33 330000 2560
part b64x64x33_1 64x64 33 332560 2560
part b64x64x9_0 64x64 9 340000 4096
part val48x80 48x80 17 0 256 --split eval
part val80x48 80x48 17 0 256 --split eval
part val64x64x33 64x64 33 0 256 --split eval
for p in "${pids[@]+"${pids[@]}"}"; do
    wait "$p" || { cat "$TOK"/*.log | tail -20 | tee -a "$LOG"; say "tokenizing failed"; exit 1; }
done
say "tokenized: $(du -sh "$TOK" | cut -f1)"

# Training gets the time left, less 60 s for bundling and copying out.
left=$(( TOTAL - ($(date +%s) - T0) - 60 ))
[ "$left" -gt 60 ] || { say "only ${left}s left for training"; exit 1; }
minutes=$(python3 -c "print(round($left / 60, 2))")
say "lm fit for $minutes minutes"
accel=gpu; [ "$DEVICE" = cpu ] && accel=cpu
set +e
V lm fit --config configs/lm/sizes-grid-gpu.yaml --train.max-minutes "$minutes" --train.accelerator "$accel" \
    $(for b in b64x64x17_0 b64x64x17_1 b48x80x17_0 b48x80x17_1 b80x48x17_0 b80x48x17_1 b64x64x33_0 b64x64x33_1 \
        b64x64x9_0; do echo --data.shards "$TOK/$b"; done) \
    $(for b in val48x80 val80x48 val64x64x33; do echo --data.val-shards "$TOK/$b"; done) \
    ${VIDEOLM_GPU_FIT_ARGS:-} --out "$RUN" >"$OUT/fit.txt" 2>&1
rc=$?
set -e
tail -5 "$OUT/fit.txt" | tee -a "$LOG"
[ "$rc" = 0 ] || { say "lm fit failed ($rc)"; exit 1; }

# The LM in float16 (about 22 MB), in parts small enough to come back (16 MB a file).
rm -rf "$RUN/bundle" && cp -r models/shapes-64 "$RUN/bundle"
V lm bundle --lm "$RUN/model" --out "$RUN/bundle" | tee -a "$LOG"
tar -c -C "$RUN/bundle" lm | split -b 12m - "$OUT/lm.tar.part-"
cp "$RUN/metrics.jsonl" "$OUT/metrics.jsonl"
say "done: $(ls "$OUT" | tr '\n' ' ')"
