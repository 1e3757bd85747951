"""A local stand-in for the Hub's HTTP API, so that the REAL ``HfApi`` upload path runs offline.

Not a mock of ``HfApi``: huggingface_hub's own code builds and sends every request (repo
creation, README metadata validation, preupload, NDJSON commit); this server answers the four
endpoints a small commit needs and records what it received. Files are accepted as regular
(base64) blobs, so the LFS / Xet transfer is the one part not exercised.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class HubRecord:
    repos: dict = field(default_factory=dict)  # repo_id -> create payload
    commits: list = field(default_factory=list)  # {"repo", "type", "revision", "header", "files"}
    validated: list = field(default_factory=list)  # README contents sent to validate-yaml
    auth_headers: list = field(default_factory=list)


def start_local_hub():
    """Start the server in a thread: returns ``(url, record, stop)``."""
    record = HubRecord()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def _reply(self, payload: dict, status: int = 200) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 (http.server naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            record.auth_headers.append(self.headers.get("Authorization", ""))
            path = self.path.split("?")[0]
            base = f"http://{self.headers['Host']}"
            if path == "/api/repos/create":
                payload = json.loads(body)
                repo_id = f"{payload['organization']}/{payload['name']}"
                record.repos[repo_id] = payload
                prefix = "" if payload.get("type") in (None, "model") else f"{payload['type']}s/"
                return self._reply({"url": f"{base}/{prefix}{repo_id}"})
            if path == "/api/validate-yaml":
                record.validated.append(json.loads(body)["content"])
                return self._reply({"errors": [], "warnings": []})
            parts = path.strip("/").split("/")  # api/<type>s/<org>/<name>/<action>/<revision>
            if len(parts) == 6 and parts[0] == "api" and parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._reply(
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files
                        ]
                    }
                )
            if len(parts) == 6 and parts[0] == "api" and parts[4] == "commit":
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                files = {
                    item["value"]["path"]: base64.b64decode(item["value"]["content"])
                    for item in lines
                    if item["key"] == "file"
                }
                repo_id = f"{parts[2]}/{parts[3]}"
                record.commits.append(
                    {
                        "repo": repo_id,
                        "type": parts[1][:-1],
                        "revision": parts[5],
                        "header": lines[0]["value"],
                        "files": files,
                    }
                )
                oid = f"{len(record.commits):040x}"
                return self._reply(
                    {
                        "commitUrl": f"{base}/{repo_id}/commit/{oid}",
                        "commitOid": oid,
                        "pullRequestUrl": None,
                    }
                )
            return self._reply({"error": f"unexpected {path}"}, status=404)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return f"http://127.0.0.1:{server.server_address[1]}", record, stop
