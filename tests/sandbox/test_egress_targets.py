"""What the egress decides is what it sends: request targets normalised or refused, catalogue
paths matched on the normalised path, Host headers read strictly, secrets never sent in clear,
and request parsing that stays linear (docs/egress.md)."""

from __future__ import annotations

import pytest

import policy
from sandbox.egress import http_calls
from sandbox.egress.catalogue import Catalogue, CatalogueError
from sandbox.egress.credentials import Credential
from sandbox.egress.deciding import Decider, Verdict
from sandbox.egress.forward import Upstream, _host_of
from sandbox.egress.http_calls import BodyError, HttpRequest, normal_target, parse_form, shown_headers, to_tool_call
from sandbox.egress.proxy import Destination

CATALOGUE = Catalogue.load()
FORM = [("Content-Type", "application/x-www-form-urlencoded")]
GIT = [("Content-Type", "application/x-git-receive-pack-request")]
LINE = b"0" * 40 + b" " + b"1" * 40 + b" refs/heads/main\0report-status\n"
PUSH = f"{len(LINE) + 4:04x}".encode() + LINE + b"0000PACK..."


def call(method, host, target, body=b"", headers=(), catalogue=CATALOGUE, scheme="https"):
    return to_tool_call(HttpRequest(method, target, [("Host", host), *headers], body, host, 443, scheme), catalogue)


@pytest.mark.parametrize("target,normal", [
    ("/%61dmin/secret", "/admin/secret"),  # an unreserved letter, encoded, is the letter
    ("/v1/%7Eme%2d%5F%2E1", "/v1/~me-_.1"),
    ("/caf%c3%a9?q=%7e%41%2b%2f", "/caf%C3%A9?q=~A%2B%2F"),  # other escapes keep their meaning, hex upper case
    ("/a?next=/b/../c?d//e", "/a?next=/b/../c?d//e"),  # the path ends at the first ?: the query is not a path
    ("/v1/refunds/", "/v1/refunds/"),
    ("/", "/"),
])
def test_targets_are_normalised_before_the_decision(target, normal):
    """Percent-encoding is normalised (RFC 3986 6.2.2); the request carries the normalised target."""
    assert normal_target(target) == normal
    assert HttpRequest("GET", target, [], b"", "h.test", 443).target == normal
    assert normal_target(normal) == normal


@pytest.mark.parametrize("target,message", [
    ("//admin/secret", "empty segment"),  # urlsplit read 'admin' as a host: decided as /secret
    ("//..%2fadmin/secret", "empty segment"),
    ("/a//b", "empty segment"),
    ("/public#/../admin", r"has a # \(a fragment\)"),
    ("/..;/admin", "has a ;"),
    ("/admin;jsessionid=1", "has a ;"),
    ("/public/%2e%2E/admin", "has a . or .. segment"),
    ("/public/.%2e", "has a . or .. segment"),
    ("/%2e/admin", "has a . or .. segment"),
    ("/a%2fb", "encoded slash"),
    ("/a%00", "encoded control character"),
    ("/a%zz", "% that is not followed by two hex digits"),
    ("/a%2", "% that is not followed by two hex digits"),
    ("/a?b=%", "query '/?b=%'|query 'b=%'"),
    ("/a b", "a space, a control or a non-ASCII character"),
    ("/a\x7f", "a space, a control or a non-ASCII character"),
    ("/caf\xe9", "a space, a control or a non-ASCII character"),
    ("*", "is not a path"),
    ("/%2561dmin", "an encoded % before two hex digits"),  # decoded twice: /admin
    ("/a/%252e%252e/admin", "an encoded % before two hex digits"),
])
def test_targets_a_server_could_route_elsewhere_are_refused(target, message):
    """Whatever a server could read as another path than the one decided is refused, with why."""
    with pytest.raises(BodyError, match=message):
        HttpRequest("GET", target, [], b"", "h.test", 443)


def test_the_policy_sees_the_normalised_path_and_url():
    """/%61dmin is decided as /admin (a deny on /admin applies) and its url says so."""
    tool, args, _ = call("GET", "api.example", "/%61dmin/x?a=%62")
    assert (tool, args["path"], args["url"], args["query"]) == (
        "http/get", "/admin/x", "https://api.example/admin/x?a=b", {"a": "b"})


