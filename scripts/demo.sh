#!/usr/bin/env bash
# The demo: start the stack as local processes (brainsynth up), submit a 4-subject cohort with the shipped
# demo model through the client, watch it, download and unpack the archive, stop the stack.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${DEMO_OUT:-out/demo-cohort}
DATA=${DEMO_DATA_DIR:-out/demo-stack}
PORT=${DEMO_PORT:-$($BIN/python -c 'from service.localstack import free_port; print(free_port())')}
export BRAINSYNTH_URL="http://127.0.0.1:$PORT"
export BRAINSYNTH_API_KEY="demo-$($BIN/python -c 'import secrets; print(secrets.token_hex(8))')"

rm -rf "$OUT" "$DATA"
mkdir -p "$DATA"
# The key in a 0600 file, not on the command line (where `ps` shows it to every local user).
(umask 077; echo "demo=$BRAINSYNTH_API_KEY" > "$DATA/api-keys.txt")
$BIN/brainsynth up --port "$PORT" --data-dir "$DATA" --api-key-file "$DATA/api-keys.txt" --workers 1 \
    > "$DATA/up.log" 2>&1 &
UP_PID=$!
trap 'kill -TERM $UP_PID 2>/dev/null; wait $UP_PID 2>/dev/null || true' EXIT

echo "waiting for the stack (Redis, SeaweedFS, 1 worker, API on port $PORT) ..."
ready() { $BIN/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" \
    "$BRAINSYNTH_URL/readyz" >/dev/null 2>&1; }
for _ in $(seq 1 240); do
    ready && break
    kill -0 $UP_PID 2>/dev/null || { cat "$DATA/up.log"; exit 1; }
    sleep 0.5
done
ready || { echo "the stack did not become ready"; cat "$DATA/up.log"; exit 1; }
echo "web page: $BRAINSYNTH_URL/  (sign in with the API key $BRAINSYNTH_API_KEY; API docs: $BRAINSYNTH_URL/docs)"

ID=$($BIN/brainsynth submit --model demo --n 4 --seed 7 --age-range 50 80 --name "BrainSynth demo cohort")
echo "submitted cohort $ID"
$BIN/brainsynth wait "$ID"
DATASET=$($BIN/brainsynth download "$ID" --out "$OUT")
echo
echo "demo cohort (BIDS, checked against its SHA256SUMS): $DATASET"
ls "$DATASET"
if [ -t 0 ]; then
    echo
    echo "The stack keeps running: open $BRAINSYNTH_URL/ in a browser and sign in with $BRAINSYNTH_API_KEY"
    read -r -p "to see the cohort, its previews and the form. Press Enter to stop it. " _
fi
