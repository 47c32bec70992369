"""Batch 2 (added after batch 1 was split, split on its own): sending rhythms over days and weeks.

Issue 13 asks spike detection to learn known schedules (weekly, monthly, weekday/weekend shape) while a
real surge of the same service at another time still alerts; these patterns give the catalogue such
series. They were written and split before anyone ran a detector on them.
"""

from __future__ import annotations

from .base import BENIGN, DAY_MS, HOUR_MS, MIN_MS, T0_MS, WEEK_MS, Gen, pattern, per_recipient_blast, transactional


@pattern("spike", batch=2)
def weekly_blast_then_off_schedule_surge(g: Gen, s: float) -> None:
    """A weekly newsletter every Thursday 10:00 UTC for three weeks (400 subscribers, a campaign per
    week), then on the fourth Sunday at 02:00 the same service sends ~1,500 messages in five minutes
    with no campaign (the subscriber list replayed through a leaked API key): the schedule is known,
    the surge is not on it."""
    sender = "Letters <letters@weekly2.example>"
    subs = g.people(g.n(400))
    transactional(g, "weekly2", sender, T0_MS, 27.0, 60)
    for w in range(3):
        per_recipient_blast(g, "weekly2", sender, T0_MS + w * WEEK_MS + 3 * DAY_MS + 10 * HOUR_MS, subs,
                            campaign=f"letters-{w + 1}", per_s=12.0)
    t0 = T0_MS + 3 * WEEK_MS + 6 * DAY_MS + 2 * HOUR_MS
    for t in g.spread(t0, g.n(1500, 300), 5.0):
        r = g.person()
        g.emit(t, "weekly2", sender, g.named(r), [r], template="newsletter", leak=True)


@pattern("spike", batch=2)
def digest_scheduler_loop(g: Gen, s: float) -> None:
    """A daily digest at 07:00 UTC (250 subscribers) for three days; on the fourth day a scheduler bug
    (a cron expression ``*/5`` instead of ``5``) re-sends the whole digest every five minutes from
    13:00: a known daily run, repeated at hours it never ran."""
    sender = "Digest <digest@news2.example>"
    subs = g.people(g.n(250))
    transactional(g, "news2", sender, T0_MS, 4.0, 120, template="notify")
    for d in range(4):
        per_recipient_blast(g, "news2", sender, T0_MS + d * DAY_MS + 7 * HOUR_MS, subs,
                            campaign=f"digest-{d + 2:02d}", per_s=10.0, template="digest")
    start = T0_MS + 3 * DAY_MS + 13 * HOUR_MS
    for k in range(6):
        for t, r in zip(g.spread(start + k * 5 * MIN_MS, len(subs), 10.0), subs):
            g.emit(t, "news2", sender, g.named(r), [r], campaign="digest-05", template="digest", leak=True)


@pattern(BENIGN, batch=2)
def weekday_weekend_b2b(g: Gen, s: float) -> None:
    """B2B invoicing over three weeks: busy on weekdays 08:00-18:00 UTC with a Monday-morning backlog
    peak, about a tenth of that at weekends (the weekday/weekend shape of business mail), one To per
    copy."""
    sender = "Billing <billing@b2b.example>"
    for day in range(21):
        weekend = day % 7 >= 5
        per_day = 25 if weekend else 220
        for t in g.daily_times(T0_MS + day * DAY_MS, 1.0, per_day, peak_hour=12.0, night_share=0.05):
            r = g.person(g.rng.choice(("client-1.example", "client-2.example", "firma-3.example", "gmail.com")))
            g.emit(t, "b2b", sender, g.named(r), [r], template="invoice")
        if day % 7 == 0:
            for t in g.spread(T0_MS + day * DAY_MS + 8 * HOUR_MS, g.n(150), 0.5):
                r = g.person("client-1.example")
                g.emit(t, "b2b", sender, g.named(r), [r], template="invoice")


@pattern(BENIGN, batch=2)
def biweekly_payroll(g: Gen, s: float) -> None:
    """Payslip notifications every other Friday 16:00 UTC to 300 employees' private addresses (payroll
    providers such as ADP send to the address on file), between light HR mail: a run seen once before
    is expected again two weeks later."""
    sender = "Payroll <payroll@hr-provider.example>"
    staff = g.people(g.n(300))
    transactional(g, "payroll", sender, T0_MS, 26.0, 30, template="hr")
    for k in range(2):
        per_recipient_blast(g, "payroll", sender, T0_MS + 4 * DAY_MS + k * 2 * WEEK_MS + 16 * HOUR_MS, staff,
                            campaign=f"payslip-{k + 1}", per_s=6.0, template="payslip")


@pattern(BENIGN, batch=2)
def group_notification_growth(g: Gen, s: float) -> None:
    """A team-chat service's mention notifications as teams grow: each notification goes to the
    members of a channel (To = the members, all envelope recipients, one company domain per message),
    channel sizes growing from 2-3 to 6-9 over three days: ordinary growth, not a jump."""
    sender = "Chat <notify@teamchat.example>"
    for t in g.daily_times(T0_MS, 3.0, 500):
        day = (t - T0_MS) / DAY_MS
        k = g.rng.randint(2 + int(day * 1.5), 3 + int(day * 2))
        dom = g.rng.choice(("startup-a.example", "startup-b.example", "agency-c.example"))
        ppl = g.people(k, dom)
        g.emit(t, "teamchat", sender, ", ".join(g.named(p) for p in ppl), ppl, template="mention")
