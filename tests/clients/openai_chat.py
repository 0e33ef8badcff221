"""The unmodified OpenAI Python SDK. argv: base_url model stream|plain [release_url].
With release_url, calls it (directly) after the first streamed chunk: the server holds the
rest of the stream until then, so this only finishes if chunks are not held back. The
prompt is $PROMPT, "hello" without it. A stream's output has each event's arrival time
(`times`, monotonic seconds)."""
import json
import os
import sys
import time
import urllib.request

import openai

base, model, mode = sys.argv[1], sys.argv[2], sys.argv[3]
release = sys.argv[4] if len(sys.argv) > 4 else None
client = openai.OpenAI(base_url=base, api_key="sk-client-secret", max_retries=0, timeout=30)
messages = [{"role": "user", "content": os.environ.get("PROMPT", "hello")}]
try:
    if mode == "stream":
        parts, times = [], []
        for i, ev in enumerate(client.chat.completions.create(model=model, messages=messages, stream=True)):
            times.append(time.monotonic())
            if ev.choices:
                parts.append(ev.choices[0].delta.content or "")
            if i == 0 and release:
                urllib.request.urlopen(release, timeout=10).read()
        print(json.dumps({"ok": True, "text": "".join(parts), "chunks": len(parts), "times": times}))
    else:
        r = client.chat.completions.create(model=model, messages=messages)
        print(json.dumps({"ok": True, "text": r.choices[0].message.content}))
except openai.APIStatusError as e:
    print(json.dumps({"ok": False, "status": e.status_code, "message": e.message, "body": e.body}))
