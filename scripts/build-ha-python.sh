#!/bin/sh
# A CPython for Home Assistant 2026.2.3 (it needs >= 3.13.2; Debian bookworm has 3.11), built
# from Debian trixie's python3.13 source package with a private apt configuration (the
# system's apt sources stay untouched). Prints the interpreter's path; builds once into
# $HA_PYTHON_PREFIX (default ~/.cache/sound-monitor-ha/py313). About 3 to 6 minutes on 2 cores.
set -eu
prefix=${HA_PYTHON_PREFIX:-$HOME/.cache/sound-monitor-ha/py313}
py="$prefix/bin/python3.13"
if [ -x "$py" ] && "$py" -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib" 2>/dev/null; then
  echo "$py"; exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$work/sources.list"
apt_opts="-o APT::Sandbox::User=root -o Dir::Etc::sourcelist=$work/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$work/lists -o Dir::Cache=$work/cache"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
need=""
for p in libssl-dev libffi-dev zlib1g-dev libsqlite3-dev libbz2-dev liblzma-dev uuid-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
[ -z "$need" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $need >/dev/null
# shellcheck disable=SC2086
$SUDO apt-get $apt_opts update >/dev/null
cd "$work"
# shellcheck disable=SC2086
apt-get $apt_opts source --download-only python3.13 >/dev/null 2>&1
tar xf python3.13_*.orig.tar.xz
cd Python-3.13.*
./configure --prefix="$prefix" >/dev/null
make -j"$(nproc)" >/dev/null 2>&1
make install >/dev/null 2>&1
"$py" -c "import ssl, sqlite3, ctypes, lzma, bz2, zlib"
echo "$py"
