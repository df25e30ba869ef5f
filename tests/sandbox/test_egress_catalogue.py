"""Requests become tool calls: catalogue entries with typed arguments, http/<method> otherwise,
and anything that cannot be read exactly is refused."""

from __future__ import annotations

import pytest

from sandbox.egress.catalogue import Catalogue, CatalogueError, minor_to_major
from sandbox.egress.http_calls import MAX_BODY, BodyError, HttpRequest, to_tool_call

CATALOGUE = Catalogue.load()
FORM = [("Host", "api.stripe.com"), ("Content-Type", "application/x-www-form-urlencoded")]


def request(method="POST", target="/v1/refunds", body=b"", headers=FORM, host="api.stripe.com", port=443):
    return HttpRequest(method, target, list(headers), body, host, port)


def test_stripe_refund_is_a_named_tool_in_major_units():
    """POST api.stripe.com/v1/refunds with amount=80000 is stripe/refund with amount 800."""
    tool, args, endpoint = to_tool_call(request(body=b"charge=ch_1&amount=80000&reason=duplicate"), CATALOGUE)
    assert (tool, endpoint.tool) == ("stripe/refund", "stripe/refund")
    assert {k: args[k] for k in ("amount", "charge", "reason", "host", "method", "path", "url")} == {
        "amount": 800, "charge": "ch_1", "reason": "duplicate", "host": "api.stripe.com", "method": "POST",
        "path": "/v1/refunds", "url": "https://api.stripe.com/v1/refunds"}


@pytest.mark.parametrize("amount,currency,expected", [(80000, "usd", 800), (80050, "eur", 800.5),
                                                       (500, "jpy", 500), (1500, "kwd", 1.5)])
def test_minor_units_follow_the_currency(amount, currency, expected):
    """Zero- and three-decimal currencies convert with their own exponent."""
    assert minor_to_major(amount, currency) == expected


def test_repeated_form_key_is_refused():
    """amount=100&amount=90000 is ambiguous (the server may read either) and is refused."""
    with pytest.raises(BodyError, match="given more than once"):
        to_tool_call(request(body=b"charge=ch_1&amount=100&amount=90000"), CATALOGUE)


def test_non_integer_amount_is_refused():
    """A typed field that does not parse is refused, naming the field."""
    with pytest.raises(BodyError, match=r"body.amount \(amount\): '8e4' is not an integer"):
        to_tool_call(request(body=b"charge=ch_1&amount=8e4"), CATALOGUE)


def test_wrong_body_format_for_the_entry_is_refused():
    """stripe/refund takes a form; a JSON body (which Stripe would not read the same way) is refused."""
    headers = [("Host", "api.stripe.com"), ("Content-Type", "application/json")]
    with pytest.raises(BodyError, match="takes form body, not json"):
        to_tool_call(request(body=b'{"amount": 100}', headers=headers), CATALOGUE)


