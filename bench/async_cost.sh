#!/bin/sh
# CPU of `prof record` with and without --async on bench/tasks1000.py (1,000 sleeping
# asyncio tasks and one busy one), with and without --idle: user+sys seconds of prof,
# per 1000 samples written and per 1000 ticks. See bench/README.md.
#
# usage: bench/async_cost.sh [PYTHON] [PROF] [REPS]
set -eu
here=$(dirname "$0")
py=${1:-$(ls -d "$(pyenv root)"/versions/3.12.*/bin/python3 | head -1)}
prof=${2:-$here/../target/release/prof}
reps=${3:-3}
out=$(mktemp -d)
"$py" "$here/tasks1000.py" 600 & target=$!
trap 'kill $target 2>/dev/null; rm -rf "$out"' EXIT INT TERM
sleep 2
printf '%-16s %8s %8s %8s %10s %10s\n' flags cpu_s samples ticks cpu/1k-smp cpu/1k-tick
for rep in $(seq "$reps"); do
  for flags in "" "--async" "--idle" "--async --idle"; do
    # shellcheck disable=SC2086
    /usr/bin/time -f '%U %S' -o "$out/time" "$prof" record -p $target $flags -r 100 -d 5 \
      -f raw -o "$out/p.txt" 2>"$out/err"
    cpu=$(awk '{print $1 + $2}' "$out/time")
    samples=$(sed -n 's/^prof: \([0-9]*\) samples.*/\1/p' "$out/err")
    ticks=$(sed -n 's/.* in \([0-9.]*\)s, \([0-9.]*\) Hz achieved.*/\1 \2/p' "$out/err" | awk '{printf "%d", $1 * $2}')
    printf '%-16s %8.2f %8d %8d %10.4f %10.2f\n' "${flags:-(none)}" "$cpu" "$samples" "$ticks" \
      "$(echo "$cpu $samples" | awk '{print $2 ? 1000 * $1 / $2 : 0}')" \
      "$(echo "$cpu $ticks" | awk '{print $2 ? 1000 * $1 / $2 : 0}')"
  done
done
