"""The local web page (live view, history, corrections): monitor/web/server.py."""
