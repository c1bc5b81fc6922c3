"""``kanal usage``: a running gateway's ``GET /v1/usage``, printed as a table (or JSON)."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

COLUMNS = (
    ("requests", "REQUESTS"),
    ("input_tokens", "INPUT TOKENS"),
    ("output_tokens", "OUTPUT TOKENS"),
    ("cost_usd", "COST USD"),
    ("cache_hits", "CACHE HITS"),
    ("errors", "ERRORS"),
)


def usage_url(base: str, args: argparse.Namespace) -> str:
    query: dict[str, str] = {"group_by": args.by}
    if args.since:
        query["start"] = args.since
    if args.until:
        query["end"] = args.until
    if args.route:
        query["route"] = args.route
    return base.rstrip("/").removesuffix("/v1") + "/v1/usage?" + urllib.parse.urlencode(query)


def run_usage(
    args: argparse.Namespace, environ: Mapping[str, str], out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    url = usage_url(args.url, args)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    key = environ.get(args.api_key_env, "") if args.api_key_env else ""
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as err:
        print(f"kanal usage: {err.code} from {args.url}: {_error_message(err)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"kanal usage: cannot read {url}: {err}", file=sys.stderr)
        return 1
    if args.json:
        out.write(json.dumps(answer, indent=2) + "\n")
        return 0
    out.write(render_table(answer))
    return 0


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        body = json.load(err)
        message = body["error"]["message"]
        param = body["error"].get("param")
        return f"{message} (param {param})" if param else str(message)
    except Exception:
        return err.reason if isinstance(err.reason, str) else str(err)


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name == "cost_usd":
        return f"{float(value):.6f}"
    return str(value)


def render_table(answer: Mapping[str, Any]) -> str:
    """The summary as an aligned text table with a TOTAL line."""
    groups: Sequence[str] = answer.get("group_by") or []
    header = [g.upper() for g in groups] + [title for _, title in COLUMNS]
    rows = [
        [_cell(g, row.get(g)) for g in groups] + [_cell(c, row.get(c)) for c, _ in COLUMNS]
        for row in answer.get("data") or []
    ]
    totals = answer.get("totals") or {}
    label = ["TOTAL"] + [""] * (len(groups) - 1) if groups else []
    rows.append(label + [_cell(c, totals.get(c)) for c, _ in COLUMNS])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = len(groups)

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(w) if i >= numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip() + "\n"

    title = (
        f"usage of namespace {answer.get('namespace')} from {answer.get('start')} "
        f"to {answer.get('end')} (UTC)"
    )
    if answer.get("route"):
        title += f", route {answer['route']}"
    return title + "\n" + line(header) + "".join(line(r) for r in rows)
