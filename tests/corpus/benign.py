"""Benign patterns: ordinary sending practice that must raise no alert of any kind.

Each generator's docstring names the practice and where it is specified or observed. Services have
a day or more of ordinary history before the pattern of interest, so spike detectors see a baseline.
"""

from __future__ import annotations

from .base import BENIGN, DAY_MS, HOUR_MS, MIN_MS, T0_MS, WEEK_MS, Gen, pattern, per_recipient_blast, transactional


def _chunks(xs: list, k: int) -> list[list]:
    return [xs[i:i + k] for i in range(0, len(xs), k)]


# --- one copy per recipient -----------------------------------------------------------------------

@pattern(BENIGN)
def transactional_daily_rhythm(g: Gen, s: float) -> None:
    """Receipts and password resets with a day/night rhythm, To = the customer (Amazon SES / Postmark
    transactional streams): two days, busiest in the afternoon, near-silent at night."""
    transactional(g, "receipts", "Shop <orders@shop.example>", T0_MS, 2.0, 900, "receipt")


@pattern(BENIGN)
def ses_one_copy_per_recipient(g: Gen, s: float) -> None:
    """A newsletter sent through Amazon SES ``SendEmail`` in a loop: one API call, one copy, one To per
    subscriber (the AWS SES developer guide's bulk advice), at the account's 14 msg/s send rate, after a
    day of transactional mail from the same service."""
    transactional(g, "news-ses", "Acme News <news@acme-news.example>", T0_MS, 1.0, 300)
    per_recipient_blast(g, "news-ses", "Acme News <news@acme-news.example>", T0_MS + DAY_MS + 9 * HOUR_MS,
                        g.people(g.n(600)), campaign="2026-03-weekly", per_s=14.0)


@pattern(BENIGN)
def sendgrid_personalizations(g: Gen, s: float) -> None:
    """SendGrid v3 mail/send with one ``personalizations`` entry per recipient: SendGrid turns each
    into its own message, To = that recipient; some personalizations address a household of two
    (both in To, both envelope recipients), as SendGrid's docs show for "to": [a, b]."""
    transactional(g, "promo-sg", "Deals <deals@promo.example>", T0_MS, 1.0, 200)
    t0 = T0_MS + DAY_MS + 10 * HOUR_MS
    for t in g.spread(t0, g.n(500), 25.0):
        if g.rng.random() < 0.1:
            a, b = g.person(), g.person()
            g.emit(t, "promo-sg", "Deals <deals@promo.example>", f"{g.named(a)}, {g.named(b)}", [a, b],
                   campaign="spring-sale")
        else:
            a = g.person()
            g.emit(t, "promo-sg", "Deals <deals@promo.example>", g.named(a), [a], campaign="spring-sale")


@pattern(BENIGN)
def mail_merge_one_to(g: Gen, s: float) -> None:
    """Mail merge (Word/Outlook, GMass, YAMM): one message per spreadsheet row, To = that row's address,
    personalised body; sent by a small firm's account over 20 minutes at the provider's pace."""
    transactional(g, "merge-firm", "Kanzlei Weber <info@weber-law.example>", T0_MS, 1.0, 60)
    rcpts = g.people(g.n(150))
    for t, r in zip(g.spread(T0_MS + DAY_MS + 8 * HOUR_MS, len(rcpts), 0.15), rcpts):
        g.emit(t, "merge-firm", "Kanzlei Weber <info@weber-law.example>", g.named(r), [r], template="merge")


@pattern(BENIGN)
def mail_merge_cc_own_manager(g: Gen, s: float) -> None:
    """Account-manager mail merge: each customer's copy Cc's the sender's own account manager (a
    staff address at the sender's domain), a common CRM setting (Salesforce/HubSpot "Cc owner")."""
    transactional(g, "crm", "Acme Sales <sales@acme.example>", T0_MS, 1.0, 150)
    mgrs = [f"{n}@acme.example" for n in ("j.berg", "m.roth", "s.klein")]
    rcpts = g.people(g.n(200))
    for t, r in zip(g.spread(T0_MS + DAY_MS + 9 * HOUR_MS, len(rcpts), 2.0), rcpts):
        m = g.rng.choice(mgrs)
        g.emit(t, "crm", "Acme Sales <sales@acme.example>", g.named(r), [r, m], cc=g.named(m), campaign="renewal-q2")


