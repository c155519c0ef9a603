#!/usr/bin/env bash
# The hub without torch, end to end: install the light distribution (hub-server/, "adapterhub-hub") into a fresh
# venv with the pinned versions, check that torch and transformers are absent, start the hub server (SQLite) on
# loopback, publish tests/fixtures/hub_light/light-sst with the CLI, search, show and pull it, and check that a
# truncated upload is refused by the header weights check. Prints the start-up times and memory it measured.
#
#   scripts/hub/test_light_venv.sh [VENV_DIR]      (default: a temporary folder, removed at the end)
#
# Exit codes: 0 passed, 1 failed, 75 the package registry could not be reached (nothing was tested).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
WORK=$(mktemp -d /tmp/adapterhub-light.XXXXXX)
VENV=${1:-$WORK/venv}
SERVER_PID=""

cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
    echo "[light] FAILED: $*" >&2
    exit 1
}

# The client and server read these; nothing may point at a real hub, token or cache.
unset ADAPTERHUB_HUB_URL ADAPTERHUB_TOKEN ADAPTERHUB_HUB_DB ADAPTERHUB_HUB_STORAGE ADAPTERHUB_OFFLINE HF_HUB_OFFLINE \
    ADAPTERHUB_HUB_WEIGHTS_CHECK PYTHONPATH PYTHONDONTWRITEBYTECODE
export ADAPTERHUB_HOME=$WORK/home ADAPTERHUB_CACHE=$WORK/cache

echo "[light] venv $VENV ($("$PYTHON" --version))"
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
if ! "${PIP[@]}" -c constraints.txt ./hub-server 2>"$WORK/pip.log"; then
    if ! "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$WORK/probe" \
        "filelock==$(sed -n 's/^filelock==//p' constraints.txt)" >/dev/null 2>&1; then
        echo "[light] the package registry cannot be reached; nothing tested:" >&2
        tail -3 "$WORK/pip.log" >&2
        exit 75
    fi
    cat "$WORK/pip.log" >&2
    fail "pip could not install hub-server/"
fi
rm -rf hub-server/build  # setuptools' build folder (ignored by git)

AH=$VENV/bin/adapterhub
PY=$VENV/bin/python
cd "$WORK"  # run from outside the checkout, so that only the installed package can be imported

for module in torch transformers numpy safetensors; do
    if "$PY" -c "import $module" 2>/dev/null; then
        fail "$module is importable in the light venv"
    fi
done
echo "[light] torch, transformers, numpy and safetensors are not installed"
"$PY" -c "import adapterhub, adapterhub.hub.server.app as a; assert 'site-packages' in a.__file__, a.__file__"

PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
URL=http://127.0.0.1:$PORT
DB=(--db "sqlite:///$WORK/hub.sqlite3" --storage "$WORK/storage")
"$AH" hub serve --seed --port "$PORT" "${DB[@]}" --log-level warning >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 150); do
    if "$PY" -c "import urllib.request; urllib.request.urlopen('$URL/api/v1/health', timeout=2)" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; fail "the server exited"; }
    sleep 0.2
done
grep -q "weights check header" "$WORK/server.log" || { cat "$WORK/server.log" >&2; fail "not the header check"; }
echo "[light] server up at $URL ($(head -1 "$WORK/server.log" | sed 's/.*(//; s/)$//'))"

TOKEN=$("$AH" hub create-user alice --admin "${DB[@]}" 2>/dev/null)
"$AH" login "$TOKEN" --hub "$URL" >/dev/null
FIXTURE=$REPO/tests/fixtures/hub_light/light-sst
"$AH" push "$FIXTURE" --hub "$URL" --task sentiment --subtask sst-2 --metric accuracy=0.9 --license mit \
    | tee "$WORK/push.out"
grep -q "^published @alice/light-sst:1 " "$WORK/push.out" || fail "push did not publish @alice/light-sst:1"

"$AH" search sst --hub "$URL" | tee "$WORK/search.out"
grep -q "@alice/light-sst .*bert/tiny-bert d=32" "$WORK/search.out" || fail "search did not list the adapter"
"$AH" info @alice/light-sst --hub "$URL" >"$WORK/info.out"
grep -q "method        bottleneck" "$WORK/info.out" || fail "info does not show the method"
grep -q "labels        0:negative, 1:positive" "$WORK/info.out" || fail "info does not show the labels"

PULLED=$("$AH" pull @alice/light-sst --hub "$URL")
for file in adapter.safetensors adapter_config.json head.safetensors head_config.json; do
    cmp -s "$FIXTURE/$file" "$PULLED/$file" || fail "pulled $file differs from the published one"
done
echo "[light] pulled into $PULLED: the files are the published ones"

# Loading into a model needs torch: pulling for a model says so instead of skipping its check.
if "$AH" pull sentiment/sst-2@alice --hub "$URL" --model-type bert --hidden-size 32 2>"$WORK/pull-model.err"; then
    fail "pull --model-type succeeded without torch"
fi
grep -q "Cannot check that .* fits your bert model .*torch" "$WORK/pull-model.err" \
    || { cat "$WORK/pull-model.err" >&2; fail "pull --model-type without torch did not name what is missing"; }

# The header check refuses a truncated weights file.
mkdir "$WORK/broken" && cp "$FIXTURE"/* "$WORK/broken/"
"$PY" -c "import sys, os; p = sys.argv[1]; os.truncate(p, os.path.getsize(p) - 8)" "$WORK/broken/adapter.safetensors"
if "$AH" push "$WORK/broken" --hub "$URL" --name broken --task sentiment --subtask sst-2 2>"$WORK/broken.err"; then
    fail "a truncated adapter was published"
fi
grep -q "truncated" "$WORK/broken.err" || { cat "$WORK/broken.err" >&2; fail "the refusal does not say truncated"; }
echo "[light] a truncated upload is refused: $(tail -1 "$WORK/broken.err" | cut -c1-150)"

# Start-up figures: the fastest of five runs, and the peak memory (RSS) of one.
best() {
    "$PY" - "$@" <<'EOF'
import resource, subprocess, sys, time
times = []
for _ in range(5):
    started = time.perf_counter()
    subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
    times.append(time.perf_counter() - started)
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{min(times):.2f} s (min of 5), {rss:.0f} MB peak RSS")
EOF
}
echo "[light] adapterhub --help: $(best "$AH" --help)"
echo "[light] adapterhub search: $(best "$AH" search sst --hub "$URL")"
echo "[light] import adapterhub.hub.server.app: $(best "$PY" -c 'import adapterhub.hub.server.app')"
echo "[light] passed"
