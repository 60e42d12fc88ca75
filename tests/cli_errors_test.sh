#!/usr/bin/env bash
# Bad input to the CLI: each case must end with exit status 1 and a one-line "error: ..." naming the fault, and
# nothing from the sanitizers (the debug build runs this same script under ASan/UBSan).
# usage: cli_errors_test.sh LONGCTX_BINARY SOURCE_DIR
set -u
bin="$1"; src="$2"
models="${LONGCTX_MODEL_DIR:-$HOME/.cache/longctx}"
smol="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
python3 "$src/tests/make_bad_gguf.py" "$tmp"
printf 'this is plain text, not a model\n' > "$tmp/text.gguf"
head -c 3000000 "$smol" > "$tmp/truncated.gguf"
: > "$tmp/empty.gguf"
failures=0

expect_error() {  # name, expected substring, command...
  local name="$1" want="$2"; shift 2
  "$@" > "$tmp/out" 2> "$tmp/err"
  local rc=$?
  # One error line; the device choice (--device auto) may come before it.
  local lines; lines=$(grep -v '^device: ' "$tmp/err" | grep -c .)
  if [ $rc -ne 1 ] || ! grep -q "^error: .*$want" "$tmp/err" || [ "$lines" -ne 1 ]; then
    echo "FAIL $name: exit $rc, $lines stderr lines, wanted one line 'error: ...$want'"; sed 's/^/    /' "$tmp/err" | head -20
    failures=$((failures + 1))
  else
    echo "ok   $name: $(cat "$tmp/err")"
  fi
}

expect_error "missing model"  "cannot open"             "$bin" info "$tmp/nope.gguf"
expect_error "missing model"  "cannot open"             "$bin" run -m "$tmp/does-not-exist.gguf" -p hi
expect_error "missing doc"    "cannot read"             "$bin" run -m "$smol" --file "$tmp/no-such-doc.txt" -p hi
expect_error "not GGUF"       "not a GGUF file"         "$bin" info "$tmp/text.gguf"
expect_error "empty file"     "not a GGUF file"         "$bin" info "$tmp/empty.gguf"
expect_error "truncated"      "truncated"               "$bin" info "$tmp/truncated.gguf"
expect_error "past the end"   "runs past the end"       "$bin" info "$tmp/past_end.gguf"
expect_error "unknown arch"   "architecture 'mamba9' is not supported" "$bin" info "$tmp/unknown_arch.gguf"
long_prompt="$(for i in $(seq 1 200); do printf 'word%d ' "$i"; done)"
expect_error "prompt > ctx"   "more than the context of 64" "$bin" run -m "$smol" -p "$long_prompt" --ctx 64 -n 4
expect_error "bad kv spec"    "unknown KV policy 'snapkvv'" "$bin" run -m "$smol" -p hi --kv snapkvv:budget=10 -n 4
expect_error "bad kv key"     "unknown key 'budgit'"   "$bin" run -m "$smol" -p hi --kv snapkv:budgit=10 -n 4
expect_error "shadowkv + ranker" "does not compose with a token policy" "$bin" run -m "$smol" -p hi --kv snapkv:budget=64+shadowkv -n 4
expect_error "plan shadowkv" "plan does not model" "$bin" plan -m "$smol" --kv shadowkv --ctx 4096
expect_error "serve shadowkv" "admission does not count" "$bin" serve -m "$smol" --kv shadowkv --port 0
expect_error "spec + evicting kv" "verifies against the full cache" "$bin" run -m "$smol" -p hi --kv snapkv:budget=64 --spec self -n 4
expect_error "spec bad gamma" "gamma must be an integer" "$bin" run -m "$smol" -p hi --spec self:gamma=0 -n 4
expect_error "spec bad draft" "ranks tokens by the attention of every decode step" "$bin" run -m "$smol" -p hi --spec self:draft=h2o:budget=64 -n 4
expect_error "spec bench synthetic" "needs a model file" "$bin" bench --synthetic tiny --spec self -n 8
# eval: each refused before any case runs.
printf 'Some text. More text.\n' > "$tmp/hay.txt"; printf ' \n\n' > "$tmp/blank.txt"
expect_error "eval task"      "unknown eval task 'needles'" "$bin" eval needles -m "$smol" --haystack "$tmp/hay.txt" -o "$tmp/r.json"
expect_error "eval length"    "beyond the model's context of 8192" "$bin" eval needle -m "$smol" --lengths 16k --haystack "$tmp/hay.txt" -o "$tmp/r.json"
expect_error "eval haystack"  "haystack '$tmp/blank.txt' is empty" "$bin" eval needle -m "$smol" --haystack "$tmp/blank.txt" -o "$tmp/r.json"
expect_error "eval output"    "cannot write the results file" "$bin" eval needle -m "$smol" --haystack "$tmp/hay.txt" -o "$tmp/no-such-dir/r.json"
expect_error "eval kv spec"   "unknown KV policy 'snapkvv'" "$bin" eval needle -m "$smol" --haystack "$tmp/hay.txt" --kv snapkvv:budget=1/4 -o "$tmp/r.json"
expect_error "eval chunk cut" "cannot cut between prefill chunks" "$bin" eval needle -m "$smol" --haystack "$tmp/hay.txt" \
    --kv snapkv:budget=1/4 --kv kvzip:budget=1/4 --kv-prefill-compress -o "$tmp/pc.json"
