"""`sound-monitor devices`: list audio input devices (or say why there are none)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from monitor.sources import list_input_devices

    devices = list_input_devices()
    if not devices:
        print("no audio input devices found (is a microphone connected? `arecord -l` lists ALSA devices)")
        return 0
    for d in devices:
        print(f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, default {d['default_rate_hz']} Hz)")
    return 0
