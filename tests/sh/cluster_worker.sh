#!/usr/bin/env bash
# spk-worker end to end against an independent driver written here in Python from the protocol
# description (lib/cluster/proto.h, lib/cluster/join.c): handshake bytes, HMAC proofs, session
# keys and sealed frames (protocol 2: the driver here checks the tag of every frame the worker
# sends after the handshake), version exchange, commands, heartbeats, SHUTDOWN; short keys. Also the CLI: usage errors, exit codes by status.
# Usage: cluster_worker.sh BUILD_DIR SOURCE_DIR
set -u
B=${1:?build dir}
S=${2:?source dir}
W="$B/examples/spk-worker"
[ -x "$W" ] || { echo "SKIP: $W not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 77; }

TMP=$(mktemp -d)
DRV_PID=
cleanup() {
    [ -n "$DRV_PID" ] && kill "$DRV_PID" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

maj=$(sed -n 's/^#define SPK_VERSION_MAJOR \([0-9]*\).*/\1/p' "$S/include/sparkinfer/sparkinfer.h")
min=$(sed -n 's/^#define SPK_VERSION_MINOR \([0-9]*\).*/\1/p' "$S/include/sparkinfer/sparkinfer.h")
pat=$(sed -n 's/^#define SPK_VERSION_PATCH \([0-9]*\).*/\1/p' "$S/include/sparkinfer/sparkinfer.h")
LIBVER=$((maj * 10000 + min * 100 + pat))

cat >"$TMP/driver.py" <<'EOF'
import hashlib, hmac, os, socket, struct, sys, time
mode, port, key, libver, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4]), sys.argv[5]
MAGIC, PROTO, SEALED = 0x434B5053, 2, 0x80000000
seq = 0
tx_key = rx_key = None                                         # session keys once proven
def send(s, t, payload=b'', flags=0):
    global seq
    seq += 1
    if tx_key is None:
        s.sendall(struct.pack('<IHHIIQ', MAGIC, PROTO, t, flags, len(payload), seq) + payload)
        return
    f = struct.pack('<IHHIIQ', MAGIC, PROTO, t, flags | SEALED, len(payload) + 16, seq) + payload
    s.sendall(f + hashlib.blake2b(f, key=tx_key, digest_size=16).digest())
def recv_exact(s, n):
    b = b''
    while len(b) < n:
        k = s.recv(n - len(b))
        if not k:
            raise EOFError
        b += k
    return b
def recv(s):
    hdr = recv_exact(s, 24)
    magic, ver, t, flags, ln, sq = struct.unpack('<IHHIIQ', hdr)
    assert magic == MAGIC and ver == PROTO, (hex(magic), ver)
    p = recv_exact(s, ln)
    if rx_key is not None:
        assert flags & SEALED, 'unsealed frame after the handshake'
        tag = hashlib.blake2b(hdr + p[:-16], key=rx_key, digest_size=16).digest()
        assert hmac.compare_digest(tag, p[-16:]), 'frame %d failed its tag check' % sq
        p, flags = p[:-16], flags & ~SEALED
    return t, flags, sq, p
def mac(label, nd, nw, rank, world):                           # HS(label), join.c
    h = hmac.new(key, digestmod=hashlib.sha256)
    h.update(label + b'\0'); h.update(nd); h.update(session); h.update(nw)
    h.update(struct.pack('<II', rank, world))
    return h.digest()
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(('127.0.0.1', port)); ls.listen(4)
open(ready, 'w').close()
s, _ = ls.accept()
nd, session = os.urandom(32), os.urandom(32)
send(s, 1, nd + session, flags=1)                              # CHALLENGE
t, flags, sq, p = recv(s)
assert t == 2 and sq == 1 and len(p) == 72                     # HELLO
rank, world = struct.unpack('<II', p[:8]); nw, mw = p[8:40], p[40:72]
if not hmac.compare_digest(mw, mac(b'spk2-hello', nd, nw, rank, world)):
    msg = b'authentication failed'
    send(s, 7, struct.pack('<IIH', 8, 0xFFFFFFFF, len(msg)) + msg)  # ERROR AUTH
    sys.exit(0 if mode == 'badkey' else 3)
assert mode != 'badkey', 'worker with the wrong key passed the HMAC check'
md = bytearray(mac(b'spk2-response', nd, nw, rank, world))
if mode == 'badresponse':
    md[0] ^= 1
send(s, 3, bytes(md))                                          # RESPONSE
tx_key, rx_key = mac(b'spk2-key-d2w', nd, nw, rank, world), mac(b'spk2-key-w2d', nd, nw, rank, world)
send(s, 4, struct.pack('<II', libver, PROTO))                  # VERSION (sealed from here on)
if mode == 'badresponse':
    try:
        while True:
            recv(s)
    except (EOFError, ConnectionError):
        sys.exit(0)
t, _, sq, p = recv(s)
assert t == 4 and sq == 2
wl, wp = struct.unpack('<II', p[:8])
if mode == 'version':
    sys.exit(0 if (wl, wp) != (libver, PROTO) else 4)
assert (wl, wp) == (libver, PROTO), (wl, wp)
send(s, 9, struct.pack('<I', 0))                               # start BARRIER
if mode == 'die':
    s.close(); sys.exit(0)
if mode == 'silent':
    time.sleep(2.5); sys.exit(0)
