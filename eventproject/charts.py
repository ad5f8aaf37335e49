"""Pictures for the admin as server-rendered SVG: no script, no CDN, nothing to download.

Each function takes figures already read (selectors do the reading) and returns markup safe to
put in a template. Every picture has role="img" and a label; each mark carries a <title>, which
browsers show as a tooltip and screen readers read.
"""

import bisect
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _

COLORS = {
    "succeeded": "#2e7d32",
    "failed": "#ba2121",
    "cancelled": "#999",
    "left": "#c9dbe5",
    "conversion": "#2e7d32",
    "engagement": "#417690",
    "behavior": "#8a8a8a",
}
# Behaviours further apart than this start a new session on the user timeline; the gap between two
# sessions is drawn as a narrow break, so a month of history still shows each session readably.
SESSION_GAP = timedelta(hours=2)


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 10 else f"{value:,.2f}"


def status_badge(status: str, name: str) -> SafeString:
    """A status in lists, in its colour (jobs/admin.css's job-status-<status>), as people read it."""
    return format_html('<span class="job-status job-status-{}">{}</span>', status, name)


def progress_bar(percent: float, color: str = "#417690") -> SafeString:
    """A small bar for lists, its value told to screen readers (role="progressbar")."""
    return format_html(
        '<div class="job-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{}" '
        'title="{}%"><div style="width:{}%;background:{}"></div></div> {}%',
        round(percent, 1),
        percent,
        min(percent, 100),
        color,
        round(percent, 1),
    )


def _join(pieces: Sequence[SafeString]) -> SafeString:
    return format_html_join("", "{}", ((piece,) for piece in pieces))


def _f(value: float) -> str:
    """A coordinate (format_html escapes its arguments to text, so numbers come formatted)."""
    return f"{value:.1f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def throughput_svg(series: dict[str, Any]) -> SafeString:
    """Bars of users finished per second in each interval, the average as a dashed line."""
    points = series["points"]
    if not points:
        return format_html('<p class="help">{}</p>', _("The job has not started yet."))
    width, height, left, bottom, top = 640, 170, 52, 22, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max(series["peak"], series["average"]) or 1.0  # the top of the scale: both lines fit
    bar_w = plot_w / len(points)
    step = series["step_seconds"]
    bars = format_html_join(
        "",
        '<rect class="chart-bar" x="{}" y="{}" width="{}" height="{}" fill="#417690">'
        "<title>{}</title></rect>",
        (
            (
                _f(left + i * bar_w + 0.5),
                _f(top + plot_h - plot_h * p["rate"] / peak),
                _f(max(bar_w - 1, 0.5)),
                _f(plot_h * p["rate"] / peak),
                _("%(start)s–%(end)s: %(count)s users, %(rate)s users/s")
                % {
                    "start": _clock(p["seconds"]),
                    "end": _clock(p["seconds"] + step),
                    "count": f"{p['count']:,}",
                    "rate": _number(p["rate"]),
                },
            )
            for i, p in enumerate(points)
        ),
    )
    average_y = top + plot_h - plot_h * min(series["average"] / peak, 1.0)
    label = _("Throughput: %(average)s users/s on average, %(peak)s at most, per %(step)s s interval") % {
        "average": _number(series["average"]),
        "peak": _number(series["peak"]),
        "step": step,
    }
    return format_html(
        '<svg class="chart chart-throughput" viewBox="0 0 {w} {h}" role="img" aria-label="{label}">'
        "<title>{label}</title>"
        '<line x1="{left}" y1="{top}" x2="{right}" y2="{top}" class="chart-grid"/>'
        '<line x1="{left}" y1="{base}" x2="{right}" y2="{base}" class="chart-axis"/>'
        '<text x="{lx}" y="{ty}" text-anchor="end" class="chart-label">{peak}</text>'
        '<text x="{lx}" y="{base}" text-anchor="end" class="chart-label">0</text>'
        '<text x="{lx}" y="{unit_y}" text-anchor="end" class="chart-label">{unit}</text>'
        "{bars}"
        '<line x1="{left}" y1="{ay}" x2="{right}" y2="{ay}" class="chart-average"/>'
        '<text x="{right}" y="{aty}" text-anchor="end" class="chart-label chart-average-label">{avg}</text>'
        '<text x="{left}" y="{xy}" class="chart-label">0:00:00</text>'
        '<text x="{right}" y="{xy}" text-anchor="end" class="chart-label">{end}</text>'
        "</svg>",
        w=width,
        h=height,
        label=label,
        left=left,
        right=width - 8,
        top=top,
        base=top + plot_h,
        lx=left - 4,
        ty=top + 4,
        unit_y=top + 16,
        unit=_("users/s"),
        peak=_number(peak),
        bars=bars,
        ay=_f(average_y),
        aty=_f(max(average_y - 3, top + 10)),
        avg=_("average %(rate)s") % {"rate": _number(series["average"])},
        xy=height - 6,
        end=_clock(len(points) * step),
    )


