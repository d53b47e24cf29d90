#!/usr/bin/env bash
# What the ARM check (deploy/arm_check.py, run by the slow test) needs on a Debian 12 CI host: mmdebstrap,
# binfmt-support, qemu-user-static from bookworm-backports (qemu 10.0: onnxruntime 1.32's aarch64 build segfaults
# under bookworm's own qemu 7.2, tflite-runtime runs under both), binfmt_misc mounted, qemu-aarch64 registered.
# Never fatal: where binfmt_misc cannot be mounted the slow ARM test says so and is skipped.
set -uo pipefail
[ "$(id -u)" = 0 ] || { echo "arm64 host setup: not root, skipped (the ARM test will say why it skips)"; exit 0; }
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
if [ "${VERSION_CODENAME:-}" = bookworm ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
  echo "deb http://deb.debian.org/debian bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
fi
apt-get update -qq
apt-get install -y -qq mmdebstrap binfmt-support >/dev/null
apt-get install -y -qq -t bookworm-backports qemu-user-static >/dev/null 2>&1 || {
  echo "arm64 host setup: no qemu from bookworm-backports; the distribution's qemu may crash onnxruntime"
  apt-get install -y -qq qemu-user-static >/dev/null; }
[ -e /proc/sys/fs/binfmt_misc/status ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc \
  || echo "arm64 host setup: binfmt_misc cannot be mounted here"
# re-register so the kernel holds the qemu just installed (binfmt's F flag opens the file at registration)
update-binfmts --disable qemu-aarch64 >/dev/null 2>&1
if ! update-binfmts --enable qemu-aarch64 2>/dev/null; then
  # qemu 10 (qemu-user-binfmt) ships its registration for systemd-binfmt only; without systemd, write it ourselves
  conf=/usr/lib/binfmt.d/qemu-aarch64.conf
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
  if [ -r "$conf" ] && [ -w /proc/sys/fs/binfmt_misc/register ]; then
    grep -v '^#' "$conf" | head -1 > /proc/sys/fs/binfmt_misc/register \
      || echo "arm64 host setup: could not register qemu-aarch64 from $conf"
  else
    echo "arm64 host setup: qemu-aarch64 is not registered (no $conf or no binfmt_misc)"
  fi
fi
echo "arm64 host setup: $(qemu-aarch64-static --version 2>/dev/null | head -1)"