@pattern(BENIGN)
def daily_digest(g: Gen, s: float) -> None:
    """A daily digest (GitHub/Discourse style) at 07:00 UTC every day, one copy per subscriber, a new
    campaign id per day, three days, with small notification traffic in between."""
    subs = g.people(g.n(250))
    transactional(g, "digest", "Forum <noreply@forum.example>", T0_MS, 3.0, 150, template="notify")
    for d in range(3):
        per_recipient_blast(g, "digest", "Forum <noreply@forum.example>", T0_MS + d * DAY_MS + 7 * HOUR_MS,
                            subs, campaign=f"digest-{d + 2:02d}", per_s=10.0, template="digest")


@pattern(BENIGN)
def weekly_blast_tuesday(g: Gen, s: float) -> None:
    """A weekly newsletter every Tuesday 09:00 UTC for three weeks, a new campaign each week, the same
    ~400 subscribers (Mailchimp's most common schedule), over light transactional mail."""
    subs = g.people(g.n(400))
    transactional(g, "weekly", "Weekly <hello@weekly.example>", T0_MS, 21.0, 80)
    for w in range(3):
        per_recipient_blast(g, "weekly", "Weekly <hello@weekly.example>", T0_MS + w * WEEK_MS + DAY_MS + 9 * HOUR_MS,
                            subs, campaign=f"weekly-{w + 1}", per_s=12.0)


@pattern(BENIGN)
def monthly_statements(g: Gen, s: float) -> None:
    """Monthly account statements on the 1st at 06:00 UTC (banks, utilities), one per customer, two
    months, between days of ordinary notices; the run is several times the daily volume."""
    custs = g.people(g.n(500))
    start = T0_MS - DAY_MS  # 2026-03-01
    transactional(g, "statements", "Bank <statements@bank.example>", start, 32.0, 40, template="notice")
    for m, day in enumerate((0, 31)):
        per_recipient_blast(g, "statements", "Bank <statements@bank.example>", start + day * DAY_MS + 6 * HOUR_MS,
                            custs, campaign=f"statement-{m + 3:02d}", per_s=8.0, template="statement")


@pattern(BENIGN)
def transactional_gradual_growth(g: Gen, s: float) -> None:
    """A shop's order confirmations during a sale: volume climbs over a few hours to ~3x the usual
    afternoon (Black Friday curves reported by ESPs), one To per copy."""
    transactional(g, "orders", "Shop <orders@bigshop.example>", T0_MS, 2.0, 700)
    base = T0_MS + 2 * DAY_MS + 8 * HOUR_MS
    for h in range(6):
        for t in g.daily_times(base + h * HOUR_MS, 1 / 24, int(700 * (1.3 + 0.35 * h))):
            r = g.person()
            g.emit(t, "orders", "Shop <orders@bigshop.example>", g.named(r), [r], template="receipt")


@pattern(BENIGN)
def idn_domains(g: Gen, s: float) -> None:
    """Internationalised domain names (RFC 5890/5891): recipients at IDN domains written as A-labels
    (``xn--``) or U-labels (``müller.de``, ``例え.jp``), one copy each."""
    doms = ("müller-bau.de", "xn--mller-bau-q9a.de", "例え.jp", "xn--r8jz45g.jp", "café.fr", "köln.de", "ñandú.es")
    sender = "Registry <notice@registry.example>"
    transactional(g, "idn", sender, T0_MS, 1.0, 200)
    for t in g.spread(T0_MS + DAY_MS + 10 * HOUR_MS, g.n(300), 3.0):
        r = g.person(g.rng.choice(doms))
        g.emit(t, "idn", sender, g.named(r), [r], template="renewal")