def stacked_bar_svg(parts: Sequence[dict[str, Any]], *, label: str, names: dict[str, str]) -> SafeString:
    """One bar split by share, e.g. a job's users by outcome; `names` translates each part's key."""
    total = sum(part["count"] for part in parts) or 1
    width, x, rects = 640, 0.0, []
    for part in parts:
        share = width * part["count"] / total
        if share <= 0:
            continue
        rects.append(
            format_html(
                '<rect x="{}" y="0" width="{}" height="22" fill="{}"><title>{}: {} ({}%)</title></rect>',
                _f(x),
                _f(share),
                COLORS.get(part["outcome"], "#417690"),
                names.get(part["outcome"], part["outcome"]),
                f"{part['count']:,}",
                round(100 * part["count"] / total, 1),
            )
        )
        x += share
    return format_html(
        '<svg class="chart chart-mix" viewBox="0 0 {} 22" preserveAspectRatio="none" role="img" '
        'aria-label="{}"><title>{}</title>{}</svg>',
        width,
        label,
        label,
        _join(rects),
    )


def horizontal_bars_svg(rows: Sequence[dict[str, Any]], *, label: str) -> SafeString:
    """Labelled bars, one per row ({"label", "count", "color"}), longest first as given."""
    if not rows:
        return format_html('<p class="help">{}</p>', _("Nothing to count."))
    row_h, left, width = 20, 170, 640
    peak = max(row["count"] for row in rows) or 1
    bars = format_html_join(
        "",
        '<g><text x="{lx}" y="{ty}" text-anchor="end" class="chart-label">{name}</text>'
        '<rect x="{left}" y="{y}" width="{w}" height="{h}" fill="{color}">'
        "<title>{name}: {count}</title></rect>"
        '<text x="{cx}" y="{ty}" class="chart-label">{count}</text></g>',
        (
            {
                "lx": left - 6,
                "ty": i * row_h + 14,
                "name": row["label"],
                "left": left,
                "y": i * row_h + 3,
                "w": _f(max((width - left - 70) * row["count"] / peak, 1)),
                "h": row_h - 6,
                "color": row["color"],
                "count": f"{row['count']:,}",
                "cx": _f(left + max((width - left - 70) * row["count"] / peak, 1) + 4),
            }
            for i, row in enumerate(rows)
        ),
    )
    return format_html(
        '<svg class="chart chart-bars" viewBox="0 0 {} {}" role="img" aria-label="{}">'
        "<title>{}</title>{}</svg>",
        width,
        len(rows) * row_h + 4,
        label,
        label,
        bars,
    )


class SessionScale:
    """Time to x for a timeline: sessions (moments closer than SESSION_GAP) keep their proportions,
    the empty time between them shrinks to a fixed break."""

    BREAK = 14

    def __init__(self, moments: Sequence[datetime], x0: float, width: float):
        moments = sorted(moments)
        sessions: list[list[datetime]] = []
        for moment in moments:
            if sessions and moment - sessions[-1][1] <= SESSION_GAP:
                sessions[-1][1] = max(sessions[-1][1], moment)
            else:
                sessions.append([moment, moment])
        self.starts = [start for start, _ in sessions]
        self.sessions = sessions
        room = width - self.BREAK * (len(sessions) - 1)
        lengths = [max((end - start).total_seconds(), 0.0) for start, end in sessions]
        floor = room * 0.3 / len(sessions)  # every session visible, however short
        spread = sum(lengths) or 1.0
        self.widths = [floor + (room * 0.7) * length / spread for length in lengths]
        self.x0s, x = [], x0
        for w in self.widths:
            self.x0s.append(x)
            x += w + self.BREAK

    def __call__(self, moment: datetime) -> float:
        i = max(bisect.bisect_right(self.starts, moment) - 1, 0)
        start, end = self.sessions[i]
        length = (end - start).total_seconds()
        offset = min(max((moment - start).total_seconds(), 0.0), length)
        return self.x0s[i] + (self.widths[i] * offset / length if length else self.widths[i] / 2)


