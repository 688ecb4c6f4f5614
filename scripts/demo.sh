#!/usr/bin/env bash
# Sets everything up, serves the bundled sample disk (images/sample.qcow2) from a local nginx,
# imports it over HTTP into a file with importer, and verifies the result: the raw disk's
# SHA-256, its partition table, and a file read from the ext4 partition inside it.
# Usage: scripts/demo.sh [DEST]   (default /tmp/importer-demo/disk.img)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"
dest=${1:-/tmp/importer-demo/disk.img}
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d)
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/tmp"
cat > "$work/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root root;" )
worker_processes 1;
pid $work/nginx.pid;
error_log $work/error.log warn;
events { worker_connections 64; }
http {
    access_log $work/access.log;
    client_body_temp_path $work/tmp; proxy_temp_path $work/tmp; fastcgi_temp_path $work/tmp;
    uwsgi_temp_path $work/tmp; scgi_temp_path $work/tmp;
    default_type application/octet-stream;
    server { listen 127.0.0.1:$port; root $PWD/images; }
}
CONF
nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log"
trap 'nginx -c "$work/nginx.conf" -p "$work" -e "$work/error.log" -s stop 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done

url="http://127.0.0.1:$port/sample.qcow2"
echo "== importer inspect $url"
.venv/bin/importer inspect "$url"
echo "== importer import $url $dest"
# the default DEST is the demo's own file, replaced on every run; a DEST you name is not
# overwritten without your --force (importer refuses an existing file or a used device)
force=()
[ -z "${1:-}" ] && force=(--force)
.venv/bin/importer import "$url" "$dest" -v "${force[@]}"
echo "== verifying $dest"
want=$(cat images/sample.raw.sha256)
got=$(sha256sum "$dest" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "FAIL: sha256 $got, expected $want" >&2; exit 1; }
echo "sha256 matches the recipe's raw disk: $got"
sfdisk -l "$dest" | sed -n '1,/^$/p;/^Device/,$p'
dd if="$dest" of="$work/part.ext4" bs=1M skip=1 count=62 status=none
printf 'file /etc/hostname in the ext4 partition: '
debugfs -R 'cat /etc/hostname' "$work/part.ext4" 2>/dev/null
echo "demo: OK"
