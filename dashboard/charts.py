"""Altair chart specs for the pages: one look everywhere (UTC time axes, one colour per service).

Charts take plain frames from ``queries``/``stats`` and return Altair objects, so the pages stay
declarative and Vega renders every label as text (nothing here is HTML).
"""

from __future__ import annotations

from typing import Sequence

import altair as alt
import pandas as pd

# Tableau-10: distinguishable, colour-blind friendly enough, and stable per service name order.
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
LEAK = "#d62728"
NORMAL = "#9aa5b1"
HEIGHT = 260


def service_scale(services: Sequence[str]) -> alt.Scale:
    names = sorted(set(services))
    return alt.Scale(domain=names, range=[PALETTE[i % len(PALETTE)] for i in range(len(names))])


def rate_by_service(df: pd.DataFrame, value: str, title: str, services: Sequence[str],
                    time_format: str = "%H:%M") -> alt.Chart:
    """Lines of ``value`` per service over time (long frame: time, service, value)."""
    scale = service_scale(services)
    return (
        alt.Chart(df)
        .mark_line(strokeWidth=1.6)
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format=time_format, labelAngle=0, grid=False)),
            y=alt.Y(f"{value}:Q", title=title, axis=alt.Axis(format="~s")),
            color=alt.Color("service:N", scale=scale, legend=alt.Legend(orient="right", title=None, labelLimit=110)),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M UTC"), "service:N",
                     alt.Tooltip(f"{value}:Q", format=",.2f", title=title)],
        )
        .properties(height=HEIGHT)
    )


def _x(time_format: str, domain: tuple | None) -> alt.X:
    scale = alt.Scale(domain=[pd.Timestamp(d).isoformat() for d in domain]) if domain else alt.Undefined
    return alt.X("time:T", title=None, scale=scale, axis=alt.Axis(format=time_format, labelAngle=0, grid=False))


def leak_timeline(df: pd.DataFrame, time_format: str = "%H:%M", domain: tuple | None = None) -> alt.Chart:
    """Stacked bars per bucket: copies of the service/campaign, leaking ones in red."""
    long = df.assign(normal=(df["messages"] - df["leaking"]).clip(lower=0)).melt(
        id_vars=["time"], value_vars=["normal", "leaking"], var_name="copies", value_name="count")
    long["copies"] = long["copies"].map({"normal": "other copies", "leaking": "leaking copies"})
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            x=_x(time_format, domain),
            y=alt.Y("count:Q", title="copies per bucket", stack="zero"),
            color=alt.Color("copies:N", scale=alt.Scale(domain=["other copies", "leaking copies"],
                                                        range=[NORMAL, LEAK]),
                            legend=alt.Legend(orient="bottom", title=None)),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M UTC"), "copies:N", "count:Q"],
        )
        .properties(height=HEIGHT)
    )


def exposure_growth(first_seen: pd.Series, bucket_s: int, time_format: str = "%H:%M",
                    domain: tuple | None = None) -> alt.Chart:
    """Distinct exposed addresses over time, cumulative (from each address's first exposure)."""
    t = first_seen.dt.floor(f"{int(bucket_s)}s")
    counts = t.value_counts().sort_index()
    d = pd.DataFrame({"time": counts.index, "total": counts.cumsum().to_numpy()})
    start = pd.DataFrame({"time": [d["time"].min() - pd.Timedelta(seconds=bucket_s)], "total": [0]})
    d = pd.concat([start, d], ignore_index=True)
    base = alt.Chart(d).encode(
        x=_x(time_format, domain),
        y=alt.Y("total:Q", title="addresses exposed (cumulative)"),
        tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M UTC"), alt.Tooltip("total:Q", title="addresses",
                                                                                 format=",")],
    )
    return (base.mark_area(interpolate="step-after", color=LEAK, opacity=0.15)
            + base.mark_line(interpolate="step-after", color=LEAK, strokeWidth=2)
            + base.mark_point(color=LEAK, filled=True, size=30)).properties(height=HEIGHT)


def per_minute(df: pd.DataFrame, color: str = PALETTE[0]) -> alt.Chart:
    """Messages per minute of one service (frame: time, messages)."""
    return (
        alt.Chart(df)
        .mark_line(color=color, strokeWidth=1.2)
        .encode(
            x=alt.X("time:T", title=None, axis=alt.Axis(format="%a %H:%M", labelAngle=0, grid=False)),
            y=alt.Y("messages:Q", title="messages / min"),
            tooltip=[alt.Tooltip("time:T", format="%Y-%m-%d %H:%M UTC"), "messages:Q"],
        )
        .properties(height=HEIGHT)
    )


def hour_of_day(df: pd.DataFrame, color: str = PALETTE[0]) -> alt.Chart:
    return (
        alt.Chart(df)
        .mark_bar(color=color)
        .encode(
            x=alt.X("hour:O", title="hour of day (UTC)", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("messages:Q", title="messages / hour (avg)"),
            tooltip=["hour:O", alt.Tooltip("messages:Q", format=",.1f")],
        )
        .properties(height=HEIGHT)
    )


def recipients_histogram(df: pd.DataFrame, color: str = PALETTE[0]) -> alt.Chart:
    """Messages by recipients per message (frame: recipients_per_message, messages)."""
    return (
        alt.Chart(df)
        .mark_bar(color=color)
        .encode(
            x=alt.X("recipients_per_message:O", title="envelope recipients per message", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("messages:Q", title="messages (square-root scale)", scale=alt.Scale(type="sqrt")),
            tooltip=[alt.Tooltip("recipients_per_message:O", title="recipients"),
                     alt.Tooltip("messages:Q", format=",")],
        )
        .properties(height=HEIGHT)
    )