@pytest.mark.parametrize("target", ["/v1/refunds", "/v1/%72efunds", "/v1/refunds/", "/v1/refunds/?expand=x"])
def test_refund_spellings_stay_the_refund_tool(target):
    """An escaped letter or a trailing slash does not turn stripe/refund into http/post."""
    tool, args, _ = call("POST", "api.stripe.com", target, b"charge=ch_1&amount=80000", FORM)
    assert (tool, args["amount"]) == ("stripe/refund", 800)


@pytest.mark.parametrize("target", ["/acme/prod/git-receive-pack", "/acme/pro%64/git-receive-pack",
                                    "/acme/PROD/git-receive-pack", "/ACME/Prod.GIT/git-receive-pack",
                                    "/acme/prod/git-receive-pack/", "/Acme/Prod/Git-Receive-Pack"])
def test_github_names_fold_case_and_escapes(target):
    """GitHub reads owner and repo without case: every spelling of acme/prod is repo "prod"."""
    tool, args, _ = call("POST", "github.com", target, PUSH, GIT)
    assert (tool, args["owner"], args["repo"]) == ("github/push", "acme", "prod")


def test_github_issue_entries_fold_case():
    """The REST API entries fold case too: ACME/App is acme/app."""
    json_body = [("Content-Type", "application/json")]
    tool, args, _ = call("POST", "api.github.com", "/repos/ACME/App/issues", b"{}", json_body)
    assert (tool, args["owner"], args["repo"]) == ("github/create_issue", "acme", "app")


def test_segments_are_decoded_and_keep_case_unless_the_entry_folds(tmp_path):
    """A user entry's {segment} is percent-decoded and keeps its case; fold_case must be a boolean."""
    (tmp_path / "shop.toml").write_text('[[endpoint]]\ntool = "shop/item"\nmethod = "GET"\nhost = "shop.test"\n'
                                        'path = "/items/{name}/"\n[endpoint.args]\n'
                                        'name = { from = "path.name", type = "string" }\n')
    catalogue = Catalogue.load([tmp_path], builtin=False)
    assert call("GET", "shop.test", "/items/Big%20Box", catalogue=catalogue)[1]["name"] == "Big Box"
    assert call("GET", "shop.test", "/items/Big%20Box/", catalogue=catalogue)[0] == "shop/item"
    with pytest.raises(BodyError, match="path segment 'x%FF' is not UTF-8"):
        call("GET", "shop.test", "/items/x%ff", catalogue=catalogue)
    (tmp_path / "shop.toml").write_text('[[endpoint]]\ntool = "shop/item"\nmethod = "GET"\nhost = "shop.test"\n'
                                        'path = "/items"\nfold_case = "yes"\n')
    with pytest.raises(CatalogueError, match="shop.toml: endpoint 1: fold_case 'yes' is not true or false"):
        Catalogue.load([tmp_path], builtin=False)


@pytest.mark.parametrize("path", ["/v1/%72efunds", "/v1/refunds?x=1", "/v1//refunds", "/v1/a;b"])
def test_catalogue_paths_that_could_never_match_are_refused(tmp_path, path):
    """Requests are matched normalised, so an entry written with % or ? would silently match nothing."""
    (tmp_path / "shop.toml").write_text(f'[[endpoint]]\ntool = "x/y"\nmethod = "GET"\nhost = "h"\npath = "{path}"\n')
    with pytest.raises(CatalogueError, match="write it as the egress normalises request paths"):
        Catalogue.load([tmp_path], builtin=False)


def test_a_typed_header_given_twice_is_refused(tmp_path):
    """Like a repeated form key, a header the server might read either copy of is ambiguous."""
    (tmp_path / "shop.toml").write_text('[[endpoint]]\ntool = "shop/item"\nmethod = "GET"\nhost = "shop.test"\n'
                                        'path = "/items"\n[endpoint.args]\n'
                                        'account = { from = "header.x-account", type = "string" }\n')
    catalogue = Catalogue.load([tmp_path], builtin=False)
    assert call("GET", "shop.test", "/items", headers=[("X-Account", "a")], catalogue=catalogue)[1]["account"] == "a"
    with pytest.raises(BodyError, match="header.x-account .account.: given more than once"):
        call("GET", "shop.test", "/items", headers=[("X-Account", "a"), ("x-account", "b")], catalogue=catalogue)


