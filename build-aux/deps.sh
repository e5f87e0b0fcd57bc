#!/bin/sh
# build-aux/deps.sh - installs the Debian packages qwen3-batch builds with
# (skips what is already there) and builds the tree into ./build.
# Used by examples/quickstart.sh and tests/run.sh; not meant to be run alone.
set -e
pkgs="build-essential autoconf automake libtool pkg-config xz-utils
      libjansson-dev libarchive-dev libsqlite3-dev libyaml-dev libpcre2-dev libutf8proc-dev"
missing=
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    echo "installing:$missing"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
[ -x configure ] && [ configure -nt configure.ac ] || autoreconf -fi >/dev/null
mkdir -p build
cd build
[ -f Makefile ] || ../configure -q $QWEN3_CONFIGURE_FLAGS
make -s -j"$(nproc)" >/dev/null
