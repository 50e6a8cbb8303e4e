"""Clients that hang up mid-stream: their sequences and KV blocks are gone within a second."""
import json
import socket
import urllib.parse

from conftest import engine_idle


def open_stream(base):
    url = urllib.parse.urlparse(base)
    body = json.dumps({"model": "mistral:instruct", "messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": 1500, "ignore_eos": True, "stream": True}).encode()
    s = socket.create_connection((url.hostname, url.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    received = b""
    while b"data:" not in received:
        chunk = s.recv(4096)
        assert chunk, "the server closed the stream"
        received += chunk
    return s


def test_hang_ups_cancel(server):
    streams = [open_stream(server) for _ in range(20)]
    for s in streams:
        s.close()
    assert engine_idle(server, timeout=1.0), "sequences or blocks left behind"
