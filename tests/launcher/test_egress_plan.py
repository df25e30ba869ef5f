"""The egress plan read from a policy: which connections are inspected, which tools carry a secret."""

from __future__ import annotations

import pytest

import policy
from launcher.run_egress import EgressPlan, PlanError
from sandbox.egress.catalogue import Catalogue

CATALOGUE = Catalogue.load()


SEED = """agent payment-bot {
  default deny
  credential stripe {
    scope refund
    backend env
    path "STRIPE_KEY"
  }
  rules {
    permit stripe/refund when amount <= 500
    defer stripe/refund when amount > 500
    permit http/get host: "*.example.org" port: 8443
    permit net/connect when args.host == "api.stripe.com" && args.port == 443
  }
}
"""


def test_plan_intercepts_the_hosts_the_policy_names():
    """The refund rules intercept api.stripe.com:443 (from the catalogue); http rules their host: and port:."""
    plan = EgressPlan.build([("p.fpl", policy.parse(SEED, "p.fpl"))], CATALOGUE)
    assert [plan.intercepts(*target) for target in [
        ("api.stripe.com", "198.18.0.2", 443), ("api.stripe.com", "198.18.0.2", 80), ("api.github.com", "1.2.3.4", 443),
        ("a.example.org", "1.2.3.4", 8443), ("a.example.org", "1.2.3.4", 443), (None, "198.18.0.2", 443)]] == \
        [True, False, False, True, False, False]
    assert (plan.credential_for("stripe/refund").path, plan.credential_for("stripe/charge")) == ("STRIPE_KEY", None)
    assert plan.secret_variables() == {"STRIPE_KEY"}


def test_credential_without_a_usable_backend_is_an_error():
    """A credential the egress cannot serve (vault) is rejected with a fix, not ignored."""
    text = SEED.replace("backend env", "backend vault")
    with pytest.raises(PlanError, match="credential stripe: the egress injects secrets from `backend env`"):
        EgressPlan.build([("p.fpl", policy.parse(text, "p.fpl"))], CATALOGUE)
