"""Figures derived from query results (pure pandas): totals, rates, baselines, quantiles.

Separate from ``queries`` (which only talks to ClickHouse) and from the pages (which only render),
so the arithmetic behind every number on screen is unit-tested on small frames.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

_EPOCH = pd.Timestamp(0, tz="UTC")


def epoch_s(times: pd.Series) -> pd.Series:
    """UTC timestamps -> integer epoch seconds, whatever the frame's datetime resolution."""
    return (times - _EPOCH) // pd.Timedelta(seconds=1)


def traffic_totals(traffic: pd.DataFrame) -> pd.DataFrame:
    """Per service over the window of a ``queries.traffic`` frame, busiest first.

    Columns: service, messages, recipients, leaking, last_event, recipients_per_message.
    """
    if traffic.empty:
        return pd.DataFrame(columns=["service", "messages", "recipients", "leaking", "last_event",
                                     "recipients_per_message"])
    g = traffic.groupby("service", as_index=False).agg(
        messages=("messages", "sum"), recipients=("recipients", "sum"), leaking=("leaking", "sum"),
        last_event=("last_event", "max"))
    g["recipients_per_message"] = g["recipients"] / g["messages"].where(g["messages"] > 0)
    return g.sort_values(["messages", "service"], ascending=[False, True]).reset_index(drop=True)


def recent_rate(traffic: pd.DataFrame, now_s: float, window_s: int, column: str = "messages") -> float:
    """Per-second rate over the last ``window_s`` of complete buckets before ``now_s`` (all services)."""
    if traffic.empty:
        return 0.0
    t = epoch_s(traffic["time"])
    recent = traffic[(t >= now_s - window_s) & (t < now_s)]
    return float(recent[column].sum()) / float(window_s)


def weighted_quantile(values, weights, q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total (exact on a histogram)."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    if v.size == 0 or w.sum() <= 0:
        return math.nan
    order = np.argsort(v)
    v, w = v[order], w[order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, q * cum[-1], side="left")])


def per_minute_rates(minutes: pd.DataFrame, service: str, until_s: int) -> np.ndarray:
    """Messages of every minute from the service's first active minute to ``until_s``, quiet ones as 0."""
    m = minutes[minutes["service"] == service]
    if m.empty:
        return np.zeros(0)
    t = epoch_s(m["time"]).to_numpy()
    first = int(t.min())
    n = max(1, (int(until_s) - first) // 60)
    counts = np.zeros(n)
    idx = (t - first) // 60
    keep = idx < n
    np.add.at(counts, idx[keep], m["messages"].to_numpy()[keep])
    return counts


def service_baselines(minutes: pd.DataFrame, distribution: pd.DataFrame, until_s: int) -> pd.DataFrame:
    """One row per service: volume, messages-per-minute quantiles (quiet minutes included),
    recipients-per-message quantiles, share of copies showing strangers.
    """
    rows = []
    for service in sorted(set(minutes["service"])):
        m = minutes[minutes["service"] == service]
        rates = per_minute_rates(minutes, service, until_s)
        d = distribution[distribution["service"] == service]
        messages = int(m["messages"].sum())
        rows.append({
            "service": service,
            "messages": messages,
            "recipients": int(m["recipients"].sum()),
            "per_min_median": float(np.median(rates)) if rates.size else 0.0,
            "per_min_p95": float(np.quantile(rates, 0.95)) if rates.size else 0.0,
            "per_min_p99": float(np.quantile(rates, 0.99)) if rates.size else 0.0,
            "per_min_max": float(rates.max()) if rates.size else 0.0,
            "rcpt_p50": weighted_quantile(d["recipients_per_message"], d["messages"], 0.5),
            "rcpt_p99": weighted_quantile(d["recipients_per_message"], d["messages"], 0.99),
            "rcpt_max": float(d["recipients_per_message"].max()) if not d.empty else math.nan,
            "leaking": int(m["leaking"].sum()),
            "last_active": m["time"].max(),
        })
    return pd.DataFrame(rows, columns=["service", "messages", "recipients", "per_min_median", "per_min_p95",
                                       "per_min_p99", "per_min_max", "rcpt_p50", "rcpt_p99", "rcpt_max", "leaking",
                                       "last_active"])


def hourly_average(profile: pd.DataFrame, service: str) -> pd.DataFrame:
    """Average messages per hour of day (UTC) for one service: all 24 hours, quiet ones as 0."""
    p = profile[profile["service"] == service]
    out = pd.DataFrame({"hour": range(24)})
    if p.empty:
        out["messages"] = 0.0
        return out
    # Divide by the days the service was active at all, so a quiet night counts as a quiet hour.
    avg = p.groupby("hour")["messages"].sum() / max(1, int(p["days"].max()))
    out["messages"] = out["hour"].map(avg).fillna(0.0)
    return out