def timeline_svg(behaviors: Sequence, events: Sequence) -> SafeString:
    """A user's behaviours as marks on one row per action, and its events as spans over them on
    one row per event type (coloured by category), each linked to its row in the tables below."""
    moments = [b.occurred_at for b in behaviors] + [m for e in events for m in (e.starts_at, e.ends_at)]
    if not moments:
        return format_html('<p class="help">{}</p>', _("Nothing to draw."))
    width, left, row_h, top = 1000, 150, 18, 26
    scale = SessionScale(moments, left, width - left - 10)
    event_rows = list(dict.fromkeys(e.event_type for e in events))
    action_rows = list(dict.fromkeys(sorted(b.action for b in behaviors)))
    rows = {("e", name): i for i, name in enumerate(event_rows)}
    rows.update({("b", name): len(event_rows) + i for i, name in enumerate(action_rows)})
    height = top + row_h * len(rows) + 8
    labels = []
    for (kind, name), i in rows.items():
        y = top + i * row_h
        labels.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="end" class="chart-label timeline-{}">{}</text>'
                '<line x1="{}" y1="{}" x2="{}" y2="{}" class="chart-grid"/>',
                left - 6,
                y + 13,
                "event" if kind == "e" else "action",
                name,
                left,
                y + row_h,
                width - 10,
                y + row_h,
            )
        )
    marks = []
    for event in events:
        x1, x2 = scale(event.starts_at), scale(event.ends_at)
        context = ", ".join(f"{key}={value}" for key, value in (event.context or {}).items())
        marks.append(
            format_html(
                '<a href="#e-{}"><rect class="timeline-event timeline-{}" x="{}" y="{}" width="{}" '
                'height="{}" rx="3" fill="{}"><title>#{} {} ({}, {}) {} – {}{}</title></rect></a>',
                event.sequence,
                event.category,
                _f(x1 - 2 if x2 - x1 < 4 else x1),
                top + rows[("e", event.event_type)] * row_h + 3,
                _f(max(x2 - x1, 4)),
                row_h - 6,
                COLORS.get(event.category, "#417690"),
                event.sequence,
                event.label or event.event_type,
                event.event_type,
                event.get_category_display(),
                timezone.localtime(event.starts_at).strftime("%Y-%m-%d %H:%M:%S"),
                timezone.localtime(event.ends_at).strftime("%H:%M:%S"),
                f" · {context}" if context else "",
            )
        )
    for behavior in behaviors:
        x = scale(behavior.occurred_at)
        marks.append(
            format_html(
                '<a href="#b-{}"><rect class="timeline-behavior" x="{}" y="{}" width="3" height="{}" '
                'fill="{}"><title>{} {} {}</title></rect></a>',
                behavior.id,
                _f(x - 1.5),
                top + rows[("b", behavior.action)] * row_h + 4,
                row_h - 8,
                COLORS["behavior"],
                timezone.localtime(behavior.occurred_at).strftime("%Y-%m-%d %H:%M:%S"),
                behavior.action,
                behavior.item,
            )
        )
    ticks, labelled_x = [], None
    for i, (start, _end) in enumerate(scale.sessions):
        if labelled_x is not None and scale.x0s[i] - labelled_x < 90:
            continue  # no room for another date
        labelled_x = scale.x0s[i]
        ticks.append(
            format_html(
                '<text x="{}" y="14" class="chart-label">{}</text>'
                '<line x1="{}" y1="18" x2="{}" y2="{}" class="chart-session"/>',
                _f(scale.x0s[i]),
                timezone.localtime(start).strftime("%m-%d %H:%M"),
                _f(scale.x0s[i]),
                _f(scale.x0s[i]),
                height - 8,
            )
        )
    if event_rows and action_rows:  # events above, behaviours below
        divider_y = top + len(event_rows) * row_h
        labels.append(
            format_html(
                '<line x1="6" y1="{}" x2="{}" y2="{}" class="timeline-divider"/>',
                divider_y,
                width - 10,
                divider_y,
            )
        )
    label = _("Timeline: %(behaviors)s behaviours and %(events)s events in %(sessions)s sessions") % {
        "behaviors": len(behaviors),
        "events": len(events),
        "sessions": len(scale.sessions),
    }
    return format_html(
        '<svg class="chart chart-timeline" viewBox="0 0 {} {}" role="img" aria-label="{}"><title>{}</title>'
        "{}{}{}</svg>",
        width,
        height,
        label,
        label,
        _join(ticks),
        _join(labels),
        _join(marks),
    )