@pattern(BENIGN)
def utf8_local_parts(g: Gen, s: float) -> None:
    """SMTPUTF8 / EAI addresses (RFC 6531, RFC 6532): UTF-8 local parts and display names in RFC 2047
    encoded words (``=?UTF-8?B?...?=``), one copy each, as Gmail and Outlook.com now accept."""
    locals_ = ("josé", "zoë", "søren", "françois", "дмитрий", "李雷", "ελένη", "jürgen", "ağa", "renée")
    sender = "=?UTF-8?Q?B=C3=BCcher?= <shop@buecher.example>"
    transactional(g, "eai", "Bücher <shop@buecher.example>", T0_MS, 1.0, 200)
    for t in g.spread(T0_MS + DAY_MS + 11 * HOUR_MS, g.n(300), 4.0):
        loc = g.rng.choice(locals_) + str(g.rng.randint(1, 999))
        r = f"{loc}@{g.rng.choice(('gmail.com', 'outlook.com', 'yandex.ru', 'qq.com'))}"
        to = f"=?UTF-8?B?SsO8cmdlbg==?= <{r}>" if g.rng.random() < 0.5 else r
        g.emit(t, "eai", sender, to, [r], template="order")


# --- groups, lists, aliases ---------------------------------------------------------------------

@pattern(BENIGN)
def undisclosed_recipients_group(g: Gen, s: float) -> None:
    """RFC 5322 §3.4 empty group ``undisclosed-recipients:;`` in To, recipients only in the envelope
    (Bcc), in submissions of 100 (a common MTA/ESP recipient limit per transaction)."""
    transactional(g, "members", "Club <board@club.example>", T0_MS, 1.0, 100)
    rcpts = g.people(g.n(800))
    t = T0_MS + DAY_MS + 18 * HOUR_MS
    for chunk in _chunks(rcpts, 100):
        g.emit(t, "members", "Club <board@club.example>", "undisclosed-recipients:;", chunk, campaign="agm-2026")
        t += 4000


@pattern(BENIGN)
def named_empty_group(g: Gen, s: float) -> None:
    """A named empty group (``Customers:;``, RFC 5322 §3.4 "group" with no members), as Thunderbird
    and some CRMs write when every recipient is Bcc; 50 per submission."""
    transactional(g, "notices", "Utility <notices@utility.example>", T0_MS, 1.0, 150)
    rcpts = g.people(g.n(400))
    t = T0_MS + DAY_MS + 14 * HOUR_MS
    for chunk in _chunks(rcpts, 50):
        g.emit(t, "notices", "Utility <notices@utility.example>", "Customers of Utility:;", chunk,
               campaign="outage-2026-03")
        t += 2500


@pattern(BENIGN)
def list_mail_rfc2369_chunks(g: Gen, s: float) -> None:
    """Mailing-list distribution (RFC 2369 List-Id/List-Post lists, Mailman/Sympa): To = the list
    address, the post's author in From, one SMTP transaction per chunk of subscribers."""
    subs = g.people(g.n(600))
    svc = "lists"
    for day in range(2):
        for t in g.daily_times(T0_MS + day * DAY_MS, 1.0, 12):
            author = g.person()
            for i, chunk in enumerate(_chunks(subs, 150)):
                g.emit(t + i * 2000, svc, g.named(author), "Users list <users@lists.project.example>", chunk,
                       template="list-post", message_id=None)


@pattern(BENIGN)
def list_mail_verp_per_subscriber(g: Gen, s: float) -> None:
    """Mailman 3 with VERP/personalisation: one copy per subscriber, To = the list address (or the
    author's Cc'd address in a thread reply), each copy a separate transaction."""
    subs = g.people(g.n(120))
    for t in g.daily_times(T0_MS, 2.0, 10):
        author = g.person()
        mid = g.message_id("lists.project.example")
        for i, r in enumerate(subs):
            g.emit(t + i * 150, "lists-verp", g.named(author), "dev@lists.project.example", [r],
                   message_id=mid, template="list-post")


