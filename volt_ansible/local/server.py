"""The Vast REST API double over HTTP on 127.0.0.1: the real `vastai` SDK is pointed at it."""

from __future__ import annotations

import argparse
import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from volt_ansible.errors import VoltError
from volt_ansible.local.double import LocalVast
from volt_ansible.state import volt_dir

MAX_BODY = 1 << 20  # the SDK's largest request is a few KB: anything bigger is refused unread (413)

ROUTES = [
    ("POST", r"/api/v0/bundles/?", "search"),
    ("PUT", r"/api/v0/asks/(\d+)/?", "create"),
    ("GET", r"/api/v0/instances/pending-price-increases/?", "pending_price_increases"),
    ("PUT", r"/api/v0/instances/accept-price-increase/?", "accept_price_increase"),
    ("PUT", r"/api/v0/instances/reject-price-increase/?", "reject_price_increase"),
    ("PUT", r"/api/v0/instances/bid_price/(\d+)/?", "change_bid"),
    ("PUT", r"/api/v0/instances/command/(\d+)/?", "execute"),
    ("PUT", r"/api/v0/commands/copy_direct/?", "copy_direct"),
    ("GET", r"/api/v0/instances/(\d+)/?", "show"),
    ("PUT", r"/api/v0/instances/(\d+)/?", "update"),
    ("DELETE", r"/api/v0/instances/(\d+)/?", "destroy"),
    ("POST", r"/api/v0/instances/(\d+)/ssh/?", "attach_ssh"),
    ("GET", r"/api/v1/instances/?", "list"),
    ("GET", r"/api/v0/users/current/?", "user"),
    ("POST", r"/_test/instances/(\d+)/preempt", "preempt"),
    ("POST", r"/_test/faults", "faults"),
    ("POST", r"/_test/instances/(\d+)/outbid", "outbid"),
    ("POST", r"/_test/instances/(\d+)/competitor_leaves", "competitor_leaves"),
    ("POST", r"/_test/instances/(\d+)/price_increase", "post_price_increase"),
    ("GET", r"/_test/instances/(\d+)/cost", "cost"),
    ("GET", r"/_test/copies", "copies"),
    ("POST", r"/_test/clock", "clock"),
]
# execute's result_url: fetched with a plain unauthenticated GET (vastai/api/instances.py _poll_result_url), so the
# token in it is the secret; 404 until the result is complete
RESULTS = r"/_results/([0-9a-f]{32})"


