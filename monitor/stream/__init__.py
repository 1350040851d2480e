"""The data plane of one source, as small stages with their own state (monitor/stream/pipeline.py
wires them; docs/architecture.md draws the map):

- ``feed``: the source under supervision on its capture thread, the bounded ring buffer,
  the source's status and digital silence;
- ``segmenter``: downmix and sanitise, the streaming resampler, the windower, stream time
  across gaps (segments), and the audio tap for sinks that want audio;
- ``inference``: the level gate, the change gate, batches through the shared encoder, and
  scoring against the labels;
- ``fanout``: events and scores to every sink, one failing sink never stopping the rest.
"""