@pattern(BENIGN)
def university_all_students(g: Gen, s: float) -> None:
    """A university announcement: To = its own list address (all-students@uni), the students (who
    share the university's domain) only in the envelope, 200 per transaction."""
    transactional(g, "uni", "Registrar <registrar@uni.example.edu>", T0_MS, 1.0, 200)
    studs = g.people(g.n(1000), "students.uni.example.edu")
    t = T0_MS + DAY_MS + 8 * HOUR_MS
    for chunk in _chunks(studs, 200):
        g.emit(t, "uni", "Registrar <registrar@uni.example.edu>", "All students <all-students@uni.example.edu>",
               chunk, campaign="exam-dates")
        t += 3000


@pattern(BENIGN)
def isp_customer_notices(g: Gen, s: float) -> None:
    """An ISP writing to its mailbox customers, who share its domain (customer@isp.example): one copy per
    customer, To = that customer (maintenance notices, Deutsche Telekom/Comcast style)."""
    sender = "ISP Service <service@isp.example>"
    for t in g.daily_times(T0_MS, 2.0, 300):
        r = g.person("isp.example")
        g.emit(t, "isp", sender, g.named(r), [r], template="billing")
    custs = g.people(g.n(400), "isp.example")
    per_recipient_blast(g, "isp", sender, T0_MS + 2 * DAY_MS + 7 * HOUR_MS, custs, campaign="maintenance-0304",
                        per_s=10.0)


@pattern(BENIGN)
def announcement_own_list_and_support_cc(g: Gen, s: float) -> None:
    """A product announcement: To = the sender's own list address, Cc = its own support mailbox, each
    copy delivered to one customer by Bcc (a common Outlook/HubSpot habit); neither visible address
    belongs to a customer (issue 12's critical false alarm)."""
    sender = "Acme <news@acme-soft.example>"
    transactional(g, "announce", sender, T0_MS, 1.0, 200)
    for t, r in zip(g.spread(T0_MS + DAY_MS + 15 * HOUR_MS, g.n(400), 8.0), g.people(g.n(400))):
        g.emit(t, "announce", sender, "Acme customers <customers@acme-soft.example>", [r],
               cc="Acme Support <support@acme-soft.example>", campaign="release-5-0")


@pattern(BENIGN)
def alias_expansion(g: Gen, s: float) -> None:
    """Alias/distribution-list expansion at the sender's MTA: To shows ``team@corp`` (a Postfix
    virtual alias / Exchange DL), the envelope holds the expanded members at the same domain."""
    members = g.people(12, "corp.example")
    for t in g.daily_times(T0_MS, 2.0, 40):
        g.emit(t, "corp-mail", g.named(g.person("partner.example")), "Team <team@corp.example>", members,
               template="relay")
    transactional(g, "corp-mail", "IT <it@corp.example>", T0_MS, 2.0, 100)


@pattern(BENIGN)
def bcc_to_self(g: Gen, s: float) -> None:
    """Bcc-by-self: To = the sender's own address, customers in Bcc (envelope only), the "send to
    yourself, Bcc the rest" advice of many help pages; 40 per message."""
    sender = "Yoga Studio <hello@yoga.example>"
    transactional(g, "studio", sender, T0_MS, 1.0, 40)
    clients = g.people(g.n(200))
    t = T0_MS + DAY_MS + 17 * HOUR_MS
    for chunk in _chunks(clients, 40):
        g.emit(t, "studio", sender, sender, ["hello@yoga.example"] + chunk, template="timetable")
        t += 60_000


@pattern(BENIGN)
def forwarding_srs(g: Gen, s: float) -> None:
    """Forwarding (.forward, SRS per the Sender Rewriting Scheme): the visible To is the old address
    (alumni/alias), the envelope is the forwarding target; one visible non-recipient per copy."""
    for t in g.daily_times(T0_MS, 2.0, 500):
        old = g.person("alumni.uni.example.edu")
        new = g.person()
        g.emit(t, "forwarder", g.named(g.person()), g.named(old), [new], template="forward")


