"""Fast profile of the shipped Prometheus rules, for tests and drills.

The shipped rules (``configs/prometheus/rules/*.yml``) are written for runs stepping every
second to every 30 s and a Prometheus scraping every 15 s. End-to-end tests and drills run the
daemon with ``--speed X`` and scrape every second, so they need the *same* rules with every
time constant shortened. :func:`fast_profile` derives that copy from the shipped YAML text, so
there is never a second hand-written set of rules to drift from the first.

What is scaled, with ``factor`` F and scrape interval S (all results rounded to the
millisecond, and never made longer than the original):

===========================================  ===============================================
duration                                     scaled value
===========================================  ===============================================
``for:`` of an alert                         ``0`` stays ``0``; else ``max(for / F, 1s)``
range window ``x[5m]``                       ``max(window / F, 4 * S)``
subquery range ``(...)[30m:1m]``             ``max(range / F, 4 * S)``
subquery resolution ``(...)[30m:1m]``        ``max(step / F, S)`` (an empty step stays empty)
``offset 15m``                               ``max(offset / F, 4 * S)`` (sign kept)
group ``interval:``                          ``max(interval / F, S)``
===========================================  ===============================================

The floor of four scrape intervals keeps at least a few samples in every window, so ``rate``,
``deriv`` and ``changes`` still have data to work on; offsets share that floor so that an
``[1h] offset 15m`` baseline stays clear of the ``[5m]`` window it is compared with.

Everything else is left exactly as it was: numeric thresholds, label matchers, string
literals and comments inside expressions (``{run=~"a[5m]"}`` is not a range), and all labels
and annotations. Only the ``expr`` and ``for`` fields of rules and the ``interval`` of groups
are rewritten.

The same module derives the other two configs of a local fast stack from the shipped ones:
:func:`fast_alertmanager_config` divides Alertmanager's ``group_wait``, ``group_interval`` and
``repeat_interval`` of every route by F (``max(d / F, 1s)``; the root route's unset timings
start from Alertmanager's defaults 30s, 5m, 4h) and can point every webhook at one local
receiver, keeping each URL's path; :func:`fast_prometheus_config` points the shipped scrape
job and the Alertmanager at local addresses and sets both global intervals, keeping everything
else (relabelling, rule file globs).
"""

from __future__ import annotations

import math
import re
import urllib.parse
from typing import Any

import yaml

from simulator.durations import format_prometheus, parse_prometheus

__all__ = [
    "ALERTMANAGER_TIMING_DEFAULTS",
    "MIN_FOR_MS",
    "MIN_NOTIFY_MS",
    "MIN_WINDOW_SCRAPES",
    "fast_alertmanager_config",
    "fast_profile",
    "fast_prometheus_config",
    "scale_expr",
    "scale_for",
]

MIN_FOR_MS = 1_000
"""Floor of a scaled, non-zero ``for:`` (1 s)."""

MIN_WINDOW_SCRAPES = 4
"""Floor of a scaled range window or offset, in scrape intervals."""

MIN_NOTIFY_MS = 1_000
"""Floor of a scaled Alertmanager ``group_wait``, ``group_interval`` or ``repeat_interval``."""

ALERTMANAGER_TIMING_DEFAULTS = {"group_wait": "30s", "group_interval": "5m",
                                "repeat_interval": "4h"}
"""Alertmanager's own defaults for the root route's timings (what an unset key means)."""

# A duration token inside an expression; parse_prometheus validates it afterwards.
_DUR = r"\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*"

# `[5m]` (range selector) and `[30m:1m]` / `[30m:]` (subquery).
_BRACKET_RE = re.compile(
    rf"\[(?P<sp1>\s*)(?P<range>{_DUR})(?P<sp2>\s*)"
    rf"(?:(?P<colon>:)(?P<sp3>\s*)(?P<step>{_DUR})?(?P<sp4>\s*))?\]"
)
# `offset 15m`, `offset -5m`; PromQL keywords are case-insensitive. The look-behind keeps
# `foo_offset` (a metric or label name) from matching.
_OFFSET_RE = re.compile(rf"(?<![\w:])(?P<kw>offset\s+)(?P<sign>-?)(?P<dur>{_DUR})", re.I)

# Parts of an expression that are not PromQL code: string literals and comments.
_NOT_CODE_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|#[^\n]*')


def _check_factor(factor: float) -> None:
    if not (math.isfinite(factor) and factor >= 1):
        raise ValueError(f"factor must be a finite number >= 1, got {factor!r}")


