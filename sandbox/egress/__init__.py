"""HTTP(S) egress: requests to the APIs a policy names are decided one by one (docs/egress.md)."""