@pytest.mark.parametrize("value,host", [("api.svc.test", "api.svc.test"), ("API.svc.test.:8443", "api.svc.test"),
                                        ("[::1]:443", "::1"), ("[::1]", "::1"), ("10.0.0.1:80", "10.0.0.1")])
def test_host_header_grammar_accepts_host_and_port(value, host):
    assert _host_of(value) == host


@pytest.mark.parametrize("value", ["api.svc.test:1@evil.example", "[api.svc.test]evil.example", "[api.svc.test",
                                   "api.svc.test:443/x", "api.svc.test:", "user@api.svc.test", "a b", ""])
def test_host_header_that_could_name_another_host_is_refused(value):
    """The Host header is forwarded as sent: only host[:port] and [IPv6][:port] pass."""
    with pytest.raises(BodyError, match="is not host\\[:port\\] or \\[IPv6\\]\\[:port\\]"):
        _host_of(value)


class Plan:
    def __init__(self, credential):
        self.credential = credential

    def credential_for(self, tool):
        return self.credential if self.credential.covers(tool) else None


def test_a_brokered_secret_is_never_sent_over_plain_http():
    """A permitted request its credential covers is refused when it is plain HTTP, not sent in clear."""
    credential = Credential("stripe", (lambda tool: tool == "stripe/refund",), "env", "KEY")
    permit = lambda call: policy.Decision(policy.Effect.PERMIT, rule_id="r1")  # noqa: E731
    records = []
    decider = Decider(permit, records.append, None, 0.1, "s", CATALOGUE, Plan(credential), environ={"KEY": "sk"})
    body, headers = b"charge=ch_1&amount=100", [("Host", "api.stripe.com"), *FORM]
    clear = decider.request(HttpRequest("POST", "/v1/refunds", headers, body, "api.stripe.com", 443, "http"))
    assert (clear.decision.reason_code, clear.secret, clear.credential) == ("CREDENTIAL_NEEDS_TLS", None, None)
    assert "credential stripe is sent over TLS only" in clear.decision.reason
    assert records[-1]["effect"] == "DENY" and "credential" not in records[-1]
    tls = decider.request(HttpRequest("POST", "/v1/refunds", headers, body, "api.stripe.com", 443, "https"))
    assert (tls.decision.effect, tls.secret) == (policy.Effect.PERMIT, "sk")


def test_upstream_refuses_a_secret_on_a_plain_connection():
    """Should a verdict with a secret reach a plain-HTTP upstream, nothing is sent (nor connected)."""
    upstream = Upstream(Destination("api.stripe.com", "192.0.2.1", 443), "http", None)
    request = HttpRequest("POST", "/v1/refunds", [], b"", "api.stripe.com", 443, "http")
    verdict = Verdict(policy.Decision(policy.Effect.PERMIT), "stripe/refund", {}, secret="sk")
    with pytest.raises(BodyError, match="never sent over plain HTTP"):
        upstream.exchange(None, None, request, verdict)
    assert upstream.sock is None


def test_repeated_form_keys_are_collected_in_one_list(monkeypatch):
    """a=&a=&... appends to one list: rebuilding it for each repeat made a 1 MiB body cost minutes."""
    made = []

    class Counted(http_calls.Repeated):
        def __init__(self, *args):
            made.append(1)
            super().__init__(*args)
    monkeypatch.setattr(http_calls, "Repeated", Counted)
    found = parse_form("&".join(["a=1"] * 5000 + ["b=2"] * 3), "form body")
    assert (len(found["a"]), found["b"], len(made)) == (5000, ["2", "2", "2"], 2)


def test_repeated_headers_take_the_next_spelling_directly(monkeypatch):
    """Each repeat of a header gets its spelling in one step, not by trying every earlier one."""
    calls = []
    spelling = http_calls._spelling
    monkeypatch.setattr(http_calls, "_spelling", lambda name, n: calls.append(n) or spelling(name, n))
    shown = shown_headers([("X-Request-Trace", str(n)) for n in range(2000)] + [("Other", "o")])
    assert (len(shown), shown["x-request-trace"], shown["X-request-trace"], shown["other"]) == (2001, "0", "1", "o")
    assert len(calls) == 2001
    with pytest.raises(BodyError, match="header X-Id repeats too often"):
        shown_headers([("X-Id", "v")] * 9)  # 3 letters: 8 spellings