def _shrink(ms: int, factor: float, floor_ms: int) -> int:
    """``ms / factor`` rounded to the millisecond, at least ``floor_ms``, at most ``ms``."""
    return min(ms, max(round(ms / factor), floor_ms))


def scale_for(value: str, factor: float) -> str:
    """Scale an alert's ``for:`` duration: ``0`` stays ``0``, else ``max(for / factor, 1s)``."""
    _check_factor(factor)
    ms = parse_prometheus(value)
    if ms == 0:
        return "0s"
    return format_prometheus(_shrink(ms, factor, MIN_FOR_MS))


def scale_expr(expr: str, factor: float, *, scrape_interval: str = "1s") -> str:
    """Scale every range window, subquery range and step, and offset in a PromQL expression.

    String literals and comments are copied unchanged. See the module docstring for the
    formula; ``scrape_interval`` sets the floors.
    """
    _check_factor(factor)
    scrape_ms = parse_prometheus(scrape_interval)
    if scrape_ms <= 0:
        raise ValueError(f"scrape_interval must be > 0, got {scrape_interval!r}")
    window_floor = MIN_WINDOW_SCRAPES * scrape_ms

    def window(text: str) -> str:
        return format_prometheus(_shrink(parse_prometheus(text), factor, window_floor))

    def bracket(match: re.Match[str]) -> str:
        out = f"[{match['sp1']}{window(match['range'])}{match['sp2']}"
        if match["colon"]:
            step = match["step"]
            scaled_step = (
                format_prometheus(_shrink(parse_prometheus(step), factor, scrape_ms))
                if step else ""
            )
            out += f":{match['sp3']}{scaled_step}{match['sp4']}"
        return out + "]"

    def offset(match: re.Match[str]) -> str:
        return f"{match['kw']}{match['sign']}{window(match['dur'])}"

    def code(segment: str) -> str:
        return _OFFSET_RE.sub(offset, _BRACKET_RE.sub(bracket, segment))

    pieces: list[str] = []
    position = 0
    for literal in _NOT_CODE_RE.finditer(expr):
        pieces.append(code(expr[position : literal.start()]))
        pieces.append(literal.group())
        position = literal.end()
    pieces.append(code(expr[position:]))
    return "".join(pieces)


