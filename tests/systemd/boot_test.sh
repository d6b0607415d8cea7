#!/usr/bin/env bash
# airlockd under a running systemd (issue 6): boots a Debian chroot that has
# the `airlock` package installed as a container (systemd-nspawn --boot) and
# manages the packaged unit with systemctl, as an operator would:
#   - start: Type=notify, active only once the model is loaded (READY=1);
#     the API answers on the configured address;
#   - the live process runs as `airlock`, with no capabilities, no new
#     privileges and a seccomp filter;
#   - IPAddressDeny=any / IPAddressAllow=localhost is in force: a process in
#     the service's cgroup cannot reach a non-loopback address that answers
#     everyone else, and can reach localhost;
#   - WATCHDOG=1 pings arrive (WatchdogSec=3 drop-in; the service lives on);
#   - `systemctl reload` picks up a newly imported bundle version;
#   - `systemctl stop` drains and exits 0;
#   - socket activation with the PrivateNetwork=yes drop-in: the first
#     connection starts the service, which answers on systemd's socket from a
#     network namespace of its own;
#   - a tampered bundle is refused at start, with the reason in the journal,
#     and the unit is left failed (exit 65), not restarted;
#   - the nvidia-gpu.conf drop-in does not stop a machine without GPUs;
#   - the maintainer scripts with a running systemd: an upgrade restarts a
#     running airlockd, a removal stops it, installing again enables it
#     without starting it;
#   - `systemd-analyze security` of the live unit stays at or below 1.5.
# The chroot's state is left as found, but for journal files and a machine id
# (/var/lib/airlock keeps the test's bundles and keys; later steps of the
# install test remove it).
# usage: boot_test.sh CHROOT BUILD_PKG_DIR
set -euo pipefail
root=$(cd "$1" && pwd)
build=$(cd "$2" && pwd)
src=$(cd "$(dirname "$0")/../.." && pwd)
for tool in systemd-nspawn nsenter curl python3; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool not installed (scripts/setup --packaging)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/airlock-boot-test-XXXXXX)
nspawn_pid=
listener_pid=
leader=
step() { printf '\n== boot: %s\n' "$*"; }
fail() {
  echo "FAIL: $*" >&2
  if [ -n "$leader" ]; then
    echo "--- journal of airlockd (last 40 lines)" >&2
    in_ct journalctl -u airlockd -u airlockd.socket --no-pager -n 40 >&2 || true
  fi
  exit 1
}
stop_container() {  # powers the container off; nspawn is killed if it has not exited within 30 s
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    if [ -n "$leader" ]; then nsenter -t "$leader" -a systemctl poweroff 2>/dev/null || true; fi
    for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  nspawn_pid=
  leader=
  return 0
}
cleanup() {
  [ -n "$listener_pid" ] && kill "$listener_pid" 2>/dev/null
  stop_container
  rm -rf "$work" "$root/srv/boot-test"
  rm -rf "$root/etc/systemd/system/airlockd.service.d" "$root/etc/systemd/system/airlockd.socket.d"
  return 0
}
trap cleanup EXIT
in_root() { chroot "$root" /usr/bin/env "$@"; }    # before boot: the chroot, no systemd running
in_ct() { nsenter -t "$leader" -a "$@"; }         # after boot: inside the container
journal_has() {  # journal_has PATTERN [journalctl match...]: this boot's airlockd log has PATTERN
  local pattern=$1 log; shift
  log=$(in_ct journalctl -b --no-pager -o cat -u airlockd "$@") && grep -q -- "$pattern" <<< "$log"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

step "a model, two signed bundle versions, a trusted key and an API key (made as an operator would)"
model="$src/../shared/models/stories260K.gguf"
if [ ! -f "$model" ]; then
  echo "no ../shared/models/stories260K.gguf: a generated model serves (random text)"
  "$build/tools/airlock-gen-model" "$work/generated.gguf" >/dev/null
  model="$work/generated.gguf"
fi
airlock="$build/bundler/airlock"
(cd "$work" && "$airlock" bundle keygen --out signer --unencrypted >/dev/null)
for v in 1 2; do
  "$airlock" bundle create --key "$work/signer.key" --name boottest --version $v --llm "$model" \
    --out "$work/boottest-$v.airlock" >/dev/null
done
mkdir -p "$root/srv/boot-test"
cp "$work"/boottest-*.airlock "$root/srv/boot-test/"
chmod 0755 "$root/srv/boot-test"; chmod 0644 "$root"/srv/boot-test/*
install -m 0644 "$work/signer.pub" "$root/etc/airlock/trusted.d/boot-test.pub"
# As docs/install.md says: root imports (the store is root's, group airlock
# reads it) and creates keys (handed to airlock, who owns the state).
in_root airlock bundle import /srv/boot-test/boottest-1.airlock \
  --store /var/lib/airlock/bundles --trusted /etc/airlock/trusted.d --quiet
in_root runuser -u airlock -- touch /var/lib/airlock/bundles/x 2>/dev/null && fail "airlock can write the store"
for f in state.db boottest/1/manifest.json; do
  [ "$(in_root stat -c %U:%G:%a "/var/lib/airlock/bundles/$f")" = root:airlock:640 ] || fail "$f is not root:airlock, 0640"
done
api_key=$(in_root airlock keys create --name boot-test --state /var/lib/airlock)
[ "$(in_root stat -c %U /var/lib/airlock/airlock-state.db)" = airlock ] || fail "the state database is not airlock's"
[ -n "$api_key" ] || fail "no API key printed"
port=$(free_port)
cp "$root/etc/airlock/airlockd.toml" "$work/airlockd.toml.orig"
sed -i "s|^listen = .*|listen = \"127.0.0.1:$port\"|; s|^threads = .*|threads = 1|" "$root/etc/airlock/airlockd.toml"
grep -q "^listen = \"127.0.0.1:$port\"" "$root/etc/airlock/airlockd.toml" || fail "could not set listen"
auth=(-H "Authorization: Bearer $api_key")

step "boot the chroot with systemd-nspawn"
# The container shares the host's network, so the API is reachable from
# here. systemd needs cgroup v2 and the bpf() system call for IPAddressDeny=;
# nspawn withholds both by default (and this host mounts cgroups hybrid), so
# ask for them: without them the unit's IP access list would silently do
# nothing and the egress check below would fail.
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn -D "$root" --boot --register=no --keep-unit \
  --machine airlock-boot-test --capability=all --system-call-filter=bpf --console=pipe \
  > "$work/console.log" 2>&1 < /dev/null &
nspawn_pid=$!
for _ in $(seq 100); do
  leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
  leader=
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log"; fail "systemd-nspawn exited"; }
  sleep 0.2
done
[ -n "$leader" ] || { cat "$work/console.log"; fail "no systemd in the container"; }
# systemctl needs the manager's private socket, which systemd makes a moment
# after it starts: until then `is-system-running --wait` fails at once
# ("Failed to connect to bus"), so wait for the socket first.
for _ in $(seq 300); do
  [ -S "/proc/$leader/root/run/systemd/private" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$work/console.log"; fail "systemd-nspawn exited"; }
  sleep 0.2
done
state=$(timeout 120 nsenter -t "$leader" -a systemctl is-system-running --wait || true)
echo "system state: $state"
case "$state" in running|degraded) ;; *) cat "$work/console.log"; fail "container did not boot ($state)";; esac
in_ct systemctl --version | head -1

step "systemctl start airlockd: Type=notify, active once the model is loaded"
[ "$(in_ct systemctl is-enabled airlockd)" = enabled ] || fail "airlockd not enabled by the package"
in_ct systemctl start airlockd || fail "systemctl start airlockd"
[ "$(in_ct systemctl is-active airlockd)" = active ] || fail "airlockd not active"
[ "$(in_ct systemctl show -p StatusText --value airlockd)" = serving ] || fail "no STATUS=serving"
curl -sf "http://127.0.0.1:$port/health" >/dev/null || fail "/health"
curl -sf "${auth[@]}" "http://127.0.0.1:$port/ready" >/dev/null || fail "/ready"
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/models")" = 401 ] || fail "no 401 without a key"
models=$(curl -sf "${auth[@]}" "http://127.0.0.1:$port/v1/models") || fail "/v1/models"
grep -q '"id":"boottest"' <<< "$models" || fail "/v1/models: $models"
answer=$(curl -sf "${auth[@]}" -H 'Content-Type: application/json' "http://127.0.0.1:$port/v1/completions" \
  -d '{"model":"boottest","prompt":"Once upon a time","max_tokens":8}') || fail "completion"
grep -q '"finish_reason":"length"' <<< "$answer" || fail "completion: $answer"
echo "active; /health, /ready, /v1/models and a completion answer on 127.0.0.1:$port"

step "the live process: user airlock, no capabilities, no new privileges, seccomp"
pid=$(in_ct systemctl show -p MainPID --value airlockd)
status=$(in_ct cat "/proc/$pid/status")
uid=$(in_ct id -u airlock)
grep -qP "^Uid:\t$uid\t$uid\t$uid\t$uid$" <<< "$status" || fail "not running as airlock: $(grep ^Uid <<< "$status")"
grep -qP '^CapEff:\t0{16}$' <<< "$status" || fail "capabilities: $(grep ^Cap <<< "$status")"
grep -qP '^CapBnd:\t0{16}$' <<< "$status" || fail "bounding set: $(grep ^CapBnd <<< "$status")"
grep -qP '^NoNewPrivs:\t1$' <<< "$status" || fail "NoNewPrivs not set"
grep -qP '^Seccomp:\t2$' <<< "$status" || fail "no seccomp filter"
in_ct awk '$5 == "/" && $6 ~ /^ro(,|$)/ {ro = 1} END {exit !ro}' "/proc/$pid/mountinfo" || fail "/ is writable to airlockd (ProtectSystem=strict)"
echo "uid $uid, CapEff 0, CapBnd 0, NoNewPrivs 1, Seccomp 2, / read-only"

step "connection threads: SCHED_BATCH while waiting for tokens, a short slice while reading (the unit's filter lets airlockd set both)"
# A connection thread turns to SCHED_BATCH once its request is submitted
# (the completion above) and back to the default once the answer is
# written; a refused sched_setscheduler is logged. Idle now, every
# airlock-http thread is back under SCHED_OTHER (0). /proc/PID/task/TID/stat:
# field 41 is the policy; fields counted after the name's closing
# parenthesis, where field 3 begins.
if journal_has "keep the default scheduling policy"; then fail "airlockd could not set SCHED_BATCH under the unit"; fi
# The short time slice for reading requests goes through sched_getattr and
# sched_setattr, which the unit's filter must let through as well.
if journal_has "read requests with the default time slice"; then fail "airlockd could not set its reading slice under the unit"; fi
# sched_setattr is allowed because no priority can be raised through it:
# no capability (above), and real-time priority and nice limits of 0.
limits=$(in_ct cat "/proc/$pid/limits")
grep -qP '^Max nice priority\s+0\s+0\s*$' <<< "$limits" || fail "RLIMIT_NICE: $(grep 'nice' <<< "$limits")"
grep -qP '^Max realtime priority\s+0\s+0\s*$' <<< "$limits" || fail "RLIMIT_RTPRIO: $(grep 'realtime priority' <<< "$limits")"
echo "RLIMIT_NICE 0, RLIMIT_RTPRIO 0"
policies=$(in_ct bash -c 'for t in /proc/$1/task/*; do
  [ "$(cat "$t/comm" 2>/dev/null)" = airlock-http ] || continue
  sed "s/.*) //" "$t/stat" | awk "{print \$39}"
done' _ "$pid" | sort | uniq -c)
grep -qP '^\s*[0-9]+ 0$' <<< "$policies" || fail "no airlock-http thread: $policies"
[ "$(grep -cvP '^\s*[0-9]+ 0$' <<< "$policies")" = 0 ] || fail "idle airlock-http threads not back under SCHED_OTHER: $policies"
echo "idle airlock-http threads (count, policy): $(tr -s ' \n' ' ' <<< "$policies")"

step "IPAddressDeny=any, IPAddressAllow=localhost: in force on the service's cgroup"
# A listener on every address of this host; the probe runs in airlockd's
# own cgroup, where the unit's BPF access list applies to every process.
outside=$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}')
if [ -z "$outside" ]; then
  echo "SKIP: this host has no non-loopback IPv4 address to try"
else
  lport=$(free_port)
  python3 - "$lport" > "$work/listener.log" 2>&1 <<'EOF' &
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
while True:
    c, a = s.accept()
    c.close()
EOF
  listener_pid=$!
  sleep 0.5
  cg=$(in_ct systemctl show -p ControlGroup --value airlockd)
  probe() {  # probe CGROUP ADDRESS: connect from a process in CGROUP; exit status of the connect
    in_ct bash -c 'echo $$ > "/sys/fs/cgroup$1/cgroup.procs" && exec timeout 3 bash -c "exec 3<>/dev/tcp/$2/$3"' \
      _ "$1" "$2" "$lport" 2>/dev/null
  }
  control() { in_ct timeout 3 bash -c 'exec 3<>/dev/tcp/$1/$2' _ "$1" "$lport" 2>/dev/null; }
  control "$outside" || fail "control: $outside:$lport not reachable outside airlockd's cgroup"
  probe "$cg" 127.0.0.1 || fail "localhost not reachable from airlockd's cgroup"
  if probe "$cg" "$outside"; then fail "airlockd's cgroup reached $outside:$lport"; fi
  echo "from airlockd's cgroup: 127.0.0.1 reachable, $outside refused (reachable from outside it)"
fi

step "WATCHDOG=1 pings (WatchdogSec=3 drop-in)"
mkdir -p "$root/etc/systemd/system/airlockd.service.d"
printf "[Service]\nWatchdogSec=3\n" > "$root/etc/systemd/system/airlockd.service.d/boot-test-watchdog.conf"
in_ct systemctl daemon-reload
in_ct systemctl restart airlockd || fail "restart with WatchdogSec=3"
first=$(in_ct systemctl show -p WatchdogTimestampMonotonic --value airlockd)
sleep 7
[ "$(in_ct systemctl is-active airlockd)" = active ] || fail "killed by the watchdog"
last=$(in_ct systemctl show -p WatchdogTimestampMonotonic --value airlockd)
[ "$last" -gt "$first" ] || fail "no WATCHDOG=1 within 7 s ($first -> $last)"
[ "$(in_ct systemctl show -p NRestarts --value airlockd)" = 0 ] || fail "restarted"
echo "watchdog timestamp advanced by $(((last - first) / 1000)) ms; still active, no restarts"
rm "$root/etc/systemd/system/airlockd.service.d/boot-test-watchdog.conf"
in_ct systemctl daemon-reload

step "the bundle store is read-only to the service"
pid=$(in_ct systemctl show -p MainPID --value airlockd)
mnt=$(in_ct awk '$5 == "/var/lib/airlock/bundles" {print $6}' "/proc/$pid/mountinfo" | tail -1)
case ",$mnt," in *,ro,*) ;; *) fail "/var/lib/airlock/bundles is mounted '$mnt' for airlockd, not read-only" ;; esac
echo "/var/lib/airlock/bundles in airlockd's mount namespace: $mnt"

step "systemctl reload: a newly imported version is served"
in_ct airlock bundle import /srv/boot-test/boottest-2.airlock \
  --store /var/lib/airlock/bundles --trusted /etc/airlock/trusted.d --quiet
in_ct systemctl reload airlockd || fail "systemctl reload"
# ExecReload (kill -HUP) returns before airlockd has said RELOADING=1, so
# the unit may pass through "reloading" until its READY=1: wait that out.
for _ in $(seq 1 60); do
  state=$(in_ct systemctl is-active airlockd || true)
  [ "$state" = reloading ] || break
  sleep 0.5
done
[ "$state" = active ] || fail "not active after reload ($state)"
# ExecReload= only sends SIGHUP; the reload itself is bracketed by
# RELOADING=1 ... READY=1, so wait for its outcome in the journal.
for _ in $(seq 100); do journal_has "now serving boottest version 2" && break; sleep 0.1; done
journal_has "now serving boottest version 2" || fail "version 2 not loaded on reload"
curl -sf "${auth[@]}" "http://127.0.0.1:$port/v1/models" >/dev/null || fail "/v1/models after reload"
echo "reloaded: now serving boottest version 2"

step "systemctl stop: drains, exits 0"
pid=$(in_ct systemctl show -p MainPID --value airlockd)
in_ct systemctl stop airlockd
[ "$(in_ct systemctl show -p Result --value airlockd)" = success ] || fail "stop result"
[ "$(in_ct systemctl show -p ExecMainStatus --value airlockd)" = 0 ] || fail "exit status"
journal_has "SIGTERM: draining" "_PID=$pid" || fail "no drain on SIGTERM"
curl -s -o /dev/null "http://127.0.0.1:$port/health" && fail "still listening after stop"
echo "stopped: result success, exit status 0"

step "a tampered bundle is refused at start, with the reason in the journal"
gguf=$(ls "$root"/var/lib/airlock/bundles/boottest/2/*.gguf)
cp "$gguf" "$work/intact.gguf"
size=$(stat -c %s "$gguf")
printf '\x5a' | dd of="$gguf" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "$gguf" "$work/intact.gguf" && printf '\xa5' | dd of="$gguf" bs=1 seek=$((size / 2)) conv=notrunc status=none
if in_ct systemctl start airlockd 2>/dev/null; then fail "started on a tampered bundle"; fi
journal_has "no model loaded" || fail "no reason logged for the refusal"
in_ct journalctl -b -u airlockd --no-pager -o cat | grep "no model loaded" | tail -1
# Exit 65 and RestartPreventExitStatus: failed for good, no retry after
# RestartSec (5 s).
sleep 7
state=$(in_ct systemctl show -p ActiveState,ExecMainStatus,NRestarts airlockd | sort | tr '\n' ' ')
[ "$state" = "ActiveState=failed ExecMainStatus=65 NRestarts=0 " ] || fail "after the refusal: $state"
echo "refused and left failed: $state"
in_ct systemctl reset-failed airlockd || true
cat "$work/intact.gguf" > "$gguf"   # the same file again (owner and mode kept)

step "socket activation with PrivateNetwork=yes (private-network.conf)"
sport=$(free_port)
mkdir -p "$root/etc/systemd/system/airlockd.socket.d"
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:%s\n' "$sport" \
  > "$root/etc/systemd/system/airlockd.socket.d/boot-test-port.conf"
cp "$root/usr/share/airlock/systemd/private-network.conf" "$root/etc/systemd/system/airlockd.service.d/"
in_ct systemctl daemon-reload
in_ct systemctl start airlockd.socket || fail "start airlockd.socket"
[ "$(in_ct systemctl is-active airlockd)" = inactive ] || fail "service started before a connection"
curl -sf --max-time 120 "http://127.0.0.1:$sport/health" >/dev/null || fail "/health through the socket"
[ "$(in_ct systemctl is-active airlockd)" = active ] || fail "not started by the connection"
curl -sf "${auth[@]}" "http://127.0.0.1:$sport/v1/models" >/dev/null || fail "/v1/models through the socket"
pid=$(in_ct systemctl show -p MainPID --value airlockd)
[ "$(in_ct readlink "/proc/$pid/ns/net")" != "$(in_ct readlink /proc/1/ns/net)" ] || fail "not in a network namespace of its own"
ifaces=$(in_ct awk -F: 'NR > 2 {gsub(/ /, "", $1); print $1}' "/proc/$pid/net/dev" | tr '\n' ' ')
[ "$ifaces" = "lo " ] || fail "interfaces in airlockd's namespace: $ifaces"
journal_has "serving on the socket passed by systemd" "_PID=$pid" || fail "did not serve on systemd's socket"
in_ct systemctl stop airlockd.socket airlockd
echo "started by the first connection; served from a namespace with only: $ifaces"
rm "$root/etc/systemd/system/airlockd.service.d/private-network.conf" \
  "$root/etc/systemd/system/airlockd.socket.d/boot-test-port.conf"

step "nvidia-gpu.conf on a machine without GPUs"
cp "$root/usr/share/airlock/systemd/nvidia-gpu.conf" "$root/etc/systemd/system/airlockd.service.d/"
in_ct systemctl daemon-reload
in_ct systemctl start airlockd || fail "start with nvidia-gpu.conf"
curl -sf "${auth[@]}" "http://127.0.0.1:$port/ready" >/dev/null || fail "/ready with nvidia-gpu.conf"
in_ct systemctl stop airlockd
rm "$root/etc/systemd/system/airlockd.service.d/nvidia-gpu.conf"
in_ct systemctl daemon-reload
echo "started and served with the drop-in (CPU fallback)"

step "upgrading while airlockd runs restarts it on the new binary (postinst)"
apt_ct() { in_ct env DEBIAN_FRONTEND=noninteractive apt-get -y -q "$@" > "$work/apt.log" 2>&1 || {
  cat "$work/apt.log"; fail "apt-get $*"; }; }
in_ct systemctl start airlockd || fail "start before the upgrade"
before=$(in_ct systemctl show -p MainPID --value airlockd)
apt_ct install --reinstall airlock   # dpkg runs the maintainer scripts as for an upgrade
after=$(in_ct systemctl show -p MainPID --value airlockd)
[ "$(in_ct systemctl is-active airlockd)" = active ] || fail "not active after the upgrade"
[ "$after" != "$before" ] || fail "not restarted by the upgrade (MainPID $before)"
curl -sf "${auth[@]}" "http://127.0.0.1:$port/ready" >/dev/null || fail "/ready after the upgrade"
echo "restarted: MainPID $before -> $after, ready"

step "removing while airlockd runs stops and disables it (prerm); installing again leaves it enabled, stopped"
apt_ct remove airlock
[ ! -e "$root/usr/sbin/airlockd" ] || fail "airlockd left after remove"
if in_ct pgrep -x airlockd >/dev/null; then fail "airlockd still running after remove"; fi
if curl -s -o /dev/null "http://127.0.0.1:$port/health"; then fail "still listening after remove"; fi
apt_ct install airlock
[ "$(in_ct systemctl is-enabled airlockd)" = enabled ] || fail "not enabled after installing again"
[ "$(in_ct systemctl is-active airlockd)" = inactive ] || fail "started by installing again"
echo "removed: stopped, nothing listening; installed again: enabled, not started"

step "systemd-analyze security of the live unit (threshold 1.5)"
in_ct systemd-analyze security --threshold=15 --no-pager airlockd.service | tail -1 ||
  fail "exposure above 1.5"

stop_container
cp "$work/airlockd.toml.orig" "$root/etc/airlock/airlockd.toml"
rm -f "$root/etc/airlock/trusted.d/boot-test.pub"
echo
echo "OK: airlockd ran, reloaded, drained and was socket-activated under systemd"
