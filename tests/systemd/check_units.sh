#!/usr/bin/env bash
# Offline checks of the systemd units and the default configuration (no
# running systemd needed):
#   systemd-analyze verify (any message on stderr fails) of airlockd.service
#   and airlockd.socket, alone and with each drop-in (private-network,
#   nvidia-gpu), systemd-analyze security --offline with an exposure
#   threshold of 1.5 (without and with each drop-in), systemctl --root enable, systemd-sysusers --root and systemd-tmpfiles --root, and
#   airlockd --check-config on the shipped airlockd.toml.
# usage: check_units.sh SOURCE_DIR AIRLOCKD
set -euo pipefail
src=$1
airlockd=$2
for tool in systemd-analyze systemctl systemd-sysusers systemd-tmpfiles; do
  command -v "$tool" >/dev/null || { echo "SKIP: $tool not installed"; exit 77; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== systemd-analyze verify"
# The unit names the installed path; verify checks that the binary exists,
# so point it at the one just built.
mkdir -p "$work/verify"
sed "s|/usr/sbin/airlockd|$airlockd|" "$src/systemd/airlockd.service" > "$work/verify/airlockd.service"
cp "$src/systemd/airlockd.socket" "$work/verify/"
systemd-analyze verify "$work/verify/airlockd.service" "$work/verify/airlockd.socket" 2> "$work/verify.err"
if [ -s "$work/verify.err" ]; then
  echo "FAIL: systemd-analyze verify printed:"; cat "$work/verify.err"; exit 1
fi
# Socket activation with the private-network drop-in, verified as installed.
mkdir -p "$work/verify-socket/airlockd.service.d"
cp "$work/verify/airlockd.service" "$work/verify/airlockd.socket" "$work/verify-socket/"
cp "$src/systemd/private-network.conf" "$work/verify-socket/airlockd.service.d/"
SYSTEMD_UNIT_PATH="$work/verify-socket:" systemd-analyze verify "$work/verify-socket/airlockd.service" \
  "$work/verify-socket/airlockd.socket" 2> "$work/verify-socket.err"
if [ -s "$work/verify-socket.err" ]; then
  echo "FAIL: systemd-analyze verify (socket activation) printed:"; cat "$work/verify-socket.err"; exit 1
fi

# The GPU drop-in, verified as installed.
mkdir -p "$work/verify-gpu/airlockd.service.d"
cp "$work/verify/airlockd.service" "$work/verify-gpu/"
cp "$src/systemd/nvidia-gpu.conf" "$work/verify-gpu/airlockd.service.d/"
SYSTEMD_UNIT_PATH="$work/verify-gpu:" systemd-analyze verify "$work/verify-gpu/airlockd.service" 2> "$work/verify-gpu.err"
if [ -s "$work/verify-gpu.err" ]; then
  echo "FAIL: systemd-analyze verify (nvidia-gpu.conf) printed:"; cat "$work/verify-gpu.err"; exit 1
fi

echo "== systemd-analyze security --offline (threshold 1.5)"
root="$work/root"
mkdir -p "$root/etc" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d" "$root/usr/sbin"
cp "$src/systemd/airlockd.service" "$root/usr/lib/systemd/system/"
cp "$airlockd" "$root/usr/sbin/airlockd"
systemd-analyze security --offline=yes --root="$root" --threshold=15 airlockd.service > "$work/security.out" 2>&1 || {
  cat "$work/security.out"; echo "FAIL: exposure above 1.5"; exit 1; }
grep "Overall exposure level" "$work/security.out"
# With the drop-in, the service has no network of its own: exposure falls.
mkdir -p "$root/etc/systemd/system/airlockd.service.d"
cp "$src/systemd/airlockd.socket" "$root/usr/lib/systemd/system/"
cp "$src/systemd/private-network.conf" "$root/etc/systemd/system/airlockd.service.d/"
systemd-analyze security --offline=yes --root="$root" --threshold=15 airlockd.service > "$work/security-socket.out" 2>&1 || {
  cat "$work/security-socket.out"; echo "FAIL: exposure above 1.5 with private-network.conf"; exit 1; }
grep -q "✓ PrivateNetwork=" "$work/security-socket.out" || {
  cat "$work/security-socket.out"; echo "FAIL: PrivateNetwork= not in effect with the drop-in"; exit 1; }
grep "Overall exposure level" "$work/security-socket.out" | sed 's/^/with private-network.conf: /'
rm -r "$root/etc/systemd/system/airlockd.service.d"
# With the GPU drop-in: the real /dev, but only the NVIDIA nodes may be opened.
mkdir -p "$root/etc/systemd/system/airlockd.service.d"
cp "$src/systemd/nvidia-gpu.conf" "$root/etc/systemd/system/airlockd.service.d/"
systemd-analyze security --offline=yes --root="$root" --threshold=15 airlockd.service > "$work/security-gpu.out" 2>&1 || {
  cat "$work/security-gpu.out"; echo "FAIL: exposure above 1.5 with nvidia-gpu.conf"; exit 1; }
grep "DeviceAllow=" "$work/security-gpu.out" | grep -q "char-nvidia-frontend:rw" || {
  cat "$work/security-gpu.out"; echo "FAIL: the NVIDIA device ACL is not in effect with nvidia-gpu.conf"; exit 1; }
grep "Overall exposure level" "$work/security-gpu.out" | sed 's/^/with nvidia-gpu.conf: /'
rm -r "$root/etc/systemd/system/airlockd.service.d"

echo "== systemctl --root enable"
systemctl --root="$root" enable airlockd.service 2>/dev/null
[ -L "$root/etc/systemd/system/multi-user.target.wants/airlockd.service" ] || { echo "FAIL: not enabled"; exit 1; }
systemctl --root="$root" enable airlockd.socket 2>/dev/null
[ -L "$root/etc/systemd/system/sockets.target.wants/airlockd.socket" ] || { echo "FAIL: socket not enabled"; exit 1; }

echo "== systemd-sysusers --root"
cp "$src/systemd/airlock.sysusers" "$root/usr/lib/sysusers.d/airlock.conf"
systemd-sysusers --root="$root" 2>/dev/null
grep -q '^airlock:x:[0-9]*:[0-9]*:.*:/var/lib/airlock:/usr/sbin/nologin$' "$root/etc/passwd" || {
  echo "FAIL: no airlock user"; cat "$root/etc/passwd"; exit 1; }
grep -q '^airlock:' "$root/etc/group" || { echo "FAIL: no airlock group"; exit 1; }

echo "== systemd-tmpfiles --root --create"
cp "$src/systemd/airlock.tmpfiles" "$root/usr/lib/tmpfiles.d/airlock.conf"
systemd-tmpfiles --root="$root" --create 2>/dev/null
for d in var/lib/airlock var/lib/airlock/bundles etc/airlock/trusted.d; do
  [ -d "$root/$d" ] || { echo "FAIL: tmpfiles did not create /$d"; exit 1; }
done
[ "$(stat -c %a "$root/var/lib/airlock")" = 750 ] || { echo "FAIL: /var/lib/airlock mode"; exit 1; }

echo "== airlockd --check-config on the shipped airlockd.toml"
"$airlockd" --check-config --config "$src/systemd/airlockd.toml"

echo "OK: units, users, directories and default configuration check out"