class _Dumper(yaml.SafeDumper):
    """Safe dumper writing multi-line strings (most ``expr``) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def _mapping(node: Any, where: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(node).__name__}")
    return node


def _sequence(node: Any, where: str) -> list[Any]:
    if not isinstance(node, list):
        raise ValueError(f"{where}: expected a list, got {type(node).__name__}")
    return node


def fast_profile(rules_yaml: str, factor: float, *, scrape_interval: str = "1s") -> str:
    """Return a copy of a Prometheus rule file with every time constant divided by ``factor``.

    ``rules_yaml`` is the text of one rule file (``groups: [...]``). The result is YAML text
    for a rule file with the same groups, rules, labels and annotations, where each ``for:``,
    each group ``interval:`` and each duration inside ``expr`` is scaled as the module
    docstring describes. Comments of the source file are not carried over; a header says
    where the file came from. Raises :class:`ValueError` for text that is not a rule file.
    """
    _check_factor(factor)
    scrape_ms = parse_prometheus(scrape_interval)
    document = _mapping(yaml.safe_load(rules_yaml), "rule file")
    for g, group_node in enumerate(_sequence(document.get("groups"), "groups")):
        group = _mapping(group_node, f"groups[{g}]")
        if "interval" in group:
            interval_ms = parse_prometheus(str(group["interval"]))
            group["interval"] = format_prometheus(_shrink(interval_ms, factor, scrape_ms))
        for r, rule_node in enumerate(_sequence(group.get("rules"), f"groups[{g}].rules")):
            rule = _mapping(rule_node, f"groups[{g}].rules[{r}]")
            expr = rule.get("expr")
            if not isinstance(expr, str):
                raise ValueError(f"groups[{g}].rules[{r}].expr: expected a PromQL string")
            rule["expr"] = scale_expr(expr, factor, scrape_interval=scrape_interval)
            if "for" in rule:
                rule["for"] = scale_for(str(rule["for"]), factor)
    header = (
        f"# Fast profile generated by simulator.drills.profile (factor {factor:g}, "
        f"scrape interval {scrape_interval}) from the shipped rules. Do not edit.\n"
    )
    return _dump(document, header)


def _dump(document: Any, header: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)
    return header + body


def _scale_route(route: dict[str, Any], factor: float, where: str) -> None:
    for key in ALERTMANAGER_TIMING_DEFAULTS:
        if key in route:
            ms = parse_prometheus(str(route[key]))
            route[key] = format_prometheus(_shrink(ms, factor, MIN_NOTIFY_MS))
    for i, child in enumerate(_sequence(route.get("routes", []), f"{where}.routes")):
        _scale_route(_mapping(child, f"{where}.routes[{i}]"), factor, f"{where}.routes[{i}]")


def fast_alertmanager_config(config_yaml: str, factor: float, *,
                             webhook_url: str | None = None) -> str:
    """Return a copy of an Alertmanager config with its notification timings divided by ``factor``.

    Every ``group_wait``, ``group_interval`` and ``repeat_interval`` in the route tree becomes
    ``max(d / factor, 1s)``, rounded to the millisecond and never longer than before; the root
    route's unset timings are first filled in with Alertmanager's defaults, so children that
    inherit them inherit the scaled values. With ``webhook_url`` (``http://host:port``), every
    ``webhook_configs`` URL is pointed at it, keeping its path and query, so one local receiver
    tells the receivers apart by path. Routes, matchers, grouping, inhibition and everything
    else are copied unchanged. Raises :class:`ValueError` for text that is not such a config.
    """
    _check_factor(factor)
    document = _mapping(yaml.safe_load(config_yaml), "alertmanager config")
    root = _mapping(document.get("route"), "route")
    for key, default in ALERTMANAGER_TIMING_DEFAULTS.items():
        root.setdefault(key, default)
    _scale_route(root, factor, "route")
    if webhook_url is not None:
        base = urllib.parse.urlsplit(webhook_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError(f"webhook_url must be http(s)://host:port, got {webhook_url!r}")
        receivers = _sequence(document.get("receivers", []), "receivers")
        for r, receiver_node in enumerate(receivers):
            receiver = _mapping(receiver_node, f"receivers[{r}]")
            hooks = _sequence(receiver.get("webhook_configs", []),
                              f"receivers[{r}].webhook_configs")
            for h, hook_node in enumerate(hooks):
                hook = _mapping(hook_node, f"receivers[{r}].webhook_configs[{h}]")
                url = urllib.parse.urlsplit(str(hook.get("url", "")))
                hook["url"] = urllib.parse.urlunsplit(
                    (base.scheme, base.netloc, url.path, url.query, ""))
    header = (
        f"# Fast profile generated by simulator.drills.profile (factor {factor:g}) from the "
        "shipped alertmanager.yml. Do not edit.\n"
    )
    return _dump(document, header)


def fast_prometheus_config(config_yaml: str, *, target: str, alertmanager: str,
                           interval: str = "1s", job: str = "trainsim") -> str:
    """Return a copy of the shipped prometheus.yml for a local stack.

    Both global intervals become ``interval``; every static target of scrape job ``job``
    becomes ``target`` (``host:port``, the target labels are kept); Prometheus sends its
    alerts to the one Alertmanager at ``alertmanager`` (``host:port``). Relabelling, rule
    file globs and other jobs are copied unchanged. Raises :class:`ValueError` for text that
    is not a Prometheus config or has no job ``job``.
    """
    if parse_prometheus(interval) <= 0:
        raise ValueError(f"interval must be > 0, got {interval!r}")
    document = _mapping(yaml.safe_load(config_yaml), "prometheus config")
    global_ = _mapping(document.setdefault("global", {}), "global")
    global_["scrape_interval"] = interval
    global_["evaluation_interval"] = interval
    found = False
    for j, job_node in enumerate(_sequence(document.get("scrape_configs"), "scrape_configs")):
        scrape = _mapping(job_node, f"scrape_configs[{j}]")
        if scrape.get("job_name") != job:
            continue
        found = True
        statics = _sequence(scrape.get("static_configs"), f"scrape_configs[{j}].static_configs")
        for s, static_node in enumerate(statics):
            static = _mapping(static_node, f"scrape_configs[{j}].static_configs[{s}]")
            static["targets"] = [target]
    if not found:
        raise ValueError(f"scrape_configs: no job named {job!r}")
    alerting = _mapping(document.setdefault("alerting", {}), "alerting")
    alerting["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    header = (
        f"# Local profile generated by simulator.drills.profile (interval {interval}) from the "
        "shipped prometheus.yml. Do not edit.\n"
    )
    return _dump(document, header)
