#!/bin/sh
# Debian packages the tests need: mosquitto (a real broker on 127.0.0.1), PortAudio (the
# sounddevice library), openssl (test certificates), PulseAudio with its ALSA plugin (a real
# capture device: a null sink's monitor, tests/test_pulse_capture.py), ffmpeg (camera and
# network stream sources), systemd's systemd-analyze (checks `service install`'s unit) and
# Chromium (the web page's tests, tests/test_web.py).
# Installs only what is missing.
set -e
need=""
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need="$need mosquitto"
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need="$need libportaudio2"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v pulseaudio >/dev/null 2>&1 || need="$need pulseaudio"
command -v pactl >/dev/null 2>&1 || need="$need pulseaudio-utils"
[ -e /usr/lib/x86_64-linux-gnu/alsa-lib/libasound_module_pcm_pulse.so ] || \
  [ -n "$(find /usr/lib -name libasound_module_pcm_pulse.so 2>/dev/null | head -1)" ] || need="$need libasound2-plugins"
command -v ffmpeg >/dev/null 2>&1 || need="$need ffmpeg"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
# the web page's tests: a real headless browser from Debian (Playwright drives it; no download)
[ -x /usr/bin/chromium ] || need="$need chromium"
[ -z "$need" ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
  echo "system-deps: please install:$need (apt-get install -y$need)" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y $need >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y $need >/dev/null; }