class _Handler(BaseHTTPRequestHandler):
    double: LocalVast  # set on the subclass made per server

    def log_message(self, *args) -> None:  # quiet: the CLI owns the terminal
        pass

    def _send(self, status: int, body: object, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        if method == "GET" and (m := re.fullmatch(RESULTS, url.path)):
            return self._send_result(m.group(1))
        # Auth first, in constant time, before a byte of the body is read: an unauthenticated client costs nothing.
        sent = (self.headers.get("Authorization") or "").encode()
        if not hmac.compare_digest(sent, f"Bearer {self.double.api_key}".encode()):
            self.close_connection = True
            return self._send(401, {"success": False, "error": "auth_error", "msg": "Invalid user key"})
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the body is never read: the connection cannot be reused
            status = 413 if length > MAX_BODY else 400
            return self._send(status, {"success": False, "error": "bad_request",
                                       "msg": f"Content-Length must be 0..{MAX_BODY} bytes, got {self.headers.get('Content-Length')!r}"})
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
        except ValueError:
            return self._send(400, {"success": False, "error": "bad_request", "msg": "the body is not JSON"})
        if not url.path.startswith("/_test/") and (fault := self.double.take_http_fault(url.path)):
            return self._send(fault["status"], fault["body"] or {"success": False, "error": "injected"}, {"Retry-After": "0"})
        for verb, pattern, name in ROUTES:
            if verb == method and (m := re.fullmatch(pattern, url.path)):
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    return getattr(self, f"op_{name}")(*m.groups(), body=body, query=query)
                except VoltError as e:  # a test hook asked for something impossible (outbid an on-demand instance ...)
                    return self._send(400, {"success": False, "error": "invalid_request", "msg": str(e)})
                except Exception as e:  # a broken double must still answer like a server
                    return self._send(500, {"success": False, "error": "server_error", "msg": f"{type(e).__name__}: {e}"})
        self._send(404, {"success": False, "error": "not_found", "msg": f"{method} {url.path}"})

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _send_result(self, token: str) -> None:
        text = self.double.command_result(token)
        if text is None:
            return self._send(404, {"success": False, "error": "not_ready", "msg": "the result is not ready"})
        raw = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    # -- operations ----------------------------------------------------------------------------
    def op_search(self, body: dict, query: dict) -> None:
        self._send(200, {"offers": self.double.search(body)})

    def op_create(self, offer_id: str, body: dict, query: dict) -> None:
        if not body.get("image"):
            return self._send(400, {"success": False, "error": "invalid_args", "msg": "image is required"})
        res = self.double.create(int(offer_id), body)
        if res.get("success") and (status := self.double.take_after_create_fault()):
            # Vast made the instance, then the answer was lost on the way (a gateway error): the SDK retries the create
            return self._send(status, {"success": False, "error": "bad_gateway", "msg": "Bad Gateway"}, {"Retry-After": "0"})
        self._send(200, res)

    def op_show(self, iid: str, body: dict, query: dict) -> None:
        self._send(200, {"instances": self.double.instance(int(iid))})

    def op_destroy(self, iid: str, body: dict, query: dict) -> None:
        if self.double.destroy(int(iid)):
            return self._send(200, {"success": True})
        self._send(404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."})

    def op_attach_ssh(self, iid: str, body: dict, query: dict) -> None:
        res = self.double.attach_ssh(int(iid), body.get("ssh_key", ""))
        self._send(200 if res["success"] else 404, res)

    def op_list(self, body: dict, query: dict) -> None:
        rows = sorted(self.double.instances(), key=lambda r: r["id"])
        limit = max(1, min(int(query.get("limit") or 25), 100))
        after = int(query.get("after_token") or 0)
        page = [r for r in rows if r["id"] > after][:limit]
        more = len([r for r in rows if r["id"] > after]) > limit
        self._send(200, {"instances": page, "next_token": str(page[-1]["id"]) if more else None, "total_instances": len(rows)})

    def op_user(self, body: dict, query: dict) -> None:
        self._send(200, {"id": 1, "username": "local", "email": "local@localhost", "credit": 100.0, "balance": 0.0})

    def op_update(self, iid: str, body: dict, query: dict) -> None:
        """start/stop ({"state": ...}, what an instance sends to stop itself too) and label."""
        if "state" in body:
            status, res = self.double.set_state(int(iid), body["state"])
            if status != 200 or "label" not in body:
                return self._send(status, res)
        if "label" in body:
            if not self.double.set_label(int(iid), body["label"]):
                return self._send(404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."})
            return self._send(200, {"success": True})
        if "state" not in body:
            return self._send(400, {"success": False, "error": "invalid_args", "msg": "nothing to change: give state or label"})

    def op_change_bid(self, iid: str, body: dict, query: dict) -> None:
        price = body.get("price")
        if price is not None and (isinstance(price, bool) or not isinstance(price, (int, float)) or price <= 0):
            return self._send(400, {"success": False, "error": "invalid_args", "msg": f"price must be a positive number or null, not {price!r}"})
        self._send(*self.double.change_bid(int(iid), price))

    def op_copy_direct(self, body: dict, query: dict) -> None:
        res = self.double.copy_direct(body)
        self._send(404 if res.get("error") == "no_such_instance" else 200, res)

    def op_execute(self, iid: str, body: dict, query: dict) -> None:
        res = self.double.execute(int(iid), body.get("command"))
        if res.get("error") == "no_such_instance":
            return self._send(404, res)
        if res.get("success"):
            host, port = self.server.server_address[:2]
            res = {"success": True, "result_url": f"http://{host}:{port}/_results/{res['token']}", "writeable_path": res["writeable_path"]}
        self._send(200, res)

    def op_pending_price_increases(self, body: dict, query: dict) -> None:
        rows = self.double.pending_price_increases()
        self._send(200, {"success": True, "count": len(rows), "truncated": False, "pending_price_increases": rows})

    def _answer_price_increase(self, body: dict, accept: bool) -> None:
        pid = body.get("pending_price_increase_id")
        if set(body) != {"pending_price_increase_id"} or isinstance(pid, bool) or not isinstance(pid, int):
            return self._send(400, {"success": False, "error": "invalid_args",
                                    "msg": 'the body must be exactly {"pending_price_increase_id": <int>}'})
        res = self.double.answer_price_increase(pid, accept)
        if res is None:
            return self._send(404, {"success": False, "error": "no_pending_price_increase"})
        self._send(200, res)

    def op_accept_price_increase(self, body: dict, query: dict) -> None:
        self._answer_price_increase(body, True)

    def op_reject_price_increase(self, body: dict, query: dict) -> None:
        self._answer_price_increase(body, False)

    def op_outbid(self, iid: str, body: dict, query: dict) -> None:
        self._send(200, {"success": True, "competitor_bid": self.double.outbid(int(iid), body.get("price"))})

    def op_competitor_leaves(self, iid: str, body: dict, query: dict) -> None:
        self._send(200, {"success": True, "running_again": self.double.competitor_leaves(int(iid))})

    def op_post_price_increase(self, iid: str, body: dict, query: dict) -> None:
        self._send(200, self.double.post_price_increase(int(iid), float(body["dph"]), float(body.get("due_in_s", 3600))))

    def op_cost(self, iid: str, body: dict, query: dict) -> None:
        self._send(200, self.double.cost(int(iid)))

    def op_copies(self, body: dict, query: dict) -> None:
        self._send(200, {"copies": self.double.copy_jobs()})

    def op_clock(self, body: dict, query: dict) -> None:
        self._send(200, {"now": self.double.advance_clock(float(body.get("advance_s", 0)))})

    def op_preempt(self, iid: str, body: dict, query: dict) -> None:
        self.double.preempt(int(iid))
        self._send(200, {"success": True})

    def op_faults(self, body: dict, query: dict) -> None:
        if "http" in body:
            self.double.add_http_fault(**body["http"])
        if "next_create" in body:
            self.double.set_next_create(body["next_create"])
        if "after_create" in body:
            self.double.add_after_create_fault(int(body["after_create"]))
        extra = {k: body[k] for k in ("dph_factor", "loading_s") if k in body}
        if extra:
            self.double.set_faults(**extra)
        self._send(200, {"success": True})


class DoubleServer:
    """Serves one LocalVast on an ephemeral 127.0.0.1 port from a daemon thread."""

    def __init__(self, double: LocalVast, port: int = 0):
        handler = type("Handler", (_Handler,), {"double": double})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        # close() waits for the loop to see it: at the default 0.5 s poll, every command paid ~0.5 s per backend it opened
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_forever(double: LocalVast, port: int) -> None:
    """`python -m volt_ansible.local.server`: run the double in the foreground (for poking at it)."""
    server = DoubleServer(double, port)
    print(f"Vast API double at {server.url} (API key in {double.dir / 'api_key'})", flush=True)
    server.thread.join()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    serve_forever(LocalVast(volt_dir() / "local"), ap.parse_args().port)
