#!/usr/bin/env bash
# Verify throughput of `airlock bundle verify` against single-core
# `openssl dgst -sha256` on the same data, from page cache, in one run.
# Target (issue 2): verify >= 0.9 x (cores x single-core OpenSSL throughput).
# usage: bench/verify_throughput.sh PATH/TO/airlock [SIZE_GIB]
set -euo pipefail
airlock=$(realpath "${1:?usage: $0 PATH/TO/airlock [SIZE_GIB]}")
size_gib=${2:-4}
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/airlock-bench-XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

bytes=$((size_gib * 1024 * 1024 * 1024))
need_kib=$((bytes / 1024 * 22 / 10))
avail_kib=$(df -Pk . | awk 'NR==2 {print $4}')
[ "$avail_kib" -gt "$need_kib" ] || { echo "need $((need_kib / 1048576)) GiB free in $work" >&2; exit 2; }

{ openssl enc -aes-128-ctr -pass pass:bench -nosalt -pbkdf2 < /dev/zero 2>/dev/null || true; } | head -c "$bytes" > model.bin  # openssl dies of SIGPIPE
"$airlock" bundle keygen --out k --unencrypted > /dev/null
"$airlock" bundle create --key k.key --name bench --version 1 --file other=model.bin --out bench.airlock --quiet
cat model.bin bench.airlock > /dev/null   # both in page cache

now() { date +%s.%N; }
best_openssl=999999 best_verify=999999
for _ in 1 2 3; do
  t0=$(now); openssl dgst -sha256 model.bin > /dev/null; t1=$(now)
  "$airlock" bundle verify bench.airlock --trusted k.pub --quiet; t2=$(now)
  best_openssl=$(python3 -c "print(min($best_openssl, $t1 - $t0))")
  best_verify=$(python3 -c "print(min($best_verify, $t2 - $t1))")
done
cores=$(nproc)
python3 - "$bytes" "$best_openssl" "$best_verify" "$cores" <<'PY'
import sys
n, t_ssl, t_ver, cores = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
ssl, ver = n / t_ssl / 1e9, n / t_ver / 1e9
ratio = ver / (cores * ssl)
print(f"payload bytes                 {n}")
print(f"openssl dgst -sha256 (1 core) {ssl:.2f} GB/s  ({t_ssl:.2f} s, best of 3)")
print(f"airlock bundle verify         {ver:.2f} GB/s  ({t_ver:.2f} s, best of 3)")
print(f"cores                         {cores}")
print(f"verify / (cores x openssl)    {ratio:.2f}  (target >= 0.90: {'PASS' if ratio >= 0.9 else 'BELOW TARGET'})")
PY
echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores, $(uname -r)"
echo "commit:  $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
