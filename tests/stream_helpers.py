"""A small deterministic numpy backend for streaming tests (no model files needed)."""

from __future__ import annotations

import threading
import time
import zlib

import numpy as np

from monitor.models.backend import Backend, l2_normalise


class BandEnergyBackend(Backend):
    """Embeds audio by log band energies and text by a hash-seeded vector: deterministic."""

    name = "band-energy-test"
    sample_rate_hz = 16000
    window_s = 5.0
    embedding_dim = 16
    logit_scale = 10.0
    cache_key = "band-energy-test-v1"

    def __init__(self):
        self.calls = 0

    def embed_audio(self, batch: np.ndarray) -> np.ndarray:
        self.calls += 1
        batch = np.atleast_2d(batch).astype(np.float64)
        spec = np.abs(np.fft.rfft(batch, axis=1)) ** 2
        bands = np.array_split(spec, self.embedding_dim, axis=1)
        e = np.stack([np.log1p(b.sum(axis=1)) for b in bands], axis=1)
        return l2_normalise(e - e.mean(axis=1, keepdims=True) + 1e-3)

    def embed_text(self, prompts):
        out = []
        for p in prompts:
            rng = np.random.default_rng(zlib.crc32(p.encode()))
            out.append(rng.standard_normal(self.embedding_dim))
        return l2_normalise(np.array(out))


def fake_input_stream(real_sd, n_blocks=lambda k: 40, overflow_at=(), pause_s: float = 0.0):
    """A stand-in for ``sounddevice.InputStream`` (its constructor and context protocol):
    on enter a thread drives the source's callback with ``n_blocks(k)`` blocks of noise for
    the k-th stream opened (0 first), with real ``CallbackFlags`` (``overflow_at``: block
    indices flagged ``input_overflow``), reusing its buffer after each call as a driver
    does; then the stream goes inactive, as PortAudio's does when a device is unplugged.
    ``.opened`` lists the streams opened so far."""

    class FakeInputStream:
        opened: list = []

        def __init__(self, *, device, samplerate, channels, blocksize, dtype, callback):
            self.cb, self.blocksize, self.channels = callback, blocksize, channels
            self.index = len(FakeInputStream.opened)
            self.n_blocks = n_blocks(self.index)
            self.active = False
            self.closed = False
            FakeInputStream.opened.append(self)

        def __enter__(self):
            self.active = True
            self.t = threading.Thread(target=self._drive, daemon=True)
            self.t.start()
            return self

        def _drive(self):
            rng = np.random.default_rng(self.index)
            data = np.zeros((self.blocksize, self.channels), np.float32)
            for i in range(self.n_blocks):
                if self.closed:
                    return
                flags = real_sd.CallbackFlags()
                if i in overflow_at:
                    flags.input_overflow = True
                data[:] = 0.1 * rng.standard_normal((self.blocksize, self.channels))
                self.cb(data, self.blocksize, None, flags)
                data[:] = 0  # the driver reuses its buffer: the source must have copied
                if pause_s:
                    time.sleep(pause_s)
            self.active = False

        def __exit__(self, *a):
            self.closed = True
            self.t.join()

    return FakeInputStream


def fake_sounddevice(real_sd, input_stream_cls, max_input_channels: int):
    """A stand-in for the sounddevice module: the real CallbackFlags, a fake InputStream
    class (driving the source's callback from a thread), one fake 16 kHz microphone."""

    class FakeSD:
        CallbackFlags = real_sd.CallbackFlags
        InputStream = input_stream_cls

        @staticmethod
        def query_devices(device=None, kind=None):
            return {"name": "fake mic", "default_samplerate": 16000.0, "max_input_channels": max_input_channels}

    return FakeSD