@pattern(BENIGN)
def auto_replies(g: Gen, s: float) -> None:
    """Vacation auto-replies (RFC 3834 ``Auto-Submitted: auto-replied``): one reply to each sender, To =
    that sender, from staff mailboxes of one company, through the day."""
    staff = g.people(30, "corp2.example")
    for t in g.daily_times(T0_MS, 2.0, 400, peak_hour=11):
        who = g.rng.choice(staff)
        r = g.person() if g.rng.random() < 0.5 else g.person(g.rng.choice(("client1.example", "client2.example")))
        g.emit(t, "autoreply", g.named(who), g.named(r), [r], template="vacation", size=2000)


# --- people writing to people ---------------------------------------------------------------------

@pattern(BENIGN)
def reply_all_thread(g: Gen, s: float) -> None:
    """A reply-all thread among staff of four companies (a project with suppliers): each reply is one
    submission, To = the previous author, Cc = the rest, all envelope recipients; 30 threads over two days."""
    doms = ("corp3.example", "supplier-a.example", "supplier-b.example", "consult.example")
    for _ in range(g.n(30)):
        party = [g.person(d) for d in doms for _ in range(2)]
        t = T0_MS + int(g.rng.random() * 2 * DAY_MS)
        for _ in range(g.rng.randint(3, 8)):
            author = g.rng.choice([p for p in party if p.endswith("corp3.example")])
            others = [p for p in party if p != author]
            g.emit(t, "corp3-mail", g.named(author), g.named(others[0]), others,
                   cc=", ".join(g.named(o) for o in others[1:]), template="relay")
            t += int(g.rng.expovariate(1 / 1800) * 1000)


@pattern(BENIGN)
def reply_all_split_by_relay(g: Gen, s: float) -> None:
    """A reply-all that the sending relay splits into one transaction per recipient domain (Postfix
    ``smtp_destination_recipient_limit``/per-domain queues): same Message-ID, each copy shows the whole
    thread, siblings seconds apart."""
    doms = ("corp4.example", "gmail.com", "partner-x.example", "partner-y.example")
    for _ in range(g.n(40)):
        party = [g.person(d) for d in doms for _ in range(2)]
        author = party[0]
        others = party[1:]
        t = T0_MS + int(g.rng.random() * 2 * DAY_MS)
        mid = g.message_id("corp4.example")
        by_dom: dict[str, list[str]] = {}
        for o in others:
            by_dom.setdefault(o.rpartition("@")[2], []).append(o)
        for i, (_, rcpts) in enumerate(sorted(by_dom.items())):
            g.emit(t + i * 700, "corp4-mail", g.named(author), ", ".join(g.named(o) for o in others[:3]),
                   rcpts, cc=", ".join(g.named(o) for o in others[3:]), message_id=mid, template="relay")


@pattern(BENIGN)
def itip_invitation_single(g: Gen, s: float) -> None:
    """iTIP/iMIP calendar invitations (RFC 5546/6047) among three organisations: one REQUEST with every
    attendee in To, all of them envelope recipients, then updates and a CANCEL to the same attendees."""
    doms = ("corp5.example", "bank-b.example", "agency-c.example")
    for _ in range(g.n(25)):
        att = [g.person(d) for d in doms for _ in range(g.rng.randint(1, 3))]
        org = att[0]
        t = T0_MS + int(g.rng.random() * 2 * DAY_MS)
        for method in ("request", "update", "cancel")[: g.rng.randint(1, 3)]:
            g.emit(t, "calendar", g.named(org), ", ".join(g.named(a) for a in att[1:]), att[1:],
                   template=f"itip-{method}", size=9000)
            t += g.rng.randint(600, 20_000) * 1000


