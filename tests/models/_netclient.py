"""One HTTP request from inside a namespace: `python _netclient.py METHOD URL KEY [JSON]`;
prints `{"status": ..., "body": ...}`."""

from __future__ import annotations

import json
import sys

import httpx

method, url, key, *body = sys.argv[1:]
headers = {"Authorization": f"Bearer {key}"} if key else {}
r = httpx.request(
    method, url, headers=headers, json=json.loads(body[0]) if body else None, timeout=10
)
try:
    payload = r.json()
except ValueError:
    payload = None
print(json.dumps({"status": r.status_code, "body": payload}))