@pytest.mark.parametrize("body,headers,message", [
    (b'{"a": 1, "a": 2}', [("Content-Type", "application/json")], "repeats a key"),
    (b"{not json", [("Content-Type", "application/json")], "not valid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, [("Content-Type", "application/json")], "nests too deeply"),
    (b"\x00\x01", [("Content-Type", "application/octet-stream")], "application/octet-stream cannot be inspected"),
    (b"x", [("Content-Type", "text/plain"), ("Content-Encoding", "gzip")], "gzip-encoded body"),
    (b"x" * (MAX_BODY + 1), [("Content-Type", "text/plain")], "over 1048576 bytes"),
])
def test_unreadable_bodies_are_refused(body, headers, message):
    """Bodies that cannot be parsed or are too large raise BodyError with a clear reason."""
    with pytest.raises(BodyError, match=message):
        to_tool_call(request("POST", "/upload", body, headers, host="files.example"), CATALOGUE)


def test_other_requests_are_http_method_calls_with_query_headers_and_body():
    """A request no entry describes is http/<method>, secrets in headers shown as the scheme only."""
    headers = [("Host", "api.example"), ("Authorization", "Bearer sk_123"), ("X-Trace", "a"), ("x-trace", "b"),
               ("Content-Type", "application/json")]
    tool, args, endpoint = to_tool_call(
        request("PUT", "/v2/items?id=7&tag=x&tag=y", b'{"name": "n"}', headers, host="api.example"), CATALOGUE)
    assert (tool, endpoint) == ("http/put", None)
    assert args["query"] == {"id": "7", "tag": ["x", "y"]}
    assert args["headers"] == {"host": "api.example", "authorization": "Bearer <redacted>", "x-trace": "a",
                               "X-trace": "b", "content-type": "application/json"}
    assert args["body"] == {"name": "n"}


def test_git_push_names_the_refs():
    """A git smart-HTTP push to github.com is github/push with the refs it updates."""
    line = b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\0report-status\n"
    body = f"{len(line) + 4:04x}".encode() + line + b"0000PACK..."
    headers = [("Host", "github.com"), ("Content-Type", "application/x-git-receive-pack-request")]
    tool, args, _ = to_tool_call(request("POST", "/acme/app.git/git-receive-pack", body, headers, "github.com"),
                                 CATALOGUE)
    assert (tool, args["owner"], args["repo"], args["refs"]) == ("github/push", "acme", "app", ["refs/heads/main"])


def test_user_catalogue_directory_adds_entries(tmp_path):
    """A *.toml file in a user directory adds a tool; a broken one names the file and entry."""
    (tmp_path / "shop.toml").write_text('[[endpoint]]\ntool = "shop/order"\nmethod = "POST"\nhost = "shop.test"\n'
                                        'path = "/orders/{id}"\nbody = "json"\n[endpoint.args]\n'
                                        'id = { from = "path.id", type = "integer" }\n'
                                        'total = { from = "body.total", type = "number" }\n')
    catalogue = Catalogue.load([tmp_path])
    headers = [("Host", "shop.test"), ("Content-Type", "application/json")]
    tool, args, _ = to_tool_call(request("POST", "/orders/42", b'{"total": 12.5}', headers, "shop.test"), catalogue)
    assert (tool, args["id"], args["total"]) == ("shop/order", 42, 12.5)
    (tmp_path / "zbad.toml").write_text('[[endpoint]]\ntool = "x/y"\nmethod = "GET"\nhost = "h"\npath = "p"\n')
    with pytest.raises(CatalogueError, match=r"zbad.toml: endpoint 1: path 'p' must start with /"):
        Catalogue.load([tmp_path])


@pytest.mark.parametrize("target,message", [
    ("https://evil.test/v1/refunds", "is not a path"),
    ("/v1/public/../refunds", "has a . or .. segment"),
    ("/v1/public/%2e%2e/refunds", "has a . or .. segment"),
    ("/v1/public%2Frefunds", "encoded slash"),
])
def test_targets_a_server_could_read_differently_are_refused(target, message):
    """Absolute-form targets, dot segments and encoded slashes are refused, never normalised."""
    with pytest.raises(BodyError, match=message):
        to_tool_call(request("GET", target, headers=[("Host", "api.stripe.com")]), CATALOGUE)


@pytest.mark.parametrize("host,target,content_type,body,expected", [
    ("api.openai.com", "/v1/chat/completions", "application/json",
     b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}',
     ("openai/chat", {"model": "gpt-4o", "messages": 1, "max_tokens": 50})),
    ("slack.com", "/api/chat.postMessage", "application/x-www-form-urlencoded", b"channel=C1&text=hello",
     ("slack/post_message", {"channel": "C1", "text": "hello"})),
    ("slack.com", "/api/chat.postMessage", "application/json; charset=utf-8", b'{"channel": "C1", "text": "hi"}',
     ("slack/post_message", {"channel": "C1", "text": "hi"})),
    ("api.github.com", "/repos/acme/app/issues", "application/json", b'{"title": "Bug", "labels": ["p1"]}',
     ("github/create_issue", {"owner": "acme", "repo": "app", "title": "Bug", "labels": ["p1"]})),
    ("api.stripe.com", "/v1/charges", "application/x-www-form-urlencoded", b"amount=1999&currency=eur&customer=cu_1",
     ("stripe/charge", {"amount": 19.99, "currency": "eur", "customer": "cu_1"})),
    ("github.com", "/acme/app.git/info/refs?service=git-receive-pack", "text/plain", b"",
     ("github/discover_refs", {"owner": "acme", "repo": "app", "service": "git-receive-pack"})),
])
def test_builtin_entries_type_their_arguments(host, target, content_type, body, expected):
    """Each built-in API maps onto its tool with the typed arguments the entry promises."""
    headers = [("Host", host), ("Content-Type", content_type)]
    tool, args, _ = to_tool_call(request("GET" if "info/refs" in target else "POST", target, body, headers, host),
                                 CATALOGUE)
    assert (tool, {k: args[k] for k in expected[1]}) == expected
    assert set(args) - set(expected[1]) == {"url", "host", "port", "method", "path", "query", "headers"}