@pattern(BENIGN)
def itip_per_attendee_copies(g: Gen, s: float) -> None:
    """A calendar server (Exchange/Google Calendar) sending one invitation copy per attendee, each
    showing every attendee, same UID and Message-ID, copies within a second or two."""
    doms = ("corp6.example", "client-d.example", "client-e.example")
    for _ in range(g.n(30)):
        att = [g.person(d) for d in doms for _ in range(2)]
        org = att[0]
        t = T0_MS + int(g.rng.random() * 2 * DAY_MS)
        mid = g.message_id("calendar.corp6.example")
        to = ", ".join(g.named(a) for a in att[1:])
        for i, a in enumerate(att[1:]):
            g.emit(t + i * 300, "calendar-srv", g.named(org), to, [a], message_id=mid, template="itip-request")


@pattern(BENIGN)
def helpdesk_reply_with_cc(g: Gen, s: float) -> None:
    """Helpdesk replies (Zendesk/Freshdesk): To = the requester, Cc = the colleagues the requester
    copied in, all envelope recipients of one submission; plus ordinary one-To replies."""
    sender = "Support <support@saas.example>"
    for t in g.daily_times(T0_MS, 2.0, 400, peak_hour=13):
        dom = g.rng.choice(("gmail.com", "clientco.example", "firma.example", "outlook.com"))
        req = g.person(dom)
        cc = g.people(g.rng.choice((0, 0, 1, 2)), dom)
        g.emit(t, "helpdesk", sender, g.named(req), [req] + cc, cc=", ".join(g.named(c) for c in cc),
               template="ticket-reply")


@pattern(BENIGN)
def helpdesk_per_participant(g: Gen, s: float) -> None:
    """A ticketing system that sends one copy per ticket participant (each copy shows requester and
    CCs), same Message-ID, within a few seconds (Jira Service Management notification batching)."""
    sender = "Service Desk <desk@itsm.example>"
    for t in g.daily_times(T0_MS, 2.0, 150, peak_hour=10):
        dom = g.rng.choice(("clientco.example", "gmail.com"))
        ps = g.people(3, dom)
        mid = g.message_id("itsm.example")
        for i, p in enumerate(ps):
            g.emit(t + i * 800, "servicedesk", sender, g.named(ps[0]), [p], cc=", ".join(g.named(x) for x in ps[1:]),
                   message_id=mid, template="ticket-update")


@pattern(BENIGN)
def user_share_invitation(g: Gen, s: float) -> None:
    """User-initiated shares (Google Drive/Dropbox "share with", Doodle polls): a user of the service
    sends, through it, one message to the people that user chose (2-8 addresses, often free-mail),
    all in To and all envelope recipients; the From shows the service on behalf of the user."""
    for t in g.daily_times(T0_MS, 2.0, 600):
        k = g.rng.randint(1, 8)
        ppl = g.people(k)
        g.emit(t, "shares", '"Someone (via Docs)" <drive-shares-noreply@docs.example>',
               ", ".join(g.named(p) for p in ppl), ppl, template="share")


@pattern(BENIGN)
def user_invites_one_per_invitee(g: Gen, s: float) -> None:
    """Team invitations (Slack/Notion "invite teammates"): a user pastes 5-40 colleagues' addresses and
    the service sends one invitation per invitee, To = that invitee, seconds apart."""
    transactional(g, "invites", "Chat <no-reply@chat.example>", T0_MS, 1.0, 200, template="notify")
    for t in g.daily_times(T0_MS + DAY_MS, 1.0, 20):
        dom = g.rng.choice(("startup.example", "agency.example", "gmail.com", "school.example"))
        for i, p in enumerate(g.people(g.rng.randint(5, 40), dom)):
            g.emit(t + i * 500, "invites", "Chat <no-reply@chat.example>", g.named(p), [p], template="invite")


@pattern(BENIGN)
def household_two_recipients(g: Gen, s: float) -> None:
    """Joint-account mail: a bank or school writes to both holders/parents in one message, To = both
    (often on different providers), both envelope recipients; one copy per household."""
    sender = "School <office@school.example>"
    transactional(g, "school", sender, T0_MS, 1.0, 150)
    for t in g.spread(T0_MS + DAY_MS + 12 * HOUR_MS, g.n(300), 3.0):
        a, b = g.person(), g.person()
        g.emit(t, "school", sender, f"{g.named(a)}, {g.named(b)}", [a, b], campaign="parents-evening")


