"""The unmodified Anthropic Python SDK. argv: base_url model stream|plain. The prompt is
$PROMPT, "hello" without it. Prints the answer's text and, streamed, how many text deltas
carried it."""
import json
import os
import sys

import anthropic

base, model, mode = sys.argv[1], sys.argv[2], sys.argv[3]
client = anthropic.Anthropic(base_url=base, api_key="sk-ant-client-secret", max_retries=0, timeout=30)
messages = [{"role": "user", "content": os.environ.get("PROMPT", "hello")}]
try:
    if mode == "stream":
        parts, kinds = [], []
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as stream:
            for ev in stream:
                kinds.append(ev.type)
                if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                    parts.append(ev.delta.text)
        print(json.dumps({"ok": True, "text": "".join(parts), "deltas": len(parts), "events": kinds}))
    else:
        r = client.messages.create(model=model, max_tokens=64, messages=messages)
        print(json.dumps({"ok": True, "text": r.content[0].text}))
except anthropic.APIStatusError as e:
    print(json.dumps({"ok": False, "status": e.status_code, "message": e.message}))