if [ -s "$tmp/pc.json" ]; then echo "FAIL eval chunk cut: a case ran before the refusal"; failures=$((failures + 1)); fi
expect_error "eval shadowkv chunk cut" "factorizes the whole prompt's keys" "$bin" eval needle -m "$smol" --haystack "$tmp/hay.txt" \
    --kv shadowkv --kv-prefill-compress -o "$tmp/pc2.json"

# bench: exactly one of -m and --synthetic, and a synthetic shape it knows.
expect_error "bench no model" "bench needs exactly one model" "$bin" bench -p 4 -n 4
expect_error "bench two models" "not both"              "$bin" bench -m "$smol" --synthetic tiny -p 4 -n 4
expect_error "bench bad shape" "unknown synthetic model 'llama9' (accepted: llama3-8b, tiny" "$bin" bench --synthetic llama9
expect_error "bench bad seed" "the seed must be a whole number" "$bin" bench --synthetic tiny:x1
# ... and the tiny synthetic model benchmarks with no file (well under a second).
if "$bin" bench --synthetic tiny:3 -p 16 -n 4 -r 1 -t 1 --json > "$tmp/out" 2> "$tmp/err" &&
   grep -q '"model":"synthetic tiny:3"' "$tmp/out" && [ "$(grep -c '"test":' "$tmp/out")" -eq 2 ]; then
  echo "ok   bench --synthetic tiny:3 runs"
else
  echo "FAIL bench --synthetic tiny:3: exit status or output"; sed 's/^/    /' "$tmp/err" "$tmp/out" | head -20
  failures=$((failures + 1))
fi
# stream-ppl: bad sizes, and a streaming budget that fills the context, which in-cache positions cannot pass.
printf 'In the beginning God created the heaven and the earth. %.0s' $(seq 1 40) > "$tmp/stream.txt"
expect_error "stream prefix"  "must exceed --prefix (64)" "$bin" stream-ppl -m "$smol" --text "$tmp/stream.txt" --tokens 10
expect_error "stream prefix ctx" "the 40-token prefix does not fit the context of 32" "$bin" stream-ppl -m "$smol" --text "$tmp/stream.txt" --tokens 100 --prefix 40 --ctx 32 --kv full
# calibrate-heads --method duo: a task without one answer, a missing haystack, a prompt too short.
expect_error "duo task" "needs a task with one answer" "$bin" calibrate-heads --method duo -m "$smol" -o "$tmp/roles.json" --task multivalue
expect_error "duo haystack" "cannot read the haystack" "$bin" calibrate-heads --method duo -m "$smol" -o "$tmp/roles.json" --task needle --haystack "$tmp/nope.txt"
expect_error "duo length" "too short" "$bin" calibrate-heads --method duo -m "$smol" -o "$tmp/roles.json" --length 100
# Found while reading, after the progress line: exit 1 and the error last.
"$bin" stream-ppl -m "$smol" --text "$tmp/stream.txt" --tokens 60 --prefix 8 --ctx 32 --kv streaming:budget=48 -t 2 > "$tmp/out" 2> "$tmp/err"
rc=$?
if [ $rc -eq 1 ] && tail -1 "$tmp/err" | grep -q "^error: the cache holds 32 tokens, the whole context of 32"; then
  echo "ok   stream budget: $(tail -1 "$tmp/err")"
else
  echo "FAIL stream budget: exit $rc"; sed 's/^/    /' "$tmp/err" | head -20
  failures=$((failures + 1))
fi
# -n past --ctx: the full cache stops at the context and says why; streaming goes on to -n.
expect_stop() {  # name, expected stop line, command...
  local name="$1" want="$2"; shift 2
  if "$@" > "$tmp/out" 2> "$tmp/err" && grep -qF "$want" "$tmp/err"; then
    echo "ok   $name: $want"
  else
    echo "FAIL $name: wanted '$want'"; sed 's/^/    /' "$tmp/err" | head -20
    failures=$((failures + 1))
  fi
}
expect_stop "full past ctx" "stopped: context full (--ctx) at 32 tokens; only --kv streaming goes past it" \
  "$bin" run -m "$smol" -p "In the beginning" --ctx 32 -n 48 --temp 0 --ignore-eos -t 2
expect_stop "streaming past ctx" "stopped: length limit (-n)" \
  "$bin" run -m "$smol" -p "In the beginning" --ctx 32 -n 48 --temp 0 --ignore-eos -t 2 --kv streaming:budget=16

[ $failures -eq 0 ] && echo "all bad-input cases handled" || { echo "$failures failures"; exit 1; }
