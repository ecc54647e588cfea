"""Tickets: what an answer served comes back with the click, and nobody can forge or alter one."""

import base64

import pytest

from proxy.quality.tickets import Ticket, TicketError, TicketSigner

NOW = 1_790_000_000
TICKET = Ticket("req-1", NOW, "2026-12-01T06:19:53Z-6ac9", "model", "JP", (17, 4, 4_999_999))


def signer(secret: str = "s3cret", window: float = 86_400) -> TicketSigner:
    return TicketSigner(secret, window)


def test_a_ticket_carries_what_the_answer_served():
    token = signer().issue(TICKET)
    assert signer().verify(token, NOW + 5) == TICKET
    assert TICKET.rank_of(4) == 2 and TICKET.rank_of(5) is None
    assert len(token) < 120, "compact enough for a header on every answer"


def test_another_secret_is_a_forgery():
    token = signer("other").issue(TICKET)
    with pytest.raises(TicketError, match="signature does not match"):
        signer().verify(token, NOW)


def test_an_altered_payload_is_refused():
    token = signer().issue(TICKET)
    payload, tag = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[-1] ^= 1  # the last served item's index
    altered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TicketError, match="signature does not match"):
        signer().verify(f"{altered}.{tag}", NOW)


def test_an_expired_ticket_is_refused_with_its_age():
    token = signer(window=3600).issue(TICKET)
    assert signer(window=3600).verify(token, NOW + 3600) == TICKET
    with pytest.raises(TicketError, match="expired: issued 3601 s ago"):
        signer(window=3600).verify(token, NOW + 3601)


def test_a_ticket_from_the_future_is_refused():
    token = signer().issue(TICKET)
    with pytest.raises(TicketError, match="future"):
        signer().verify(token, NOW - 3600)


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "!!!.???", "a" * 70_000, 42, None, "AAAA.AAAA"])
def test_malformed_tickets_are_refused_not_crashed(token):
    with pytest.raises(TicketError):
        signer().verify(token, NOW)


def test_a_signed_but_truncated_payload_is_malformed():
    # signed with the right secret (an older or broken issuer), yet cut short
    s = signer()
    payload = b"\x01\x00\x00"
    token = f"{base64.urlsafe_b64encode(payload).rstrip(b'=').decode()}.{base64.urlsafe_b64encode(s._tag(payload)).rstrip(b'=').decode()}"
    with pytest.raises(TicketError, match="malformed ticket payload"):
        s.verify(token, NOW)


@pytest.mark.parametrize("secret", ["s3cret", "k" * 64, "long" * 40, "ü-secret"])
def test_the_tag_is_hmac_sha256(secret):
    import hashlib
    import hmac

    payload = b"any payload bytes" * 7
    assert signer(secret)._tag(payload) == hmac.digest(secret.encode(), payload, hashlib.sha256)[:16]


def test_an_empty_secret_is_refused():
    with pytest.raises(ValueError):
        TicketSigner("", 60)


def test_after_a_rotation_the_previous_secrets_tickets_count_until_its_deadline():
    outstanding = signer("the-old-secret").issue(TICKET)
    rotated = TicketSigner("the-new-secret", 86_400, previous="the-old-secret", previous_until=NOW + 3_600)
    assert rotated.verify(outstanding, NOW + 5) == TICKET
    assert rotated.verify(rotated.issue(TICKET), NOW + 5) == TICKET
    # new tickets are signed with the new secret only: a replica still on the old one refuses them
    with pytest.raises(TicketError, match="signature does not match"):
        signer("the-old-secret").verify(rotated.issue(TICKET), NOW + 5)
    with pytest.raises(TicketError, match="signature does not match"):
        rotated.verify(outstanding, NOW + 3_600)
    with pytest.raises(TicketError, match="signature does not match"):
        rotated.verify(signer("a-third-secret").issue(TICKET), NOW + 5)
