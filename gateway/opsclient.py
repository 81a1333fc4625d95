"""The CLI's operator commands (`status`, `call`, `outbox`): a small client of the gateway's REST
API (stdlib urllib only) and plain-text tables.

Exit codes: 0 done; 1 the API answered with an error (the message is printed); 2 bad arguments
or configuration; 3 the API could not be reached.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence, TextIO

from gateway.config import Settings, split_listen
from gateway.errors import OperatorClientError


class ApiError(OperatorClientError):
    def __init__(self, status: int, body: Any) -> None:
        message = body.get("message") if isinstance(body, dict) else None
        super().__init__(f"HTTP {status}: {message or body}")
        self.status = status
        self.body = body


class Unreachable(OperatorClientError):
    """The API cannot be reached (refused, timeout, name not found)."""


def api_base(settings: Settings) -> str:
    """The URL of the API as configured in [api].listen (a wildcard address is reached on loopback)."""
    host, port = split_listen(settings.api.listen)
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


TOKEN_FILE = "api-token"


def token_file(settings: Settings) -> Path:
    """Where the gateway keeps the API token it generated (when `[api].token` is unset)."""
    return Path(settings.data_dir) / TOKEN_FILE


def client_token(settings: Settings) -> str:
    """The token to present: `[api].token`, else the generated one from `data_dir` ("" = none found)."""
    if settings.api.token is not None:
        return settings.api.token.get_secret_value()
    try:
        return token_file(settings).read_text(encoding="utf-8").strip()
    except OSError:
        return ""


class Client:
    def __init__(self, base: str, token: str = "", timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None or method in ("POST", "PUT", "PATCH", "DELETE"):
            req.add_header("Content-Type", "application/json")  # the API refuses other writes (api_guard.py)
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")[:200]
            raise ApiError(exc.code, parsed) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(f"cannot reach the gateway API at {self.base}: {reason}") from exc


# -- tables ---------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def _kw(w: float | None) -> str:
    return "-" if w is None else f"{w / 1000:.1f} kW"


def _kwh(wh: float | None) -> str:
    return "-" if wh is None else f"{wh / 1000:.2f} kWh"


def _connectors(c: dict[str, Any]) -> str:
    parts = []
    for k in c.get("connectors") or []:
        label = str(k["evse"]) if k.get("connector") is None else f"{k['evse']}/{k['connector']}"
        text = f"{label}:{k.get('status') or '?'}"
        if k.get("error_code") and k["error_code"] != "NoError":
            text += f"({k['error_code']})"
        parts.append(text)
    return " ".join(parts) or "-"


def print_status(data: dict[str, Any], out: TextIO) -> None:
    chargers = data.get("chargers", [])
    rows = []
    for c in chargers:
        powers = [k["power_w"] for k in c.get("connectors", []) if k.get("power_w") is not None and c.get("connected")]
        energies = [t["energy_wh"] for t in c.get("open_transactions", []) if t.get("energy_wh") is not None]
        queues = c.get("queues") or {}
        rows.append([
            c["id"], "yes" if c.get("connected") else "no", c.get("protocol") or "-", c.get("transport") or "-",
            (c.get("upstream") or {}).get("state", "-"),
            _connectors(c) if c.get("connected") else f"gone since {c.get('last_seen') or '?'}",
            _kw(sum(powers)) if powers else "-", _kwh(sum(energies)) if energies else "-",
            queues.get("to_charger", 0) + queues.get("to_csms", 0),
            (c.get("outbox") or {}).get("depth", "-") if c.get("outbox") else "-",
        ])
    connected = sum(1 for c in chargers if c.get("connected"))
    print(f"{connected} of {len(chargers)} chargers connected", file=out)
    if rows:
        print(file=out)
        table(["CHARGER", "CONNECTED", "PROTOCOL", "TRANSPORT", "UPSTREAM", "CONNECTORS", "POWER", "ENERGY",
               "QUEUE", "OUTBOX"], rows, out)


def print_charger(c: dict[str, Any], out: TextIO) -> None:
    boot = c.get("boot") or {}
    up = c.get("upstream") or {}
    queues = c.get("queues") or {}
    outbox = c.get("outbox")
    facts = [
        ("charger", c["id"]),
        ("connected", f"yes ({c.get('transport')}, {c.get('protocol')})" if c.get("connected")
         else f"no (last: {c.get('transport') or '-'}, {c.get('protocol') or '-'})"),
        ("model", " ".join(str(x) for x in (boot.get("vendor"), boot.get("model")) if x) or "-"),
        ("serial / firmware", f"{boot.get('serial_number') or '-'} / {boot.get('firmware_version') or '-'}"),
        ("upstream", f"{up.get('state')}" + (f" since {up['since']}" if up.get("since") else "")),
        ("last seen", c.get("last_seen") or "-"),
        ("calls queued", f"{queues.get('to_charger', 0)} to the charger, {queues.get('to_csms', 0)} to the CSMS"),
        ("outbox", "-" if not outbox else f"{outbox.get('depth')} waiting"
         + (f", oldest {outbox['oldest_age_seconds']:.0f} s" if outbox.get("oldest_age_seconds") is not None else "")
         + (f", {outbox['dead_letters']} dead letters" if outbox.get("dead_letters") else "")),
    ]
    width = max(len(k) for k, _ in facts)
    for k, v in facts:
        print(f"{k.ljust(width)}  {v}", file=out)
    connectors = c.get("connectors") or []
    if connectors:
        print(file=out)
        if not c.get("connected"):
            print("not connected; the statuses it last reported:", file=out)
        table(["EVSE", "LAST STATUS" if not c.get("connected") else "STATUS", "ERROR", "SINCE", "POWER", "METER",
               "TRANSACTION"], [
            [k["evse"] if k.get("connector") is None else f"{k['evse']}/{k['connector']}", k.get("status") or "?",
             k.get("error_code") or "-", k.get("since") or "-", _kw(k.get("power_w")), _kwh(k.get("energy_wh")),
             k.get("transaction_id") or "-"] for k in connectors], out)
    txs = c.get("open_transactions") or []
    if txs:
        print(file=out)
        table(["TRANSACTION", "EVSE", "STARTED", "ENERGY", "POWER"], [
            [t["transaction_id"], t.get("evse"), t.get("started_at"), _kwh(t.get("energy_wh")), _kw(t.get("power_w"))]
            for t in txs], out)


def print_generic(data: Any, out: TextIO) -> None:
    """Lists of flat objects as tables, everything else as indented JSON."""
    if isinstance(data, dict):
        scalars = {k: v for k, v in data.items() if not isinstance(v, (list, dict))}
        for k, v in scalars.items():
            print(f"{k}: {v}", file=out)
        for k, v in data.items():
            if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
                print(f"\n{k}:", file=out)
                headers = list(dict.fromkeys(h for x in v for h in x))
                table([h.upper() for h in headers],
                      [[json.dumps(x.get(h)) if isinstance(x.get(h), (list, dict)) else x.get(h) for h in headers]
                       for x in v], out)
            elif isinstance(v, list):
                print(f"\n{k}: {'none' if not v else json.dumps(v)}", file=out)
            elif isinstance(v, dict):
                print(f"\n{k}:\n{json.dumps(v, indent=2)}", file=out)
        return
    print(json.dumps(data, indent=2), file=out)


def _variables(client: Client, args: Any, out: TextIO, err: TextIO) -> int:
    """`variables CHARGER [NAME] [--set VALUE]`: exit 0 when shown or the charger accepted the set
    (Accepted or RebootRequired), 1 when it or the gateway refused it."""
    base = f"/api/v1/chargers/{urllib.parse.quote(args.charger, safe='')}/variables"
    if args.refresh:
        read = client.request("POST", base + "/refresh?wait=60", timeout=70)
        print(f"read: {read.get('state')}", file=err)
    if args.set_value is not None:
        if not args.name:
            print("error: --set needs a NAME", file=err)
            return 2
        result = client.request("PUT", f"{base}/{urllib.parse.quote(args.name, safe='')}", {"value": args.set_value},
                                timeout=client.timeout + 35)
        if args.json:
            print(json.dumps(result, indent=2), file=out)
        for r in result.get("results", []):
            if not args.json:
                print(f"{r['name']}: {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""), file=out)
        ok = all(r["status"] in ("Accepted", "RebootRequired") for r in result.get("results", []))
        return 0 if ok else 1
    if args.name:
        data = client.request("GET", f"{base}/{urllib.parse.quote(args.name, safe='')}")
        if args.json:
            print(json.dumps(data, indent=2), file=out)
        else:
            print_generic(data, out)
        return 0
    query = {k: v for k, v in (("component", args.component), ("changed_since", args.changed_since)) if v}
    data = client.request("GET", base + ("?" + urllib.parse.urlencode(query) if query else ""))
    if args.json:
        print(json.dumps(data, indent=2), file=out)
        return 0
    read = data.get("read") or {}
    print(f"{args.charger}: {len(data.get('variables', []))} variables, last read {read.get('state')}"
          + (f" at {read['finished_at']}" if read.get("finished_at") else ""), file=out)
    rows = [[v["name"], "(secret)" if v.get("secret") else ("(unknown key)" if not v.get("known", True)
                                                           else v.get("value")),
             v.get("mutability") or "-", v.get("source") or "-", v.get("changed_at") or "-"]
            for v in data.get("variables", [])]
    if rows:
        print(file=out)
        table(["NAME", "VALUE", "MUTABILITY", "SOURCE", "CHANGED"], rows, out)
    return 0


# -- commands -------------------------------------------------------------------------------------


def run(command: str, client: Client, args: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    try:
        if command == "status":
            one = getattr(args, "charger", None)
            path = f"/api/v1/chargers/{urllib.parse.quote(one, safe='')}" if one else "/api/v1/chargers"
            data = client.request("GET", path)
            if args.json:
                print(json.dumps(data, indent=2), file=out)
            elif one:
                print_charger(data, out)
            else:
                print_status(data, out)
            return 0
        if command == "call":
            try:
                text = sys.stdin.read() if args.payload == "-" else (args.payload or "{}")
                payload = json.loads(text)
            except ValueError as exc:
                print(f"error: the payload is not JSON: {exc}", file=err)
                return 2
            path = (f"/api/v1/chargers/{urllib.parse.quote(args.charger, safe='')}"
                    f"/calls/{urllib.parse.quote(args.action, safe='')}")
            wait = None
            if args.timeout is not None:
                path += f"?timeout={args.timeout:g}"
                wait = args.timeout + 5
            result = client.request("POST", path, payload, timeout=wait or client.timeout + 35)
            print(json.dumps(result, indent=2), file=out)
            return 0
        if command == "health":
            data = client.request("GET", "/healthz", timeout=3.0)
            print(f"{data.get('status')}: {data.get('chargers')} chargers connected, version {data.get('version')}",
                  file=out)
            return 0
        if command == "outbox":
            try:
                data = client.request("GET", "/api/v1/outbox")
            except ApiError as exc:
                if exc.status == 404:
                    print("this gateway has no outbox endpoint yet (GET /api/v1/outbox answered 404)", file=out)
                    return 0
                raise
            if args.json:
                print(json.dumps(data, indent=2), file=out)
            else:
                print_generic(data, out)
            return 0
        if command == "variables":
            return _variables(client, args, out, err)
    except ApiError as exc:
        print(f"error: {exc}", file=err)
        body = exc.body if isinstance(exc.body, dict) else {}
        if body.get("ocpp_error"):
            o = body["ocpp_error"]
            print(f"OCPP error: {o.get('code')}: {o.get('description')}", file=err)
        return 1
    except Unreachable as exc:
        print(f"error: {exc}", file=err)
        return 3
    raise ValueError(command)
