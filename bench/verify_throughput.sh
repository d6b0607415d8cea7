#!/usr/bin/env bash
# Throughput of `airlock bundle verify` (all cores) against single-core
# `openssl dgst -sha256` on the same data, both from page cache, in one run.
# Target (issue 2): verify >= 0.9 x (cores x single-core OpenSSL throughput).
#
# usage: bench/verify_throughput.sh PATH/TO/airlock [SIZE_GIB]   (default 4)
# Output is meant to be pasted into docs/benchmarks.md. Exits 0 whether or not
# the target is met; nonzero only if a step fails.
set -euo pipefail
export LC_ALL=C

usage="usage: $0 PATH/TO/airlock [SIZE_GIB]"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then echo "$usage" >&2; exit 2; fi
[ -x "$1" ] || { echo "not an executable: $1" >&2; exit 2; }
airlock=$(realpath "$1")
size_gib=${2:-4}
[[ "$size_gib" =~ ^[1-9][0-9]*$ ]] || { echo "SIZE_GIB must be a positive integer: $size_gib" >&2; exit 2; }
for tool in openssl python3 df awk head git; do
  command -v "$tool" > /dev/null || { echo "missing tool: $tool" >&2; exit 2; }
done
repo=$(cd "$(dirname "$0")/.." && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

bytes=$((size_gib * 1024 * 1024 * 1024))

# Disk: model.bin + bench.airlock (payload + small overhead) -> 2.2x.
need_disk_kib=$((bytes * 22 / 10 / 1024))
avail_disk_kib=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "$avail_disk_kib" -lt "$need_disk_kib" ]; then
  echo "not enough disk in $work: need $((need_disk_kib / 1048576)) GiB, have $((avail_disk_kib / 1048576)) GiB" >&2
  echo "(set TMPDIR elsewhere or pass a smaller SIZE_GIB)" >&2
  exit 2
fi
# Memory: both files must stay in page cache (2x payload) plus some headroom.
need_mem_kib=$((bytes * 22 / 10 / 1024))
avail_mem_kib=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
if [ "$avail_mem_kib" -lt "$need_mem_kib" ]; then
  echo "not enough free memory to keep both files in page cache: need $((need_mem_kib / 1048576)) GiB, MemAvailable $((avail_mem_kib / 1048576)) GiB" >&2
  echo "(pass a smaller SIZE_GIB)" >&2
  exit 2
fi

echo "generating ${size_gib} GiB of pseudo-random data in $work ..." >&2
# openssl is killed by SIGPIPE when head has enough; the size check below
# catches any real failure.
{ openssl enc -aes-128-ctr -pass pass:bench -nosalt -pbkdf2 < /dev/zero 2> /dev/null || true; } \
  | head -c "$bytes" > model.bin
got=$(stat -c %s model.bin)
[ "$got" -eq "$bytes" ] || { echo "generated $got bytes, expected $bytes" >&2; exit 1; }

echo "building bundle ..." >&2
"$airlock" bundle keygen --out k --unencrypted > /dev/null
"$airlock" bundle create --key k.key --name bench --version 1 --file other=model.bin \
  --out bench.airlock --quiet
sync   # flush dirty pages now so writeback does not compete with the timed runs
cat model.bin bench.airlock > /dev/null   # warm-up: both in page cache

# Other work on the machine skews both numbers; sample CPU use for 1 s
# (nothing of ours runs then) and report it.
busy_pct=$(python3 - <<'PY'
import time
def snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]          # total, idle + iowait
t0, i0 = snap(); time.sleep(1); t1, i1 = snap()
print(f"{100.0 * (1 - (i1 - i0) / max(t1 - t0, 1)):.0f}")
PY
)
if [ "$busy_pct" -gt 10 ]; then
  echo "warning: CPUs were ${busy_pct}% busy with other work just before timing; results will be skewed" >&2
fi

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }
best_openssl=inf
best_verify=inf
reps=3
for i in $(seq 1 "$reps"); do
  t0=$(now); openssl dgst -sha256 model.bin > /dev/null; t1=$(now)
  "$airlock" bundle verify bench.airlock --trusted k.pub --quiet; t2=$(now)
  d_ssl=$(elapsed "$t0" "$t1"); d_ver=$(elapsed "$t1" "$t2")
  echo "rep $i: openssl ${d_ssl} s, verify ${d_ver} s" >&2
  best_openssl=$(python3 -c "import sys; print(min(float(sys.argv[1]), float(sys.argv[2])))" "$best_openssl" "$d_ssl")
  best_verify=$(python3 -c "import sys; print(min(float(sys.argv[1]), float(sys.argv[2])))" "$best_verify" "$d_ver")
done

cores=$(nproc)
model=$(lscpu 2> /dev/null | sed -n 's/^Model name: *//p' | head -1)
commit=$(git -C "$repo" rev-parse --short HEAD 2> /dev/null || echo unknown)
dirty=""
if [ "$commit" != unknown ] && ! git -C "$repo" diff --quiet HEAD 2> /dev/null; then dirty=" (working tree modified)"; fi

echo "## verify throughput ($(date -u +%Y-%m-%d))"
echo
echo "- commit: \`${commit}\`${dirty}"
echo "- cpu: ${model:-unknown}"
echo "- cores (nproc): ${cores}"
echo "- kernel: $(uname -r)"
echo "- openssl: $(openssl version)"
echo "- other CPU use just before timing: ${busy_pct}% of all cores"
echo "- data: ${size_gib} GiB pseudo-random, from page cache, best of ${reps} interleaved runs"
echo
python3 - "$bytes" "$best_openssl" "$best_verify" "$cores" <<'PY'
import sys
n, t_ssl, t_ver, cores = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ssl = n / t_ssl / 1e9          # GB/s, 1 GB = 1e9 bytes
ver = n / t_ver / 1e9
target = 0.9 * cores * ssl
ratio = ver / (cores * ssl)
verdict = "PASS" if ratio >= 0.9 else "BELOW TARGET"
rows = [
    ("bytes", f"{n}"),
    ("openssl dgst -sha256, 1 core", f"{ssl:.3f} GB/s ({t_ssl:.3f} s)"),
    ("airlock bundle verify, all cores", f"{ver:.3f} GB/s ({t_ver:.3f} s)"),
    ("cores", f"{cores}"),
    ("target = 0.9 x cores x openssl", f"{target:.3f} GB/s"),
    ("ratio = verify / (cores x openssl)", f"{ratio:.3f}"),
    ("result", verdict),
]
w = max(len(k) for k, _ in rows)
v = max(len(x) for _, x in rows)
print(f"| {'metric'.ljust(w)} | {'value'.ljust(v)} |")
print(f"|{'-' * (w + 2)}|{'-' * (v + 2)}|")
for k, x in rows:
    print(f"| {k.ljust(w)} | {x.ljust(v)} |")
PY
