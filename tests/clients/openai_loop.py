"""The unmodified OpenAI Python SDK, one client (so one kept-alive connection) sending chat
requests one after another until the file argv[3] exists (at most 120 s).
argv: base_url model stop_file. Prints {"ok": n, "failed": [{"status":..., "message":...}]}."""
import json
import os
import sys
import time

import openai

base, model, stop = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="sk-client-wrong-key", max_retries=0, timeout=30)
ok, failed = 0, []
deadline = time.monotonic() + 120
while not os.path.exists(stop) and time.monotonic() < deadline:
    try:
        r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        if r.choices[0].message.content == "echo: hi":
            ok += 1
        else:
            failed.append({"status": 200, "message": r.choices[0].message.content})
    except openai.APIStatusError as e:
        failed.append({"status": e.status_code, "message": e.message})
    except openai.APIError as e:
        failed.append({"status": None, "message": str(e)})
print(json.dumps({"ok": ok, "failed": failed}))
