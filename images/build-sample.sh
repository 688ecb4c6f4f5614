#!/usr/bin/env bash
# Recipe for images/sample.qcow2: a 64 MiB GPT-partitioned disk whose single ext4 partition
# holds a few files, stored as a compressed qcow2 (about 100 KiB). Needs no root and no loop
# device: the filesystem is built from a directory with mkfs.ext4 -d, then placed at 1 MiB.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root/etc" "$work/root/home/importer"
echo "importer-sample" > "$work/root/etc/hostname"
printf 'This disk was built by images/build-sample.sh and imported by importer.\n' \
  > "$work/root/home/importer/README"
seq 1 20000 > "$work/root/home/importer/numbers.txt"
truncate -s 64M "$work/disk.raw"
printf 'label: gpt\nstart=2048, size=126976, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n' \
  | sfdisk -q "$work/disk.raw"
truncate -s $((126976 * 512)) "$work/part.ext4"
E2FSPROGS_FAKE_TIME=1700000000 mkfs.ext4 -q -F -L sample -U 6b6c6e6f-0000-4000-8000-000000000001 \
  -E root_owner=0:0 -d "$work/root" "$work/part.ext4"
dd if="$work/part.ext4" of="$work/disk.raw" bs=1M seek=1 conv=notrunc,sparse status=none
qemu-img convert -c -f raw -O qcow2 "$work/disk.raw" sample.qcow2
sha256sum "$work/disk.raw" | cut -d' ' -f1 > sample.raw.sha256
ls -l sample.qcow2