send(s, 10, struct.pack('<II', 0, 1) + b'hello')               # COMMAND ping
send(s, 10, struct.pack('<II', 4242, 2))                       # COMMAND without a handler
replies, beats, t0 = {}, 0, time.time()
while len(replies) < 2 or time.time() - t0 < 0.7:
    t, _, sq, p = recv(s)
    if t == 5:
        beats += 1
    elif t == 11:
        rid, st, ml = struct.unpack('<IIH', p[:10])
        replies[rid] = (st, p[10:10 + ml], p[10 + ml:])
    else:
        sys.exit(5)
assert replies[1] == (0, b'', b'hello'), replies[1]
assert replies[2][0] == 5 and b'4242' in replies[2][1], replies[2]
assert beats >= 2, beats
send(s, 6)                                                     # SHUTDOWN
s.settimeout(3)
try:
    while True:
        recv(s)
except EOFError:
    sys.exit(0)
EOF

fails=0
check() { # name expected actual
    if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: expected $2, got $3"; fails=$((fails + 1)); fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
KEY=sekrit-cluster-key-0123456789
printf '%s\n' "$KEY" >"$TMP/key"
printf 'other-cluster-key-0123456789\n' >"$TMP/badkey"
printf 'short\n' >"$TMP/shortkey"

# driver MODE KEY [worker args...]: run the Python driver and one spk-worker against it.
run_pair() {
    local mode=$1 key=$2; shift 2
    local port; port=$(free_port)
    rm -f "$TMP/ready"
    timeout 20 python3 "$TMP/driver.py" "$mode" "$port" "$key" "$LIBVER" "$TMP/ready" 2>"$TMP/drv.err" &
    DRV_PID=$!
    for _ in $(seq 100); do [ -e "$TMP/ready" ] && break; sleep 0.05; done
    local t0; t0=$(date +%s%N)
    timeout 20 "$W" --coordinator "127.0.0.1:$port" --rank 1 --world 2 --transport none \
        --heartbeat 200 --peer-timeout 1000 --connect-timeout 5000 "$@" 2>"$TMP/w.err"
    WRC=$?
    WMS=$((($(date +%s%N) - t0) / 1000000))
    wait "$DRV_PID"; DRC=$?
    DRV_PID=
}

"$W" --bogus 2>/dev/null; check "unknown option is a usage error" 64 $?
"$W" --rank x --world 2 2>/dev/null; check "bad rank is a usage error" 64 $?
"$W" --coordinator 127.0.0.1:1 --rank 1 --world 2 --key-file "$TMP/nonexistent" 2>/dev/null
check "missing key file is a usage error" 64 $?
"$W" --coordinator 127.0.0.1:1 --rank 1 --world 2 --key-file "$TMP/shortkey" 2>"$TMP/w.err"
check "short key: invalid argument (1)" 1 $?
grep -q "too short (5 bytes, at least 16)" "$TMP/w.err" || { echo "FAIL short key: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

port=$(free_port)
t0=$(date +%s%N)
timeout 20 "$W" --coordinator "127.0.0.1:$port" --rank 1 --world 2 --connect-timeout 700 2>"$TMP/w.err"
rc=$?; ms=$((($(date +%s%N) - t0) / 1000000))
check "no driver: timeout status (6)" 6 $rc
grep -q "could not join the driver" "$TMP/w.err" || { echo "FAIL message: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }
[ "$ms" -lt 3000 ] || { echo "FAIL no-driver exit took $ms ms"; fails=$((fails + 1)); }

run_pair ok "$KEY" --key-file "$TMP/key"
check "serve returns OK on SHUTDOWN (worker exit)" 0 $WRC
check "independent driver saw ping, reply, heartbeats, hang-up" 0 $DRC
grep -q "the driver closed the cluster" "$TMP/w.err" || { echo "FAIL worker said: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

SPK_CLUSTER_KEY=$KEY run_pair ok "$KEY"
check "key from SPK_CLUSTER_KEY" 0 $WRC

run_pair badkey "$KEY" --key-file "$TMP/badkey"
check "wrong key: authentication status (8)" 8 $WRC
check "driver refused the wrong key" 0 $DRC

run_pair badkey "$KEY"
check "no key: authentication status (8)" 8 $WRC
grep -q "requires a key; none is set here" "$TMP/w.err" || { echo "FAIL no-key message: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

run_pair badresponse "$KEY" --key-file "$TMP/key"
check "driver without the key is refused (8)" 8 $WRC
grep -q "failed to prove the cluster key" "$TMP/w.err" || { echo "FAIL: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

SPK_TEST_FAKE_VERSION=$((LIBVER + 1)) run_pair version "$KEY" --key-file "$TMP/key"
check "version mismatch status (9)" 9 $WRC
check "driver saw the other version" 0 $DRC
grep -q "($LIBVER)" "$TMP/w.err" && grep -q "($((LIBVER + 1)))" "$TMP/w.err" ||
    { echo "FAIL version message: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

run_pair die "$KEY" --key-file "$TMP/key"
check "driver gone: peer lost (7)" 7 $WRC
echo "     driver hang-up detected; worker exited after $WMS ms"

run_pair silent "$KEY" --key-file "$TMP/key"
check "silent driver: peer lost (7)" 7 $WRC
echo "     silent driver (peer timeout 1000 ms): worker exited after $WMS ms"
[ "$WMS" -lt 2500 ] || { echo "FAIL silent driver took $WMS ms"; fails=$((fails + 1)); }
grep -q "rank 0 (driver, 127.0.0.1:" "$TMP/w.err" || { echo "FAIL: $(cat "$TMP/w.err")"; fails=$((fails + 1)); }

[ "$fails" -eq 0 ] && echo "all spk-worker checks passed" || echo "$fails check(s) failed"
[ "$fails" -eq 0 ]