@pattern(BENIGN)
def mixed_case_and_angle_envelope(g: Gen, s: float) -> None:
    """Headers and envelope written differently for the same mailbox: ``"Doe, Jane" <Jane.Doe@GMail.com>``
    in To, ``<jane.doe@gmail.com>`` in RCPT TO (RFC 5321 §2.4: domains are case-insensitive, and mailers
    do lower-case local parts), quoted display names with commas, comments."""
    sender = "Insurer <policy@insure.example>"
    for t in g.daily_times(T0_MS, 2.0, 500):
        r = g.person()
        loc, _, dom = r.partition("@")
        style = g.rng.random()
        if style < 0.3:
            to = f'"{loc.split(".")[-1].capitalize()}, {loc.split(".")[0].capitalize()}" <{loc.capitalize()}@{dom.upper()}>'
        elif style < 0.6:
            to = f"{r} (customer)"
        else:
            to = f"<{r}>"
        g.emit(t, "insurer", sender, to, [f"<{r}>" if style < 0.5 else r], template="policy")


@pattern(BENIGN)
def folded_header_group_message(g: Gen, s: float) -> None:
    """A message to a small club committee written with a folded To (RFC 5322 §2.2.3 line folding)
    and a Cc, all recipients in one submission; a few per day."""
    comm = g.people(6)
    for t in g.daily_times(T0_MS, 3.0, 6):
        author = g.rng.choice(comm)
        others = [c for c in comm if c != author]
        to = ",\r\n ".join(g.named(o) for o in others[:3])
        g.emit(t, "club", g.named(author), to, others, cc=", ".join(g.named(o) for o in others[3:]), template="relay")


@pattern(BENIGN)
def noreply_bcc_batches(g: Gen, s: float) -> None:
    """A status-page incident notice: To = the service's own no-reply address, subscribers in Bcc in
    batches of 50 (Statuspage/Cachet via SMTP), several updates over an hour."""
    sender = "Status <noreply@status.example>"
    subs = g.people(g.n(300))
    transactional(g, "status", sender, T0_MS, 1.0, 30, template="confirm")
    t = T0_MS + DAY_MS + 3 * HOUR_MS
    for upd in range(4):
        for i, chunk in enumerate(_chunks(subs, 50)):
            g.emit(t + i * 1500, "status", sender, "noreply@status.example", chunk, campaign="incident-4711")
        t += 15 * MIN_MS


@pattern(BENIGN)
def internal_all_hands(g: Gen, s: float) -> None:
    """A company all-hands to every employee, visible in To (staff at the company's domains and its
    subsidiaries), all envelope recipients, one submission: an open list, but of colleagues."""
    doms = ("bigcorp.example", "bigcorp-labs.example", "bigcorp.de.example")
    staff = [g.person(g.rng.choice(doms)) for _ in range(g.n(120))]
    staff = list(dict.fromkeys(staff))
    transactional(g, "hr", "HR <hr@bigcorp.example>", T0_MS, 1.0, 40)
    g.emit(T0_MS + DAY_MS + 9 * HOUR_MS, "hr", "CEO <ceo@bigcorp.example>", ", ".join(g.named(p) for p in staff),
           staff, template="all-hands")


@pattern(BENIGN)
def sms_style_alerts_burst_known(g: Gen, s: float) -> None:
    """Two-factor codes and sign-in alerts: a steady, high, rhythmic volume with short bursts at the
    top of each hour (cron-triggered reminders), one To per copy, two days."""
    sender = "Security <security@bank2.example>"
    transactional(g, "auth", sender, T0_MS, 2.0, 1200, template="otp")
    for h in range(48):
        if 7 <= h % 24 <= 21:
            for t in g.spread(T0_MS + h * HOUR_MS, g.n(15), 2.0):
                r = g.person()
                g.emit(t, "auth", sender, g.named(r), [r], template="reminder")
